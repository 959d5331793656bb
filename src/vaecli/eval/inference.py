"""Tensors in, tensors out: sampling, reconstruction, encoding, decoding, interpolation, traversal.

Decoded images are the likelihood's mean (Bernoulli probabilities), never thresholded, as
float tensors in [0, 1] of shape (N, C, H, W). Every random function takes a ``generator``.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model.hvae import HVAE
from ..model.posterior import Posterior
from ..model.priors import Prior
from ..model.vae import VAE

MAX_SAMPLES = 100_000  # -n of `vae sample`: beyond this the decoded images alone outgrow memory
MAX_STEPS = 1_000  # --steps of interpolations and traversals
# a hierarchical model's samples: its groups below the top at their prior means given the groups above
# (temperature 0): on noto-emoji-64 FD 212.8 against 218.2 at temperature 1 after 600 s (236.2 against
# 239.9 after 120 s) and visibly cleaner pictures (docs/hierarchical.md); --group-temperature for more
SAMPLE_GROUP_TEMPERATURE = 0.0


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode(model: VAE, images: torch.Tensor, batch_size: int = 500) -> Posterior:
    """q(z|x) of float images in [0, 1]: its mu and logvar each (N, D), fp32, on the CPU."""
    model.eval()
    dev = _device(model)
    mus, logvars = [], []
    for i in range(0, images.shape[0], batch_size):
        q = model.encode(images[i : i + batch_size].to(dev).float())
        mus.append(q.mu.cpu())
        logvars.append(q.logvar.cpu())
    if not mus:
        d = model.config.latent_dim
        return Posterior(torch.empty(0, d), torch.empty(0, d))
    return Posterior(torch.cat(mus), torch.cat(logvars))


@torch.no_grad()
def decode(
    model: VAE, z: torch.Tensor, batch_size: int = 500, temperature: float | list[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """Decode latents (N, D) to images (N, C, H, W) in [0, 1], on the CPU. A hierarchical model's
    groups below z are drawn from their priors at ``temperature`` (one value, or one per group; None:
    0, each group's prior mean given the groups above); a flat model takes none."""
    model.eval()
    d = model.config.latent_dim
    if z.ndim != 2 or z.shape[1] != d:
        raise ConfigError(f"latent vectors must have {d} values, got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ConfigError("latent vectors must be finite numbers")
    dev = _device(model)
    if isinstance(model, HVAE):
        temps = model.temperatures(0.0 if temperature is None else temperature)
        outs = [model.decode(z[i : i + batch_size].to(dev).float(), temps, generator).cpu() for i in range(0, z.shape[0], batch_size)]
    else:
        if temperature is not None:
            raise ConfigError("--group-temperature is read by hierarchical models only (--arch hvae)")
        outs = [model.decode(z[i : i + batch_size].to(dev).float()).cpu() for i in range(0, z.shape[0], batch_size)]
    if not outs:
        c, s = model.config.channels, model.config.image_size
        return torch.empty(0, c, s, s)
    return torch.cat(outs)


def check_num_samples(n: int) -> None:
    """Refuse a number of prior samples outside 1..MAX_SAMPLES (``-n`` of `vae sample`)."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"-n must be between 1 and {MAX_SAMPLES:,}, got {n}")


def check_temperature(temperature: float) -> None:
    """Refuse a sampling temperature that is not a finite number >= 0 (``--temperature``)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0, got {temperature}")


def sample_latents(prior: Prior, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws from ``prior`` at ``temperature`` (1 = the prior itself; each prior says what T scales), (n, D)."""
    check_num_samples(n)
    check_temperature(temperature)
    return prior.sample(n, temperature, generator)


def sample(
    model: VAE, n: int, temperature: float = 1.0, generator: torch.Generator | None = None, prior: Prior | None = None,
    group_temperature: float | list[float] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Decode ``n`` draws from ``prior`` (default: the model's own: N(0, I), the seed's "generation
    from noise", or the VampPrior it trained). A hierarchical model draws its groups below top-down
    from their learned priors at ``group_temperature`` (None: :data:`SAMPLE_GROUP_TEMPERATURE`)."""
    z = sample_latents(prior if prior is not None else model.prior, n, temperature, generator)
    return decode(model, z, temperature=sample_group_temperature(model, group_temperature), generator=generator)


def sample_group_temperature(model: VAE, group_temperature: float | list[float] | None = None) -> float | list[float] | None:
    """The group temperature :func:`sample` draws a model's groups at: ``group_temperature``, else
    :data:`SAMPLE_GROUP_TEMPERATURE` for a hierarchical model; None for a flat one."""
    if isinstance(model, HVAE) and group_temperature is None:
        return SAMPLE_GROUP_TEMPERATURE
    return group_temperature


@torch.no_grad()
def reconstruct(
    model: VAE, images: torch.Tensor, sample_z: bool = False, generator: torch.Generator | None = None, batch_size: int = 500
) -> torch.Tensor:
    """Decode the posterior mean (or a posterior sample when ``sample_z``) of each image; a
    hierarchical model's groups are inferred top-down the same way (every group's posterior mean)."""
    if not isinstance(model, HVAE):
        q = encode(model, images)
        return decode(model, q.sample(generator) if sample_z else q.mean)
    model.eval()
    dev = _device(model)
    outs = []
    for i in range(0, images.shape[0], batch_size):
        out = model(images[i : i + batch_size].to(dev).float(), generator=generator, sample=sample_z)
        outs.append(model.likelihood.mean(out.params).cpu())
    return torch.cat(outs) if outs else torch.empty(0, *images.shape[1:])


MODES = ("lerp", "slerp")


def check_steps(steps: int) -> None:
    """Refuse a number of interpolation or traversal points outside 2..MAX_STEPS (``--steps``)."""
    if not 2 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be between 2 and {MAX_STEPS:,}, got {steps}")


def check_mode(mode: str) -> None:
    """Refuse an interpolation path other than lerp or slerp (``--mode``)."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be lerp or slerp, got {mode!r}")


def check_range(value_range: float) -> None:
    """Refuse a traversal range that is not a finite number > 0 (``--range``)."""
    if not math.isfinite(value_range) or value_range <= 0:
        raise ConfigError(f"--range must be a finite number > 0, got {value_range}")


def check_dims(dims: list[int], latent_dim: int) -> None:
    """Refuse latent dimensions outside 0..latent_dim - 1 (``--dim``)."""
    for j in dims:
        if not 0 <= j < latent_dim:
            raise ConfigError(f"--dim {j} is out of range: the model has latent dims 0..{latent_dim - 1}")


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, mode: str = "lerp") -> torch.Tensor:
    """``steps`` points from ``z_a`` to ``z_b`` inclusive, (steps, D). ``slerp``: spherical
    interpolation (Shoemake 1985; White 2016, "Sampling Generative Networks")."""
    check_steps(steps)
    check_mode(mode)
    t = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
    a, b = z_a.reshape(1, -1).float(), z_b.reshape(1, -1).float()
    if mode == "lerp":
        return (1 - t) * a + t * b
    na, nb = a.norm(), b.norm()
    if na < 1e-8 or nb < 1e-8:
        return (1 - t) * a + t * b
    cos = ((a / na) * (b / nb)).sum().clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b
    out[0], out[-1] = a[0], b[0]  # exact endpoints (the formula is only equal up to rounding)
    return out


def traversal_values(value_range: float = 3.0, steps: int = 11) -> torch.Tensor:
    """The ``steps`` values of a traversal, evenly from -range to +range (prior standard deviations)."""
    check_steps(steps)
    check_range(value_range)
    return torch.linspace(-value_range, value_range, steps)


def traverse_latents(
    base: torch.Tensor, dims: list[int], value_range: float = 3.0, steps: int = 11, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Latent sweeps: for each dim in ``dims``, ``steps`` copies of ``base`` with that dim set
    from -range to +range in prior standard deviations (``scale``: each dimension's, the prior's
    marginal std; 1 for N(0, I)). Shape (len(dims) * steps, D)."""
    d = base.numel()
    values = traversal_values(value_range, steps)
    check_dims(dims, d)
    rows = []
    for j in dims:
        z = base.reshape(1, d).float().repeat(steps, 1)
        z[:, j] = values * (1.0 if scale is None else float(scale[j]))
        rows.append(z)
    return torch.cat(rows) if rows else torch.empty(0, d)


def dims_by_kl(per_dim_kl: list[float] | torch.Tensor) -> list[int]:
    """Latent dimensions ordered by KL, most informative first (ties: lower index first)."""
    kl = [float(v) for v in per_dim_kl]
    return sorted(range(len(kl)), key=lambda j: (-kl[j], j))
