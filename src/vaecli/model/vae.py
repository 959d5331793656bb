"""The VAE: encoder q(z|x) = N(mu, diag(sigma^2)), decoder p(x|z), reparameterisation.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes". Two architectures:

* ``conv`` (default): a lean conv net, strided convs then one fully connected layer, the
  fastest per unit of ELBO on a CPU (see docs/performance.md);
* ``mlp``: fully connected layers only (``widths`` hidden layers, mirrored in the decoder):
  dense matmuls run near a CPU's peak where small convolutions do not;
* ``conv-mlp``: the conv encoder with an MLP decoder (two ``hidden`` layers);
* ``seed``: the seed document's layer table, exactly (7,048,865 parameters at 1x28x28, z=32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from .likelihoods import build_likelihood
from .posterior import Posterior
from .priors import Prior, VampPrior, build_prior


@dataclass
class VAEOutput:
    """What :meth:`VAE.forward` returns."""

    params: torch.Tensor  # the decoder's output: the parameters of p(x|z), (B, out_channels, H, W)
    mu: torch.Tensor  # posterior means (B, D)
    logvar: torch.Tensor  # posterior log-variances (B, D)
    z: torch.Tensor  # the sample that was decoded (B, D)
    prior: Posterior | None = None  # a VampPrior's components q(z|u_k) of this pass (else None)
    groups: list[Any] | None = None  # the hierarchical model's spatial groups (hvae.GroupPass each: KL, mean), else None

    def group_kl(self) -> torch.Tensor | None:
        """The spatial groups' KLs per image summed, (B,), or None for a flat model."""
        if not self.groups:
            return None
        return torch.stack([g.kl for g in self.groups]).sum(0)

    @property
    def posterior(self) -> Posterior:
        """q(z|x) of the batch."""
        return Posterior(self.mu, self.logvar)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class _Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class _LinearToImage(nn.Linear):
    """The MLP decoder's output layer: a linear layer whose output is reshaped to (B, C, H, W)."""

    def __init__(self, features: int, shape: tuple[int, int, int]) -> None:
        super().__init__(features, shape[0] * shape[1] * shape[2])
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).reshape(x.shape[0], *self.shape)


def _norm(kind: str, channels: int) -> list[nn.Module]:
    """The conv stages' normalisation layer (none, GroupNorm with up to 8 groups, BatchNorm)."""
    if kind == "group":
        return [nn.GroupNorm(math.gcd(8, channels), channels)]
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    return []


