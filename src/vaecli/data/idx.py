"""IDX files (the MNIST format), the torchvision sets (fashion-mnist, mnist) and the shipped mini set."""

from __future__ import annotations

import lzma
import struct
from importlib import resources
from pathlib import Path

import torch

from ..errors import DataError
from .dataset import ImageData

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def load_mini(split: str) -> ImageData:
    """One split of ``fashion-mnist-mini`` (2,000 train / 500 test real images shipped in the package)."""
    prefix = "train" if split == "train" else "t10k"
    pkg = resources.files("vaecli") / "assets"
    imgs = read_idx(lzma.decompress((pkg / f"fmnist-mini-{prefix}-images.xz").read_bytes()), "fashion-mnist-mini")
    labels = read_idx(lzma.decompress((pkg / f"fmnist-mini-{prefix}-labels.xz").read_bytes()), "fashion-mnist-mini")
    return ImageData(images=imgs.unsqueeze(1).contiguous(), labels=labels.long())


def load_torchvision(name: str, root: Path, split: str, download: bool = True) -> ImageData:
    """One split of a torchvision set (``fashion-mnist`` or ``mnist``) under ``root``; downloaded when missing and allowed."""
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
