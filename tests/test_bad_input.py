"""Bad input through every command: one line on stderr, exit 2, no traceback, nothing written or
overwritten (bad image files, damaged or foreign checkpoints and configs, nonsense numbers,
malformed JSON lines); images that need converting work; pickles are never executed."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import SRC, ok, one_error_line, src_env, vae
from PIL import Image

from vaecli.data import MAX_IMAGE_PIXELS, load_image
from vaecli.runs import store as ckpt

LATENT = 8  # the tiny run's latent size
KNOWN = b"known bytes that must survive a failing command\n"


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: regular files by content hash, the rest by kind (no reads of FIFOs)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "special"
    return out


def fails(args: list[object], root: Path, stdin: str | None = None) -> str:
    """Run a command that must fail cleanly; returns its one stderr line. Nothing under ``root``
    may change (outputs pre-created with KNOWN bytes stay as they are, no new or temp files)."""
    before = _snapshot(root)
    r = vae(*args, input=stdin)
    line = one_error_line(r)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, args
    assert line.startswith("vae") and "error" in line, line
    assert _snapshot(root) == before, f"{args}: files changed"
    return line


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace whose output targets already exist with KNOWN bytes."""
    out = tmp_path / "out"
    (out / "od").mkdir(parents=True)
    for rel in ("o.png", "o.jsonl", "o.gif", "od/keep.png"):
        (out / rel).write_bytes(KNOWN)
    (tmp_path / "in").mkdir()
    return tmp_path


