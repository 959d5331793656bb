"""Feature spaces for sample-quality scores (:mod:`vaecli.eval.fidelity`).

Two extractors, each a callable from float images (N, C, H, W) in [0, 1] to features (N, D):

* ``vaecli-fmnist-net-v1``: the penultimate layer (128 ReLU units) of a small classifier CNN
  trained on Fashion-MNIST by ``scripts/train_feature_net.py`` and shipped in the package as
  safetensors. For 28x28 grayscale images. Works offline. Its numbers are **not** comparable
  with Inception FIDs from the literature: every output names the feature space.
* ``inception-v3-pool3``: the 2,048-d pool features of the TensorFlow Inception v3 used by FID
  papers, through the optional ``torch-fidelity`` package (``pip install vaecli[fid]``); its
  weights download on first use. Missing package or no network: one :class:`DataError`.

:data:`FEATURES` maps each name to a function building its extractor; :func:`default_features`
picks the name for a run's image shape.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError, DataError

FMNIST_NET = "vaecli-fmnist-net-v1"
INCEPTION = "inception-v3-pool3"
FMNIST_NET_FILE = "fmnist-net-v1.safetensors"
FMNIST_NET_FORMAT = "vaecli-fmnist-net-1"
# Fashion-MNIST pixel statistics (train split, pixels in [0, 1]): inputs are standardised with them.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class FeatureExtractor(Protocol):
    """Float images (N, C, H, W) in [0, 1] -> features (N, D) float32 on the CPU."""

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class FmnistNet(nn.Module):
    """A small classifier for 28x28 grayscale images: three 3x3 conv + max-pool stages
    (16, 32, 64 channels: 28 -> 14 -> 7 -> 3), a 128-unit ReLU layer (the features), 10 logits.

    The features are divided by ``feature_scale``, the root mean square of the 128 units over the
    training images (set by the training script), so that ``|f|^2 / 128`` is about 1 on real data:
    the scale KID's kernel ``(a.b / d + 1)^3`` expects. Unscaled, a few large-norm images dominated
    the cubic kernel (KID of real vs real images 0.02 ± 0.29 over subsets; scaled: -0.002 ± 0.004)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 3 * 3, 128)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(128, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer's activations, (N, 128), for float images (N, 1, 28, 28) in [0, 1]."""
        h = self.conv((x - FMNIST_MEAN) / FMNIST_STD)
        return torch.relu(self.fc(h.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features: :meth:`hidden` divided by ``feature_scale``."""
        return self.hidden(x) / self.get_buffer("feature_scale")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10)."""
        return self.out(self.drop(self.hidden(x)))


class _Batched:
    """Runs a feature function over batches without gradients; features come back float32 on the CPU."""

    def __init__(
        self,
        name: str,
        dim: int,
        fn: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        channels: int | None,
        size: int | None,
        batch_size: int,
    ) -> None:
        self.name, self.dim, self._fn, self._device = name, dim, fn, device
        self._channels, self._size, self._batch = channels, size, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ConfigError(f"{self.name}: expected images (N, C, H, W), got shape {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        if (self._channels is not None and c != self._channels) or (self._size is not None and (h, w) != (self._size, self._size)):
            raise ConfigError(f"{self.name} takes {self._channels}x{self._size}x{self._size} images, got {c}x{h}x{w}")
        outs = [
            self._fn(images[i : i + self._batch].to(self._device).float()).float().cpu() for i in range(0, images.shape[0], self._batch)
        ]
        return torch.cat(outs) if outs else torch.empty(0, self.dim)


def load_fmnist_net(path: Any = None) -> tuple[FmnistNet, dict[str, str]]:
    """The shipped feature net (eval mode, CPU) and its safetensors metadata (accuracy, command)."""
    from safetensors import safe_open

    if path is None:
        path = resources.files("vaecli") / "assets" / FMNIST_NET_FILE
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # missing or damaged asset
        raise DataError(f"the feature net {path} cannot be read ({type(exc).__name__}): reinstall vaecli") from None
    if meta.get("format") != FMNIST_NET_FORMAT:
        raise DataError(f"{path}: not a {FMNIST_NET_FORMAT} file")
    net = FmnistNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval(), meta


def fmnist_net(device: str | torch.device = "cpu", batch_size: int = 1000) -> FeatureExtractor:
    """Extractor ``vaecli-fmnist-net-v1``: 128-d penultimate features, 28x28 grayscale input."""
    net, _ = load_fmnist_net()
    dev = torch.device(device)
    net.to(dev)
    return _Batched(FMNIST_NET, 128, net.features, dev, 1, 28, batch_size)


def _hub_download(url: str, **kwargs: Any) -> Any:
    """torch.hub's loader, but checking the hash in the file name and unpickling tensors only."""
    return torch.hub.load_state_dict_from_url(url, **{**kwargs, "check_hash": True, "weights_only": True})


def inception(device: str | torch.device = "cpu", batch_size: int = 100) -> FeatureExtractor:
    """Extractor ``inception-v3-pool3``: 2,048-d Inception v3 pool features (torch-fidelity's port of
    the TensorFlow FID network); grayscale is repeated to RGB, any size is resized to 299 inside.
    Needs ``pip install vaecli[fid]``; the weights (about 100 MB) download on first use."""
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tfi
    except ImportError:
        raise DataError(f"--features {INCEPTION} needs torch-fidelity: pip install 'vaecli[fid]'") from None
    import contextlib
    import io
    from unittest import mock

    try:  # the download goes through _hub_download: a hash-checked, weights-only load
        # torch.hub's "Downloading: ..." line is held back, so that a failure is one line on stderr
        with mock.patch.object(tfi, "load_state_dict_from_url", _hub_download), contextlib.redirect_stderr(io.StringIO()):
            net = tfi.FeatureExtractorInceptionV3(INCEPTION, ["2048"])
    except Exception as exc:  # URLError, HTTPError, hash mismatch, socket errors...
        raise DataError(
            f"cannot load the Inception v3 weights (they download on first use; offline?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}".rstrip(": ")
        ) from None
    dev = torch.device(device)
    net.to(dev)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return net((x.clamp(0, 1) * 255).round().to(torch.uint8))[0]

    return _Batched(INCEPTION, 2048, fn, dev, None, None, batch_size)


FEATURES: dict[str, Callable[..., FeatureExtractor]] = {FMNIST_NET: fmnist_net, INCEPTION: inception}


def default_features(channels: int, image_size: int) -> str:
    """The feature space for images of this shape: the shipped net for 28x28 grayscale, else Inception."""
    return FMNIST_NET if (channels, image_size) == (1, 28) else INCEPTION


def get_extractor(name: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Build the extractor called ``name`` (a key of :data:`FEATURES`)."""
    if name not in FEATURES:
        raise ConfigError(f"--features must be one of {', '.join(FEATURES)} (or auto), got {name!r}")
    return FEATURES[name](device)
