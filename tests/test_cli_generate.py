"""`vae sample / reconstruct / interpolate / traverse / eval-kl / encode / decode` through CliRunner."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vaecli import inference
from vaecli.checkpoint import load_model
from vaecli.cli import app
from vaecli.data import load_data, load_image, to_float
from vaecli.images import PNG_SIGNATURE, to_uint8

S = 28  # the tiny run's image side
PAD = 2


def vae(args: list[str], input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(args: list[str], input: str | None = None):  # type: ignore[no-untyped-def]
    r = vae(args, input)
    assert r.exit_code == 0, f"exit {r.exit_code}: {r.stderr}{r.exception!r}"
    return r


def pixels(data_or_path: bytes | Path) -> torch.Tensor:
    """A PNG as uint8 (H, W) (gray images)."""
    data = data_or_path.read_bytes() if isinstance(data_or_path, Path) else data_or_path
    assert data.startswith(PNG_SIGNATURE)
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "L"
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width)


def tile(px: torch.Tensor, row: int, col: int, side: int = S, pad: int = PAD) -> torch.Tensor:
    y, x = pad + row * (side + pad), pad + col * (side + pad)
    return px[y : y + side, x : x + side]


@pytest.fixture(scope="module")
def tiny(tiny_run: Path):  # type: ignore[no-untyped-def]
    model, cfg, _ = load_model(tiny_run)
    _, test, _ = load_data(cfg.data, download=False)
    return model, cfg, test


@pytest.fixture
def ck(tiny_run: Path) -> list[str]:
    return ["--checkpoint", str(tiny_run)]


@pytest.fixture
def pngs(tmp_path: Path, tiny) -> Path:  # type: ignore[no-untyped-def]
    """Four test images written as PNG files, one in a sub-folder with a space in its name."""
    _, _, test = tiny
    folder = tmp_path / "imgs"
    (folder / "sub dir").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.png", "sub dir/c d.png", "sub dir/e.png"]):
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(folder / rel)
    return folder


# ----------------------------------------------------------------------------- sample


def test_sample_grid_and_out_dir(tmp_path: Path, ck: list[str]) -> None:
    out = tmp_path / "grid.png"
    ok(["sample", "-n", 10, "-o", out, "--out-dir", tmp_path / "each", *ck])
    px = pixels(out)
    assert px.shape == (3 * S + 4 * PAD, 4 * S + 5 * PAD)  # nrow = ceil(sqrt(10)) = 4
    files = sorted((tmp_path / "each").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    assert pixels(files[0]).shape == (S, S)
    assert torch.equal(pixels(files[5]), tile(px, 1, 1))  # the same sample in the grid and alone


def test_sample_to_stdout_is_a_png_and_seeded(ck: list[str]) -> None:
    r1 = ok(["sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 1, *ck])
    assert r1.stdout_bytes.startswith(PNG_SIGNATURE)
    assert pixels(r1.stdout_bytes).shape == (2 * S, 2 * S)
    r2 = ok(["sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 1, *ck])
    r3 = ok(["sample", "-n", 4, "--nrow", 2, "--padding", 0, "-o", "-", "--seed", 2, *ck])
    assert r1.stdout_bytes == r2.stdout_bytes != r3.stdout_bytes


def test_grid_commands_default_to_command_png(tmp_path: Path, ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = ok(["sample", "-n", 3, *ck])
    assert "wrote sample.png" in r.stderr
    assert pixels(tmp_path / "sample.png").shape == (2 * S + 3 * PAD, 2 * S + 3 * PAD)
    ok(["traverse", "--dim", 0, "--steps", 2, *ck])
    assert (tmp_path / "traverse.png").read_bytes().startswith(PNG_SIGNATURE)


def test_sample_defaults_to_the_latest_run(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_HOME", str(tiny_run.parent))
    ok(["sample", "-n", 2, "--scale", 2, "-o", tmp_path / "s.png"])
    assert pixels(tmp_path / "s.png").shape == (2 * S + 2 * PAD, 2 * (2 * S) + 3 * PAD)


# ----------------------------------------------------------------------------- reconstruct


def test_reconstruct_split_grid_and_json(tmp_path: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, test = tiny
    out = tmp_path / "r.png"
    r = ok(["reconstruct", "--split", "test", "-n", 5, "-o", out, "--json", *ck])
    px = pixels(out)
    assert px.shape == (2 * S + 3 * PAD, 5 * S + 6 * PAD)  # originals above reconstructions
    x = to_float(test.images[:5])
    rec = inference.reconstruct(model, x)
    for i in range(5):
        assert torch.equal(tile(px, 0, i), test.images[i, 0])
        assert (tile(px, 1, i).int() - to_uint8(rec[i, 0]).int()).abs().max() <= 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == [f"test/{i:05d}" for i in range(5)]
    for row in rows:
        assert set(row) == {"path", "neg_elbo", "recon", "kl"}
        assert row["kl"] > 0 and row["recon"] > 0
        assert row["neg_elbo"] == pytest.approx(row["recon"] + row["kl"])


def test_reconstruct_folder_keeps_relative_paths(tmp_path: Path, pngs: Path, ck: list[str]) -> None:
    out = tmp_path / "out"
    ok(["reconstruct", pngs, "--out-dir", out, *ck])
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert found == ["a.png", "b.png", "sub dir/c d.png", "sub dir/e.png"]
    assert pixels(out / "sub dir" / "c d.png").shape == (S, S)


def test_reconstruct_reads_paths_from_stdin(tmp_path: Path, pngs: Path, ck: list[str]) -> None:
    paths = f"{pngs / 'a.png'}\n{pngs / 'sub dir' / 'c d.png'}\n"
    r = ok(["reconstruct", "-", "-o", tmp_path / "g.png", "--json", *ck], input=paths)
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == paths.split()[:1] + [str(pngs / "sub dir" / "c d.png")]
    assert pixels(tmp_path / "g.png").shape == (2 * S + 3 * PAD, 2 * S + 3 * PAD)


def test_reconstruct_converts_rgb_inputs_to_the_runs_format(tmp_path: Path, ck: list[str]) -> None:
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "big.jpg")
    ok(["reconstruct", tmp_path / "big.jpg", "--out-dir", tmp_path / "o", *ck])
    assert pixels(tmp_path / "o" / "big.png").shape == (S, S)


# ----------------------------------------------------------------------------- interpolate


def test_interpolation_endpoints_are_the_reconstructions(tmp_path: Path, pngs: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = tiny
    a, b = pngs / "a.png", pngs / "b.png"
    ok(["interpolate", a, b, "--steps", 5, "-o", tmp_path / "i.png", *ck])
    px = pixels(tmp_path / "i.png")
    assert px.shape == (S + 2 * PAD, 7 * S + 8 * PAD)  # A, 5 steps, B
    ok(["reconstruct", a, b, "--out-dir", tmp_path / "rec", *ck])
    assert torch.equal(tile(px, 0, 0), load_image(a, 1, S)[0])
    assert torch.equal(tile(px, 0, 6), load_image(b, 1, S)[0])
    ra, rb = pixels(tmp_path / "rec" / "a.png"), pixels(tmp_path / "rec" / "b.png")
    assert (tile(px, 0, 1).int() - ra.int()).abs().max() <= 1
    assert (tile(px, 0, 5).int() - rb.int()).abs().max() <= 1
    assert not torch.equal(tile(px, 0, 3), ra)  # the middle is something else


def test_interpolate_by_index_slerp_and_gif(tmp_path: Path, ck: list[str]) -> None:
    ok(["interpolate", "--index", 0, "--index", 7, "--mode", "slerp", "--steps", 4, "-o", tmp_path / "i.png",
        "--gif", tmp_path / "i.gif", *ck])  # fmt: skip
    assert pixels(tmp_path / "i.png").shape == (S + 2 * PAD, 6 * S + 7 * PAD)
    gif = Image.open(tmp_path / "i.gif")
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (4 * S, 4 * S)  # 4 steps there and back


# ----------------------------------------------------------------------------- traverse


def test_traverse_rows_vary_only_their_own_dimension(tmp_path: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, cfg, _ = tiny
    ok(["traverse", "--dim", 3, "--dim", 1, "--steps", 5, "--range", 2, "--no-labels", "-o", tmp_path / "t.png", *ck])
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
    r = ok(["traverse", "--steps", 3, "-o", tmp_path / "t.png", "--gif", tmp_path / "t.gif", *ck])
    kl = json.loads(ok(["eval-kl", "--json", *ck]).stdout)["per_dim_kl"]
    legend = next(ln for ln in r.stderr.splitlines() if ln.startswith("rows (top to bottom):")).split(":", 1)[1]
    order = [int(part.split()[0][1:]) for part in legend.split(",")]
    assert order == sorted(range(len(kl)), key=lambda j: -kl[j])
    im = Image.open(tmp_path / "t.png")
    assert im.height > len(kl) * (S + PAD) + PAD  # a header of column values
    assert im.width > 3 * S + 4 * PAD  # a column of row labels
    assert Image.open(tmp_path / "t.gif").n_frames == 4  # 3 steps, there and back


def test_traverse_from_an_image_and_an_index(tmp_path: Path, pngs: Path, ck: list[str]) -> None:
    ok(["traverse", "--dim", 0, "--steps", 3, "--image", pngs / "a.png", "--no-labels", "-o", tmp_path / "a.png", *ck])
    ok(["traverse", "--dim", 0, "--steps", 3, "--index", 0, "--no-labels", "-o", tmp_path / "b.png", *ck])
    ok(["traverse", "--dim", 0, "--steps", 3, "--no-labels", "-o", tmp_path / "c.png", *ck])
    a, b, c = (pixels(tmp_path / f"{k}.png") for k in "abc")
    assert (a.int() - b.int()).abs().max() <= 1  # a.png is test image 0
    assert not torch.equal(a, c)  # z = 0 is another base point


# ----------------------------------------------------------------------------- eval-kl


def test_eval_kl_json_sums_and_keys(ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    _, cfg, test = tiny
    out = json.loads(ok(["eval-kl", "--json", *ck]).stdout)
    assert list(out) == ["run", "split", "images", "neg_elbo", "recon", "kl", "per_dim_kl", "active_units", "binarized", "likelihood"]
    assert out["run"] == "tiny" and out["split"] == "test" and out["images"] == len(test)
    assert len(out["per_dim_kl"]) == cfg.model.latent_dim
    assert all(v >= 0 for v in out["per_dim_kl"])
    assert sum(out["per_dim_kl"]) == pytest.approx(out["kl"], rel=1e-9)
    assert out["neg_elbo"] == pytest.approx(out["recon"] + out["kl"], rel=1e-9)
    assert 0 <= out["active_units"] <= cfg.model.latent_dim


def test_eval_kl_table_and_svg(tmp_path: Path, ck: list[str]) -> None:
    r = ok(["eval-kl", "--split", "train", "--svg", tmp_path / "kl.svg", *ck])
    assert "KL per latent dimension, train split" in r.stdout
    assert "█" in r.stdout and "active units" in r.stdout
    svg = (tmp_path / "kl.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "KL per latent dimension" in svg.replace("&#160;", " ")


def test_outputs_get_the_usual_file_permissions(tmp_path: Path, ck: list[str]) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    ok(["sample", "-n", 1, "-o", tmp_path / "s.png", *ck])
    assert (tmp_path / "s.png").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


# ----------------------------------------------------------------------------- encode / decode


def test_encode_decode_round_trip_matches_reconstruct(tmp_path: Path, pngs: Path, ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = "".join(f"{p.relative_to(tmp_path)}\n" for p in sorted(pngs.rglob("*.png")))
    enc = ok(["encode", "-", *ck], input=listing).stdout
    lines = [json.loads(line) for line in enc.splitlines()]
    assert [row["path"] for row in lines] == listing.split("\n")[:-1]
    assert all(len(row["mu"]) == len(row["logvar"]) == 8 for row in lines)
    ok(["decode", "--out-dir", "dec", *ck], input=enc)
    ok(["reconstruct", "-", "--out-dir", "rec", *ck], input=listing)
    dec = sorted(p.relative_to(tmp_path / "dec") for p in (tmp_path / "dec").rglob("*.png"))
    rec = sorted(p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob("*.png"))
    assert dec == rec and len(dec) == 4 and str(dec[0]) == "imgs/a.png"
    for rel in dec:
        assert (pixels(tmp_path / "dec" / rel).int() - pixels(tmp_path / "rec" / rel).int()).abs().max() <= 1


def test_decode_bare_lists_from_a_file(tmp_path: Path, ck: list[str]) -> None:
    src = tmp_path / "z.jsonl"
    src.write_text("[0, 0, 0, 0, 0, 0, 0, 0]\n[1, -1, 0.5, 0, 0, 0, 0, 2]\n")
    ok(["decode", src, "--out-dir", tmp_path / "o", "-o", tmp_path / "g.png", *ck])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000000.png", "000001.png"]
    assert pixels(tmp_path / "g.png").shape == (S + 2 * PAD, 2 * S + 3 * PAD)


def test_encode_split_to_file(tmp_path: Path, ck: list[str]) -> None:
    ok(["encode", "--split", "test", "-n", 3, "-o", tmp_path / "z.jsonl", *ck])
    rows = [json.loads(line) for line in (tmp_path / "z.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["test/00000", "test/00001", "test/00002"]


# ----------------------------------------------------------------------------- errors


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
        r = vae(args, stdin)
        assert r.exit_code == 2, (args, r.exit_code, r.stderr, r.exception)
        err = r.stderr.strip()
        assert err and "\n" not in err and "Traceback" not in err, (args, r.stderr)
        assert "error" in err
        assert not (tmp_path / "out.png").exists(), args
        assert not (tmp_path / "od").exists(), args
        assert not (tmp_path / "z.jsonl").exists(), args
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], args
