"""`vae explore`: a local latent-space explorer, a small JSON API over the inference layer.

Standard library only (:class:`http.server.ThreadingHTTPServer`); the page is the static
``assets/explore.html``. Every endpoint decodes and encodes through :mod:`vaecli.inference`
and loads weights through :func:`vaecli.checkpoint.load_model` (safetensors only). Bad
requests get HTTP 400 with ``{"error": message}``; the server keeps serving. The endpoints
are documented in ``docs/explore.md``.

Per-dimension KL, KL(q(z_j|x) || N(0, 1)) averaged over test images (Kingma & Welling 2014,
appendix B), orders the sliders; a dimension is active when the variance of its posterior mean
over test images exceeds 0.01 (Burda et al. 2016, sec. 5.2, as ``vae info``'s active units).
Both are read from ``summary.json`` (``test_per_dim_kl``, ``test_mu_variance``, which training
writes) or computed once with :func:`vaecli.metrics.evaluate` on a subset of the run's test
split, then cached per run.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import torch

from . import checkpoint as ckpt
from .data import ImageData
from .inference import dims_by_kl
from .metrics import ACTIVE_THRESHOLD, latent_stats
from .errors import CheckpointError, ConfigError, DataError, RunNotFoundError, VaeError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # an uploaded image
MAX_JSON_BYTES = 256 * 1024  # a JSON request body (4096 latent values fit many times over)
DRAIN_LIMIT = 64 * 1024 * 1024  # larger bodies are not even read: the connection is dropped
KL_IMAGES = 2000  # test images used when per-dimension KL must be computed
INACTIVE_KL = 0.01  # nats: the fallback rule when no posterior-mean variances are known
MAX_ABS_Z = 1e4  # decode refuses larger latent values (finite but meaningless)
MAX_STEPS = 33  # traversal strip length limit
# what a cross-site <form> can POST without a CORS preflight: refused, so other sites cannot drive the server
SIMPLE_CONTENT_TYPES = ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES = {"fashion-mnist": FASHION_CLASSES, "fashion-mnist-mini": FASHION_CLASSES, "mnist": tuple("0123456789")}

LogFn = Callable[[str], None]


class BadRequest(VaeError):
    """A request the explorer refuses (HTTP 400)."""


@dataclass
class ExploreRun:
    """A loaded run: model in eval mode on the CPU, its config, per-dimension KL and a lock."""

    name: str
    path: Path
    model: Any
    config: Any
    per_dim_kl: list[float]
    kl_source: str
    mu_variance: list[float] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    test_images: torch.Tensor | None = None  # uint8 (N, C, H, W), loaded on first use
    test_labels: torch.Tensor | None = None
    test_error: str | None = None

    @property
    def latent_dim(self) -> int:
        return int(self.config.model.latent_dim)

    def info(self) -> dict[str, Any]:
        """What ``GET /api/run`` returns: shape, KL per dimension, slider order, activity."""
        kl = self.per_dim_kl
        order = dims_by_kl(kl)
        m, t = self.config.model, self.config.train
        if self.mu_variance is not None:
            active = [v > ACTIVE_THRESHOLD for v in self.mu_variance]
            rule = f"Var(mu) > {ACTIVE_THRESHOLD:g}"
        else:
            active = [v >= INACTIVE_KL for v in kl]
            rule = f"KL >= {INACTIVE_KL:g}"
        return {
            "name": self.name,
            "latent_dim": self.latent_dim,
            "channels": int(m.channels),
            "image_size": int(m.image_size),
            "arch": m.arch,
            "beta": t.beta,
            "data": self.config.data.name,
            "epochs": self.summary.get("epochs"),
            "test_neg_elbo": _finite_or_none((self.summary.get("test") or {}).get("neg_elbo")),
            "per_dim_kl": kl,
            "kl_source": self.kl_source,
            "mu_variance": self.mu_variance,
            "order": order,
            "active": active,
            "active_units": sum(active),
            "active_rule": rule,
        }


# ----------------------------------------------------------------------------- images


def to_png(images: torch.Tensor, gap: int = 0) -> bytes:
    """Float images (N, C, H, W) in [0, 1] -> one PNG, tiled left to right with ``gap`` white pixels."""
    from .images import png_bytes, to_pil

    n, c, h, w = images.shape
    canvas = torch.ones(c, h, n * w + max(n - 1, 0) * gap)
    for i in range(n):
        canvas[:, :, i * (w + gap) : i * (w + gap) + w] = images[i].clamp(0, 1)
    return png_bytes(to_pil(canvas))


def data_url(png: bytes) -> str:
    """A PNG as a ``data:`` URL (what the page puts in ``<img src>``)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------------- the explorer


