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


class _ResBlock(nn.Module):
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


def _conv_encoder(cfg: ModelConfig) -> tuple[list[nn.Module], int, int]:
    """k4 s2 convs (widths), each followed by ``blocks`` residual blocks, then FC hidden.
    Returns (layers, last width, last side)."""
    c, widths = cfg.channels, list(cfg.widths)
    side = cfg.image_size // 2 ** len(widths)
    enc: list[nn.Module] = []
    prev = c
    for w in widths:
        enc += [nn.Conv2d(prev, w, 4, 2, 1), *_norm(cfg.norm, w), _act()]
        enc += [_ResBlock(w, cfg.norm) for _ in range(cfg.blocks)]
        prev = w
    enc += [nn.Flatten(), nn.Linear(prev * side * side, cfg.hidden), _act()]
    return enc, prev, side


def _build_conv(cfg: ModelConfig, out_ch: int) -> tuple[nn.Module, nn.Module, int]:
    """Lean conv net: k4 s2 convs (widths, each with ``blocks`` residual blocks), FC hidden, mirrored
    decoder. Returns (enc, dec, feat)."""
    widths = list(cfg.widths)
    enc, prev, side = _conv_encoder(cfg)
    flat = prev * side * side
    dec: list[nn.Module] = [nn.Linear(cfg.latent_dim, cfg.hidden), _act(), nn.Linear(cfg.hidden, flat), _act()]
    dec.append(_Reshape(prev, side, side))
    dec += _conv_upsampling(cfg, widths, out_ch)
    return nn.Sequential(*enc), nn.Sequential(*dec), cfg.hidden


def _build_spatial(cfg: ModelConfig, out_ch: int) -> tuple[nn.Module, nn.Module, tuple[int, int]]:
    """Conv stages with a spatial latent (no fully connected layer, as the autoencoders of latent
    diffusion): the encoder's last feature map gives mu and logvar per position through 1x1 convs,
    z is c maps of side x side (latent_dim = c side^2), the decoder mirrors the stages."""
    widths = list(cfg.widths)
    enc, prev, side = _conv_encoder(cfg)
    enc = enc[:-3]  # no Flatten, Linear, activation: the heads see the feature map
    c = cfg.latent_dim // (side * side)
    dec: list[nn.Module] = [_Reshape(c, side, side), nn.Conv2d(c, prev, 3, 1, 1), _act()]
    dec += _conv_upsampling(cfg, widths, out_ch)
    return nn.Sequential(*enc), nn.Sequential(*dec), (prev, c)


def _conv_upsampling(cfg: ModelConfig, widths: list[int], out_ch: int) -> list[nn.Module]:
    """The conv decoder's stages, widest first: ``blocks`` residual blocks, then a x2 upsampling
    (a k4 s2 transposed conv, or nearest x2 and a 3x3 conv) to the next width (the last: ``out_ch``)."""
    dec: list[nn.Module] = []
    rev = widths[::-1]
    for i, w in enumerate(rev):
        out = rev[i + 1] if i + 1 < len(rev) else out_ch
        dec += [_ResBlock(w, cfg.norm) for _ in range(cfg.blocks)]
        if cfg.upsample == "resize":  # nearest x2, then a 3x3 conv: no checkerboard (Odena et al. 2016)
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, out, 3, 1, 1)]
        else:
            dec.append(nn.ConvTranspose2d(w, out, 4, 2, 1))
        if i + 1 < len(rev):
            dec += [*_norm(cfg.norm, out), _act()]
    return dec


def _mlp_decoder(latent_dim: int, widths: list[int], shape: tuple[int, int, int]) -> nn.Module:
    """Linear layers latent_dim -> widths... -> C*H*W (logits), reshaped to an image."""
    dec: list[nn.Module] = []
    prev = latent_dim
    for w in widths:
        dec += [nn.Linear(prev, w), _act()]
        prev = w
    dec.append(_LinearToImage(prev, shape))
    return nn.Sequential(*dec)


def _build_mlp(cfg: ModelConfig, out_ch: int) -> tuple[nn.Module, nn.Module, int]:
    """Fully connected: pixels -> widths -> (mu, logvar); z -> reversed widths -> pixels."""
    enc: list[nn.Module] = [nn.Flatten()]
    prev = cfg.channels * cfg.image_size * cfg.image_size
    for w in cfg.widths:
        enc += [nn.Linear(prev, w), _act()]
        prev = w
    shape = (out_ch, cfg.image_size, cfg.image_size)
    return nn.Sequential(*enc), _mlp_decoder(cfg.latent_dim, list(cfg.widths)[::-1], shape), prev


