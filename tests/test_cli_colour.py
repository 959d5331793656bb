"""Every analysis command and the explorer on a colour run (an RGB folder, padded to fit): RGB PNGs
at the run's size, grids of the run's tiles."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from conftest import noisy_folder, ok, solid
from PIL import Image

from vaecli.config import DataConfig


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory, train_tiny) -> Path:  # type: ignore[no-untyped-def]
    d = noisy_folder(tmp_path_factory.mktemp("colour") / "imgs", 30, size=(24, 20))
    home = tmp_path_factory.mktemp("colour-home")
    return train_tiny(home, "colour", data=DataConfig(name=str(d), fit="pad", image_size=None), epochs=1, max_steps=3)


def _png(data: bytes, size: int) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "RGB", im.mode
    return im


def _tiles(im: Image.Image, S: int) -> int:
    """Tiles in a one-row grid of S px images with 2 px padding (asserting that it is one)."""
    assert im.size[1] == S + 4 and (im.size[0] - 2) % (S + 2) == 0, im.size
    return (im.size[0] - 2) // (S + 2)


def test_colour_outputs_of_every_analysis_command(colour_run: Path, tmp_path: Path) -> None:
    cfg = json.loads((colour_run / "config.json").read_text())
    assert cfg["model"]["channels"] == 3 and cfg["data"]["fit"] == "pad"
    S = cfg["model"]["image_size"]
    assert S == 20  # the shorter side of 24x20
    ck = ["--checkpoint", str(colour_run)]
    photo = solid(tmp_path / "photo.jpg", (200, 150), (30, 120, 220))
    other = solid(tmp_path / "other.png", (50, 50), (220, 120, 30))

    def run(args: list[object], input: str | None = None) -> str:
        return ok(*args, *ck, input=input).stdout

    run(["sample", "-n", "4", "--nrow", "4", "-o", tmp_path / "s.png"])
    assert _png((tmp_path / "s.png").read_bytes(), S).size == (4 * (S + 2) + 2, S + 2 + 2)
    run(["reconstruct", photo, "--out-dir", tmp_path / "rec"])
    (rec,) = (tmp_path / "rec").rglob("*.png")
    assert _png(rec.read_bytes(), S).size == (S, S)  # the reconstruction at the run's size
    run(["interpolate", photo, other, "--steps", "3", "-o", tmp_path / "i.png"])
    assert _tiles(_png((tmp_path / "i.png").read_bytes(), S), S) >= 3
    run(["traverse", "--dim", "0", "--steps", "3", "--image", photo, "--no-labels", "-o", tmp_path / "t.png"])
    assert _tiles(_png((tmp_path / "t.png").read_bytes(), S), S) >= 3
    lines = run(["encode", photo, other])
    run(["decode", "--out-dir", tmp_path / "dec"], input=lines)
    decoded = sorted((tmp_path / "dec").rglob("*.png"))
    assert len(decoded) == 2 and all(_png(p.read_bytes(), S).size == (S, S) for p in decoded)

    from vaecli.explore import Explorer

    ex = Explorer(colour_run)
    assert _png(ex.decode(None, [0.0] * 8), S).size == (S, S)
    up = ex.encode(None, photo.read_bytes())
    seen = _png(base64.b64decode(up["input"].split(",", 1)[1]), S)
    assert seen.size == (S, S) and seen.getpixel((S // 2, S // 2))[2] > 180  # the photo's blue, padded by its own colour
    assert _png(ex.traverse(None, [0.0] * 8, 0, 3), S).size[1] == S
