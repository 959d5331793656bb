"""The pretrained run shipped inside the package: `--run pretrained:fashion-mnist` works with no
training and no network, `vae runs` lists it, and nothing is written into it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import ok, one_error_line, vae
from PIL import Image

from vaecli.runs import store as ckpt

REF = "pretrained:fashion-mnist"


def test_the_shipped_run_is_small_half_precision_and_complete() -> None:
    run = ckpt.resolve_run(REF)
    assert ckpt.is_pretrained(run) and ckpt.run_ref(run) == REF
    files = {p.name for p in run.iterdir()}
    assert {ckpt.CONFIG, ckpt.MODEL, ckpt.SUMMARY} <= files and ckpt.STATE not in files
    assert (run / ckpt.MODEL).stat().st_size <= 3 * 2**20
    tensors, _ = ckpt.read_safetensors(run / ckpt.MODEL)
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    assert cfg["data"]["name"] == "fashion-mnist" and cfg["data"]["root"] is None  # the user's own data dir
    summary = json.loads((run / ckpt.SUMMARY).read_text())
    assert 200 < summary["test"]["neg_elbo"] < 260  # BCE nats on the 10,000 test images


def test_sample_from_it_with_no_training(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    ok("sample", "--run", REF, "-n", "16", "-o", out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 28
    model, _, _ = ckpt.load_model(REF)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_runs_lists_it_and_info_explains_it() -> None:
    rows = json.loads(ok("runs", "--json").stdout)
    assert REF in [r["name"] for r in rows]
    info = json.loads(ok("info", REF, "--json").stdout)
    assert info["name"] == REF and info["parameters"] > 0 and not info["resumable"]


def test_nothing_is_written_into_it() -> None:
    run = ckpt.resolve_run(REF)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = one_error_line(vae("fit-prior", "--run", REF))
    assert "read-only" in line and REF in line
    assert "read-only" in one_error_line(vae("train", "--resume", REF))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_an_unknown_pretrained_name_lists_the_shipped_ones() -> None:
    line = one_error_line(vae("sample", "--run", "pretrained:cifar", "-n", "4", "-o", "x.png"))
    assert "no pretrained run named 'cifar'" in line and REF in line