class ResBlock(nn.Module):
    """x + conv3x3(act(norm(conv3x3(act(norm(x)))))), the second conv zero-initialised so that the
    block starts as the identity (the residual blocks of diffusers' and NVAE's autoencoders, small)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_norm(norm, channels), _act(), nn.Conv2d(channels, channels, 3, 1, 1),
            *_norm(norm, channels), _act(), nn.Conv2d(channels, channels, 3, 1, 1),
        )  # fmt: skip
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Parts(nn.Module):
    """A ``body`` (an nn.Sequential) then a ``head``: the named parts of the encoder and the decoder."""

    body: nn.Sequential
    head: nn.Module

    def old_name(self, index: int) -> str:
        """The name, under this module, of the layer that the layout before the named parts (one
        nn.Sequential: the body's layers, then the head's) saved at ``index``."""
        n = len(self.body)
        if index < n:
            return f"body.{index}"
        return f"head.{index - n}" if isinstance(self.head, nn.Sequential) else "head"


class Encoder(_Parts):
    """x -> the features the posterior heads read. ``body``: the conv stages, or the dense layers of
    ``mlp``; ``head``: the fully connected layer after the conv stages (``conv``, ``conv-mlp``,
    ``seed``), none where the body's output is the features (``mlp``; ``spatial``, whose 1x1
    posterior heads read the feature map)."""

    def __init__(self, body: list[nn.Module], head: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = nn.Sequential(*head) if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Decoder(_Parts):
    """z -> the parameters of p(x|z), (B, out_channels, H, W). ``body``: every layer but the output
    layer; ``head``: the output layer, which stays fp32 under bf16 autocast (see :func:`_autocast_on`)."""

    def __init__(self, body: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(z)
        if not _autocast_on(h):
            return self.head(h)
        with torch.autocast(h.device.type, enabled=False):
            return self.head(h.float())


def _conv_stages(cfg: ModelConfig) -> tuple[list[nn.Module], int, int]:
    """k4 s2 convs (widths), each followed by ``blocks`` residual blocks. Returns (layers, last
    width, last side)."""
    side = cfg.image_size // 2 ** len(cfg.widths)
    stages: list[nn.Module] = []
    prev = cfg.channels
    for w in cfg.widths:
        stages += [nn.Conv2d(prev, w, 4, 2, 1), *_norm(cfg.norm, w), _act()]
        stages += [ResBlock(w, cfg.norm) for _ in range(cfg.blocks)]
        prev = w
    return stages, prev, side


def _conv_encoder(cfg: ModelConfig) -> Encoder:
    """The conv stages, then a fully connected layer of ``hidden`` units."""
    stages, prev, side = _conv_stages(cfg)
    return Encoder(stages, [nn.Flatten(), nn.Linear(prev * side * side, cfg.hidden), _act()])


def _build_conv(cfg: ModelConfig, out_ch: int) -> tuple[Encoder, Decoder, int]:
    """Lean conv net: k4 s2 convs (widths, each with ``blocks`` residual blocks), FC hidden, mirrored
    decoder. Returns (encoder, decoder, features)."""
    enc = _conv_encoder(cfg)  # the layers are made in the order of their parameters (the same init for a seed)
    side = cfg.image_size // 2 ** len(cfg.widths)
    prev = cfg.widths[-1]
    flat = prev * side * side
    dense: list[nn.Module] = [nn.Linear(cfg.latent_dim, cfg.hidden), _act(), nn.Linear(cfg.hidden, flat), _act()]
    stages, out = _conv_upsampling(cfg, out_ch)
    return enc, Decoder([*dense, _Reshape(prev, side, side), *stages], out), cfg.hidden


def _build_spatial(cfg: ModelConfig, out_ch: int) -> tuple[Encoder, Decoder, tuple[int, int]]:
    """Conv stages with a spatial latent (no fully connected layer, as the autoencoders of latent
    diffusion): the encoder's last feature map gives mu and logvar per position through 1x1 convs,
    z is c maps of side x side (latent_dim = c side^2), the decoder mirrors the stages."""
    stages, prev, side = _conv_stages(cfg)
    c = cfg.latent_dim // (side * side)
    first: list[nn.Module] = [_Reshape(c, side, side), nn.Conv2d(c, prev, 3, 1, 1), _act()]
    up, out = _conv_upsampling(cfg, out_ch)
    return Encoder(stages), Decoder([*first, *up], out), (prev, c)


def _upsample(cfg: ModelConfig, channels: int, out: int) -> tuple[list[nn.Module], nn.Module]:
    """A x2 upsampling from ``channels`` to ``out`` channels: (the layers before its conv, the conv):
    a k4 s2 transposed conv, or nearest x2 and a 3x3 conv (no checkerboard, Odena et al. 2016)."""
    if cfg.upsample == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest")], nn.Conv2d(channels, out, 3, 1, 1)
    return [], nn.ConvTranspose2d(channels, out, 4, 2, 1)


def _conv_upsampling(cfg: ModelConfig, out_ch: int) -> tuple[list[nn.Module], nn.Module]:
    """The conv decoder's stages, widest first: ``blocks`` residual blocks, then a x2 upsampling to
    the next width. Returns (the stages, the output layer: the last stage's conv to ``out_ch``)."""
    rev = list(cfg.widths)[::-1]
    layers: list[nn.Module] = []
    for w, nxt in zip(rev, rev[1:]):
        layers += [ResBlock(w, cfg.norm) for _ in range(cfg.blocks)]
        before, conv = _upsample(cfg, w, nxt)
        layers += [*before, conv, *_norm(cfg.norm, nxt), _act()]
    layers += [ResBlock(rev[-1], cfg.norm) for _ in range(cfg.blocks)]
    before, out = _upsample(cfg, rev[-1], out_ch)
    return [*layers, *before], out


def _mlp_decoder(latent_dim: int, widths: list[int], shape: tuple[int, int, int]) -> Decoder:
    """Linear layers latent_dim -> widths... -> C*H*W (logits), reshaped to an image."""
    body: list[nn.Module] = []
    prev = latent_dim
    for w in widths:
        body += [nn.Linear(prev, w), _act()]
        prev = w
    return Decoder(body, _LinearToImage(prev, shape))


def _build_mlp(cfg: ModelConfig, out_ch: int) -> tuple[Encoder, Decoder, int]:
    """Fully connected: pixels -> widths -> (mu, logvar); z -> reversed widths -> pixels."""
    body: list[nn.Module] = [nn.Flatten()]
    prev = cfg.channels * cfg.image_size * cfg.image_size
    for w in cfg.widths:
        body += [nn.Linear(prev, w), _act()]
        prev = w
    shape = (out_ch, cfg.image_size, cfg.image_size)
    return Encoder(body), _mlp_decoder(cfg.latent_dim, list(cfg.widths)[::-1], shape), prev


def _build_conv_mlp(cfg: ModelConfig, out_ch: int) -> tuple[Encoder, Decoder, int]:
    """The conv encoder with an MLP decoder of two ``hidden`` layers."""
    enc = _conv_encoder(cfg)
    shape = (out_ch, cfg.image_size, cfg.image_size)
    return enc, _mlp_decoder(cfg.latent_dim, [cfg.hidden, cfg.hidden], shape), cfg.hidden


def _build_seed(cfg: ModelConfig, out_ch: int) -> tuple[Encoder, Decoder, int]:
    """The seed document's layer table, for any channels and size divisible by 4."""
    c = cfg.channels
    side = cfg.image_size // 4
    flat = 128 * side * side
    enc = Encoder(
        [
            nn.Conv2d(c, 32, 4, 2, 1), nn.BatchNorm2d(32), _act(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), _act(),
            nn.Conv2d(64, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
            nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
        ],
        [nn.Flatten(), nn.Linear(flat, 512), nn.BatchNorm1d(512), _act(), nn.Dropout(0.3)],
    )  # fmt: skip
    dec = Decoder(
        [
            nn.Linear(cfg.latent_dim, 512), nn.BatchNorm1d(512), _act(), nn.Dropout(0.3),
            nn.Linear(512, flat), _act(), _Reshape(128, side, side),
            nn.ConvTranspose2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), _act(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), _act(),
        ],
        nn.ConvTranspose2d(32, out_ch, 3, 1, 1),
    )  # fmt: skip
    return enc, dec, 512


ARCH_CLASSES: dict[str, type[VAE]] = {}  # archs built by a subclass of VAE (hvae: model.hvae.HVAE registers itself)

_BUILDERS: dict[str, Any] = {
    "conv": _build_conv,
    "mlp": _build_mlp,
    "conv-mlp": _build_conv_mlp,
    "seed": _build_seed,
    "spatial": _build_spatial,
}


class VAE(nn.Module):
    """A (beta-)VAE built from a :class:`ModelConfig`.

    ``encoder`` and ``decoder`` (each a ``body`` and a ``head``), the posterior heads ``fc_mu`` and
    ``fc_logvar``; ``encode(x) -> Posterior`` (q(z|x)), ``decode_params(z)`` (the parameters of p(x|z)), ``decode(z)``
    (the likelihood's mean in [0, 1]: Bernoulli probabilities, Gaussian means, the logistic
    mixture's mean) and ``forward(x) -> VAEOutput``. ``likelihood`` is p(x|z)
    (:mod:`vaecli.model.likelihoods`). Inputs are float images in [0, 1], shape (B, C, H, W).
    """

    def __new__(cls, config: ModelConfig | None = None, *args: Any, **kwargs: Any) -> VAE:
        """``VAE(config)`` builds the hierarchical model (:class:`vaecli.model.hvae.HVAE`, a VAE)
        when ``config.arch`` is ``hvae`` (:data:`ARCH_CLASSES`, which that module fills when the
        package is imported), so every place that rebuilds a run's model builds it (no ``config``: a
        copy being made, of the class it copies)."""
        if cls is VAE and config is not None and config.arch in ARCH_CLASSES:
            return super().__new__(ARCH_CLASSES[config.arch])
        return super().__new__(cls)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._start(config)
        self.encoder, self.decoder, feat = _BUILDERS[config.arch](config, self.likelihood.out_channels(config.channels))
        if isinstance(feat, tuple):  # a feature map (channels) -> c latent maps: 1x1 conv heads
            self.fc_mu: nn.Module = nn.Conv2d(feat[0], feat[1], 1)
            self.fc_logvar: nn.Module = nn.Conv2d(feat[0], feat[1], 1)
        else:
            self.fc_mu, self.fc_logvar = nn.Linear(feat, config.latent_dim), nn.Linear(feat, config.latent_dim)
        # Start with small posterior variances (the seed: weight 0, bias -6) so early
        # training is not drowned in sampling noise.
        assert isinstance(self.fc_logvar, (nn.Linear, nn.Conv2d)) and self.fc_logvar.bias is not None
        nn.init.zeros_(self.fc_logvar.weight)
        nn.init.constant_(self.fc_logvar.bias, -6.0 if config.arch == "seed" else -4.0)

    def _start(self, config: ModelConfig) -> None:
        """What every arch has: the checked config, the likelihood p(x|z) and the prior p(z) (a
        VampPrior given this model's encoder)."""
        config.validate()
        self.config = config
        self.likelihood = build_likelihood(config)
        self.prior: Prior = build_prior(
            config.latent_dim, config.prior, config.pseudo_inputs, (config.channels, config.image_size, config.image_size)
        )
        if isinstance(self.prior, VampPrior):
            self.prior.encode = self.encode

    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z|x), its parameters (mu, logvar) each (B, latent_dim) in fp32."""
        h = self.encoder(x)
        if _autocast_on(h):  # the posterior heads stay fp32 under bf16 autocast (see _autocast_on)
            with torch.autocast(h.device.type, enabled=False):
                h = h.float()
                return Posterior(self.fc_mu(h).flatten(1), self.fc_logvar(h).flatten(1))
        return Posterior(self.fc_mu(h).flatten(1).float(), self.fc_logvar(h).flatten(1).float())

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output, the parameters of p(x|z): (B, out_channels, H, W)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean in [0, 1] (never thresholded)."""
        return self.likelihood.mean(self.decode_params(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        """Encode, draw z (or take the mean when ``sample`` is false) and decode."""
        q = self.encode(x)
        z = q.sample(generator) if sample else q.mean
        components = self.prior.components() if isinstance(self.prior, VampPrior) else None
        return VAEOutput(params=self.decode_params(z), mu=q.mu, logvar=q.logvar, z=z, prior=components)


def _autocast_on(t: torch.Tensor) -> bool:
    """True inside an enabled autocast region for ``t``'s device. Under bf16 autocast the layers
    that produce the likelihood's parameters and the posterior (mu, logvar) run in fp32: they cost
    little and their rounding otherwise costs nats (docs/performance.md, the bf16 check)."""
    return torch.is_autocast_enabled(t.device.type)


def upgrade_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` of a :class:`VAE` saved before the encoder and decoder had named parts (one
    nn.Sequential each: ``encoder.3.weight``) under their names now (``encoder.body.3.weight``); the
    layers, their order and so the parameters' order are the same. Other tensors and other models'
    state dicts come back as they are."""
    if not isinstance(model, VAE) or not isinstance(model.decoder, Decoder):  # hvae: named parts from the start
        return tensors
    parts: dict[str, _Parts] = {"encoder": model.encoder, "decoder": model.decoder}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        index, _, tail = rest.partition(".")
        if part in parts and index.isdigit() and tail:
            key = f"{part}.{parts[part].old_name(int(index))}.{tail}"
        out[key] = value
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