def _build_conv_mlp(cfg: ModelConfig, out_ch: int) -> tuple[nn.Module, nn.Module, int]:
    """The conv encoder with an MLP decoder of two ``hidden`` layers."""
    enc, _, _ = _conv_encoder(cfg)
    shape = (out_ch, cfg.image_size, cfg.image_size)
    return nn.Sequential(*enc), _mlp_decoder(cfg.latent_dim, [cfg.hidden, cfg.hidden], shape), cfg.hidden


def _build_seed(cfg: ModelConfig, out_ch: int) -> tuple[nn.Module, nn.Module, int]:
    """The seed document's layer table, for any channels and size divisible by 4."""
    c = cfg.channels
    side = cfg.image_size // 4
    flat = 128 * side * side
    enc = nn.Sequential(
        nn.Conv2d(c, 32, 4, 2, 1), nn.BatchNorm2d(32), _act(),
        nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), _act(),
        nn.Conv2d(64, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
        nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
        nn.Flatten(), nn.Linear(flat, 512), nn.BatchNorm1d(512), _act(), nn.Dropout(0.3),
    )  # fmt: skip
    dec = nn.Sequential(
        nn.Linear(cfg.latent_dim, 512), nn.BatchNorm1d(512), _act(), nn.Dropout(0.3),
        nn.Linear(512, flat), _act(), _Reshape(128, side, side),
        nn.ConvTranspose2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), _act(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), _act(),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), _act(),
        nn.ConvTranspose2d(32, out_ch, 3, 1, 1),
    )  # fmt: skip
    return enc, dec, 512


_BUILDERS: dict[str, Any] = {
    "conv": _build_conv,
    "mlp": _build_mlp,
    "conv-mlp": _build_conv_mlp,
    "seed": _build_seed,
    "spatial": _build_spatial,
}


class VAE(nn.Module):
    """A (beta-)VAE built from a :class:`ModelConfig`.

    ``encode(x) -> (mu, logvar)``, ``decode_params(z)`` (the parameters of p(x|z)), ``decode(z)``
    (the likelihood's mean in [0, 1]: Bernoulli probabilities, Gaussian means, the logistic
    mixture's mean) and ``forward(x) -> VAEOutput``. ``likelihood`` is p(x|z)
    (:mod:`vaecli.model.likelihoods`). Inputs are float images in [0, 1], shape (B, C, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.likelihood = build_likelihood(config)
        self.prior: Prior = build_prior(
            config.latent_dim, config.prior, config.pseudo_inputs, (config.channels, config.image_size, config.image_size)
        )
        if isinstance(self.prior, VampPrior):
            self.prior.encode = self.encode
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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, logvar), each (B, latent_dim)."""
        h = self.encoder(x)
        if _autocast_on(h):  # the posterior heads stay fp32 under bf16 autocast (see _autocast_on)
            with torch.autocast(h.device.type, enabled=False):
                h = h.float()
                return self.fc_mu(h).flatten(1), self.fc_logvar(h).flatten(1)
        return self.fc_mu(h).flatten(1), self.fc_logvar(h).flatten(1)

    def posterior(self, x: torch.Tensor) -> Posterior:
        """q(z|x) in fp32."""
        mu, logvar = self.encode(x)
        return Posterior(mu.float(), logvar.float())

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output, the parameters of p(x|z): (B, out_channels, H, W)."""
        if not _autocast_on(z):
            return self.decoder(z)
        layers = list(self.decoder.children())  # the output layer stays fp32 under bf16 autocast
        body, last = layers[:-1], layers[-1]
        h = z
        for layer in body:
            h = layer(h)
        with torch.autocast(h.device.type, enabled=False):
            return last(h.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean in [0, 1] (never thresholded)."""
        return self.likelihood.mean(self.decode_params(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        """Encode, draw z (or take the mean when ``sample`` is false) and decode."""
        q = self.posterior(x)
        z = q.sample(generator) if sample else q.mean
        components = self.prior.components() if isinstance(self.prior, VampPrior) else None
        return VAEOutput(params=self.decode_params(z), mu=q.mu, logvar=q.logvar, z=z, prior=components)


def _autocast_on(t: torch.Tensor) -> bool:
    """True inside an enabled autocast region for ``t``'s device. Under bf16 autocast the layers
    that produce the likelihood's parameters and the posterior (mu, logvar) run in fp32: they cost
    little and their rounding otherwise costs nats (docs/performance.md, the bf16 check)."""
    return torch.is_autocast_enabled(t.device.type)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
