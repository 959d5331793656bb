"""Datasets held in memory as uint8 tensors (N, C, H, W), converted to float per batch.

Registry names (:data:`DATASETS`): ``fashion-mnist``, ``mnist`` (torchvision, downloaded when
missing), ``fashion-mnist-mini`` (a real 2,000 + 500 image subset shipped in the package),
``shapes`` (dSprites-like images with known factors, rendered and cached on first use; see
:mod:`.shapes`; 90/10 split by seed), or a path to a folder of images (recursive; its own size and
colour by default; decoded in parallel and cached; 90/10 train/test split by seed; see
docs/own-images.md).

Modules: :mod:`.dataset` (ImageData, split, fingerprint), :mod:`.idx` (IDX files, torchvision
sets, mini set), :mod:`.decode` (the one image decoder), :mod:`.files` (image files and
folders), :mod:`.cache` (the decode cache), :mod:`.shapes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import DataError
from .dataset import (
    BINARIZE_SEED,
    ImageData,
    binarize_fixed,
    convert_channels,
    fingerprint,
    split_indices,
    split_validation,
    subset,
    to_float,
)
from .files import (
    FITS,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    FolderLoad,
    list_images,
    load_folder,
    load_image,
)
from .idx import IDX_FILES, load_mini, load_torchvision, read_idx

__all__ = [
    "BINARIZE_SEED", "DATASETS", "FITS", "IDX_FILES", "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "MAX_IMAGE_PIXELS", "REGISTRY",
    "FolderLoad", "ImageData", "binarize_fixed", "check_split", "convert_channels", "fingerprint", "list_images", "load_data",
    "load_folder", "load_image", "load_split", "load_splits", "read_idx", "split_indices", "split_validation", "to_float",
]  # fmt: skip

Splits = tuple[ImageData, ImageData]


def _mini(cfg: DataConfig, download: bool) -> Splits:
    return load_mini("train"), load_mini("test")


def _torchvision(cfg: DataConfig, download: bool) -> Splits:
    from ..paths import data_root

    root = data_root(cfg.root)
    return load_torchvision(cfg.name, root, "train", download), load_torchvision(cfg.name, root, "test", download)


def _shapes(cfg: DataConfig, download: bool) -> Splits:
    from ..paths import data_root
    from .shapes import load_shapes

    everything = load_shapes(data_root(cfg.root), cfg.image_size or 32)
    tr, te = split_indices(len(everything), cfg.split_seed)
    return subset(everything, tr), subset(everything, te)


DATASETS: dict[str, Callable[[DataConfig, bool], Splits]] = {
    "fashion-mnist": _torchvision,
    "mnist": _torchvision,
    "fashion-mnist-mini": _mini,
    "shapes": _shapes,
}
REGISTRY = tuple(DATASETS)


def load_data(cfg: DataConfig, download: bool = True, load: FolderLoad | None = None) -> tuple[ImageData, ImageData, DataConfig]:
    """Load (train, test) for ``cfg``; returns a copy of ``cfg`` with size, channels, fingerprint
    (and for folders the rule: fit, cap, skipped files) filled in. ``load`` carries the folder
    options that are not stored: progress and notice callbacks, size rounding, cache use."""
    extra: dict = {}
    if cfg.name in DATASETS:
        train, test = DATASETS[cfg.name](cfg, download)
        if cfg.image_size not in (None, train.image_size) or cfg.channels not in (None, train.channels):
            train, test = _resize(train, cfg), _resize(test, cfg)
    else:
        train, test, extra = _folder(cfg, load or FolderLoad())
    if cfg.binarize:
        test = binarize_fixed(test)
    out = replace(
        cfg,
        image_size=train.image_size,
        channels=train.channels,
        fingerprint=fingerprint(train, test),
        train_size=len(train),
        test_size=len(test),
        **extra,
    )
    return train, test, out


SPLITS = ("train", "val", "test")


def check_split(split: str) -> None:
    """Refuse a split name other than train, val or test (the ``--split`` of every command)."""
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")


def load_split(cfg: DataConfig, split: str, download: bool = False) -> ImageData:
    """One split of a run's data as the run saw it: ``train`` (the images it was fitted on), ``val``
    (the validation images carved out of the training split) or ``test``. Nothing is downloaded
    unless ``download``."""
    check_split(split)
    return load_splits(cfg, download)[split]


def load_splits(cfg: DataConfig, download: bool = False) -> dict[str, ImageData]:
    """The three splits of :func:`load_split` (``train``, ``val``, ``test``) from one load of the data;
    ``val`` is empty when the run has no validation split."""
    train, test, _ = load_data(cfg, download=download)
    fit, val = split_validation(train, cfg.val_size or 0, cfg.split_seed)
    return {"train": fit, "val": val, "test": test}


def _folder(cfg: DataConfig, load: FolderLoad) -> tuple[ImageData, ImageData, dict]:
    folder = Path(cfg.name).expanduser()
    if not folder.exists():
        raise DataError(f"--data {cfg.name!r} is neither a dataset ({', '.join(REGISTRY)}) nor an existing folder")
    from ..config import MAX_AUTO_IMAGE_SIZE

    cap = cfg.max_image_size or MAX_AUTO_IMAGE_SIZE
    res = load_folder(folder, cfg.image_size, cfg.fit, cap, load)
    if res.skipped:
        first = ", ".join(f"{s['path']} ({s['reason']})" for s in res.skipped[:3])
        more = " ..." if len(res.skipped) > 3 else ""
        total = len(res.skipped) + len(res.data)
        if cfg.strict:
            raise DataError(f"{len(res.skipped)} of {total} files in {folder} cannot be used (--strict): {first}{more}")
        load.say(
            f"skipped {len(res.skipped)} of {total} files that cannot be used: {first}{more} (all listed in config.json; --strict makes this an error)"
        )
    train, test = _split_in_place(res.data, cfg.split_seed)
    if cfg.channels is not None and cfg.channels != train.channels:
        train, test = _resize(train, cfg), _resize(test, cfg)
    return train, test, {"skipped": res.skipped, "max_image_size": cap}


def _split_in_place(data: ImageData, seed: int) -> Splits:
    """The 90/10 split of :func:`split_indices` without a second copy of the pixels: the test rows
    are copied out (10%), the train rows moved to the front of the same tensor, in order."""
    tr, te = split_indices(len(data), seed)
    test = subset(data, te)
    imgs = data.images
    step = 1024
    for a in range(0, len(tr), step):  # tr[k] >= k: a chunk reads rows not yet overwritten
        idx = tr[a : a + step]
        imgs[a : a + len(idx)] = imgs[idx]
    paths = None if data.paths is None else [data.paths[i] for i in tr.tolist()]
    return ImageData(images=imgs[: len(tr)], labels=None, paths=paths), test


def _resize(data: ImageData, cfg: DataConfig) -> ImageData:
    import torch.nn.functional as F

    imgs = data.images
    if cfg.channels is not None and cfg.channels != imgs.shape[1]:
        imgs = convert_channels(imgs, cfg.channels)
    if cfg.image_size is not None and cfg.image_size != imgs.shape[-1]:
        f = F.interpolate(imgs.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True, align_corners=False)
        imgs = f.round().clamp(0, 255).to(torch.uint8)
    return ImageData(images=imgs.contiguous(), labels=data.labels, paths=data.paths)
