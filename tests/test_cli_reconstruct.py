"""`vae reconstruct / encode / decode` (vaecli.cli.reconstruct) through CliRunner on the tiny run:
originals over reconstructions, folders and stdin, per-image JSON, the encode -> decode round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PAD, S, ok, pixels, tile
from PIL import Image

from vaecli.data import to_float
from vaecli.eval import inference
from vaecli.render.images import to_uint8

# ----------------------------------------------------------------------------- reconstruct


def test_reconstruct_split_grid_and_json(tmp_path: Path, ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, test = tiny
    out = tmp_path / "r.png"
    r = ok("reconstruct", "--split", "test", "-n", 5, "-o", out, "--json", *ck)
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
    ok("reconstruct", pngs, "--out-dir", out, *ck)
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert found == ["a.png", "b.png", "sub dir/c d.png", "sub dir/e.png"]
    assert pixels(out / "sub dir" / "c d.png").shape == (S, S)


def test_reconstruct_reads_paths_from_stdin(tmp_path: Path, pngs: Path, ck: list[str]) -> None:
    paths = f"{pngs / 'a.png'}\n{pngs / 'sub dir' / 'c d.png'}\n"
    r = ok("reconstruct", "-", "-o", tmp_path / "g.png", "--json", *ck, input=paths)
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == paths.split()[:1] + [str(pngs / "sub dir" / "c d.png")]
    assert pixels(tmp_path / "g.png").shape == (2 * S + 3 * PAD, 2 * S + 3 * PAD)


def test_reconstruct_converts_rgb_inputs_to_the_runs_format(tmp_path: Path, ck: list[str]) -> None:
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "big.jpg")
    ok("reconstruct", tmp_path / "big.jpg", "--out-dir", tmp_path / "o", *ck)
    assert pixels(tmp_path / "o" / "big.png").shape == (S, S)


# ----------------------------------------------------------------------------- encode / decode


def test_encode_decode_round_trip_matches_reconstruct(tmp_path: Path, pngs: Path, ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = "".join(f"{p.relative_to(tmp_path)}\n" for p in sorted(pngs.rglob("*.png")))
    enc = ok("encode", "-", *ck, input=listing).stdout
    lines = [json.loads(line) for line in enc.splitlines()]
    assert [row["path"] for row in lines] == listing.split("\n")[:-1]
    assert all(len(row["mu"]) == len(row["logvar"]) == 8 for row in lines)
    ok("decode", "--out-dir", "dec", *ck, input=enc)
    ok("reconstruct", "-", "--out-dir", "rec", *ck, input=listing)
    dec = sorted(p.relative_to(tmp_path / "dec") for p in (tmp_path / "dec").rglob("*.png"))
    rec = sorted(p.relative_to(tmp_path / "rec") for p in (tmp_path / "rec").rglob("*.png"))
    assert dec == rec and len(dec) == 4 and str(dec[0]) == "imgs/a.png"
    for rel in dec:
        assert (pixels(tmp_path / "dec" / rel).int() - pixels(tmp_path / "rec" / rel).int()).abs().max() <= 1


def test_decode_bare_lists_from_a_file(tmp_path: Path, ck: list[str]) -> None:
    src = tmp_path / "z.jsonl"
    src.write_text("[0, 0, 0, 0, 0, 0, 0, 0]\n[1, -1, 0.5, 0, 0, 0, 0, 2]\n")
    ok("decode", src, "--out-dir", tmp_path / "o", "-o", tmp_path / "g.png", *ck)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000000.png", "000001.png"]
    assert pixels(tmp_path / "g.png").shape == (S + 2 * PAD, 2 * S + 3 * PAD)


def test_encode_split_to_file(tmp_path: Path, ck: list[str]) -> None:
    ok("encode", "--split", "test", "-n", 3, "-o", tmp_path / "z.jsonl", *ck)
    rows = [json.loads(line) for line in (tmp_path / "z.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["test/00000", "test/00001", "test/00002"]
