"""Pure loss functions, all per image in nats (summed over pixels / latent dimensions).

Negative ELBO (Kingma & Welling 2014, eq. 3; beta-VAE: Higgins et al. 2017):

    -ELBO_beta(x) = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .posterior import LOG_2PI, Posterior


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, shape (B, D) (:meth:`Posterior.kl_per_dim`)."""
    return Posterior(mu, logvar).kl_per_dim()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Total KL per image, shape (B,) (:meth:`Posterior.kl`)."""
    return Posterior(mu, logvar).kl()


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) for a Bernoulli decoder = binary cross-entropy summed over pixels, shape (B,).

    On continuous pixels in [0, 1] this is the BCE the seed trains with; it is not a
    normalised likelihood (report it as "BCE nats/image").
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return bce.flatten(1).sum(dim=1)


def gaussian_nll(logits: torch.Tensor, x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log N(x; sigmoid(logits), exp(log_scale)^2) summed over pixels, shape (B,)."""
    mean = torch.sigmoid(logits.float())
    log_scale = log_scale.float()
    z = (x.float() - mean) * torch.exp(-log_scale)
    nll = 0.5 * z.pow(2) + log_scale + 0.5 * LOG_2PI
    return nll.flatten(1).sum(dim=1)


def reconstruction_nll(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", log_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Reconstruction term -log p(x|z) per image for the given likelihood."""
    if likelihood == "bernoulli":
        return bernoulli_nll(logits, x)
    if likelihood == "gaussian":
        if log_scale is None:
            raise ValueError("gaussian likelihood needs log_scale")
        return gaussian_nll(logits, x, log_scale)
    raise ValueError(f"unknown likelihood {likelihood!r}")


@dataclass
class LossTerms:
    """Per-batch means (per image, nats). ``loss`` is what gets back-propagated."""

    loss: torch.Tensor  # recon + beta * kl, mean over the batch
    neg_elbo: torch.Tensor  # recon + kl (beta = 1), mean over the batch
    recon: torch.Tensor
    kl: torch.Tensor


def elbo_terms(recon: torch.Tensor, kl: torch.Tensor, beta: float) -> LossTerms:
    """Combine per-image ``recon`` and ``kl`` (shape (B,)) into batch means."""
    r, k = recon.mean(), kl.mean()
    return LossTerms(loss=r + beta * k, neg_elbo=r + k, recon=r, kl=k)


# ----------------------------------------------------------------------------- other objectives


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL with free bits (Kingma et al. 2016, eq. 15, one group per dimension): sum_j max(lambda,
    E_batch[KL_j]). Dimensions below ``free_bits`` nats get no gradient towards the prior."""
    return kl_per_dim(mu, logvar).mean(0).clamp_min(free_bits).sum()


def log_normal_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z_i,d | x_j) for every pair (i, j) and dimension d, shape (B, B, D)."""
    return Posterior(mu[None], logvar[None]).log_prob_per_dim(z[:, None])


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Minibatch estimate of TC = KL(q(z) || prod_d q(z_d)) (Chen et al. 2018, sec. 4.1), scalar.

    q(z_i) is estimated from the batch, log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log B, and the
    same per dimension for the marginals (minibatch-weighted sampling; the paper's extra
    -log N in every density changes the estimate by a constant only, not the gradient).
    About 0 when the aggregate posterior factorises; positive when the dimensions are dependent.
    """
    b = z.shape[0]
    lq = log_normal_matrix(z, mu, logvar)  # (B, B, D)
    log_qz = torch.logsumexp(lq.sum(2), dim=1) - math.log(b)
    log_prod = (torch.logsumexp(lq, dim=1) - math.log(b)).sum(1)
    return (log_qz - log_prod).mean()


def objective_loss(
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    beta: float,
    *,
    capacity: float | None = None,
    free_bits: float = 0.0,
    tc_beta: float = 0.0,
) -> torch.Tensor:
    """The training loss (batch mean, nats) for the objectives beyond the beta-VAE:

    * ``capacity`` C: recon + beta * |KL - C| (Burgess et al. 2018, eq. 8; gamma = beta);
    * ``free_bits`` lambda: recon + beta * sum_j max(lambda, KL_j) (Kingma et al. 2016);
    * ``tc_beta``: recon + beta * KL + (tc_beta - beta) * TC, i.e. MI and dimension-wise KL
      weighted by beta and the total correlation by ``tc_beta`` (beta-TCVAE, Chen et al. 2018, eq. 4);
    * none of them: recon + beta * KL.
    """
    r = recon.mean()
    if free_bits > 0:
        return r + beta * free_bits_kl(mu, logvar, free_bits)
    kl = kl_divergence(mu, logvar).mean()
    if capacity is not None:
        return r + beta * (kl - capacity).abs()
    if tc_beta > 0:
        return r + beta * kl + (tc_beta - beta) * total_correlation(z, mu, logvar)
    return r + beta * kl
