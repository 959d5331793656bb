"""The explorer's HTTP server: a small JSON API over :class:`vaecli.explore.service.Explorer`.

Standard library only (:class:`http.server.ThreadingHTTPServer`); the page is the static
``assets/explore.html``. Bad requests get HTTP 400 with ``{"error": message}``; the server keeps
serving. The endpoints are documented in ``docs/explore.md``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..errors import ConfigError, VaeError
from .service import MAX_UPLOAD_BYTES, BadRequest, Explorer, data_url

MAX_JSON_BYTES = 256 * 1024  # a JSON request body (4096 latent values fit many times over)
DRAIN_LIMIT = 64 * 1024 * 1024  # larger bodies are not even read: the connection is dropped
# what a cross-site <form> can POST without a CORS preflight: refused, so other sites cannot drive the server
SIMPLE_CONTENT_TYPES = ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def page_html() -> bytes:
    """The explorer page shipped in the package."""
    return (resources.files("vaecli") / "assets" / "explore.html").read_bytes()


class ExploreHandler(BaseHTTPRequestHandler):
    """Routes: ``GET /``, ``GET /api/runs``, ``GET /api/run``, ``GET /api/prior``, ``GET /api/random``,
    ``POST /api/decode``, ``POST /api/traverse``, ``POST /api/encode``."""

    server: ExploreServer
    server_version = "vae-explore"
    protocol_version = "HTTP/1.1"

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        self.server.explorer.log(format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # quiet: errors are logged where they happen

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _query(self) -> dict[str, str]:
        q = parse_qs(urlparse(self.path).query, keep_blank_values=True)
        return {k: v[-1] for k, v in q.items()}

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise BadRequest("send a Content-Length header (chunked bodies are not accepted)")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise BadRequest("bad Content-Length") from None
        if n < 0:
            self.close_connection = True
            raise BadRequest("bad Content-Length")
        if n > limit:
            self.close_connection = True
            if n <= DRAIN_LIMIT:  # read and drop it, so that the client sees the answer, not a reset
                while n > 0:
                    chunk = self.rfile.read(min(n, 1 << 20))
                    if not chunk:
                        break
                    n -= len(chunk)
            raise BadRequest(f"request body too large ({int(length):,} bytes, limit {limit:,})")
        return self.rfile.read(n)

    def _json_body(self) -> dict[str, Any]:
        raw = self._body(MAX_JSON_BYTES)
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the body must be a JSON object ({exc})") from None
        if not isinstance(obj, dict):
            raise BadRequest("the body must be a JSON object")
        return obj

    def _png_or_json(self, png: bytes, want: str | None) -> None:
        if want in (None, "", "png"):
            self._send(200, png, "image/png")
        elif want == "json":
            self._json({"image": data_url(png)})
        else:
            raise BadRequest(f"format must be png or json, got {want!r}")

    def _host_ok(self) -> bool:
        """On a loopback server, only loopback Host headers (a DNS-rebinding page sends its own name)."""
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host")
        if host is None:
            return True
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
        return is_loopback(name.rstrip(".").lower())

    def _check_content_type(self) -> None:
        """Refuse the content types a cross-site form may send without a CORS preflight."""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype in SIMPLE_CONTENT_TYPES:
            raise BadRequest(f"Content-Type {ctype} is not accepted: send application/json (decode, traverse) or the image's type (encode)")

    def _dispatch(self, routes: dict[str, Callable[[], None]]) -> None:
        route = urlparse(self.path).path
        handler = routes.get(route)
        try:
            if not self._host_ok():
                self.close_connection = True
                self._error(403, "this server only answers requests addressed to localhost")
                return
            if handler is None:
                self._error(404, f"no such endpoint: {route}")
                return
            if self.command == "POST":
                self._check_content_type()
            handler()
        except BadRequest as exc:
            if self.command == "POST":
                self.close_connection = True  # the body may be unread
            self._error(400, str(exc))
        except VaeError as exc:  # a damaged run, a config problem: the request fails, the server stays
            self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # the server must keep serving
            self.server.explorer.log(f"internal error on {self.command} {route}: {type(exc).__name__}: {exc}")
            try:
                self._error(500, f"internal error: {type(exc).__name__}")
            except OSError:
                self.close_connection = True

    # -- routes

    def do_GET(self) -> None:
        ex = self.server.explorer
        q = self._query

        def index() -> None:
            self._send(200, page_html(), "text/html; charset=utf-8")

        self._dispatch(
            {
                "/": index,
                "/index.html": index,
                "/api/runs": lambda: self._json(ex.list_runs()),
                "/api/run": lambda: self._json(ex.get(q().get("run")).info()),
                "/api/prior": lambda: self._json(ex.prior(q().get("run"), q().get("seed"))),
                "/api/random": lambda: self._json(ex.random_test(q().get("run"), q().get("seed"))),
            }
        )

    do_HEAD = do_GET

    def do_POST(self) -> None:
        ex = self.server.explorer

        def decode() -> None:
            b = self._json_body()
            self._png_or_json(ex.decode(b.get("run"), b.get("z")), b.get("format"))

        def traverse() -> None:
            b = self._json_body()
            png = ex.traverse(b.get("run"), b.get("z"), b.get("dim"), b.get("steps", 9), b.get("range", 3.0))
            self._png_or_json(png, b.get("format"))

        def encode() -> None:
            self._json(ex.encode(self._query().get("run"), self._body(MAX_UPLOAD_BYTES)))

        self._dispatch({"/api/decode": decode, "/api/traverse": traverse, "/api/encode": encode})


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not accepted: numbers must be finite")


class ExploreServer(ThreadingHTTPServer):
    """A threading HTTP server carrying an :class:`Explorer`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], explorer: Explorer) -> None:
        self.explorer = explorer
        self.loopback_only = is_loopback(address[0])
        super().__init__(address, ExploreHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> ExploreServer:
    """Bind (``port`` 0 picks a free one); a busy port or bad host -> :class:`ConfigError`."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    cls: type[ExploreServer] = ExploreServer
    if ":" in host:
        import socket

        cls = type("ExploreServer6", (ExploreServer,), {"address_family": socket.AF_INET6})
    try:
        return cls((host, port), explorer)
    except OSError as exc:
        if getattr(exc, "errno", None) in (98, 48, 10048):  # EADDRINUSE on Linux / macOS / Windows
            raise ConfigError(f"port {port} on {host} is already in use: choose another with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