class Explorer:
    """The state behind the server: the runs it can show, loaded lazily and cached.

    ``default_run`` is a run name or folder (None: the latest run). Only runs under the runs
    folder, plus the default one, can be opened by name from the page.
    """

    def __init__(self, default_run: str | os.PathLike[str] | None = None, kl_images: int = KL_IMAGES, log: LogFn | None = None) -> None:
        path = ckpt.resolve_run(default_run)
        if not (path / ckpt.MODEL).exists():
            raise CheckpointError(f"run {path.name!r} has no weights yet ({ckpt.MODEL}): train it first")
        self.default = path.name
        self._extra = {path.name: path}
        self._runs: dict[str, ExploreRun] = {}
        self._lock = threading.Lock()
        self.kl_images = kl_images
        self.log: LogFn = log or (lambda msg: None)

    # -- runs

    def run_paths(self) -> dict[str, Path]:
        """Trained runs by name: the runs folder's, plus the default run (which wins a name clash)."""
        out = {p.name: p for p in ckpt.list_runs() if (p / ckpt.MODEL).exists()}
        out.update(self._extra)
        return out

    def list_runs(self) -> dict[str, Any]:
        """``GET /api/runs``: every trained run (cheap: config and summary only) and the default."""
        rows = []
        for name, path in self.run_paths().items():
            try:
                row = ckpt.run_brief(path)
            except VaeError:
                continue
            loaded = self._runs.get(name)
            kl = loaded.per_dim_kl if loaded else ckpt.summary_floats(ckpt.read_summary(path), "test_per_dim_kl", row["latent_dim"])
            rows.append({**row, "name": name, "per_dim_kl": kl})
        return {"default": self.default, "runs": rows}

    def get(self, name: str | None) -> ExploreRun:
        """The loaded run ``name`` (None: the default); loads and computes KL on first use."""
        name = self.default if name in (None, "") else name
        if not isinstance(name, str):
            raise BadRequest("run must be a string")
        with self._lock:
            run = self._runs.get(name)
            if run is not None:
                return run
            if name not in self._extra:
                try:
                    ckpt.validate_run_name(name)
                except ConfigError as exc:
                    raise BadRequest(str(exc)) from None
            path = self.run_paths().get(name)
            if path is None:
                raise BadRequest(f"unknown run {name!r} (see GET /api/runs)")
            try:
                run = self._load(name, path)
            except RunNotFoundError as exc:
                raise BadRequest(str(exc)) from None
            self._runs[name] = run
            return run

    def _load(self, name: str, path: Path) -> ExploreRun:
        model, cfg, path = ckpt.load_model(path, device="cpu")
        summary = ckpt.read_summary(path)
        run = ExploreRun(name=name, path=path, model=model, config=cfg, per_dim_kl=[], kl_source="", summary=summary)

        def test() -> ImageData | None:  # a run trained before summary.json had the statistics
            self.log(f"computing per-dimension KL of run {name} on up to {self.kl_images} test images")
            self._load_test(run)
            return None if run.test_images is None else ImageData(images=run.test_images)

        kl, run.mu_variance, source = latent_stats(model, summary, test, limit=self.kl_images, binarize=cfg.data.binarize)
        run.per_dim_kl = kl or [0.0] * cfg.model.latent_dim
        run.kl_source = f"unavailable ({run.test_error})" if kl is None else source
        return run

    def _load_test(self, run: ExploreRun) -> None:
        """Load the run's test split once (never downloads); remembers the reason when it cannot."""
        if run.test_images is not None or run.test_error is not None:
            return
        from .data import load_data

        try:
            _, test, _ = load_data(run.config.data, download=False)
        except VaeError as exc:
            run.test_error = str(exc)
            return
        m = run.config.model
        if test.channels != m.channels or test.image_size != m.image_size or len(test) == 0:
            run.test_error = f"the test split ({len(test)} images {test.channels}x{test.image_size}x{test.image_size}) does not fit the model"
            return
        run.test_images, run.test_labels = test.images, test.labels

    # -- operations (each returns plain JSON-able data or PNG bytes)

    def decode(self, name: str | None, z: Any) -> bytes:
        """Decode one latent vector to a PNG at the model's resolution."""
        run = self.get(name)
        zt = parse_z(z, run.latent_dim)
        from .inference import decode

        with run.lock:
            img = decode(run.model, zt)
        return to_png(img)

    def traverse(self, name: str | None, z: Any, dim: Any, steps: Any = 9, value_range: Any = 3.0) -> bytes:
        """Decode ``steps`` copies of ``z`` with dimension ``dim`` swept over [-range, +range]: one PNG strip."""
        run = self.get(name)
        zt = parse_z(z, run.latent_dim)
        d = _number(dim, "dim", 0, run.latent_dim - 1, int)
        n = _number(steps, "steps", 2, MAX_STEPS, int)
        r = _number(value_range, "range", 1e-3, 100.0)
        from .inference import decode, traverse_latents

        with run.lock:
            imgs = decode(run.model, traverse_latents(zt[0], [d], r, n))
        return to_png(imgs, gap=2)

    def encode(self, name: str | None, data: bytes) -> dict[str, Any]:
        """Posterior mean of an uploaded image (any format Pillow reads), plus the image as the model sees it."""
        run = self.get(name)
        if not data:
            raise BadRequest("empty upload: send the image file as the request body")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(f"upload too large ({len(data):,} bytes, limit {MAX_UPLOAD_BYTES:,})")
        m = run.config.model
        x = _decode_upload(data, m.channels, m.image_size, run.config.data.fit)
        return self._encode_uint8(run, x)

    def random_test(self, name: str | None, seed: Any = None) -> dict[str, Any]:
        """Posterior mean of a random image of the run's test split (``seed`` picks it reproducibly)."""
        run = self.get(name)
        self._load_test(run)
        if run.test_images is None:
            raise BadRequest(f"no test images for run {run.name}: {run.test_error}")
        rng = random.Random(None if seed in (None, "") else _number(seed, "seed", 0, 2**63 - 1, int))
        i = rng.randrange(len(run.test_images))
        out = self._encode_uint8(run, run.test_images[i])
        out["index"] = i
        label = None if run.test_labels is None else int(run.test_labels[i])
        names = CLASS_NAMES.get(run.config.data.name, ())
        out["label"] = label
        out["label_name"] = names[label] if label is not None and 0 <= label < len(names) else None
        return out

    def prior(self, name: str | None, seed: Any = None) -> dict[str, Any]:
        """A draw z ~ N(0, I) for the run's latent size."""
        run = self.get(name)
        from .inference import sample_prior

        gen = torch.Generator()
        if seed in (None, ""):
            gen.seed()
        else:
            gen.manual_seed(_number(seed, "seed", 0, 2**63 - 1, int))
        return {"z": [float(v) for v in sample_prior(1, run.latent_dim, 1.0, gen)[0]]}

    def _encode_uint8(self, run: ExploreRun, x: torch.Tensor) -> dict[str, Any]:
        from .data import to_float
        from .inference import encode

        xf = to_float(x.unsqueeze(0))
        with run.lock:
            mu, logvar = encode(run.model, xf)
        return {"z": [float(v) for v in mu[0]], "logvar": [float(v) for v in logvar[0]], "input": data_url(to_png(xf))}


