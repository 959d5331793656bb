"""A top-down hierarchical VAE sized for a CPU (``--arch hvae``).

The latents are a global vector z_0 (``latent_dim``, what ``traverse`` and ``interpolate`` act on)
and spatial groups z_1..z_L below it, one at each of the deepest conv stages (``groups``: their
channel counts, deepest first). The generative model is top-down,

    p(x, z) = p(z_0) prod_l p(z_l | z_<l) p(x | z),

each p(z_l | z_<l) a diagonal Gaussian predicted from the decoder's state h_l, which carries every
group above; the posterior shares that state, q(z_l | x, z_<l) = N(f(h_l, e_l)), with e_l the
bottom-up encoder's features at the group's resolution (the Ladder VAE's top-down inference,
Sønderby et al. 2016; NVAE, Vahdat & Kautz 2020, sec. 3; VDVAE, Child 2021, fig. 3). The bound is

    ELBO = E_q[log p(x|z)] - KL(q(z_0|x) || p(z_0)) - sum_l E_q[KL(q(z_l|x, z_<l) || p(z_l|z_<l))]

(Sønderby et al. 2016, eq. 14; Vahdat & Kautz 2020, eq. 2), each group's KL in closed form between
two diagonal Gaussians at the sample of the groups above.

Stability (what the papers measured on GPUs, kept because it costs nothing here): the prior's
output layer starts at zero (every p(z_l | z_<l) starts as N(0, I) and the state's residual as
the identity, VDVAE), log-variances are bounded by a soft clamp (NVAE's bounded scales), and the
trainer's gradient clipping and rollback on a non-finite step guard the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .posterior import LOG_2PI, Posterior
from .priors import VampPrior
from .vae import ARCH_CLASSES, VAE, Encoder, ResBlock, VAEOutput, _act, _autocast_on, _Reshape, _upsample

LOGVAR_BOUND = 7.0  # the groups' log-variances are soft-clamped to (-7, 7): sigma in (0.03, 33)


def soft_clamp(logvar: torch.Tensor, bound: float = LOGVAR_BOUND) -> torch.Tensor:
    """bound * tanh(logvar / bound): the identity near 0, smooth, never beyond +-bound (NVAE's
    bounded scales, Vahdat & Kautz 2020, sec. 3.2)."""
    return bound * torch.tanh(logvar / bound)


def gaussian_kl(q_mu: torch.Tensor, q_logvar: torch.Tensor, p_mu: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(q_mu, e^q_logvar) || N(p_mu, e^p_logvar)) elementwise:
    0.5 (p_logvar - q_logvar + (e^q_logvar + (q_mu - p_mu)^2) / e^p_logvar - 1)."""
    return 0.5 * (p_logvar - q_logvar + (q_logvar.exp() + (q_mu - p_mu).pow(2)) * torch.exp(-p_logvar) - 1.0)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, e^logvar) summed over every dimension but the first, (B,)."""
    return (-0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)).flatten(1).sum(1)


@dataclass
class GroupPass:
    """One spatial group's part of a pass: its KL per image (B,) and posterior mean (B, c, s, s);
    with ``log_ratio`` the sample's log p(z_l | z_<l) - log q(z_l | x, z_<l) (B,)."""

    kl: torch.Tensor
    q_mean: torch.Tensor
    log_ratio: torch.Tensor | None = None


