"""The one image decoder: file or bytes -> a PIL image in mode 'L' or 'RGB' at the run's size.

Pure Pillow + NumPy (no torch), so decode workers start light. Every image goes through the same
steps in the same order: open (only the formats in :data:`IMAGE_FORMATS`), check the pixel count
from the header, turn upright by the EXIF orientation, normalise the mode (16-bit, alpha, palette,
CMYK ...), convert channels, then make it square by the fit rule and resize.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from ..config import FITS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit for user images
# Formats user images may be in: decoders inside Pillow only (never EPS, which runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "PPM")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # decode to 'L'
ORIENTATION = 0x0112  # the EXIF orientation tag


class DecodeError(Exception):
    """A file that is not a decodable image; the message names it and says why."""


def _open_source(source: str | os.PathLike[str] | bytes, name: str) -> Any:
    """A file object for ``source``: bytes are wrapped, paths checked to be regular files first."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    path = Path(source)
    try:
        st = path.stat()
    except FileNotFoundError:
        kind = "broken symbolic link" if path.is_symlink() else "no such file"
        raise DecodeError(f"{name}: cannot read image ({kind})") from None
    except OSError as exc:  # permission denied on a parent, symlink loop, name too long ...
        raise DecodeError(f"{name}: cannot read image ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DecodeError(f"{name}: cannot read image ({kind})")
    return path


def decode(
    source: str | os.PathLike[str] | bytes,
    channels: int | None = None,
    size: int | None = None,
    fit: str = "crop",
    name: str | None = None,
) -> Any:
    """Decode ``source`` (a path or the file's bytes) to a PIL image in mode 'L' or 'RGB'.

    ``channels`` 1 gives 'L', 3 'RGB', None keeps gray images gray and the rest RGB. ``size``
    makes the image square by ``fit`` (crop: the centre square; pad: letterbox on the mean colour
    of the image's border; stretch: resize as is) at ``size`` x ``size``. Raises
    :class:`DecodeError` for anything that is not a decodable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = name if name is not None else "image" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    if fit not in FITS:
        raise DecodeError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    fh = _open_source(source, name)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder remarks on damaged files: the outcome is what counts
            with Image.open(fh, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:  # Pillow itself only warns below twice its limit
                    raise DecodeError(f"{name}: image is too large ({w}x{h}, over {MAX_IMAGE_PIXELS:,} pixels)")
                im.load()
                upright: Image.Image = im
                if im.getexif().get(ORIENTATION, 1) != 1:  # camera JPEGs: turn upright before anything else
                    upright = ImageOps.exif_transpose(im)
                img = _normalise_mode(upright)
    except DecodeError:
        raise
    except Image.DecompressionBombError:
        raise DecodeError(f"{name}: image is too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise DecodeError(f"{name}: cannot decode image (not a {', '.join(IMAGE_FORMATS)} image)") from None
    except PermissionError:
        raise DecodeError(f"{name}: cannot read image (permission denied)") from None
    except MemoryError:
        raise DecodeError(f"{name}: cannot decode image (out of memory)") from None
    except Exception as exc:  # a decoder fed untrusted bytes may raise anything: all mean "bad file"
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise DecodeError(f"{name}: cannot decode image ({reason})") from None
    if channels == 1 and img.mode != "L":
        img = img.convert("L")
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None:
        img = fit_square(img, size, fit)
    return img


def fit_square(img: Any, size: int, fit: str = "crop") -> Any:
    """A PIL image made square by ``fit`` and resized to ``size`` x ``size`` (bicubic)."""
    from PIL import Image

    w, h = img.size
    if w != h and fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    elif w != h and fit == "pad":
        s = max(w, h)
        canvas = Image.new(img.mode, (s, s), _border_colour(img))
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def _border_colour(img: Any) -> Any:
    """The mean colour of the outermost ring of pixels (the letterbox colour of ``fit='pad'``)."""
    import numpy as np

    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0)
    mean = tuple(int(v) for v in np.rint(ring.mean(axis=0)))
    return mean[0] if img.mode == "L" else mean


def _normalise_mode(im: Any) -> Any:
    """Any PIL mode -> 'L' (gray) or 'RGB'. Alpha is composited on white; 16-bit scaled to 8."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        t = np.asarray(im.convert("F"), dtype=np.float32)
        hi = 65535.0 if mode.startswith("I;16") or (mode == "I" and float(t.max()) > 255) else 255.0
        if mode == "F":
            hi = 1.0 if float(t.max()) <= 1.0 else 255.0
        arr = np.rint(np.clip(t / np.float32(hi) * np.float32(255.0), 0, 255)).astype(np.uint8)
        return Image.fromarray(arr, "L")
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(bg, rgba).convert("RGB")
        return out.convert("L") if mode in ("LA", "La") else out
    if mode in ("L", "RGB"):
        return im.copy()
    if mode == "1":
        return im.convert("L")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...


def header(path: str | os.PathLike[str]) -> tuple[int, int, bool] | str:
    """(width, height, gray) of an image from its header (nothing decoded), or why it cannot be read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(_open_source(path, str(path)), formats=IMAGE_FORMATS) as im:
                w, h = im.size
                return w, h, im.mode in GRAY_MODES
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # the decode step gives the precise reason
        return f"{path}: cannot decode image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def headers(paths: list[str]) -> list[tuple[int, int, bool] | str]:
    """:func:`header` of each path (a worker's chunk)."""
    return [header(p) for p in paths]


def decode_many(paths: list[str], size: int, fit: str, channels: int) -> list[bytes | str]:
    """Decode a chunk of files to raw pixel bytes (H, W, C order) at ``channels``, or the error message of each."""
    out: list[bytes | str] = []
    for p in paths:
        try:
            out.append(decode(p, channels, size, fit).tobytes())
        except DecodeError as exc:
            out.append(str(exc))
    return out
