"""Datasets held in memory as uint8 tensors (N, C, H, W), converted to float per batch.

Registry names: ``fashion-mnist``, ``mnist`` (torchvision, downloaded when missing),
``fashion-mnist-mini`` (a real 2,000 + 500 image subset shipped in the package), ``shapes``
(dSprites-like images with known factors, rendered and cached on first use; see shapes.py;
90/10 split by seed), or a path to a folder of images (recursive; 90/10 train/test split by seed).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import struct
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch

from .config import DataConfig
from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
REGISTRY = ("fashion-mnist", "mnist", "fashion-mnist-mini", "shapes")
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit for user images
# Formats user images may be in: decoders inside Pillow only (never EPS, which runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF", "PPM")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class ImageData:
    """One split in memory: ``images`` uint8 (N, C, H, W); optional labels and source paths."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return batch.float().div_(255.0)


BINARIZE_SEED = 2016  # the fixed binarisation of test splits (the same for every run)


def binarize_fixed(data: ImageData, seed: int = BINARIZE_SEED) -> ImageData:
    """A fixed stochastic binarisation: each pixel becomes 255 with probability pixel / 255, else 0.

    Used for test splits when ``DataConfig.binarize`` is on (training binarises every batch
    afresh instead, "dynamic binarisation"), so that Bernoulli likelihoods are true likelihoods
    of binary data, comparable with the binarised-MNIST literature. Images that are already
    binary are returned unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    imgs = torch.bernoulli(to_float(data.images), generator=g).to(torch.uint8).mul_(255)
    return ImageData(images=imgs, labels=data.labels, paths=data.paths)


# ----------------------------------------------------------------------------- IDX files


def read_idx(data: bytes, what: str = "IDX data") -> torch.Tensor:
    """Parse an IDX file (the MNIST format: magic, dims, then uint8 data) into a uint8 tensor."""
    if len(data) < 4:
        raise DataError(f"{what}: not an IDX file (too short)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{what}: not an unsigned-byte IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{what}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(data) - header != count:
        raise DataError(f"{what}: expected {count} bytes of data for shape {dims}, found {len(data) - header}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _load_mini(split: str) -> ImageData:
    prefix = "train" if split == "train" else "t10k"
    pkg = resources.files("vaecli") / "assets"
    imgs = read_idx(lzma.decompress((pkg / f"fmnist-mini-{prefix}-images.xz").read_bytes()), "fashion-mnist-mini")
    labels = read_idx(lzma.decompress((pkg / f"fmnist-mini-{prefix}-labels.xz").read_bytes()), "fashion-mnist-mini")
    return ImageData(images=imgs.unsqueeze(1).contiguous(), labels=labels.long())


def _load_torchvision(name: str, root: Path, split: str, download: bool = True) -> ImageData:
    from torchvision import datasets

    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    raw = root / cls.__name__ / "raw"
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataError(_missing_message(name, raw)) from None
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(_missing_message(name, raw) + f" (download failed: {type(exc).__name__})") from None
    return ImageData(images=ds.data.unsqueeze(1).contiguous(), labels=ds.targets.long())


def _missing_message(name: str, raw: Path) -> str:
    return f"{name} not found and could not be downloaded: put {', '.join(IDX_FILES)} (optionally .gz) in {raw}"


# ----------------------------------------------------------------------------- image files


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; symlinked folders followed once (loops skipped)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=None):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / fn)
    return sorted(found)


def load_image(path: str | os.PathLike[str], channels: int | None = None, size: int | None = None) -> torch.Tensor:
    """Decode one image to uint8 (C, H, W): 16-bit, RGBA, palette, CMYK are converted.

    ``channels`` 1 gives grayscale, 3 RGB, None keeps gray images gray and the rest RGB.
    ``size`` centre-crops to a square and resizes. Raises :class:`DataError` on anything
    that is not a decodable image: a missing or non-regular file (a FIFO would block), a
    format outside :data:`IMAGE_FORMATS`, more than :data:`MAX_IMAGE_PIXELS` pixels
    (checked from the header, before decoding), or whatever the decoder raises on bad bytes.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        kind = "broken symbolic link" if path.is_symlink() else "no such file"
        raise DataError(f"{path}: cannot read image ({kind})") from None
    except OSError as exc:  # permission denied on a parent, symlink loop, name too long ...
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path}: cannot read image ({kind})")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder remarks on damaged files: the outcome is what counts
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:  # Pillow itself only warns below twice its limit
                    raise DataError(f"{path}: image is too large ({w}x{h}, over {MAX_IMAGE_PIXELS:,} pixels)")
                im.load()
                img = _normalise_mode(im)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image is too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: cannot decode image (not a {', '.join(IMAGE_FORMATS)} image)") from None
    except PermissionError:
        raise DataError(f"{path}: cannot read image (permission denied)") from None
    except MemoryError:
        raise DataError(f"{path}: cannot decode image (out of memory)") from None
    except Exception as exc:  # noqa: BLE001 - a decoder fed untrusted bytes may raise anything: all mean "bad file"
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None
    if channels == 1 and img.mode != "L":
        img = img.convert("L")
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None:
        w, h = img.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    c = 1 if img.mode == "L" else 3
    return t.reshape(img.size[1], img.size[0], c).permute(2, 0, 1).contiguous()


