"""``shapes``: a dSprites-like dataset with known generative factors, made procedurally.

Like dSprites (Matthey et al. 2017), every combination of five factors appears exactly once:

| factor   | values | range                                                    |
|----------|--------|----------------------------------------------------------|
| shape    | 3      | square, ellipse, heart                                   |
| scale    | 6      | 0.5 .. 1 (times a half-size of 18% of the image side)     |
| rotation | 10     | 0 .. 81 degrees (a quarter turn, the end excluded)        |
| x        | 16     | centre from 26% to 74% of the image width                 |
| y        | 16     | centre from 26% to 74% of the image height                |

46,080 white shapes on black, 32x32 (default) or 64x64, anti-aliased by supersampling (3x3 per pixel at 32, 2x2 at 64).
Rotations span a quarter turn rather than dSprites' full turn: the square repeats every 90
degrees, so a full turn would make the rotation of a square unrecoverable from its pixels.

Rendering is pure arithmetic on a pixel grid (no fonts, no PIL), so the bytes are the same on
every machine; the result is cached in the data dir as two IDX files (uint8, never pickled).
Labels are factor indices, shape (N, 5), in the order of :data:`FACTORS`.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch

from ..errors import DataError
from ..fileio import atomic_write_bytes
from .dataset import ImageData
from .idx import read_idx

FACTORS = ("shape", "scale", "rotation", "x", "y")
FACTOR_SIZES = (3, 6, 10, 16, 16)
SIZES = (32, 64)
VERSION = 1  # bump when the rendering changes: old caches are then ignored
HALF_SIZE = 0.18  # half-size of a scale-1 shape, as a fraction of the image side
POSITION_RANGE = (0.26, 0.74)
SUPERSAMPLE_SIDE = 96


def factor_values() -> dict[str, list[float]]:
    """The value behind each factor index (shape: 0, 1, 2; rotation in degrees; x, y in [0, 1])."""
    lo, hi = POSITION_RANGE
    return {
        "shape": [float(i) for i in range(FACTOR_SIZES[0])],
        "scale": torch.linspace(0.5, 1.0, FACTOR_SIZES[1]).tolist(),
        "rotation": [90.0 * i / FACTOR_SIZES[2] for i in range(FACTOR_SIZES[2])],
        "x": torch.linspace(lo, hi, FACTOR_SIZES[3]).tolist(),
        "y": torch.linspace(lo, hi, FACTOR_SIZES[4]).tolist(),
    }


def factor_grid() -> torch.Tensor:
    """Every combination of factor indices, shape (N, 5), the last factor varying fastest."""
    axes = [torch.arange(n) for n in FACTOR_SIZES]
    return torch.cartesian_prod(*axes).long()


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the points (u, v), in units of the half-size, lie inside the shape."""
    if shape == 0:  # square
        return torch.maximum(u.abs(), v.abs()) <= 1.0
    if shape == 1:  # ellipse, axes 1 and 0.6
        return u.pow(2) + (v / 0.6).pow(2) <= 1.0
    # heart: the curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, lobes up (image y grows downwards)
    hx, hy = u * 1.15, -v * 1.15 + 0.1
    hx2 = hx.pow(2)
    return (hx2 + hy.pow(2) - 1.0).pow(3) <= hx2 * hy.pow(3)


def render(factors: torch.Tensor, image_size: int = 32, batch: int = 256) -> torch.Tensor:
    """Render images of the given factor indices (N, 5) as uint8 (N, 1, S, S)."""
    if image_size not in SIZES:
        raise DataError(f"shapes come in {' or '.join(map(str, SIZES))} pixels, not {image_size}")
    ss = max(2, SUPERSAMPLE_SIDE // image_size)
    side = image_size * ss
    vals = factor_values()
    scale = torch.tensor(vals["scale"])
    xs, ys = torch.tensor(vals["x"]), torch.tensor(vals["y"])
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side  # sub-pixel centres in [0, 1]
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(1, -1), py.reshape(1, -1)
    out = torch.empty((factors.shape[0], 1, image_size, image_size), dtype=torch.uint8)
    for shape in range(FACTOR_SIZES[0]):
        rows = (factors[:, 0] == shape).nonzero().flatten()
        for start in range(0, rows.numel(), batch):
            idx = rows[start : start + batch]
            f = factors[idx]
            r = (scale[f[:, 1]] * HALF_SIZE).view(-1, 1)
            theta = (f[:, 2].float() * (math.pi / 2) / FACTOR_SIZES[2]).view(-1, 1)
            dx, dy = px - xs[f[:, 3]].view(-1, 1), py - ys[f[:, 4]].view(-1, 1)
            c, s = torch.cos(theta) / r, torch.sin(theta) / r
            u, v = c * dx + s * dy, c * dy - s * dx  # rotate the shape by theta, scale by 1/r
            hit = _inside(shape, u, v).to(torch.float32)
            cover = hit.view(-1, image_size, ss, image_size, ss).mean(dim=(2, 4))
            out[idx, 0] = (cover * 255.0).round().to(torch.uint8)
    return out


def _idx_bytes(t: torch.Tensor) -> bytes:
    """An unsigned-byte IDX file (the MNIST format) holding ``t``."""
    header = struct.pack(">HBB", 0, 0x08, t.ndim) + struct.pack(f">{t.ndim}I", *t.shape)
    return header + t.contiguous().numpy().tobytes()


def cache_paths(root: Path, image_size: int) -> tuple[Path, Path]:
    """The cached image and label files of the ``image_size`` shapes under ``root``."""
    base = Path(root) / "shapes"
    stem = f"shapes-v{VERSION}-{image_size}x{image_size}"
    return base / f"{stem}-images-idx4-ubyte", base / f"{stem}-labels-idx2-ubyte"


def load_shapes(root: Path, image_size: int = 32) -> ImageData:
    """All 46,080 images with their factor labels, from the cache or rendered (then cached)."""
    if image_size not in SIZES:
        raise DataError(f"--image-size for shapes must be {' or '.join(map(str, SIZES))}, got {image_size}")
    img_path, lab_path = cache_paths(root, image_size)
    grid = factor_grid()
    n = grid.shape[0]
    if img_path.is_file() and lab_path.is_file():
        try:
            images = read_idx(img_path.read_bytes(), str(img_path))
            labels = read_idx(lab_path.read_bytes(), str(lab_path)).long()
            if tuple(images.shape) == (n, 1, image_size, image_size) and torch.equal(labels, grid):
                return ImageData(images=images, labels=labels)
        except DataError:
            pass  # a damaged cache is rebuilt below
    images = render(grid, image_size)
    try:
        atomic_write_bytes(img_path, _idx_bytes(images))
        atomic_write_bytes(lab_path, _idx_bytes(grid.to(torch.uint8)))
    except OSError:
        pass  # a read-only data dir: use the images without caching them
    return ImageData(images=images, labels=grid)


__all__ = ["FACTORS", "FACTOR_SIZES", "cache_paths", "factor_grid", "factor_values", "load_shapes", "render"]