def _png(mode: str = "L", size: tuple[int, int] = (28, 28), color: object = 128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height gray pixels (no pixel data to speak of)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _unblock_fifo_later(fifo: Path, after: float = 20.0) -> None:
    """Safety net: if a regression made the CLI open the FIFO, give it EOF instead of hanging the suite."""

    def run() -> None:
        time.sleep(after)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    threading.Thread(target=run, daemon=True).start()


# ----------------------------------------------------------------------------- bad image files

IMAGE_CMDS = [("reconstruct", "o.png"), ("encode", "o.jsonl")]


def _bad_image(ws: Path, kind: str) -> Path:
    d = ws / "in"
    good = _png()
    if kind == "zero-byte":
        (d / "zero.png").write_bytes(b"")
        return d / "zero.png"
    if kind == "truncated":
        (d / "half.png").write_bytes(good[: len(good) // 2])
        return d / "half.png"
    if kind == "truncated-jpeg":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
        (d / "half.jpg").write_bytes(buf.getvalue()[:200])
        return d / "half.jpg"
    if kind == "not-an-image":
        (d / "notes.png").write_text("these are my notes, not a picture\n")
        return d / "notes.png"
    if kind == "eps-as-png":  # a format whose Pillow plugin would run Ghostscript
        (d / "doc.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
        return d / "doc.png"
    if kind == "tiff-absurd-samples":  # Pillow logs an error line of its own for this one
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "TIFF")
        data = bytearray(buf.getvalue())
        ifd = struct.unpack_from("<I", data, 4)[0]
        for i in range(struct.unpack_from("<H", data, ifd)[0]):
            entry = ifd + 2 + 12 * i
            if struct.unpack_from("<H", data, entry)[0] == 277:  # SamplesPerPixel
                struct.pack_into("<H", data, entry + 8, 5000)
        (d / "odd.tif").write_bytes(bytes(data))
        return d / "odd.tif"
    if kind == "fifo":
        os.mkfifo(d / "pipe.png")
        _unblock_fifo_later(d / "pipe.png")
        return d / "pipe.png"
    if kind == "dangling-symlink":
        os.symlink(d / "gone.png", d / "link.png")
        return d / "link.png"
    if kind == "self-symlink":
        os.symlink("self.png", d / "self.png")
        return d / "self.png"
    if kind == "bomb-20000x20000":  # over twice the limit: Pillow's own DecompressionBombError
        (d / "bomb.png").write_bytes(bomb_png(20_000, 20_000))
        return d / "bomb.png"
    if kind == "bomb-9000x9000":  # between 1x and 2x the limit, where Pillow only warns
        (d / "bomb9k.png").write_bytes(bomb_png(9_000, 9_000))
        return d / "bomb9k.png"
    if kind == "empty-folder":
        (d / "empty").mkdir()
        return d / "empty"
    if kind == "folder-without-images":
        (d / "docs").mkdir()
        (d / "docs" / "readme.txt").write_text("no pictures here")
        (d / "docs" / "sub.png").mkdir()  # a folder named like an image
        return d / "docs"
    if kind == "folder-with-bad-image":
        (d / "mixed").mkdir()
        (d / "mixed" / "a.png").write_bytes(good)
        (d / "mixed" / "b.png").write_bytes(good[:40])
        return d / "mixed"
    if kind == "folder-with-fifo":
        (d / "pipes").mkdir()
        (d / "pipes" / "a.png").write_bytes(good)
        os.mkfifo(d / "pipes" / "b.png")
        _unblock_fifo_later(d / "pipes" / "b.png")
        return d / "pipes"
    raise AssertionError(kind)


BAD_IMAGES = {
    "zero-byte": "cannot decode image",
    "truncated": "cannot decode image",
    "truncated-jpeg": "cannot decode image",
    "not-an-image": "cannot decode image",
    "eps-as-png": "cannot decode image",
    "tiff-absurd-samples": "cannot decode image",
    "fifo": "not a regular file",
    "dangling-symlink": "symbolic link",
    "self-symlink": "symbolic link",
    "bomb-20000x20000": "too large",
    "bomb-9000x9000": "too large",
    "empty-folder": "no images",
    "folder-without-images": "no images",
    "folder-with-bad-image": "b.png: cannot decode image",
    "folder-with-fifo": "b.png: cannot read image (not a regular file)",
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
@pytest.mark.parametrize("cmd,target", IMAGE_CMDS)
def test_bad_image_inputs(ws: Path, ck: list[str], kind: str, cmd: str, target: str) -> None:
    path = _bad_image(ws, kind)
    msg = fails([cmd, path, "-o", ws / "out" / target, *ck], ws)
    assert BAD_IMAGES[kind] in msg, msg
    # the same input as a path on stdin (`find ... | vae encode -`)
    msg = fails([cmd, "-", "-o", ws / "out" / target, *ck], ws, stdin=f"{path}\n")
    assert BAD_IMAGES[kind] in msg, msg


def test_bad_image_into_reconstruct_out_dir_leaves_it_alone(ws: Path, ck: list[str]) -> None:
    mixed = _bad_image(ws, "folder-with-bad-image")
    fails(["reconstruct", mixed, "--out-dir", ws / "out" / "od", "-o", ws / "out" / "o.png", *ck], ws)
    assert sorted(p.name for p in (ws / "out" / "od").iterdir()) == ["keep.png"]


def test_eps_is_never_handed_to_ghostscript(ws: Path, ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    fails(["encode", _bad_image(ws, "eps-as-png"), "-o", ws / "out" / "o.jsonl", *ck], ws)
    assert called == []


def test_decoder_chatter_stays_off_stderr_in_a_real_process(ws: Path, ck: list[str]) -> None:
    """Pillow logs its own error line for this TIFF; pytest's log capture would hide it in-process,
    so this runs `python -m vaecli` for real: still exactly one line on stderr."""
    import subprocess
    import sys

    tif = _bad_image(ws, "tiff-absurd-samples")
    r = subprocess.run(
        [sys.executable, "-m", "vaecli", "encode", str(tif), *ck], capture_output=True, text=True, env=src_env(), timeout=300
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("vae: error: ") and "cannot decode image" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; FIFO, folder and link cases cover unreadable files")
def test_unreadable_file(ws: Path, ck: list[str]) -> None:
    p = ws / "in" / "secret.png"
    p.write_bytes(_png())
    p.chmod(0)
    assert "permission denied" in fails(["encode", p, "-o", ws / "out" / "o.jsonl", *ck], ws)


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """The header alone decides: no allocation of the 81M pixels the file claims."""
    from vaecli.errors import DataError

    (tmp_path / "b.png").write_bytes(bomb_png(9_000, 9_000))
    assert 9_000 * 9_000 > MAX_IMAGE_PIXELS > 9_000 * 9_000 / 2
    with pytest.raises(DataError, match="9000x9000"):
        load_image(tmp_path / "b.png")


# ----------------------------------------------------------------------------- images that work


def _convertible(d: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, expected gray value of its pixels after conversion)."""
    files: dict[str, tuple[Path, int]] = {}
    Image.frombytes("I;16", (28, 28), struct.pack("<H", 65535) * 28 * 28).save(d / "sixteen.png")
    files["16-bit"] = (d / "sixteen.png", 255)
    Image.new("RGBA", (28, 28), (0, 0, 0, 0)).save(d / "clear.png")  # transparent: composited on white
    files["rgba"] = (d / "clear.png", 255)
    pal = Image.new("P", (28, 28), 0)
    pal.putpalette([100, 100, 100] + [0, 0, 0] * 255)
    pal.save(d / "palette.png")
    files["palette"] = (d / "palette.png", 100)
    Image.new("CMYK", (28, 28), (0, 0, 0, 0)).save(d / "cmyk.jpg", quality=100)  # no ink: white
    files["cmyk"] = (d / "cmyk.jpg", 255)
    Image.new("LA", (28, 28), (40, 255)).save(d / "gray-alpha.png")
    files["gray+alpha"] = (d / "gray-alpha.png", 40)
    Image.new("1", (28, 28), 1).save(d / "bilevel.png")
    files["1-bit"] = (d / "bilevel.png", 255)
    return files


def test_converted_image_modes_decode_to_expected_pixels(tmp_path: Path) -> None:
    for name, (path, value) in _convertible(tmp_path).items():
        img = load_image(path, 1, 28)
        assert img.dtype == torch.uint8 and img.shape == (1, 28, 28), name
        assert abs(int(img.float().mean().round()) - value) <= 1, (name, img.float().mean())


def test_converted_image_modes_work_through_the_cli(ws: Path, ck: list[str]) -> None:
    files = _convertible(ws / "in")
    for name, (path, _) in files.items():
        r = ok("encode", path, *ck)
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(rows) == 1 and len(rows[0]["mu"]) == LATENT, name
        assert all(abs(v) < 1e6 for v in rows[0]["mu"] + rows[0]["logvar"]), name
    ok("reconstruct", ws / "in", "-o", ws / "out" / "o.png", *ck)
    with Image.open(ws / "out" / "o.png") as im:  # 6 originals over 6 reconstructions, 28 px tiles, padding 2
        assert im.size == (6 * 30 + 2, 2 * 30 + 2)


def test_symlink_loop_in_a_folder(ws: Path, ck: list[str]) -> None:
    d = ws / "in" / "loopy"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(_png())
    (d / "sub" / "b.png").write_bytes(_png(color=30))
    os.symlink(d, d / "sub" / "back-to-top")  # loop
    os.symlink("b.png", d / "sub" / "alias.jpg")  # a second name for the same file is fine
    r = ok("encode", d, *ck)
    names = sorted(json.loads(x)["path"] for x in r.stdout.splitlines())
    assert names == sorted(str(d / rel) for rel in ("a.png", "sub/alias.jpg", "sub/b.png"))
    ok("train", "--data", str(d), "--latent-dim", "4", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "-q", "--name", "loopy")


def test_spaces_and_non_ascii_names(ws: Path, ck: list[str]) -> None:
    d = ws / "in" / "my photos été"
    (d / "sous dossier ü").mkdir(parents=True)
    (d / "robe à fleurs 连衣裙.png").write_bytes(_png(color=200))
    (d / "sous dossier ü" / "chaussure ß.png").write_bytes(_png(color=20))
    r = ok("encode", d, *ck)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(Path(x["path"]).name for x in rows) == ["chaussure ß.png", "robe à fleurs 连衣裙.png"]
    out = ws / "out" / "récon struit"
    ok("reconstruct", d, "--out-dir", out, "-o", ws / "out" / "grille é.png", *ck)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["robe à fleurs 连衣裙.png", "sous dossier ü/chaussure ß.png"]
    # paths on stdin, then decode with the paths as output names
    lines = ok("encode", "-", *ck, input="\n".join(x["path"] for x in rows) + "\n").stdout
    dec = ws / "out" / "décodé"
    ok("decode", "--out-dir", dec, *ck, input=lines)
    assert sorted(p.name for p in dec.rglob("*.png")) == ["chaussure ß.png", "robe à fleurs 连衣裙.png"]
    # and a run trained on the folder, its name given as a path with spaces
    ok("train", "--data", str(d), "--latent-dim", "4", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "-q", "--name", "ete")
    ok("info", str(ckpt.runs_dir() / "ete"))


# ----------------------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling this creates ``marker`` (harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.open, (self.marker, "w"))


def _copy_run(tiny_run: Path, dest: Path) -> Path:
    shutil.copytree(tiny_run, dest)
    return dest


def test_pickle_checkpoint_is_never_executed(ws: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = ws / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(marker)})
    pickle.loads(payload)  # the payload really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()
    runs = ckpt.runs_dir()
    evil = _copy_run(tiny_run, runs / "evil")
    (evil / ckpt.MODEL).write_bytes(payload)  # raw pickle
    zipped = _copy_run(tiny_run, runs / "evil-zip")
    torch.save({"state_dict": _Payload(marker)}, zipped / ckpt.MODEL)  # torch.save's zip format
    state = _copy_run(tiny_run, runs / "evil-state")
    (state / ckpt.STATE).write_bytes(payload)
    lone = ws / "in" / "model.safetensors"
    lone.write_bytes(payload)
    img = ws / "in" / "a.png"
    img.write_bytes(_png())
    out = ws / "out"
    for run in (evil, zipped):
        for args in (
            ["sample", "--checkpoint", run, "-o", out / "o.png"],
            ["sample", "--run", run.name, "-o", out / "o.png"],
            ["reconstruct", img, "--checkpoint", run / ckpt.MODEL, "-o", out / "o.png"],
            ["encode", img, "--run", run.name, "-o", out / "o.jsonl"],
            ["traverse", "--dim", "0", "--run", run.name, "-o", out / "o.png"],
            ["eval-kl", "--run", run.name],
        ):
            assert "not a safetensors file" in fails(args, ws)
    assert "pickle" in fails(["train", "--resume", "evil-state", "--device", "cpu", "-q"], ws)
    assert "not a vaecli run" in fails(["sample", "--checkpoint", lone, "-o", out / "o.png"], ws)
    # `vae info` only reads config.json and the JSON files: it never opens the weights at all
    ok("info", "evil")
    assert not marker.exists()  # ... and nothing above ever unpickled it


UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNPICKLING_CALLS = {"torch.load", "torch.jit.load", "torch.serialization.load", "pickle.load", "pickle.loads", "np.load", "numpy.load"}


def _unpickling_uses(source: str) -> list[str]:
    """Imports of pickling modules, calls that unpickle, and pickle-enabling keywords in ``source``."""
    import ast

    def dotted(node: ast.AST) -> str:
        if isinstance(node, ast.Attribute):
            return f"{dotted(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else "?"

    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            hits.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in UNPICKLING_CALLS or name.endswith(".torch.load"):
                hits.append(f"{node.lineno}: {name}()")
            for kw in node.keywords:
                if (kw.arg, getattr(kw.value, "value", None)) in (("weights_only", False), ("allow_pickle", True)):
                    hits.append(f"{node.lineno}: {kw.arg}={kw.value.value}")  # type: ignore[attr-defined]
    return hits


def test_no_unpickling_anywhere_in_the_source() -> None:
    """The only way a file could run code is unpickling: no call that unpickles exists in vaecli."""
    assert len(_unpickling_uses("import torch, pickle\ntorch.load(f)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n")) == 5
    files = sorted((SRC / "vaecli").rglob("*.py"))
    assert len(files) >= 15 and any(f.name == "store.py" and f.parent.name == "runs" for f in files)
    hits = [f"{f.relative_to(SRC / 'vaecli')}:{h}" for f in files for h in _unpickling_uses(f.read_text("utf-8"))]
    assert hits == []


def _set_config(run: Path, edit) -> None:  # type: ignore[no-untyped-def]
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    edit(cfg)
    (run / ckpt.CONFIG).write_text(json.dumps(cfg))


def test_checkpoint_whose_tensors_do_not_match_its_config(ws: Path, tiny_run: Path) -> None:
    runs = ckpt.runs_dir()
    wider = _copy_run(tiny_run, runs / "wider")
    _set_config(wider, lambda c: c["model"].__setitem__("latent_dim", LATENT + 1))
    other_arch = _copy_run(tiny_run, runs / "other-arch")
    _set_config(other_arch, lambda c: c["model"].__setitem__("arch", "seed"))
    from safetensors.torch import load_file, save_file

    renamed = _copy_run(tiny_run, runs / "renamed")
    t = load_file(str(renamed / ckpt.MODEL))
    t["encoder.extra"] = t.pop(sorted(t)[0])
    save_file(t, str(renamed / ckpt.MODEL), metadata={"format": ckpt.MODEL_FORMAT})
    truncated = _copy_run(tiny_run, runs / "truncated")
    data = (truncated / ckpt.MODEL).read_bytes()
    (truncated / ckpt.MODEL).write_bytes(data[: len(data) // 2])
    expect = {"wider": "shape", "other-arch": "do not match", "renamed": "do not match", "truncated": "not a safetensors file"}
    for name, words in expect.items():
        assert words in fails(["sample", "--run", name, "-o", ws / "out" / "o.png"], ws), name
        assert words in fails(["sample", "--checkpoint", runs / name / ckpt.MODEL, "-o", ws / "out" / "o.png"], ws), name
    assert "shape" in fails(["train", "--resume", "wider", "--device", "cpu", "-q"], ws)


CONFIG_EDITS = {
    "latent_dim as a string": (lambda c: c["model"].__setitem__("latent_dim", "8"), "latent_dim must be an integer"),
    "widths with a string": (lambda c: c["model"].__setitem__("widths", [8, "a"]), "widths must be a list of integers"),
    "beta as a list": (lambda c: c["train"].__setitem__("beta", [1]), "beta must be a number"),
    "binarize as 1": (lambda c: c["data"].__setitem__("binarize", 1), "binarize must be true or false"),
    "train not an object": (lambda c: c.__setitem__("train", "fast"), "expected a JSON object"),
    "model missing": (lambda c: c.pop("model"), "missing 'model'"),
    "format 99": (lambda c: c.__setitem__("format", 99), "unsupported format"),
    "negative latent_dim": (lambda c: c["model"].__setitem__("latent_dim", -3), "--latent-dim must be >= 1"),
    "NaN beta": (lambda c: c["train"].__setitem__("beta", float("nan")), "finite"),
}


@pytest.mark.parametrize("case", list(CONFIG_EDITS))
def test_config_json_with_wrong_types(ws: Path, tiny_run: Path, case: str) -> None:
    run = _copy_run(tiny_run, ckpt.runs_dir() / "cfg")
    edit, words = CONFIG_EDITS[case]
    _set_config(run, edit)
    for args in (["info", "cfg"], ["info", "cfg", "--json"], ["sample", "--run", "cfg", "-o", ws / "out" / "o.png"],
                 ["train", "--resume", "cfg", "--device", "cpu", "-q"]):  # fmt: skip
        msg = fails(args, ws)
        assert "config.json" in msg and words in msg, (args, msg)
    ok("runs")  # the damaged run is listed, not fatal


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b"\xff\xfe\x00garbage", b"null"])
def test_config_json_not_an_object(ws: Path, tiny_run: Path, content: bytes) -> None:
    run = _copy_run(tiny_run, ckpt.runs_dir() / "cfg")
    (run / ckpt.CONFIG).write_bytes(content)
    assert "config.json" in fails(["info", "cfg"], ws)
    assert "config.json" in fails(["sample", "--run", "cfg", "-o", ws / "out" / "o.png"], ws)


def test_info_of_an_unknown_run(ws: Path) -> None:
    assert "no run named 'nope'" in fails(["info", "nope"], ws)
    assert "no run named 'nope'" in fails(["info", "nope", "--json"], ws)
    assert "not a vaecli run" in fails(["info", ws / "in"], ws)
    assert "not a vaecli" in fails(["info", ws / "out" / "o.png"], ws)
    assert "not a vaecli run" in fails(["info", ws / "in" / ".."], ws)


# ----------------------------------------------------------------------------- nonsense numbers

TRAIN = ["train", "--data", "fashion-mnist-mini", "--latent-dim", "8", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "-q"]
NONSENSE_TRAIN = [
    ["--batch-size", "0"], ["--batch-size", "-3"], ["--latent-dim", "0"], ["--latent-dim", "100000"], ["--epochs", "0"],
    ["--beta", "nan"], ["--beta", "inf"], ["--beta", "-1"], ["--lr", "0"], ["--lr", "nan"], ["--lr", "1e38"], ["--grad-clip", "nan"],
    ["--save-every", "0"], ["--save-every", "nan"], ["--max-steps", "0"], ["--time-budget", "nan"], ["--time-budget", "-1"],
    ["--image-size", "0"], ["--image-size", "30"], ["--channels", "2"], ["--anneal", "-1"], ["--name", "../escape"],
    ["--lr-schedule", "sometimes"], ["--arch", "transformer"], ["--likelihood", "poisson"], ["--batch-size", "ten"],
]  # fmt: skip


@pytest.mark.parametrize("extra", NONSENSE_TRAIN, ids=lambda e: " ".join(e))
def test_nonsense_train_numbers(ws: Path, extra: list[str]) -> None:
    fails([*TRAIN, *extra, "--name", "n"] if "--name" not in extra else [*TRAIN, *extra], ws)
    assert not (ckpt.runs_dir() / "n").exists()


def test_existing_name_refused_without_resume_or_overwrite(ws: Path) -> None:
    ok(*TRAIN, "--name", "taken")
    msg = fails([*TRAIN, "--name", "taken"], ws)
    assert "already exists" in msg and "--resume taken" in msg and "--overwrite" in msg
    ok(*TRAIN, "--name", "taken", "--overwrite")
    ok("train", "--resume", "taken", "--device", "cpu", "-q")


def test_nonfinite_loss_names_epoch_and_step() -> None:
    """beta = 1e38 makes beta * KL overflow to inf on the first batch (tests/test_training.py checks
    that the last good checkpoint is kept)."""
    r = vae(*TRAIN, "--name", "boom", "--beta", "1e38", "--max-steps", "5")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    # steps 1 and 2 roll back to the starting state with the lr halved; the third non-finite step (--max-nonfinite 3) stops
    assert " ".join(r.stderr.split()).count("rolled back to step 0") == 2
    assert last.startswith("vae: error: non-finite loss at epoch 1, step 3") and "--skip-nonfinite" in last
    assert "no checkpoint was written yet" in last and "--lr" in last  # nothing was saved, nothing is claimed
    assert not (ckpt.runs_dir() / "boom" / ckpt.MODEL).exists()  # nothing non-finite was saved
    ok(*TRAIN, "--name", "boom", "--beta", "1e38", "--skip-nonfinite", "--max-steps", "3")
    assert json.loads((ckpt.runs_dir() / "boom" / ckpt.SUMMARY).read_text())["nonfinite_skipped"] == 3


NONSENSE_ANALYSIS = [
    ["sample", "-n", "-5"], ["sample", "-n", "0"], ["sample", "-n", "1000000000"], ["sample", "--temperature", "nan"],
    ["sample", "-t", "-1"], ["sample", "-t", "inf"], ["sample", "--scale", "0"], ["sample", "--scale", "1000"],
    ["sample", "--nrow", "0"], ["sample", "--padding", "-1"], ["sample", "--padding", "100000"],
    ["interpolate", "--index", "0", "--index", "1", "--steps", "0"], ["interpolate", "--index", "0", "--index", "1", "--steps", "1"],
    ["interpolate", "--index", "0", "--index", "1", "--steps", "1000000000"], ["interpolate", "--index", "0", "--index", "-1"],
    ["interpolate", "--index", "0", "--index", "1", "--fps", "nan", "--gif", "GIF"], ["interpolate", "--index", "0", "--index", "1", "--mode", "zigzag"],
    ["traverse", "--steps", "0"], ["traverse", "--steps", "1000000"], ["traverse", "--range", "nan"], ["traverse", "--range", "0"],
    ["traverse", "--dim", "99"], ["traverse", "--index", "-3"], ["reconstruct", "--split", "test", "-n", "-5"],
    ["reconstruct", "--split", "test", "-n", "0"], ["reconstruct", "--split", "validation"],
]  # fmt: skip


@pytest.mark.parametrize("args", NONSENSE_ANALYSIS, ids=lambda a: " ".join(a))
def test_nonsense_analysis_numbers(ws: Path, ck: list[str], args: list[str]) -> None:
    args = [ws / "out" / "o.gif" if a == "GIF" else a for a in args]
    fails([*args, "-o", ws / "out" / "o.png", *ck], ws)


@pytest.mark.parametrize(
    "args",
    [["eval-kl", "--batch-size", "0"], ["encode", "--split", "test", "-n", "-5"], ["encode", "--split", "test", "-n", "0"],
     ["decode", "--out-dir", "OD", "--nrow", "0"], ["decode", "--out-dir", "OD", "--scale", "0"], ["decode", "-o", "O", "--padding", "-2"]],
    ids=lambda a: " ".join(a),
)  # fmt: skip
def test_nonsense_numbers_other_commands(ws: Path, ck: list[str], args: list[str]) -> None:
    args = [ws / "out" / "od" if a == "OD" else ws / "out" / "o.png" if a == "O" else a for a in args]
    fails([*args, *ck], ws, stdin="[0, 0, 0, 0, 0, 0, 0, 0]\n")


# ----------------------------------------------------------------------------- JSON lines into decode

GOOD_LINE = json.dumps({"path": "first.png", "mu": [0.0] * LATENT}) + "\n"
BAD_LINES = {
    "not json": "{not json",
    "too short": "[1, 2]",
    "mu not a list": '{"mu": "zeros"}',
    "string in vector": json.dumps([0] * (LATENT - 1) + ["a"]),
    "bool in vector": json.dumps([0] * (LATENT - 1) + [True]),
    "NaN": "[" + ", ".join(["NaN"] + ["0"] * (LATENT - 1)) + "]",
    "1e999": "[" + ", ".join(["1e999"] + ["0"] * (LATENT - 1)) + "]",
    "float32 overflow": "[" + ", ".join(["1e39"] + ["0"] * (LATENT - 1)) + "]",
    "400-digit int": "[" + ", ".join(["9" * 400] + ["0"] * (LATENT - 1)) + "]",
    "deep nesting": "[" * 50_000 + "]" * 50_000,
    "no mu": '{"path": "x.png"}',
    "path a number": json.dumps({"path": 5, "mu": [0] * LATENT}),
    "path lone surrogate": '{"path": "\\ud800.png", "mu": [' + ", ".join(["0"] * LATENT) + "]}",
    "path with NUL": '{"path": "a\\u0000b.png", "mu": [' + ", ".join(["0"] * LATENT) + "]}",
    "null": "null",
    "a number": "3",
    "a string": '"z"',
    "nested list": json.dumps([[0] * LATENT]),
    "duplicate output name": GOOD_LINE.strip(),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_malformed_json_lines_into_decode(ws: Path, ck: list[str], case: str) -> None:
    text = GOOD_LINE + BAD_LINES[case] + "\n" + GOOD_LINE.replace("first", "third")
    od = ws / "out" / "od"
    msg = fails(["decode", "--out-dir", od, "-o", ws / "out" / "o.png", *ck], ws, stdin=text)
    assert ("line 2" in msg) or case == "duplicate output name", msg
    assert sorted(p.name for p in od.iterdir()) == ["keep.png"]
    fresh = ws / "out" / "new-dir"
    fails(["decode", "--out-dir", fresh, *ck], ws, stdin=text)
    assert not fresh.exists()
    src = ws / "in" / "z.jsonl"
    src.write_text(text)
    fails(["decode", src, "--out-dir", od, *ck], ws)


def test_decode_source_not_text(ws: Path, ck: list[str]) -> None:
    src = ws / "in" / "z.jsonl"
    src.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe binary")
    assert "UTF-8" in fails(["decode", src, "--out-dir", ws / "out" / "od", *ck], ws)
    assert "no such file" in fails(["decode", ws / "in" / "missing.jsonl", "--out-dir", ws / "out" / "od", *ck], ws)


# ----------------------------------------------------------------------------- every analysis command


def _error_cases(tiny_run: Path, tmp: Path) -> list[tuple[list[str], str | None]]:
    (tmp / "bad.png").write_text("this is not an image")
    (tmp / "empty").mkdir()
    (tmp / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    foreign = tmp / "foreign"
    foreign.mkdir()
    shutil.copy(tiny_run / "config.json", foreign / "config.json")
    shutil.copy(tiny_run / "train_state.safetensors", foreign / "model.safetensors")  # another format
    ck = ["--checkpoint", str(tiny_run)]
    out = str(tmp / "out.png")
    od = str(tmp / "od")
    return [
        (["sample", "--run", "no-such-run", "-o", out], None),
        (["sample", "--checkpoint", str(tmp / "pickle.pt"), "-o", out], None),
        (["sample", "--checkpoint", str(foreign), "-o", out], None),
        (["sample", "--checkpoint", str(tiny_run / "train_state.safetensors"), "-o", out], None),
        (["sample", "--checkpoint", str(tmp / "missing"), "-o", out], None),
        (["sample", "-n", "0", "-o", out, *ck], None),
        (["decode", *ck], "[0, 0, 0, 0, 0, 0, 0, 0]\n"),  # nothing to write
        (["sample", "-o", str(tmp), *ck], None),  # -o is a folder
        (["traverse", "--dim", "8", "-o", out, *ck], None),
        (["traverse", "--dim", "-1", "-o", out, *ck], None),
        (["reconstruct", str(tmp / "bad.png"), "-o", out, "--out-dir", od, *ck], None),
        (["reconstruct", str(tmp / "empty"), "-o", out, *ck], None),
        (["reconstruct", "-", "-o", out, *ck], ""),
        (["reconstruct", "-o", out, *ck], None),
        (["reconstruct", str(tmp / "nope.png"), "-o", out, *ck], None),
        (["encode", str(tmp / "bad.png"), "-o", str(tmp / "z.jsonl"), *ck], None),
        (["interpolate", str(tmp / "bad.png"), str(tmp / "bad.png"), "-o", out, *ck], None),
        (["interpolate", "--index", "0", "--index", "99999", "-o", out, *ck], None),
        (["interpolate", "--index", "0", "-o", out, *ck], None),
        (["decode", "--out-dir", od, "-o", out, *ck], "[0, 0, 0, 0, 0, 0, 0, 0]\n{not json\n"),
        (["decode", "--out-dir", od, *ck], "[0, 0, 0]\n"),
        (["decode", "--out-dir", od, *ck], ""),
        (["decode", str(tmp / "missing.jsonl"), "--out-dir", od, *ck], None),
        (["eval-kl", "--split", "validation", *ck], None),
    ]


def test_every_error_is_one_line_exit_2_and_leaves_nothing(tiny_run: Path, tmp_path: Path) -> None:
    cases = _error_cases(tiny_run, tmp_path)
    for args, stdin in cases:
        r = vae(*args, input=stdin)
        assert r.exit_code == 2, (args, r.exit_code, r.stderr, r.exception)
        err = r.stderr.strip()
        assert err and "\n" not in err and "Traceback" not in err, (args, r.stderr)
        assert "error" in err
        assert not (tmp_path / "out.png").exists(), args
        assert not (tmp_path / "od").exists(), args
        assert not (tmp_path / "z.jsonl").exists(), args
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], args
