"""Priors p(z): the standard normal every run trains against, and the interface the other priors share.

A prior has ``log_prob(z)`` (summed over dimensions, shape (...,)), ``sample(n, temperature,
generator)`` and ``kl(q, z)``: KL(q(z|x) || p(z)) per image, in closed form where one exists,
else the one-sample Monte-Carlo estimate log q(z|x) - log p(z) at the ``z`` the loss already drew.
``kl_per_dim(q, z)`` is the per-dimension KL where the prior factorises over dimensions (else None).
"""

from __future__ import annotations

import torch
from torch import nn

from .posterior import Posterior, standard_normal_log_prob


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions."""

    kind = ""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the last dimension."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws (n, latent_dim) on the CPU; ``temperature`` scales the spread (1 = the prior itself)."""
        raise NotImplementedError

    def kl_per_dim(self, q: Posterior, z: torch.Tensor) -> torch.Tensor | None:
        """KL(q || p) per dimension (B, D) when p factorises over dimensions, else None."""
        return None

    def kl(self, q: Posterior, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image, (B,): closed form if :meth:`kl_per_dim` has one, else the
        one-sample estimate log q(z|x) - log p(z) (unbiased; its gradient is the reparameterised one)."""
        per_dim = self.kl_per_dim(q, z)
        if per_dim is not None:
            return per_dim.sum(-1)
        return q.log_prob(z) - self.log_prob(z)


class StandardNormal(Prior):
    """p(z) = N(0, I); KL in closed form (Kingma & Welling 2014, appendix B)."""

    kind = "normal"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, temperature^2 I)."""
        return torch.randn(n, self.latent_dim, generator=generator) * temperature

    def kl_per_dim(self, q: Posterior, z: torch.Tensor) -> torch.Tensor:
        return q.kl_per_dim()
