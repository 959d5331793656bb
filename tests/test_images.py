"""Image outputs and inputs of the analysis commands (vaecli.render.images): grid geometry, GIF frames,
output names, collecting input files and loading them at a run's size and fit."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import pytest
import torch
from conftest import solid
from PIL import Image

from vaecli.errors import DataError
from vaecli.render.images import PNG_SIGNATURE, collect_inputs, gif_bytes, grid, grid_png, output_name, to_uint8


def test_grid_png_has_make_grid_geometry() -> None:
    imgs = torch.rand(10, 1, 28, 28)
    data = grid_png(imgs, nrow=4, padding=2)
    assert data.startswith(PNG_SIGNATURE)
    im = Image.open(io.BytesIO(data))
    assert im.size == (4 * 28 + 5 * 2, 3 * 28 + 4 * 2)
    assert im.mode == "L"
    # the first tile holds the first image, rounded like save_image
    px = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width)
    assert torch.equal(px[2:30, 2:30], to_uint8(imgs[0, 0]))
    rgb = grid(torch.rand(3, 3, 8, 8), nrow=3, padding=0, scale=2)
    assert rgb.mode == "RGB" and rgb.size == (48, 16)


def test_gif_bytes_loop_forward_and_back() -> None:
    frames = [grid(torch.full((1, 1, 8, 8), v), 1, 0) for v in (0.0, 0.5, 1.0)]
    im = Image.open(io.BytesIO(gif_bytes(frames, fps=10)))
    assert im.format == "GIF" and im.n_frames == 4  # 0, 1, 2, 1


@pytest.mark.parametrize(
    "path, expected",
    [
        ("imgs/a.png", "imgs/a.png"),
        ("./imgs/b c.jpg", "imgs/b c.png"),
        ("/abs/dir/x.png", "x.png"),
        ("../up/y.webp", "y.png"),
        ("test/00003", "test/00003.png"),
        ("", "fallback.png"),
    ],
)
def test_output_name(path: str, expected: str) -> None:
    assert output_name(path, "fallback") == PurePosixPath(expected)


def test_collect_inputs_expands_folders_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub dir").mkdir(parents=True)
    for rel in ("d/a.png", "d/sub dir/b c.png", "d/notes.txt", "single.png"):
        (tmp_path / rel).write_bytes(b"x")
    items = collect_inputs([str(tmp_path / "d")])
    assert [str(it.rel) for it in items] == ["a.png", "sub dir/b c.png"]
    items = collect_inputs(["-"], read_stdin=lambda: f"{tmp_path / 'single.png'}\n\n{tmp_path / 'd'}\n")
    assert [it.path.name for it in items] == ["single.png", "a.png", "b c.png"]
    with pytest.raises(DataError, match="no input images"):
        collect_inputs(["-"], read_stdin=lambda: "\n")
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([str(tmp_path / "missing.png")])


def test_analysis_inputs_use_the_runs_fit(tmp_path: Path) -> None:
    from vaecli.render.images import InputImage, load_inputs

    p = solid(tmp_path / "photo.jpg", (200, 150), (250, 20, 20))
    x = load_inputs([InputImage(p, Path("photo.png"))], 3, 64, "pad")
    assert x.shape == (1, 3, 64, 64) and abs(int(x[0, 0].float().mean()) - 250) < 8
