"""`vae explore`: the JSON API through a real server on an ephemeral loopback port."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import one_error_line, src_env, vae
from PIL import Image

from vaecli import explore
from vaecli.errors import CheckpointError, ConfigError, RunNotFoundError
from vaecli.eval.inference import decode, encode
from vaecli.explore import Explorer, is_loopback, make_server
from vaecli.runs import store as ckpt

LATENT = 8  # the tiny_run fixture's latent size


def start(explorer: Explorer) -> tuple[str, Any]:
    server = make_server(explorer, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server.url.rstrip("/"), server


@pytest.fixture()
def url(tiny_run: Path) -> Iterator[str]:
    base, server = start(Explorer(tiny_run))
    yield base
    server.shutdown()
    server.server_close()


def call(base: str, method: str, path: str, body: bytes | dict | None = None, ctype: str | None = None,
         host: str | None = None) -> tuple[int, str, bytes]:  # fmt: skip
    """(status, content type, body) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    if ctype is None:
        ctype = "application/json" if isinstance(body, dict) else "application/octet-stream"
    headers = {"Content-Type": ctype}
    if host is not None:
        headers["Host"] = host
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


def pixels(img: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.convert("L").tobytes()), dtype=torch.uint8).reshape(img.size[1], img.size[0])


def expected_pixels(run: Path, z: torch.Tensor) -> torch.Tensor:
    """What the core's inference.decode gives for z, as uint8 (H, W)."""
    model, _, _ = ckpt.load_model(run)
    return (decode(model, z)[0, 0].clamp(0, 1) * 255).round().to(torch.uint8)


def error_of(status: int, ctype: str, body: bytes) -> str:
    assert status == 400, (status, body[:200])
    assert ctype.startswith("application/json")
    msg = json.loads(body)["error"]
    assert isinstance(msg, str) and msg
    return msg


def test_page_is_served(url: str) -> None:
    status, ctype, body = call(url, "GET", "/")
    assert status == 200 and ctype.startswith("text/html")
    text = body.decode()
    assert "<title>vae explore</title>" in text and 'id="decoded"' in text
    assert "http://" not in text and "https://" not in text  # no CDN, nothing fetched from elsewhere


def test_runs_and_run_info(url: str, tiny_run: Path) -> None:
    status, ctype, body = call(url, "GET", "/api/runs")
    assert status == 200 and ctype == "application/json"
    listing = json.loads(body)
    assert listing["default"] == "tiny"
    (row,) = [r for r in listing["runs"] if r["name"] == "tiny"]
    assert row["latent_dim"] == LATENT and len(row["per_dim_kl"]) == LATENT

    status, _, body = call(url, "GET", "/api/run?run=tiny")
    info = json.loads(body)
    summary = ckpt.read_summary(tiny_run)
    kl, var = summary["test_per_dim_kl"], summary["test_mu_variance"]
    assert status == 200 and info["per_dim_kl"] == pytest.approx(kl)
    assert info["kl_source"] == "summary.json" and info["mu_variance"] == pytest.approx(var)
    assert sorted(info["order"]) == list(range(LATENT))
    ordered = [kl[j] for j in info["order"]]
    assert ordered == sorted(kl, reverse=True)
    assert info["active"] == [v > 0.01 for v in var] and info["active_rule"] == "Var(mu) > 0.01"
    assert info["active_units"] == sum(info["active"]) == summary["active_units"]  # as `vae info` counts them
    assert (info["channels"], info["image_size"]) == (1, 28)
    # no run given: the default
    assert json.loads(call(url, "GET", "/api/run")[2])["name"] == "tiny"


def test_decode_png_matches_core(url: str, tiny_run: Path) -> None:
    z = [0.0] * LATENT
    status, ctype, body = call(url, "POST", "/api/decode", {"run": "tiny", "z": z})
    assert status == 200 and ctype == "image/png"
    img = png(body)
    assert img.size == (28, 28) and img.mode == "L"
    assert torch.equal(pixels(img), expected_pixels(tiny_run, torch.zeros(1, LATENT)))

    z2 = [2.5, -2.5] + [1.0] * (LATENT - 2)
    body2 = call(url, "POST", "/api/decode", {"z": z2})[2]
    assert torch.equal(pixels(png(body2)), expected_pixels(tiny_run, torch.tensor([z2])))
    assert not torch.equal(pixels(png(body2)), pixels(img))


