"""Image files in and out for the analysis commands and the explorer: PNG grids and their layouts
(originals over reconstructions, labelled traversals, strips), GIF frames, input lists.

Grids are built by ``torchvision.utils.make_grid`` and turned into 8-bit pixels exactly as
``torchvision.utils.save_image`` does (``x * 255 + 0.5``, clamped, truncated), then encoded to PNG
bytes in memory so the caller can write them atomically (:mod:`vaecli.fileio`) or to stdout.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - Pillow is imported where an image is made
    from PIL.Image import Image as PILImage

from ..data import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, list_images, load_image
from ..errors import ConfigError, DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SCALE = 16


# ----------------------------------------------------------------------------- pixels


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounded like ``save_image`` (works on any shape)."""
    return images.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def _check_scale(scale: int) -> None:
    if scale < 1 or scale > MAX_SCALE:
        raise ConfigError(f"--scale must be between 1 and {MAX_SCALE}, got {scale}")


def upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of (N, C, H, W) by an integer factor (1 = unchanged)."""
    _check_scale(scale)
    if scale == 1:
        return images
    return images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def default_nrow(n: int) -> int:
    """Images per grid row when not given: ceil(sqrt(n))."""
    return max(1, math.ceil(math.sqrt(n)))


def check_grid(nrow: int | None, padding: int) -> None:
    """Refuse grid layout numbers that make no grid: ``--nrow`` below 1 (None: chosen later), ``--padding`` below 0."""
    if nrow is not None and nrow < 1:
        raise ConfigError(f"--nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ConfigError(f"--padding must be >= 0, got {padding}")


def grid(images: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1, pad_value: float = 0.0) -> PILImage:
    """A PIL image of the grid ``make_grid(images, nrow, padding)`` (gray 'L' for 1-channel images)."""
    from torchvision.utils import make_grid

    check_grid(nrow, padding)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError("no images to put in a grid")
    n, ncol = images.shape[0], min(nrow, images.shape[0])
    _check_scale(scale)
    gh = math.ceil(n / ncol) * (images.shape[2] * scale + padding) + padding
    gw = ncol * (images.shape[3] * scale + padding) + padding
    if gh * gw > MAX_IMAGE_PIXELS:  # checked before allocating it
        raise ConfigError(
            f"the grid would be {gw}x{gh} pixels (over {MAX_IMAGE_PIXELS:,}): use fewer images, a smaller --scale or --padding, or --out-dir"
        )
    images = upscale(images.detach().float().cpu(), scale)
    g = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    return to_pil(g if images.shape[1] == 3 else g[:1])


def to_pil(image: torch.Tensor) -> PILImage:
    """One float image (C, H, W) in [0, 1] -> PIL 'L' (C = 1) or 'RGB' (C = 3)."""
    from PIL import Image

    u8 = to_uint8(image)
    if u8.shape[0] == 1:
        return Image.frombytes("L", (u8.shape[2], u8.shape[1]), u8[0].contiguous().numpy().tobytes())
    return Image.frombytes("RGB", (u8.shape[2], u8.shape[1]), u8.permute(1, 2, 0).contiguous().numpy().tobytes())


def png_bytes(img: PILImage) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_png(image: torch.Tensor, scale: int = 1) -> bytes:
    """One float image (C, H, W) -> PNG bytes (no padding)."""
    return png_bytes(to_pil(upscale(image.unsqueeze(0), scale)[0]))


def grid_png(images: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1) -> bytes:
    """PNG bytes of ``make_grid(images, nrow, padding)``."""
    return png_bytes(grid(images, nrow, padding, scale))


def pairs_grid(top: torch.Tensor, bottom: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1) -> PILImage:
    """A grid of ``nrow`` columns in which each row of ``top`` images (originals) has the matching
    ``bottom`` images (reconstructions) in the row below; the last pair of rows is filled with black
    tiles so that the two stay aligned."""
    check_grid(nrow, padding)
    tiles = []
    for i in range(0, top.shape[0], nrow):
        a, b = top[i : i + nrow], bottom[i : i + nrow]
        if a.shape[0] < nrow:
            fill = torch.zeros((nrow - a.shape[0], *a.shape[1:]))
            a, b = torch.cat([a, fill]), torch.cat([b, fill])
        tiles += [a, b]
    return grid(torch.cat(tiles), nrow, padding, scale)


def pairs_png(top: torch.Tensor, bottom: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1) -> bytes:
    """PNG bytes of :func:`pairs_grid`."""
    return png_bytes(pairs_grid(top, bottom, nrow, padding, scale))


def traversal_png(
    images: torch.Tensor, values: Sequence[float], padding: int = 2, scale: int = 1, row_labels: Sequence[str] | None = None
) -> bytes:
    """A latent traversal as a grid: one row per swept dimension, one column per value of ``values``.
    With ``row_labels``, each row is labelled on the left and the columns get a header of their values
    (every value up to 7 columns, else the two ends and the middle)."""
    steps = len(values)
    img = grid(images, steps, padding, scale)
    if row_labels is not None:
        shown = set(range(steps)) if steps <= 7 else {0, steps // 2, steps - 1}
        cols = [("0" if abs(v) < 1e-6 else f"{v:+.1f}") if i in shown else "" for i, v in enumerate(values)]
        img = label_grid(img, row_labels, images.shape[-1] * scale, padding, cols)
    return png_bytes(img)


def traversal_frames(images: torch.Tensor, steps: int, padding: int = 2, scale: int = 1) -> list[PILImage]:
    """GIF frames of a traversal laid out as rows of ``steps`` images (one row per dimension): frame t
    shows every dimension at its t-th value, up to 8 per row, upscaled at least 2x."""
    k = images.shape[0] // steps
    per_step = images.reshape(k, steps, *images.shape[1:]).transpose(0, 1)  # (steps, dims, C, H, W)
    ncol = max(1, min(k, 8))
    return [grid(per_step[t], ncol, padding, max(scale, 2)) for t in range(steps)]


def gif_frames(images: torch.Tensor, scale: int = 1) -> list[PILImage]:
    """One GIF frame per image (N, C, H, W), upscaled at least 4x (a 28-pixel frame is too small to watch)."""
    return [to_pil(img) for img in upscale(images, max(scale, 4))]


def strip_png(images: torch.Tensor, gap: int = 0) -> bytes:
    """Float images (N, C, H, W) in [0, 1] side by side, left to right, ``gap`` white pixels between
    them and no border: one PNG (the explorer's images and traversal strips)."""
    n, c, h, w = images.shape
    canvas = torch.ones(c, h, n * w + max(n - 1, 0) * gap)
    for i in range(n):
        canvas[:, :, i * (w + gap) : i * (w + gap) + w] = images[i].clamp(0, 1)
    return png_bytes(to_pil(canvas))


def gif_bytes(frames: Sequence[PILImage], fps: float = 8.0, bounce: bool = True) -> bytes:
    """An endlessly looping GIF of PIL frames; ``bounce`` plays them forward then backward."""
    if not frames:
        raise ConfigError("no frames for the GIF")
    if not math.isfinite(fps) or not 0 < fps <= 100:
        raise ConfigError(f"--fps must be a number in (0, 100], got {fps}")
    seq = list(frames)
    if bounce and len(seq) > 2:
        seq = seq + seq[-2:0:-1]
    buf = io.BytesIO()
    seq[0].save(buf, format="GIF", save_all=True, append_images=seq[1:], duration=int(round(1000 / fps)), loop=0, optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- labels


def label_grid(img: PILImage, row_labels: Sequence[str], tile: int, padding: int, col_labels: Sequence[str] | None = None) -> PILImage:
    """Add a label column left of a grid (one label per row) and optionally a header of column labels.

    ``tile`` is the side of one image in the grid, ``padding`` the grid's padding. Text is
    light on the grid's black background.
    """
    from PIL import Image, ImageDraw, ImageFont

    step = tile + padding
    px = max(9, min(16, int(step * 0.42)))
    font = ImageFont.load_default(size=px)  # Pillow >= 10.1: a scalable font that knows anchors
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def width(s: str) -> int:
        box = measure.textbbox((0, 0), s, font=font)
        return int(box[2] - box[0])

    left = max((width(s) for s in row_labels), default=0) + 2 * max(4, padding)
    top = px + 2 * max(3, padding) if col_labels else 0
    mode = img.mode
    out = Image.new(mode, (img.width + left, img.height + top), 0)
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    fill = 235 if mode == "L" else (235, 235, 235)
    for r, s in enumerate(row_labels):
        cy = top + padding + r * step + tile / 2
        draw.text((left - max(4, padding), cy), s, font=font, fill=fill, anchor="rm")
    if col_labels:
        muted = 170 if mode == "L" else (170, 170, 170)
        for c, s in enumerate(col_labels):
            if not s:
                continue
            cx = left + padding + c * step + tile / 2
            draw.text((cx, top / 2), s, font=font, fill=muted, anchor="mm")
    return out


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """An input image: ``path`` to open and ``rel``, the relative name its outputs are written under."""

    path: Path
    rel: PurePath


def output_name(path: str | os.PathLike[str], fallback: str) -> PurePosixPath:
    """Where an output derived from ``path`` goes inside an output folder, with a ``.png`` suffix.

    Relative paths are kept (so ``find imgs ... | vae encode - | vae decode --out-dir out`` writes
    ``out/imgs/...``); absolute paths or paths with ``..`` keep only their file name; empty -> ``fallback``.
    """
    p = PurePath(path)
    parts = [x for x in p.parts if x not in ("", ".")]
    if p.is_absolute() or p.anchor or ".." in parts:
        parts = [p.name] if p.name not in ("", "..") else []
    if not parts:
        parts = [fallback]
    rel = PurePosixPath(*parts)
    return rel.with_name(rel.stem + ".png") if rel.suffix.lower() in IMAGE_EXTENSIONS else rel.with_name(rel.name + ".png")


def collect_inputs(specs: Sequence[str], read_stdin: Callable[[], str] | None = None) -> list[InputImage]:
    """Expand command-line inputs: image files, folders (recursive, via :func:`data.list_images`)
    and ``-`` (paths read from stdin, one per line, each a file or folder). Raises when nothing is found."""
    found: list[InputImage] = []
    stdin_used = False
    for spec in specs:
        if spec == "-":
            if stdin_used:
                continue
            stdin_used = True
            text = (read_stdin or (lambda: sys.stdin.read()))()
            lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
            for ln in lines:
                if ln.strip():
                    found.extend(_expand(ln))
        else:
            found.extend(_expand(spec))
    if not found:
        raise DataError("no input images (give image files, folders, or - to read paths from stdin)")
    return found


def _expand(spec: str) -> list[InputImage]:
    p = Path(spec).expanduser()
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise DataError(f"{spec}: no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in this folder")
        return [InputImage(f, output_name(f.relative_to(p), "image")) for f in files]
    if not p.exists():
        raise DataError(f"{spec}: {'broken or looping symbolic link' if p.is_symlink() else 'no such file or folder'}")
    return [InputImage(p, output_name(spec, "image"))]


def load_inputs(items: Sequence[InputImage], channels: int, size: int, fit: str = "crop") -> torch.Tensor:
    """Decode every input with :func:`data.load_image` by the run's rule (channels, size, fit): uint8 (N, C, H, W)."""
    if not items:
        raise DataError("no input images")
    out = torch.empty((len(items), channels, size, size), dtype=torch.uint8)
    for i, it in enumerate(items):
        out[i] = load_image(it.path, channels, size, fit)
    return out


def check_unique(names: Sequence[PurePath | str]) -> None:
    """Refuse two outputs with the same file name (they would overwrite each other)."""
    seen: set[str] = set()
    for n in names:
        key = str(n)
        if key in seen:
            raise ConfigError(f"two inputs would be written to the same file {key}: rename one or use separate runs")
        seen.add(key)