# ----------------------------------------------------------------------------- validation


def _finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def parse_z(z: Any, latent_dim: int) -> torch.Tensor:
    """A JSON list of ``latent_dim`` finite numbers -> tensor (1, D); anything else -> BadRequest."""
    if not isinstance(z, list):
        raise BadRequest(f"z must be a list of {latent_dim} numbers")
    if len(z) != latent_dim:
        raise BadRequest(f"z must have {latent_dim} values for this run, got {len(z)}")
    for i, v in enumerate(z):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadRequest(f"z[{i}] must be a finite number, got {v!r}")
        if abs(v) > MAX_ABS_Z:
            raise BadRequest(f"z[{i}] = {v} is out of range (|z| <= {MAX_ABS_Z:g})")
    return torch.tensor([z], dtype=torch.float32)


def _number(v: Any, name: str, lo: float, hi: float, kind: type = float) -> Any:
    """A query or JSON value as ``kind`` (int or float) within [lo, hi]; anything else -> BadRequest."""
    what = "an integer" if kind is int else "a number"
    if isinstance(v, str):
        try:
            v = kind(v)
        except ValueError:
            raise BadRequest(f"{name} must be {what}, got {v!r}") from None
    ok = int if kind is int else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok) or (isinstance(v, float) and not math.isfinite(v)):
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {v!r}")
    if not lo <= v <= hi:
        bounds = f"{lo} and {hi}" if kind is int else f"{lo:g} and {hi:g}"
        raise BadRequest(f"{name} must be between {bounds}, got {v}")
    return kind(v)


def _decode_upload(data: bytes, channels: int, size: int, fit: str = "crop") -> torch.Tensor:
    """Decode upload bytes with :func:`vaecli.data.load_image` (the one image decoder) by the run's rule."""
    from .data import load_image

    try:
        return load_image(data, channels, size, fit)
    except DataError as exc:
        raise BadRequest(str(exc).replace("image: ", "upload: ", 1)) from None


# ----------------------------------------------------------------------------- HTTP


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

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
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
        except Exception as exc:  # noqa: BLE001 - the server must keep serving
            self.server.explorer.log(f"internal error on {self.command} {route}: {type(exc).__name__}: {exc}")
            try:
                self._error(500, f"internal error: {type(exc).__name__}")
            except OSError:
                self.close_connection = True

    # -- routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        ex = self.server.explorer
        q = self._query

        def index() -> None:
            self._send(200, page_html(), "text/html; charset=utf-8")

        self._dispatch({
            "/": index,
            "/index.html": index,
            "/api/runs": lambda: self._json(ex.list_runs()),
            "/api/run": lambda: self._json(ex.get(q().get("run")).info()),
            "/api/prior": lambda: self._json(ex.prior(q().get("run"), q().get("seed"))),
            "/api/random": lambda: self._json(ex.random_test(q().get("run"), q().get("seed"))),
        })  # fmt: skip

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
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
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}/"


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> ExploreServer:
    """Bind (``port`` 0 picks a free one); a busy port or bad host -> :class:`ConfigError`."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    cls = ExploreServer
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
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
