"""Feature spaces for sample-quality scores (:mod:`vaecli.eval.fidelity`).

Three extractors, each a callable from float images (N, C, H, W) in [0, 1] to features (N, D):

* ``vaecli-fmnist-net-v1``: the penultimate layer (128 ReLU units) of a small classifier CNN
  trained on Fashion-MNIST by ``scripts/train_feature_net.py`` and shipped in the package as
  safetensors. For 28x28 grayscale images. Works offline. Its numbers are **not** comparable
  with Inception FIDs from the literature: every output names the feature space.
* ``mobilenet-v2-imagenet``: the 1,280-d globally pooled features of torchvision's ImageNet
  MobileNetV2 (``MobileNet_V2_Weights.IMAGENET1K_V1``, the output of its last ``features`` block
  averaged over positions, before the classifier), for any image: gray repeated to RGB, resized to
  224 (bilinear, antialiased), ImageNet-normalised. Its 14 MB of weights come through torch.hub's
  hash-checked download and cache (``$TORCH_HOME/hub/checkpoints``): downloaded once, offline after.
* ``inception-v3-pool3``: the 2,048-d pool features of the TensorFlow Inception v3 used by FID
  papers, through the optional ``torch-fidelity`` package (``pip install vaecli[fid]``); its
  weights download on first use. Missing package or no network: one :class:`DataError`.

:data:`FEATURES` maps each name to a function building its extractor; :func:`default_features`
picks the name for a run's image shape. Nothing here imports torchvision's models until an
extractor is built (``vae --help`` stays fast).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, DataError

FMNIST_NET = "vaecli-fmnist-net-v1"
MOBILENET = "mobilenet-v2-imagenet"
INCEPTION = "inception-v3-pool3"
FMNIST_NET_FILE = "fmnist-net-v1.safetensors"
FMNIST_NET_FORMAT = "vaecli-fmnist-net-1"
# Fashion-MNIST pixel statistics (train split, pixels in [0, 1]): inputs are standardised with them.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
# torchvision's ImageNet preprocessing (ImageClassification): per-channel mean and std of [0, 1] pixels
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MOBILENET_SIZE = 224
MOBILENET_DIM = 1280
MOBILENET_CPU_BATCH = 4
# k of the precision/recall balls: 3 as Kynkäänniemi et al. 2019 (with 50,000 images a side) and the Fashion-MNIST net.
PR_K = 3
# MobileNetV2: 10, chosen on noto-emoji-64 (benchmarks/bench_mobilenet_space.py, docs/eval-samples.md): at the few
# hundred images a side that a folder's test split gives, k = 3 put real against real at recall 0.54 and blurred
# images near precision 0 (blur sigma 3: 0.15); k = 10 gives real 0.98 / 0.82 and blur 0.91, 0.58, 0.39, while
# uniform noise stays at precision 0.03 (k = 20 lets it reach 0.65). With fewer images a side it shrinks
# (vaecli.eval.fidelity.pr_k): k = 10 of 25 images is 40% of the set, balls so wide that the near-constant samples
# of a 3-step run scored precision 1 (0 at k = 3).
MOBILENET_PR_K = 10
# a space's k is used only where it is at most 1/PR_K_SHARE of the images a side (k = 10 from 350 images), else n // 35
PR_K_SHARE = 35


class FeatureExtractor(Protocol):
    """Float images (N, C, H, W) in [0, 1] -> features (N, D) float32 on the CPU; ``pr_k``: the k of
    precision/recall (:func:`vaecli.eval.fidelity.precision_recall`) in this space."""

    name: str
    dim: int
    pr_k: int

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
        pr_k: int = PR_K,
    ) -> None:
        self.name, self.dim, self.pr_k, self._fn, self._device = name, dim, pr_k, fn, device
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


def _quietly(load: Callable[[], Any]) -> Any:
    """``load()`` with torch.hub's "Downloading: ..." line held back (it goes to stdout, where it would
    break ``--json``; and a failed download must stay one line on stderr)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return load()


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters of it)."""
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def hub_weights_path(url: str) -> Path:
    """Where torch.hub keeps the file downloaded from ``url``: ``$TORCH_HOME/hub/checkpoints/NAME``
    (``torch.hub.get_dir()``, so ``~/.cache/torch/hub/checkpoints`` without TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_hub_weights(url: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict at ``url`` from torch.hub's cache, downloaded (hash-checked) when it is not there
    yet, unpickled with ``weights_only``. A failed download or an unreadable file: one :class:`DataError`
    naming the file, the URL and TORCH_HOME."""
    path = hub_weights_path(url)
    cached = path.exists()
    try:
        state = _quietly(lambda: _hub_download(url, progress=False, map_location="cpu"))
    except Exception as exc:  # URLError, HTTPError, socket errors, hash mismatch, a damaged file...
        home = os.environ.get("TORCH_HOME")
        where = f"TORCH_HOME={home}" if home else "TORCH_HOME is not set"
        if cached:
            raise DataError(
                f"the {what} weights {path} cannot be read ({_first_line(exc)}): delete the file to download it again"
            ) from None
        raise DataError(
            f"the {what} weights {path} are missing and could not be downloaded from {url} ({_first_line(exc)}; {where}): "
            "download them once with a network connection, or copy the file there"
        ) from None
    if not isinstance(state, dict):
        raise DataError(f"the {what} weights {path} are not a state dict: delete the file to download it again")
    return state


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1] with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) as RGB:
    gray repeated, alpha composited on white (as vaecli's image loader does)."""
    c = x.shape[1]
    if c in (2, 4):
        alpha = x[:, -1:]
        x = x[:, :-1] * alpha + (1 - alpha)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that follows a Conv2d in an ``nn.Sequential`` into that conv
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``), in place: the same function, about 15% faster on a CPU."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv.eval(), bn.eval()), nn.Identity()
    return module


def mobilenet_url() -> str:
    """The URL of the MobileNetV2 weights: torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1.url``."""
    from torchvision.models import MobileNet_V2_Weights

    return str(MobileNet_V2_Weights.IMAGENET1K_V1.url)


def mobilenet(device: str | torch.device = "cpu", batch_size: int | None = None) -> FeatureExtractor:
    """Extractor ``mobilenet-v2-imagenet``: the 1,280-d pooled features of torchvision's ImageNet
    MobileNetV2 (IMAGENET1K_V1), any size and 1-4 channels (see :func:`_to_rgb`), resized to 224.
    The weights come from torch.hub's cache, downloaded there once (:func:`load_hub_weights`).
    ``batch_size`` default: 4 images on a CPU (the activations of a batch stay in cache: 20 ms of CPU
    per image against 47 ms at 32), 64 on an accelerator."""
    import torch.nn.functional as F
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)  # the file torchvision's weights=IMAGENET1K_V1 loads, but through load_hub_weights
    net.load_state_dict(load_hub_weights(mobilenet_url(), "MobileNetV2"))
    dev = torch.device(device)
    body = fold_batch_norms(net.features.eval()).to(dev)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 2, 3, 4):
            raise ConfigError(f"{MOBILENET} takes images of 1 to 4 channels, got {x.shape[1]}")
        x = F.interpolate(_to_rgb(x.clamp(0, 1)), size=(MOBILENET_SIZE, MOBILENET_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)  # fmt: skip
        return F.adaptive_avg_pool2d(body((x - mean) / std), 1).flatten(1)

    batch = batch_size or (MOBILENET_CPU_BATCH if dev.type == "cpu" else 64)
    return _Batched(MOBILENET, MOBILENET_DIM, fn, dev, None, None, batch, pr_k=MOBILENET_PR_K)


def inception(device: str | torch.device = "cpu", batch_size: int = 100) -> FeatureExtractor:
    """Extractor ``inception-v3-pool3``: 2,048-d Inception v3 pool features (torch-fidelity's port of
    the TensorFlow FID network); grayscale is repeated to RGB, any size is resized to 299 inside.
    Needs ``pip install vaecli[fid]``; the weights (about 100 MB) download on first use."""
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tfi
    except ImportError:
        raise DataError(f"--features {INCEPTION} needs torch-fidelity: pip install 'vaecli[fid]'") from None
    from unittest import mock

    try:  # the download goes through _hub_download: a hash-checked, weights-only load
        with mock.patch.object(tfi, "load_state_dict_from_url", _hub_download):
            net = _quietly(lambda: tfi.FeatureExtractorInceptionV3(INCEPTION, ["2048"]))
    except Exception as exc:  # URLError, HTTPError, hash mismatch, socket errors...
        raise DataError(f"cannot load the Inception v3 weights (they download on first use; offline?): {_first_line(exc)}") from None
    dev = torch.device(device)
    net.to(dev)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return net((x.clamp(0, 1) * 255).round().to(torch.uint8))[0]

    return _Batched(INCEPTION, 2048, fn, dev, None, None, batch_size)


FEATURES: dict[str, Callable[..., FeatureExtractor]] = {FMNIST_NET: fmnist_net, MOBILENET: mobilenet, INCEPTION: inception}


def default_features(channels: int, image_size: int) -> str:
    """The feature space for images of this shape: the shipped net for 28x28 grayscale, MobileNetV2
    for everything else (colour, other sizes). Inception is never the default: it needs the ``fid`` extra."""
    return FMNIST_NET if (channels, image_size) == (1, 28) else MOBILENET


def get_extractor(name: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Build the extractor called ``name`` (a key of :data:`FEATURES`)."""
    if name not in FEATURES:
        raise ConfigError(f"--features must be one of {', '.join(FEATURES)} (or auto), got {name!r}")
    return FEATURES[name](device)
