"""Priors p(z): the standard normal every run trains against, and the interface the other priors share.

A prior has ``log_prob(z)`` (summed over dimensions, shape (...,)), ``sample(n, temperature,
generator)`` and ``kl(q, z)``: KL(q(z|x) || p(z)) per image, in closed form where one exists,
else the one-sample Monte-Carlo estimate log q(z|x) - log p(z) at the ``z`` the loss already drew.
``kl_per_dim(q, z)`` is the per-dimension KL where the prior factorises over dimensions (else None).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .posterior import LOG_2PI, Posterior, standard_normal_log_prob


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions."""

    kind = ""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        """log p(z) summed over the last dimension."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws (n, latent_dim) on the CPU; ``temperature`` scales the spread (1 = the prior itself)."""
        raise NotImplementedError

    def marginal_std(self) -> torch.Tensor:
        """The standard deviation of each dimension under p, (D,): the unit of a latent traversal."""
        raise NotImplementedError

    def kl_per_dim(self, q: Posterior, z: torch.Tensor) -> torch.Tensor | None:
        """KL(q || p) per dimension (B, D) when p factorises over dimensions, else None."""
        return None

    def kl(self, q: Posterior, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image, (B,): closed form if :meth:`kl_per_dim` has one, else the
        one-sample estimate log q(z|x) - log p(z) (unbiased; its gradient is the reparameterised one).
        ``components``: a mixture prior's components computed in the forward pass (VAEOutput.prior)."""
        per_dim = self.kl_per_dim(q, z)
        if per_dim is not None:
            return per_dim.sum(-1)
        return q.log_prob(z) - self.log_prob(z, components)

    def marginal_kl_per_dim(self, q: Posterior, z: torch.Tensor) -> torch.Tensor:
        """Per dimension j, the one-sample estimate of KL(q(z_j|x) || p(z_j)) against the prior's
        marginal, (B, D): how much each dimension carries, for a prior that does not factorise (the
        sum is not the total KL then). Equal to :meth:`kl_per_dim` in expectation where that exists."""
        per_dim = self.kl_per_dim(q, z)
        if per_dim is not None:
            return per_dim
        return q.log_prob_per_dim(z) - self.marginal_log_prob(z)

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z_j) of each dimension's marginal, (..., D)."""
        raise NotImplementedError


class StandardNormal(Prior):
    """p(z) = N(0, I); KL in closed form (Kingma & Welling 2014, appendix B)."""

    kind = "normal"

    def log_prob(self, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.float().pow(2) + LOG_2PI)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, temperature^2 I)."""
        return torch.randn(n, self.latent_dim, generator=generator) * temperature

    def marginal_std(self) -> torch.Tensor:
        """1 in every dimension."""
        return torch.ones(self.latent_dim)

    def kl_per_dim(self, q: Posterior, z: torch.Tensor) -> torch.Tensor:
        return q.kl_per_dim()


VAMP_CHUNK = 512  # latent vectors per (rows, K, D) block of the mixture's log-density


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018, eq. 9): p(z) = 1/K sum_k q(z | u_k), the mixture of
    the approximate posteriors of K learned pseudo-inputs u_k (images, in [0, 1] through a sigmoid).

    Its components need the model's encoder: :meth:`components` is given ``encode`` by the VAE.
    KL(q || p) has no closed form: :meth:`kl` is the one-sample estimate log q(z|x) - log p(z) at the
    z the loss already draws (Tomczak & Welling's estimator)."""

    kind = "vamp"

    def __init__(self, latent_dim: int, pseudo_inputs: int, shape: tuple[int, int, int]) -> None:
        super().__init__(latent_dim)
        # initialised as faint noise around mid-grey (the paper draws them from N(0.05, 0.01)-like noise)
        self.u = nn.Parameter(torch.randn(pseudo_inputs, *shape) * 0.5)
        self.encode: Callable[[torch.Tensor], Posterior] | None = None  # the model's (set by VAE)

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs as images in [0, 1], (K, C, H, W)."""
        return torch.sigmoid(self.u)

    @torch.no_grad()
    def start_from(self, images: torch.Tensor) -> None:
        """Start the pseudo-inputs at training images (floats in [0, 1], (K, C, H, W)), pulled towards
        mid-grey so their logits stay finite: a mixture that covers the data from the first step."""
        self.u.copy_(torch.logit(images.to(self.u.dtype) * 0.9 + 0.05))

    def components(self) -> Posterior:
        """q(z | u_k) of every pseudo-input, (K, D) each. While training the model's forward pass
        computes them (VAEOutput.prior), so DDP sees the pseudo-inputs' gradients."""
        if self.encode is None:
            raise RuntimeError("the VampPrior needs its model's encoder")
        return self.encode(self.inputs())

    def log_prob(self, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z | u_k) - log K, over the last dimension; ``z`` (..., D)."""
        c = components if components is not None else self.components()
        flat = z.reshape(-1, z.shape[-1])
        out = [torch.logsumexp(c.log_prob(flat[i : i + VAMP_CHUNK, None]), dim=-1) for i in range(0, flat.shape[0], VAMP_CHUNK)]
        return (torch.cat(out) - math.log(c.mu.shape[0])).reshape(z.shape[:-1])

    def marginal_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z_j) = logsumexp_k log q(z_j | u_k) - log K per dimension, (..., D)."""
        c = self.components()
        flat = z.reshape(-1, z.shape[-1])
        out = [torch.logsumexp(c.log_prob_per_dim(flat[i : i + VAMP_CHUNK, None]), dim=-2) for i in range(0, flat.shape[0], VAMP_CHUNK)]
        return (torch.cat(out) - math.log(c.mu.shape[0])).reshape(z.shape)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """A component k uniformly, then z ~ N(mu_k, (temperature sigma_k)^2)."""
        c = self.components()
        k = torch.randint(0, c.mu.shape[0], (n,), generator=generator)
        eps = torch.randn(n, self.latent_dim, generator=generator)
        return (c.mu.cpu()[k] + temperature * c.std.cpu()[k] * eps).float()

    def marginal_std(self) -> torch.Tensor:
        """The standard deviation of each dimension of the mixture, (D,): the unit of a traversal."""
        with torch.no_grad():
            c = self.components()
            second = (c.mu.pow(2) + c.logvar.exp()).mean(0)
            return (second - c.mu.mean(0).pow(2)).clamp_min(1e-12).sqrt().cpu()


def build_prior(latent_dim: int, kind: str, pseudo_inputs: int, shape: tuple[int, int, int]) -> Prior:
    """The prior a model trains against: ``normal`` (N(0, I)) or ``vamp`` (``pseudo_inputs`` of ``shape``)."""
    if kind == "vamp":
        return VampPrior(latent_dim, pseudo_inputs, shape)
    return StandardNormal(latent_dim)


@torch.no_grad()
def mean_log_prob(prior: Prior, z: torch.Tensor, batch: int = 10_000) -> float:
    """Mean log p(z) over vectors (N, D): nats per latent vector (float64 sum)."""
    if z.shape[0] == 0:
        return math.nan
    total = sum(float(prior.log_prob(z[i : i + batch]).double().sum()) for i in range(0, z.shape[0], batch))
    return total / z.shape[0]
