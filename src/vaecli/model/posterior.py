"""The approximate posterior q(z|x) = N(mu, diag(sigma^2)) and the prior p(z) = N(0, I).

One object holds what is otherwise written in several places: the reparameterised sample,
the closed-form KL to the prior, and the log-density (as diffusers' ``DiagonalGaussianDistribution``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.float().pow(2) + LOG_2PI).sum(-1)


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian with mean ``mu`` and log-variance ``logvar``, each (B, D)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """The posterior mean (what reconstructions and encodings use)."""
        return self.mu

    @property
    def std(self) -> torch.Tensor:
        """sigma = exp(logvar / 2)."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, n: int | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10): (B, D), or (n, B, D)
        for ``n`` draws per row. The noise comes from ``generator`` on its own device."""
        shape = tuple(self.mu.shape) if n is None else (n, *self.mu.shape)
        device = generator.device if generator is not None else self.mu.device
        eps = torch.randn(shape, generator=generator, device=device, dtype=self.mu.dtype).to(self.mu.device)
        return self.mu + self.std * eps

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per dimension, (B, D): 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)
        (Kingma & Welling 2014, appendix B)."""
        mu, logvar = self.mu.float(), self.logvar.float()
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)

    def kl(self) -> torch.Tensor:
        """Total KL(q || N(0, I)) per row, (B,)."""
        return self.kl_per_dim().sum(-1)

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z_d) per dimension; ``z`` broadcasts against (B, D), e.g. (n, B, D)."""
        mu, logvar = self.mu.float(), self.logvar.float()
        return -0.5 * ((z.float() - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) summed over the last dimension."""
        return self.log_prob_per_dim(z).sum(-1)
