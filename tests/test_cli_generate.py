"""`vae sample / interpolate / traverse` (vaecli.cli.generate) through CliRunner on the tiny run:
grid geometry, the pixels against the core's decode, seeds, GIFs, labels and file permissions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PAD, S, ok, one_error_line, pixels, tile, vae
from PIL import Image

from vaecli.data import load_image
from vaecli.eval import inference
from vaecli.render.images import PNG_SIGNATURE, to_uint8

# ----------------------------------------------------------------------------- sample


def test_sample_grid_and_out_dir(tmp_path: Path, ck: list[str]) -> None:
    out = tmp_path / "grid.png"
    ok("sample", "-n", 10, "-o", out, "--out-dir", tmp_path / "each", *ck)
    px = pixels(out)
    assert px.shape == (3 * S + 4 * PAD, 4 * S + 5 * PAD)  # nrow = ceil(sqrt(10)) = 4
    files = sorted((tmp_path / "each").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    assert pixels(files[0]).shape == (S, S)
    assert torch.equal(pixels(files[5]), tile(px, 1, 1))  # the same sample in the grid and alone


def test_sample_to_stdout_is_a_png_and_seeded(ck: list[str]) -> None:
    r1 = ok("sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 1, *ck)
    assert r1.stdout_bytes.startswith(PNG_SIGNATURE)
    assert pixels(r1.stdout_bytes).shape == (2 * S, 2 * S)
    r2 = ok("sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 1, *ck)
    r3 = ok("sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 2, *ck)
    assert r1.stdout_bytes == r2.stdout_bytes != r3.stdout_bytes


def test_grid_commands_default_to_command_png(tmp_path: Path, ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = ok("sample", "-n", 3, *ck)
    assert "wrote sample.png" in r.stderr
    assert pixels(tmp_path / "sample.png").shape == (2 * S + 3 * PAD, 2 * S + 3 * PAD)
    ok("traverse", "--dim", 0, "--steps", 2, *ck)
    assert (tmp_path / "traverse.png").read_bytes().startswith(PNG_SIGNATURE)


def test_sample_defaults_to_the_latest_run(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_HOME", str(tiny_run.parent))
    ok("sample", "-n", 2, "--scale", 2, "-o", tmp_path / "s.png")
    assert pixels(tmp_path / "s.png").shape == (2 * S + 2 * PAD, 2 * (2 * S) + 3 * PAD)


def test_outputs_get_the_usual_file_permissions(tmp_path: Path, ck: list[str]) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    ok("sample", "-n", 1, "-o", tmp_path / "s.png", *ck)
    assert (tmp_path / "s.png").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


# ----------------------------------------------------------------------------- interpolate


def test_interpolation_endpoints_are_the_reconstructions(tmp_path: Path, pngs: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = tiny
    a, b = pngs / "a.png", pngs / "b.png"
    ok("interpolate", a, b, "--steps", 5, "-o", tmp_path / "i.png", *ck)
    px = pixels(tmp_path / "i.png")
    assert px.shape == (S + 2 * PAD, 7 * S + 8 * PAD)  # A, 5 steps, B
    ok("reconstruct", a, b, "--out-dir", tmp_path / "rec", *ck)
    assert torch.equal(tile(px, 0, 0), load_image(a, 1, S)[0])
    assert torch.equal(tile(px, 0, 6), load_image(b, 1, S)[0])
    ra, rb = pixels(tmp_path / "rec" / "a.png"), pixels(tmp_path / "rec" / "b.png")
    assert (tile(px, 0, 1).int() - ra.int()).abs().max() <= 1
    assert (tile(px, 0, 5).int() - rb.int()).abs().max() <= 1
    assert not torch.equal(tile(px, 0, 3), ra)  # the middle is something else


def test_interpolate_by_index_slerp_and_gif(tmp_path: Path, ck: list[str]) -> None:
    ok("interpolate", "--index", 0, "--index", 7, "--mode", "slerp", "--steps", 4, "-o", tmp_path / "i.png",
        "--gif", tmp_path / "i.gif", *ck)  # fmt: skip
    assert pixels(tmp_path / "i.png").shape == (S + 2 * PAD, 6 * S + 7 * PAD)
    gif = Image.open(tmp_path / "i.gif")
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (4 * S, 4 * S)  # 4 steps there and back


# ----------------------------------------------------------------------------- traverse


def test_traverse_rows_vary_only_their_own_dimension(tmp_path: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, cfg, _ = tiny
    ok("traverse", "--dim", 3, "--dim", 1, "--steps", 5, "--range", 2, "--no-labels", "-o", tmp_path / "t.png", *ck)
    px = pixels(tmp_path / "t.png")
    assert px.shape == (2 * S + 3 * PAD, 5 * S + 6 * PAD)
    z = inference.traverse_latents(torch.zeros(cfg.model.latent_dim), [3, 1], 2.0, 5)
    for r, j in enumerate([3, 1]):
        rows = z[r * 5 : (r + 1) * 5]
        assert torch.equal(rows[:, j], torch.linspace(-2, 2, 5))
        assert (rows[:, [k for k in range(cfg.model.latent_dim) if k != j]] == 0).all()
    expected = inference.decode(model, z)
    for r in range(2):
        for c in range(5):
            assert (tile(px, r, c).int() - to_uint8(expected[r * 5 + c, 0]).int()).abs().max() <= 1


def test_traverse_orders_rows_by_kl_and_labels_them(tmp_path: Path, ck: list[str]) -> None:
    r = ok("traverse", "--steps", 3, "-o", tmp_path / "t.png", "--gif", tmp_path / "t.gif", *ck)
    kl = json.loads(ok("eval-kl", "--json", *ck).stdout)["per_dim_kl"]
    legend = next(ln for ln in r.stderr.splitlines() if ln.startswith("rows (top to bottom):")).split(":", 1)[1]
    order = [int(part.split()[0][1:]) for part in legend.split(",")]
    assert order == sorted(range(len(kl)), key=lambda j: -kl[j])
    im = Image.open(tmp_path / "t.png")
    assert im.height > len(kl) * (S + PAD) + PAD  # a header of column values
    assert im.width > 3 * S + 4 * PAD  # a column of row labels
    assert Image.open(tmp_path / "t.gif").n_frames == 4  # 3 steps, there and back
    r = ok("traverse", "--steps", 3, "--top", 2, "-o", tmp_path / "top.png", *ck)  # the 2 rows of highest KL only
    legend = next(ln for ln in r.stderr.splitlines() if ln.startswith("rows (top to bottom):")).split(":", 1)[1]
    assert [int(part.split()[0][1:]) for part in legend.split(",")] == order[:2]
    assert Image.open(tmp_path / "top.png").height < im.height
    for bad in (("--top", 0), ("--top", 1, "--dim", 0)):
        assert "--top" in one_error_line(vae("traverse", *bad, "-o", tmp_path / "x.png", *ck))


def test_traverse_from_an_image_and_an_index(tmp_path: Path, pngs: Path, ck: list[str]) -> None:
    ok("traverse", "--dim", 0, "--steps", 3, "--image", pngs / "a.png", "--no-labels", "-o", tmp_path / "a.png", *ck)
    ok("traverse", "--dim", 0, "--steps", 3, "--index", 0, "--no-labels", "-o", tmp_path / "b.png", *ck)
    ok("traverse", "--dim", 0, "--steps", 3, "--no-labels", "-o", tmp_path / "c.png", *ck)
    a, b, c = (pixels(tmp_path / f"{k}.png") for k in "abc")
    assert (a.int() - b.int()).abs().max() <= 1  # a.png is test image 0
    assert not torch.equal(a, c)  # z = 0 is another base point
