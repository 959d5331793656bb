"""The in-memory dataset: one split as a uint8 tensor (N, C, H, W), converted to float per batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import DataError

BINARIZE_SEED = 2016  # the fixed binarisation of test splits (the same for every run)


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


def split_indices(n: int, seed: int, test_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train/test split of ``n`` items by ``seed``: (train_idx, test_idx), each sorted."""
    if n < 2:
        raise DataError(f"need at least 2 images for a train/test split, found {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


VAL_SEED_OFFSET = 7919  # the validation split's generator is seeded apart from the train/test split's


def split_validation(data: ImageData, n_val: int, seed: int) -> tuple[ImageData, ImageData]:
    """(train, validation): ``n_val`` images of a training split set aside by ``seed``, each part in
    its original order. Deterministic, so a resumed run and every analysis command carve the same."""
    n = len(data)
    if not 0 <= n_val < n:
        raise DataError(f"--val-size must be between 0 and {n - 1} for a training split of {n} images, got {n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + VAL_SEED_OFFSET))
    return subset(data, perm[n_val:].sort().values), subset(data, perm[:n_val].sort().values)


def subset(data: ImageData, idx: torch.Tensor) -> ImageData:
    """The items ``idx`` of ``data`` (a copy)."""
    return ImageData(
        images=data.images[idx].contiguous(),
        labels=None if data.labels is None else data.labels[idx],
        paths=None if data.paths is None else [data.paths[i] for i in idx.tolist()],
    )


def fingerprint(*splits: ImageData) -> str:
    """A short sha256 of the image bytes: identifies the data a run saw."""
    h = hashlib.sha256()
    for s in splits:
        h.update(str(tuple(s.images.shape)).encode())
        h.update(memoryview(s.images.contiguous().numpy().data).cast("B"))  # no copy of the pixels
    return h.hexdigest()[:16]


def convert_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (..., C, H, W) to ``channels``: gray is repeated to RGB, RGB becomes ITU-R 601-2 luma (as PIL's convert('L'))."""
    if t.shape[-3] == channels:
        return t
    if channels == 3:
        return t.expand(*t.shape[:-3], 3, *t.shape[-2:]).contiguous()
    f = t.float()
    luma = f.select(-3, 0) * 0.299 + f.select(-3, 1) * 0.587 + f.select(-3, 2) * 0.114
    return luma.round().clamp(0, 255).to(torch.uint8).unsqueeze(-3)