def _normalise_mode(im):  # type: ignore[no-untyped-def]
    """Any PIL mode -> 'L' (gray) or 'RGB'. Alpha is composited on white."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        t = torch.frombuffer(bytearray(im.convert("F").tobytes()), dtype=torch.float32)
        hi = 65535.0 if mode.startswith("I;16") or (mode == "I" and float(t.max()) > 255) else 255.0
        if mode == "F":
            hi = 1.0 if float(t.max()) <= 1.0 else 255.0
        arr = (t / hi * 255.0).clamp(0, 255).round().to(torch.uint8)
        return Image.frombytes("L", im.size, arr.numpy().tobytes())
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


def _is_gray(img: torch.Tensor) -> bool:
    return img.shape[0] == 1 or bool((img[0] == img[1]).all() and (img[1] == img[2]).all())


def load_folder(folder: str | os.PathLike[str], size: int, channels: int | None = None) -> tuple[ImageData, int]:
    """Every image under ``folder`` at ``size`` x ``size``; channels detected when None."""
    files = list_images(folder)
    if not files:
        raise DataError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {folder}")
    raw = [load_image(f, None, size) for f in files]
    if channels is None:
        channels = 1 if all(_is_gray(t) for t in raw) else 3
    imgs = torch.stack([_convert_channels(t, channels) for t in raw])
    rel = [str(f.relative_to(folder)) for f in files]
    return ImageData(images=imgs, paths=rel), channels


def _convert_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    if t.shape[0] == channels:
        return t
    if channels == 3:
        return t.expand(3, -1, -1).contiguous()
    # ITU-R 601-2 luma, as PIL's convert("L")
    f = t.float()
    return (f[0] * 0.299 + f[1] * 0.587 + f[2] * 0.114).round().clamp(0, 255).to(torch.uint8).unsqueeze(0)


def split_indices(n: int, seed: int, test_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train/test split of ``n`` items by ``seed``: (train_idx, test_idx), each sorted."""
    if n < 2:
        raise DataError(f"need at least 2 images for a train/test split, found {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _subset(data: ImageData, idx: torch.Tensor) -> ImageData:
    return ImageData(
        images=data.images[idx].contiguous(),
        labels=None if data.labels is None else data.labels[idx],
        paths=None if data.paths is None else [data.paths[i] for i in idx.tolist()],
    )


# ----------------------------------------------------------------------------- entry point


def fingerprint(*splits: ImageData) -> str:
    """A short sha256 of the image bytes: identifies the data a run saw."""
    h = hashlib.sha256()
    for s in splits:
        h.update(str(tuple(s.images.shape)).encode())
        h.update(s.images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_data(cfg: DataConfig, download: bool = True) -> tuple[ImageData, ImageData, DataConfig]:
    """Load (train, test) for ``cfg``; returns a copy of ``cfg`` with size, channels and fingerprint filled in."""
    from .paths import data_root

    name = cfg.name
    if name == "fashion-mnist-mini":
        train, test = _load_mini("train"), _load_mini("test")
    elif name in ("fashion-mnist", "mnist"):
        root = data_root(cfg.root)
        train = _load_torchvision(name, root, "train", download)
        test = _load_torchvision(name, root, "test", download)
    elif name == "shapes":
        from .shapes import load_shapes

        everything = load_shapes(data_root(cfg.root), cfg.image_size or 32)
        tr, te = split_indices(len(everything), cfg.split_seed)
        train, test = _subset(everything, tr), _subset(everything, te)
    else:
        folder = Path(name).expanduser()
        if not folder.exists():
            known = ", ".join(REGISTRY)
            raise DataError(f"--data {name!r} is neither a dataset ({known}) nor an existing folder")
        everything, channels = load_folder(folder, cfg.image_size or 28, cfg.channels)
        tr, te = split_indices(len(everything), cfg.split_seed)
        train, test = _subset(everything, tr), _subset(everything, te)
    if name in REGISTRY:
        if cfg.image_size not in (None, train.image_size) or cfg.channels not in (None, train.channels):
            train, test = _resize(train, cfg), _resize(test, cfg)
    if cfg.binarize:
        test = binarize_fixed(test)
    out = replace(
        cfg,
        image_size=train.image_size,
        channels=train.channels,
        fingerprint=fingerprint(train, test),
        train_size=len(train),
        test_size=len(test),
    )
    return train, test, out


def _resize(data: ImageData, cfg: DataConfig) -> ImageData:
    import torch.nn.functional as F

    imgs = data.images
    if cfg.channels is not None and cfg.channels != imgs.shape[1]:
        imgs = torch.stack([_convert_channels(t, cfg.channels) for t in imgs])
    if cfg.image_size is not None and cfg.image_size != imgs.shape[-1]:
        f = F.interpolate(imgs.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True, align_corners=False)
        imgs = f.round().clamp(0, 255).to(torch.uint8)
    return ImageData(images=imgs.contiguous(), labels=data.labels, paths=data.paths)