def test_decode_json_format(url: str) -> None:
    status, ctype, body = call(url, "POST", "/api/decode", {"z": [0.5] * LATENT, "format": "json"})
    assert status == 200 and ctype == "application/json"
    src = json.loads(body)["image"]
    assert src.startswith("data:image/png;base64,")
    assert png(base64.b64decode(src.split(",", 1)[1])).size == (28, 28)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"z": [0.0] * (LATENT - 1)}, f"{LATENT} values"),
        ({"z": [0.0] * (LATENT + 3)}, f"{LATENT} values"),
        ({"z": ["a"] + [0.0] * (LATENT - 1)}, "finite number"),
        ({"z": [True] + [0.0] * (LATENT - 1)}, "finite number"),
        ({"z": [1e30] + [0.0] * (LATENT - 1)}, "out of range"),
        ({"z": "0,0"}, "list"),
        ({}, "list"),
        ({"z": [0.0] * LATENT, "run": "nope"}, "unknown run"),
        ({"z": [0.0] * LATENT, "run": "../tiny"}, "invalid run name"),
        ({"z": [0.0] * LATENT, "run": 3}, "string"),
        ({"z": [0.0] * LATENT, "format": "gif"}, "format"),
    ],
)
def test_decode_bad_requests(url: str, body: dict, needle: str) -> None:
    assert needle in error_of(*call(url, "POST", "/api/decode", body))
    assert call(url, "POST", "/api/decode", {"z": [0.0] * LATENT})[0] == 200  # still serving


@pytest.mark.parametrize(
    "raw", [b'{"z": [NaN, 0, 0, 0, 0, 0, 0, 0]}', b'{"z": [Infinity, 0, 0, 0, 0, 0, 0, 0]}', b"not json", b"[1, 2]", b"\xff\xfe"]
)
def test_decode_rejects_nan_and_junk(url: str, raw: bytes) -> None:
    msg = error_of(*call(url, "POST", "/api/decode", raw, "application/json"))
    assert "JSON object" in msg or "must be finite" in msg
    assert call(url, "GET", "/api/runs")[0] == 200


def test_oversized_json_body(url: str) -> None:
    raw = b'{"z": [' + b"0," * explore.MAX_JSON_BYTES + b"0]}"
    assert "too large" in error_of(*call(url, "POST", "/api/decode", raw, "application/json"))
    assert call(url, "GET", "/api/runs")[0] == 200


def test_traverse_strip(url: str, tiny_run: Path) -> None:
    z = [0.3] * LATENT
    status, ctype, body = call(url, "POST", "/api/traverse", {"z": z, "dim": 2, "steps": 5, "range": 2.0})
    assert status == 200 and ctype == "image/png"
    img = png(body)
    assert img.size == (5 * 28 + 4 * 2, 28)
    strip = pixels(img)
    for k, v in enumerate(torch.linspace(-2.0, 2.0, 5).tolist()):
        zk = torch.tensor([z])
        zk[0, 2] = v
        assert torch.equal(strip[:, k * 30 : k * 30 + 28], expected_pixels(tiny_run, zk))
    assert torch.all(strip[:, 28:30] == 255)  # white gaps between frames
    default = png(call(url, "POST", "/api/traverse", {"z": z, "dim": 0})[2])
    assert default.size == (9 * 28 + 8 * 2, 28)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [({"dim": LATENT}, "dim"), ({"dim": -1}, "dim"), ({"dim": "x"}, "dim"), ({"dim": 0, "steps": 1}, "steps"),
     ({"dim": 0, "steps": 1000}, "steps"), ({"dim": 0, "range": -1.0}, "range"), ({"dim": 0, "range": 0}, "range")],
)  # fmt: skip
def test_traverse_bad_requests(url: str, extra: dict, needle: str) -> None:
    assert needle in error_of(*call(url, "POST", "/api/traverse", {"z": [0.0] * LATENT, **extra}))


