"""Folders of one's own images (vaecli.data.files, decode, cache): the size and colour detected,
EXIF orientation, the fit rules, broken files skipped and listed (or refused with --strict), the
decoded-folder cache and its invalidation, parallel decoding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import noisy_folder, solid, vae
from PIL import Image

from vaecli.config import DataConfig
from vaecli.data import FolderLoad, cache, decode, files, load_data, load_image
from vaecli.errors import DataError
from vaecli.paths import cache_dir


def load(folder: Path, **kw) -> tuple:  # type: ignore[no-untyped-def,type-arg]
    opts = kw.pop("opts", None) or FolderLoad()
    train, test, cfg = load_data(DataConfig(name=str(folder), **kw), load=opts)
    return train, test, cfg, opts


# ----------------------------------------------------------------------------- size


def test_size_is_the_most_common_shorter_side(tmp_path: Path) -> None:
    for i in range(3):
        solid(tmp_path / f"a{i}.png", (40, 24), (200, 10, 10))  # shorter side 24
    solid(tmp_path / "b.png", (32, 32), (10, 200, 10))
    solid(tmp_path / "c.png", (48, 64), (10, 10, 200))
    train, test, cfg, opts = load(tmp_path)
    assert cfg.image_size == 24 and cfg.channels == 3 and len(train) + len(test) == 5
    assert train.images.shape[1:] == (3, 24, 24) and train.images.dtype == torch.uint8
    assert any("24 px" in n for n in opts.notices)


def test_size_over_the_cap_is_capped_and_said(tmp_path: Path) -> None:
    for i in range(2):
        solid(tmp_path / f"{i}.png", (300, 200), (0, 0, 255 - i))
    _, _, cfg, opts = load(tmp_path)
    assert cfg.image_size == 128 and cfg.max_image_size == 128
    assert [n for n in opts.notices if "capped at 128" in n and "200 px" in n]
    _, _, cfg, _ = load(tmp_path, max_image_size=160)
    assert cfg.image_size == 160 and cfg.max_image_size == 160


def test_detected_size_rounded_to_the_arch(tmp_path: Path) -> None:
    for i in range(2):
        solid(tmp_path / f"{i}.png", (30, 30), (i * 100,) * 3)  # gray content in RGB files
    from vaecli.train.recipe import accepted_image_size

    _, _, cfg, opts = load(tmp_path, opts=FolderLoad(round_size=lambda s: accepted_image_size(s)))
    assert cfg.image_size == 28 and cfg.channels == 1  # 30 -> a multiple of 4 (two stages at this size)
    assert [n for n in opts.notices if "rounded down" in n]


def test_exif_orientation_turns_a_camera_jpeg_upright(tmp_path: Path) -> None:
    im = Image.new("L", (40, 20), 0)
    im.paste(255, (20, 0, 40, 20))  # stored: left black, right white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    p = tmp_path / "cam.jpg"
    im.save(p, exif=exif.tobytes(), quality=95)
    t = load_image(p)  # no size: as displayed
    assert t.shape == (1, 40, 20)
    assert t[0, :18].float().mean() < 10 and t[0, 22:].float().mean() > 245  # black on top, white below
    assert load_image(p.read_bytes()).equal(t)  # bytes decode the same


def test_fit_rules(tmp_path: Path) -> None:
    im = Image.new("L", (40, 20), 100)
    im.paste(0, (0, 0, 10, 20))
    im.paste(200, (30, 0, 40, 20))
    p = tmp_path / "wide.png"
    im.save(p)
    crop = load_image(p, 1, 20, "crop")
    assert crop.unique().tolist() == [100]  # the centre square
    pad = load_image(p, 1, 40, "pad")  # letterboxed on the border mean (100), no resize
    assert pad.shape == (1, 40, 40)
    assert pad[0, :10].unique().tolist() == [100] and pad[0, 30:].unique().tolist() == [100]
    assert pad[0, 10:30].equal(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(20, 40))
    stretch = load_image(p, 1, 20, "stretch")
    assert stretch[0, :, 0].float().mean() < 30 and stretch[0, :, -1].float().mean() > 170
    with pytest.raises(DataError, match="fit"):
        load_image(p, 1, 20, "squash")
    im.save(tmp_path / "wide2.png")
    tr, te, cfg, _ = load(tmp_path, fit="pad", image_size=40)
    assert cfg.fit == "pad" and torch.cat([tr.images, te.images])[0].equal(pad)


# ----------------------------------------------------------------------------- broken files


def test_broken_files_are_skipped_listed_and_strict_refuses(tmp_path: Path) -> None:
    d = noisy_folder(tmp_path / "imgs", 6)
    (d / "junk.png").write_bytes(b"not an image")
    good = (d / "0" / "000.png").read_bytes()
    (d / "cut.png").write_bytes(good[: len(good) // 2])
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*")}
    train, test, cfg, opts = load(d)
    assert len(train) + len(test) == 6
    assert sorted(s["path"] for s in cfg.skipped) == ["cut.png", "junk.png"]
    assert all(s["reason"] for s in cfg.skipped)
    line = [n for n in opts.notices if n.startswith("skipped 2 of 8")]
    assert line and "junk.png" in line[0]
    with pytest.raises(DataError, match="--strict"):
        load(d, strict=True)
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*")} == before  # nothing written into the folder
    r = vae("train", "--data", d, "--strict", "--max-steps", 1)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 2 and "px" in lines[0] and "--strict" in lines[1]  # the size notice, the error


def test_a_folder_of_only_broken_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"y")
    with pytest.raises(DataError, match="no decodable images"):
        load(tmp_path)
    with pytest.raises(DataError, match="no decodable images"):
        load(tmp_path, image_size=16)


def test_a_single_bad_input_file_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png", 3, 16)


# ----------------------------------------------------------------------------- cache


def _fail(*a, **k):  # type: ignore[no-untyped-def]
    raise AssertionError("decoded although cached")


def test_second_load_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = noisy_folder(tmp_path / "imgs", 12)
    tr1, te1, c1, _ = load(d)
    assert list(cache_dir().glob("*.u8"))
    monkeypatch.setattr(decode, "decode_many", _fail)
    monkeypatch.setattr(decode, "headers", _fail)
    tr2, te2, c2, _ = load(d)
    assert tr1.images.equal(tr2.images) and te1.images.equal(te2.images) and c1 == c2 and tr1.paths == tr2.paths
    with pytest.raises(AssertionError, match="decoded although cached"):
        load(d, opts=FolderLoad(use_cache=False))


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = decode.decode_many

    def counted(paths, *a):  # type: ignore[no-untyped-def]
        calls.append(len(paths))
        return real(paths, *a)

    monkeypatch.setattr(decode, "decode_many", counted)
    return calls


def test_cache_misses_when_a_file_changes_is_added_or_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = noisy_folder(tmp_path / "imgs", 10)
    _, _, c0, _ = load(d)
    calls = _counting(monkeypatch)
    _, _, c1, _ = load(d)
    assert calls == [] and c1.fingerprint == c0.fingerprint
    target = d / "0" / "003.png"
    solid(target, (16, 16), (1, 2, 3))
    os.utime(target, ns=(1, 1))
    _, _, c2, _ = load(d)
    assert calls == [10] and c2.fingerprint != c0.fingerprint
    solid(d / "new.png", (16, 16), (9, 9, 9))
    tr, te, _, _ = load(d)
    assert calls == [10, 11] and len(tr) + len(te) == 11
    (d / "new.png").unlink()
    (d / "0" / "004.png").unlink()
    tr, te, _, _ = load(d)
    assert calls == [10, 11, 9] and len(tr) + len(te) == 9
    assert len(list(cache_dir().glob("*.u8"))) == 1  # one entry per folder and rule: stale ones replaced


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    d = noisy_folder(tmp_path / "imgs", 8)
    tr1, te1, c1, _ = load(d)
    (entry,) = cache_dir().glob("*.u8")
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(raw[: len(raw) - 100]))
    elif damage == "flip":
        raw[-5] ^= 0xFF
        entry.write_bytes(bytes(raw))
    else:
        entry.write_bytes(b"garbage")
    calls = _counting(monkeypatch)
    tr2, te2, c2, _ = load(d)
    assert calls == [8] and tr2.images.equal(tr1.images) and te2.images.equal(te1.images) and c2.fingerprint == c1.fingerprint
    assert cache.read(entry, *_key_rule(d, c1)) is not None  # rewritten, valid again


def _key_rule(d: Path, cfg: DataConfig) -> tuple:  # type: ignore[type-arg]
    rels = files.image_names(d)
    key = cache.files_key([os.path.join(d, r) for r in rels], rels)
    return key, {"size": cfg.image_size, "fit": cfg.fit}


# ----------------------------------------------------------------------------- parallel


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_parallel_decode_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: str) -> None:
    d = noisy_folder(tmp_path / "imgs", 23, size=(20, 14))
    (d / "1" / "bad.png").write_bytes(b"broken")
    monkeypatch.setattr(files, "CHUNK", 4)  # several chunks
    serial = files.load_folder(d, None, opts=FolderLoad(use_cache=False, workers=1))
    seen: list[tuple[int, int]] = []
    par = files.load_folder(d, None, opts=FolderLoad(use_cache=False, workers=2, pool=pool, progress=lambda a, b: seen.append((a, b))))
    assert par.data.images.equal(serial.data.images) and par.data.paths == serial.data.paths
    assert par.skipped == serial.skipped == [{"path": "1/bad.png", "reason": par.skipped[0]["reason"]}]
    assert seen[-1] == (24, 24) and [a for a, _ in seen] == sorted(a for a, _ in seen)