class LatentGroup(nn.Module):
    """A spatial latent group of ``channels`` maps at the resolution of a ``width``-channel state h:
    prior p(z | h), posterior q(z | h, e) and the update h <- h + residual + proj(z)."""

    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.prior = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), _act(), nn.Conv2d(width, 2 * channels + width, 1))
        self.posterior = nn.Sequential(nn.Conv2d(2 * width, width, 3, 1, 1), _act(), nn.Conv2d(width, 2 * channels, 1))
        self.proj = nn.Conv2d(channels, width, 1)
        last = self.prior[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)  # p(z | h) = N(0, I) and no residual at the start (VDVAE)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            self.proj.weight.mul_(0.1)

    def _prior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.channels
        out = _fp32_last(self.prior, h)
        return out[:, :c], soft_clamp(out[:, c : 2 * c]), out[:, 2 * c :].to(h.dtype)

    def infer(
        self, h: torch.Tensor, e: torch.Tensor, generator: torch.Generator | None, sample: bool, log_ratio: bool = False
    ) -> tuple[torch.Tensor, GroupPass]:
        """The posterior's pass: z ~ q(z | h, e) (its mean when not ``sample``), the new state and the
        group's KL to p(z | h) in closed form."""
        p_mu, p_logvar, res = self._prior(h)
        out = _fp32_last(self.posterior, torch.cat([h, e.to(h.dtype)], 1))
        q_mu, q_logvar = out[:, : self.channels], soft_clamp(out[:, self.channels :])
        z = q_mu + torch.exp(0.5 * q_logvar) * _noise(q_mu, generator) if sample else q_mu
        kl = gaussian_kl(q_mu, q_logvar, p_mu, p_logvar).flatten(1).sum(1)
        ratio = gaussian_log_prob(z, p_mu, p_logvar) - gaussian_log_prob(z, q_mu, q_logvar) if log_ratio else None
        return self._update(h, res, z), GroupPass(kl, q_mu, ratio)

    def generate(self, h: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        """The prior's pass: z = mu + temperature sigma eps from p(z | h) (temperature 0: its mean)."""
        p_mu, p_logvar, res = self._prior(h)
        z = p_mu + temperature * torch.exp(0.5 * p_logvar) * _noise(p_mu, generator) if temperature else p_mu
        return self._update(h, res, z)

    def _update(self, h: torch.Tensor, res: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return h + res + self.proj(z.to(h.dtype))


def _fp32_last(net: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """``net(h)`` with its last layer in fp32 under bf16 autocast: a group's prior and posterior
    parameters are computed in fp32, as every arch's posterior and likelihood (see vae._autocast_on)."""
    h = net[:-1](h)
    if not _autocast_on(h):
        return net[-1](h).float()
    with torch.autocast(h.device.type, enabled=False):
        return net[-1](h.float())


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class TopDown(nn.Module):
    """The decoder's state from z_0 to the image: per stage, deepest first, ``blocks`` residual
    blocks, the stage's latent group (if any), then a x2 upsampling; the output layer last."""

    def __init__(self, cfg: ModelConfig, out_ch: int) -> None:
        super().__init__()
        rev = list(cfg.widths)[::-1]
        side = cfg.image_size // 2 ** len(rev)
        self.start = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), _act(), nn.Linear(cfg.hidden, rev[0] * side * side), _act(), _Reshape(rev[0], side, side)
        )
        self.blocks = nn.ModuleList(nn.Sequential(*[ResBlock(w, "none") for _ in range(cfg.blocks)]) for w in rev)
        groups = list(cfg.groups) + [0] * (len(rev) - len(cfg.groups))
        self.groups = nn.ModuleList(LatentGroup(w, c) if c else nn.Identity() for w, c in zip(rev, groups))
        ups: list[nn.Module] = []
        for w, nxt in zip(rev, rev[1:]):
            before, conv = _upsample(cfg, w, nxt)
            ups.append(nn.Sequential(*before, conv, _act()))
        before, self.out = _upsample(cfg, rev[-1], out_ch)
        ups.append(nn.Sequential(*before))
        self.ups = nn.ModuleList(ups)

    def latent_groups(self) -> list[tuple[int, LatentGroup]]:
        """(stage index, group) of the stages that have a latent group, deepest first."""
        return [(i, g) for i, g in enumerate(self.groups) if isinstance(g, LatentGroup)]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The output layer, fp32 under bf16 autocast as every arch's (see vae._autocast_on)."""
        if not _autocast_on(h):
            return self.out(h)
        with torch.autocast(h.device.type, enabled=False):
            return self.out(h.float())


class HVAE(VAE):
    """The hierarchical VAE of this module: ``encode(x)`` is q(z_0 | x), the top latent (what
    ``traverse``, ``interpolate``, ``encode`` and a fitted prior act on); ``decode(z_0)`` decodes
    with the groups below at their prior means (temperature 0), ``decode(z_0, temperatures,
    generator)`` draws them; ``decoder`` is the top-down path (:class:`TopDown`); ``forward`` infers
    every group and returns their KLs (``VAEOutput.groups``). Built by ``VAE(config)`` when ``config.arch == "hvae"``."""

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)  # not VAE.__init__: no flat encoder and decoder
        self._start(config)
        stages: list[nn.Sequential] = []
        prev = config.channels
        for w in config.widths:
            stages.append(nn.Sequential(nn.Conv2d(prev, w, 4, 2, 1), _act(), *[ResBlock(w, "none") for _ in range(config.blocks)]))
            prev = w
        side = config.image_size // 2 ** len(config.widths)
        self.encoder = Encoder(list(stages), [nn.Flatten(), nn.Linear(prev * side * side, config.hidden), _act()])
        self.fc_mu, self.fc_logvar = nn.Linear(config.hidden, config.latent_dim), nn.Linear(config.hidden, config.latent_dim)
        nn.init.zeros_(self.fc_logvar.weight)
        nn.init.constant_(self.fc_logvar.bias, -4.0)
        self.decoder: TopDown = TopDown(config, self.likelihood.out_channels(config.channels))

    def num_groups(self) -> int:
        """Spatial latent groups below the top latent."""
        return len(self.decoder.latent_groups())

    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, side, side) of each spatial group, deepest first."""
        n = len(self.config.widths)
        return [
            (g.channels, self.config.image_size // 2 ** (n - i), self.config.image_size // 2 ** (n - i))
            for i, g in self.decoder.latent_groups()
        ]

    def _bottom_up(self, x: torch.Tensor) -> tuple[list[torch.Tensor], Posterior]:
        """The encoder's feature map at every stage (shallowest first) and q(z_0 | x)."""
        feats = []
        h = x
        for stage in self.encoder.body:
            h = stage(h)
            feats.append(h)
        return feats, self._top_posterior(self.encoder.head(h))

    def _top_posterior(self, h: torch.Tensor) -> Posterior:
        if _autocast_on(h):
            with torch.autocast(h.device.type, enabled=False):
                h = h.float()
                return Posterior(self.fc_mu(h), self.fc_logvar(h))
        return Posterior(self.fc_mu(h).float(), self.fc_logvar(h).float())

    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z_0 | x), the top latent's posterior, (B, latent_dim) each, fp32."""
        return self._bottom_up(x)[1]

    def _descend(
        self, z0: torch.Tensor, feats: list[torch.Tensor] | None, generator: torch.Generator | None, sample: bool,
        temperatures: list[float], log_ratio: bool = False,
    ) -> tuple[torch.Tensor, list[GroupPass]]:  # fmt: skip
        """The top-down pass from z_0: with ``feats`` the posterior's (groups inferred), else the
        prior's at ``temperatures`` (one per group). Returns (the output's parameters, the groups' passes)."""
        td = self.decoder
        h = td.start(z0.to(next(td.parameters()).dtype) if not _autocast_on(z0) else z0)
        passes: list[GroupPass] = []
        n, k = len(td.groups), 0
        for i in range(n):
            h = td.blocks[i](h)
            group = td.groups[i]
            if isinstance(group, LatentGroup):
                if feats is not None:
                    h, gp = group.infer(h, feats[n - 1 - i], generator, sample, log_ratio)
                    passes.append(gp)
                else:
                    h = group.generate(h, temperatures[k], generator)
                k += 1
            h = td.ups[i](h)
        return td.head(h), passes

    def temperatures(self, temperature: float | list[float]) -> list[float]:
        """One temperature per group from one value (every group) or a list of one per group, each a
        finite number >= 0 (``--group-temperature``); anything else is a :class:`ConfigError`."""
        values = [float(temperature)] if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
        for t in values:
            if not math.isfinite(t) or t < 0:
                raise ConfigError(f"--group-temperature must be finite numbers >= 0, got {t}")
        g = self.num_groups()
        if len(values) not in (1, g):
            raise ConfigError(f"--group-temperature takes one value or one per latent group ({g}), got {len(values)}")
        return values * g if len(values) == 1 else values

    def decode_params(
        self, z: torch.Tensor, temperature: float | list[float] = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The parameters of p(x | z_0, z_1..L) with z_1..L drawn top-down from their priors at
        ``temperature`` (0, the default: each group's prior mean given the groups above)."""
        return self._descend(z, None, generator, False, self.temperatures(temperature))[0]

    def decode(self, z: torch.Tensor, temperature: float | list[float] = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """The likelihood's mean in [0, 1] of :meth:`decode_params`."""
        return self.likelihood.mean(self.decode_params(z, temperature, generator))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        """Infer every group top-down (posterior samples, or means when not ``sample``) and decode."""
        feats, q = self._bottom_up(x)
        z0 = q.sample(generator) if sample else q.mean
        params, passes = self._descend(z0, feats, generator, sample, [])
        components = self.prior.components() if isinstance(self.prior, VampPrior) else None
        return VAEOutput(params=params, mu=q.mu, logvar=q.logvar, z=z0, prior=components, groups=passes)

    def log_weights(self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``k`` importance weights per image, log p(x, z) - log q(z | x) at z ~ q drawn top-down,
        (k, B): the terms of the importance-weighted bound (Burda et al. 2016, eq. 8) over every group.
        The bottom-up pass runs once per image, the top-down pass once per draw."""
        feats, q = self._bottom_up(x)
        b = x.shape[0]
        z0 = q.sample(generator, n=k).reshape(k * b, -1)  # (k B, D), draw-major
        rep = [f.unsqueeze(0).expand(k, *f.shape).reshape(k * b, *f.shape[1:]) for f in feats]
        params, passes = self._descend(z0, rep, generator, True, [], log_ratio=True)
        xr = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        qk = Posterior(q.mu.repeat(k, 1), q.logvar.repeat(k, 1))
        out = -self.likelihood.nll(params, xr) + self.prior.log_prob(z0) - qk.log_prob(z0)
        for gp in passes:
            assert gp.log_ratio is not None
            out = out + gp.log_ratio
        return out.reshape(k, b)


ARCH_CLASSES["hvae"] = HVAE


def group_dims(model: VAE) -> list[int]:
    """Dimensions of each spatial latent group of ``model`` (none for a flat model)."""
    return [math.prod(s) for s in model.group_shapes()] if isinstance(model, HVAE) else []