def test_encode_upload_matches_core(url: str, tiny_run: Path, tmp_path: Path) -> None:
    from vaecli.data import load_mini, to_float

    x = load_mini("test").images[3]  # uint8 (1, 28, 28)
    buf = io.BytesIO()
    Image.fromarray(x[0].numpy(), "L").save(buf, format="PNG")
    status, ctype, body = call(url, "POST", "/api/encode?run=tiny", buf.getvalue(), "image/png")
    assert status == 200 and ctype == "application/json"
    out = json.loads(body)
    model, _, _ = ckpt.load_model(tiny_run)
    q = encode(model, to_float(x.unsqueeze(0)))
    assert out["z"] == pytest.approx(q.mu[0].tolist(), abs=1e-6)
    assert out["logvar"] == pytest.approx(q.logvar[0].tolist(), abs=1e-6)
    shown = png(base64.b64decode(out["input"].split(",", 1)[1]))
    assert torch.equal(pixels(shown), x[0])

    # any size / mode is converted (centre crop, resize, grey) like every user image
    rgb = Image.new("RGB", (90, 60), (200, 30, 30))
    jpg = io.BytesIO()
    rgb.save(jpg, format="JPEG")
    status, _, body = call(url, "POST", "/api/encode", jpg.getvalue(), "image/jpeg")
    z = json.loads(body)["z"]
    assert status == 200 and len(z) == LATENT and all(abs(v) < 1e3 for v in z)


def test_encode_bad_uploads(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "cannot decode image" in error_of(*call(url, "POST", "/api/encode", b"this is not an image" * 10))
    assert "empty" in error_of(*call(url, "POST", "/api/encode", b""))
    truncated = io.BytesIO()
    Image.new("L", (28, 28), 7).save(truncated, format="PNG")
    assert "upload" in error_of(*call(url, "POST", "/api/encode", truncated.getvalue()[:40], "image/png"))
    assert "unknown run" in error_of(*call(url, "POST", "/api/encode?run=ghost", truncated.getvalue(), "image/png"))
    monkeypatch.setattr(explore.service, "MAX_UPLOAD_BYTES", 1000)
    assert "too large" in error_of(*call(url, "POST", "/api/encode", b"\x89PNG" + b"\0" * 5000, "image/png"))
    assert call(url, "POST", "/api/encode", truncated.getvalue(), "image/png")[0] == 200  # still serving


def test_oversized_upload_at_the_real_limit(url: str) -> None:
    blob = b"\0" * (explore.MAX_UPLOAD_BYTES + 1)
    assert "too large" in error_of(*call(url, "POST", "/api/encode", blob, "image/png"))
    assert call(url, "GET", "/api/runs")[0] == 200


def test_random_test_image_and_prior(url: str) -> None:
    a = json.loads(call(url, "GET", "/api/random?seed=5")[2])
    b = json.loads(call(url, "GET", "/api/random?run=tiny&seed=5")[2])
    assert a["index"] == b["index"] and a["z"] == b["z"]
    assert 0 <= a["index"] < 500 and len(a["z"]) == LATENT
    assert a["label"] in range(10) and a["label_name"] in explore.FASHION_CLASSES
    assert png(base64.b64decode(a["input"].split(",", 1)[1])).size == (28, 28)

    p1 = json.loads(call(url, "GET", "/api/prior?seed=1")[2])["z"]
    p2 = json.loads(call(url, "GET", "/api/prior?seed=1")[2])["z"]
    p3 = json.loads(call(url, "GET", "/api/prior?seed=2")[2])["z"]
    assert p1 == p2 != p3 and len(p1) == LATENT
    fresh = [json.loads(call(url, "GET", "/api/prior")[2])["z"] for _ in range(2)]
    assert fresh[0] != fresh[1]
    assert "seed" in error_of(*call(url, "GET", "/api/prior?seed=x"))
    assert "seed" in error_of(*call(url, "GET", "/api/random?seed=-1"))


def test_unknown_endpoint_is_404_json(url: str) -> None:
    status, ctype, body = call(url, "GET", "/api/nothing")
    assert status == 404 and json.loads(body)["error"].startswith("no such endpoint")
    assert call(url, "POST", "/", {"z": []})[0] == 404


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""])
def test_cross_site_form_content_types_are_refused(url: str, ctype: str) -> None:
    body = json.dumps({"z": [0.0] * LATENT}).encode()
    for path in ("/api/decode", "/api/encode"):
        assert "Content-Type" in error_of(*call(url, "POST", path, body, ctype))


def test_foreign_host_header_is_refused(url: str) -> None:
    port = url.rsplit(":", 1)[1]
    status, _, body = call(url, "GET", "/api/runs", host=f"evil.example:{port}")
    assert status == 403 and "localhost" in json.loads(body)["error"]
    for ok in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
        assert call(url, "GET", "/api/runs", host=ok)[0] == 200, ok


def test_concurrent_decodes(url: str) -> None:
    results: list[int] = []

    def work(i: int) -> None:
        results.append(call(url, "POST", "/api/decode", {"z": [i / 10] * LATENT})[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 12


def test_kl_computed_when_summary_lacks_it(tiny_run: Path) -> None:
    home = Path(os.environ["VAE_HOME"])
    copy = home / "tiny2"
    shutil.copytree(tiny_run, copy)
    summary = ckpt.read_summary(copy)
    kl, var = summary.pop("test_per_dim_kl"), summary.pop("test_mu_variance")
    ckpt.write_summary(copy, summary)
    logs: list[str] = []
    ex = Explorer("tiny2", log=logs.append)
    info = ex.get(None).info()
    assert info["kl_source"] == "500 test images"
    assert info["per_dim_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)  # same evaluate(), same test split
    assert info["mu_variance"] == pytest.approx(var, rel=1e-4, abs=1e-6)
    assert info["active_units"] == summary["active_units"]
    assert any("computing per-dimension KL" in m for m in logs)
    assert ex.get("tiny2") is ex.get(None)  # cached: computed once
    listing = ex.list_runs()
    assert [r["name"] for r in listing["runs"]] == ["tiny2"] and listing["runs"][0]["per_dim_kl"] == info["per_dim_kl"]


def test_without_test_data_kl_comes_from_summary_and_random_says_why(tiny_run: Path) -> None:
    home = Path(os.environ["VAE_HOME"])
    copy = home / "moved"
    shutil.copytree(tiny_run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data"]["name"] = str(home / "no-such-folder")
    (copy / "config.json").write_text(json.dumps(cfg))
    summary = ckpt.read_summary(copy)
    kl = summary.pop("test_mu_variance") and summary["test_per_dim_kl"]
    ckpt.write_summary(copy, summary)
    base, server = start(Explorer("moved"))
    try:
        info = json.loads(call(base, "GET", "/api/run")[2])
        assert info["kl_source"] == "summary.json" and info["per_dim_kl"] == pytest.approx(kl)
        assert info["mu_variance"] is None and info["active_rule"].startswith("unknown")
        assert info["active"] == [True] * LATENT and info["active_units"] is None  # activity needs Var(mu): none greyed
        assert "no-such-folder" in error_of(*call(base, "GET", "/api/random"))
        assert call(base, "POST", "/api/decode", {"z": [0.0] * LATENT})[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_explorer_refuses_runs_without_weights(tiny_run: Path) -> None:
    home = Path(os.environ["VAE_HOME"])
    shutil.copytree(tiny_run, home / "empty")
    (home / "empty" / ckpt.MODEL).unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        Explorer("empty")
    with pytest.raises(RunNotFoundError):
        Explorer("nothing-here")


def test_busy_port_is_a_config_error(tiny_run: Path) -> None:
    base, server = start(Explorer(tiny_run))
    try:
        with pytest.raises(ConfigError, match="already in use"):
            make_server(Explorer(tiny_run), "127.0.0.1", server.server_address[1])
        with pytest.raises(ConfigError, match="--port"):
            make_server(Explorer(tiny_run), "127.0.0.1", 70000)
    finally:
        server.shutdown()
        server.server_close()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


@pytest.mark.parametrize(("args", "needle"), [(["--run", "nope"], "no run named 'nope'"), (["--port", "-1"], "--port")])
def test_cli_errors_are_one_line_exit_2(tiny_run: Path, args: list[str], needle: str) -> None:
    res = vae("explore", "--no-browser", "--run", tiny_run, *args)
    assert one_error_line(res).startswith("vae: error: ")
    assert res.stderr.startswith("vae: error: ") and needle in res.stderr and res.stderr.count("\n") == 1


def _sigint_default() -> None:
    """In the child before exec: SIGINT as a terminal delivers it. A shell without job control starts
    background jobs (CI scripts run with `&`, nohup) with SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so Ctrl-C could not be simulated."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_ctrl_c_or_sigterm(tiny_run: Path, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", "explore", "--run", str(tiny_run), "--port", "0", "--no-browser"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=src_env(),
                            preexec_fn=_sigint_default)  # fmt: skip
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 120
        while "http://" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "exploring run tiny at http://127.0.0.1:" in line, line
        base = line.split(" at ", 1)[1].split()[0].rstrip("/")
        assert json.loads(call(base, "GET", "/api/runs")[2])["default"] == "tiny"
        assert call(base, "POST", "/api/decode", {"z": [0] * LATENT})[0] == 200
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
