"""The training objective, one object built from the run's training config.

Every objective is the negative ELBO's two terms, per image in nats (Kingma & Welling 2014, eq. 3),
weighted and reshaped (beta-VAE: Higgins et al. 2017):

    -ELBO_beta(x) = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))

(for the hierarchical model the KL is the sum of its groups', :mod:`vaecli.model.hvae`)

* plain: recon + beta * KL, beta on a schedule (constant, ``--anneal`` ramp, ``--cyclical``);
* capacity C: recon + beta * |KL - C|, C ramped 0 -> C_max (Burgess et al. 2018, eq. 8, gamma = beta);
* free bits lambda: recon + beta * sum_j max(lambda, E_batch[KL_j]) (Kingma et al. 2016, eq. 15);
* hierarchical (hvae) with ``--top-first N``: the spatial groups' KL weighted by w falling linearly
  from :data:`TOP_FIRST_WEIGHT` to 1 over the first N epochs, so that the top latent learns the global
  structure before the groups take the detail (a coarse-to-fine schedule; the reported -ELBO is unweighted);
* beta-TCVAE: recon + beta * KL + (tc_beta - beta) * TC, i.e. the mutual information and the
  dimension-wise KL weighted by beta and the total correlation by ``tc_beta`` (Chen et al. 2018, eq. 4).

The reconstruction term is the model's likelihood (:mod:`vaecli.model.likelihoods`), the KL the model's
prior's (:mod:`vaecli.model.priors`); both are computed once per step, and the reported -ELBO (beta = 1)
is derived from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..model.posterior import Posterior
from ..model.vae import VAE, VAEOutput
from .schedules import beta_at, capacity_at

TOP_FIRST_WEIGHT = 8.0  # --top-first: the spatial groups' KL weight at the start of the run
TC_CHUNK_ELEMENTS = 1 << 24  # (rows, B, D) elements per chunk of total_correlation: 64 MB in fp32


@dataclass
class LossTerms:
    """Batch means per image (nats). ``loss`` is what gets back-propagated, ``neg_elbo`` = recon + KL."""

    loss: torch.Tensor
    neg_elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    beta: float


class Objective:
    """The loss of one step: ``objective(model, out, x, epoch_progress) -> LossTerms``.

    ``epoch_progress`` (completed epochs plus the fraction of the current one) drives the beta
    schedule and the capacity ramp."""

    def __init__(self, train: TrainConfig) -> None:
        self.train = train

    def beta_at(self, epoch_progress: float) -> float:
        """Beta at this point of the run (:func:`vaecli.train.schedules.beta_at`)."""
        t = self.train
        return beta_at(epoch_progress, t.beta, t.anneal, t.cyclical, t.epochs)

    def capacity_at(self, epoch_progress: float) -> float | None:
        """The capacity C in nats at this point of the run, None without ``--capacity``."""
        t = self.train
        return capacity_at(epoch_progress, t.capacity, t.capacity_epochs or t.epochs) if t.capacity else None

    def group_weight_at(self, epoch_progress: float) -> float:
        """The weight of a hierarchical model's spatial groups' KL relative to the top latent's: from
        :data:`TOP_FIRST_WEIGHT` down to 1 over ``--top-first`` epochs, 1 after (and without it)."""
        n = self.train.top_first
        return 1.0 + (TOP_FIRST_WEIGHT - 1.0) * max(0.0, 1.0 - epoch_progress / n) if n else 1.0

    def __call__(self, model: VAE, out: VAEOutput, x: torch.Tensor, epoch_progress: float) -> LossTerms:
        """The terms for the forward pass ``out`` of the batch ``x``."""
        t = self.train
        q, z = out.posterior, out.z
        recon = model.likelihood.nll(out.params, x).mean()
        kl_dims = model.prior.kl_per_dim(q, z)
        kl = (kl_dims.sum(-1) if kl_dims is not None else model.prior.kl(q, z, out.prior)).mean()
        groups = out.group_kl()  # the hierarchical model's spatial groups (hvae): their KLs add to the top's
        kl_groups = groups.mean() if groups is not None else kl.new_zeros(())
        kl = kl + kl_groups
        beta = self.beta_at(epoch_progress)
        extra = (self.group_weight_at(epoch_progress) - 1.0) * kl_groups  # --top-first: the groups weigh more early
        if t.free_bits > 0:  # per top-latent dimension; a hierarchical model's groups unclamped
            assert kl_dims is not None, "free bits need a factorised prior"
            loss = recon + beta * (kl_dims.mean(0).clamp_min(t.free_bits).sum() + kl_groups)
        elif (cap := self.capacity_at(epoch_progress)) is not None:
            loss = recon + beta * (kl - cap).abs()
        elif t.tc_beta > 0:
            loss = recon + beta * kl + (t.tc_beta - beta) * total_correlation(z, q)
        else:
            loss = recon + beta * kl
        loss = loss + beta * extra
        return LossTerms(loss=loss, neg_elbo=recon + kl, recon=recon, kl=kl, beta=beta)


def total_correlation(z: torch.Tensor, q: Posterior, chunk_elements: int = TC_CHUNK_ELEMENTS) -> torch.Tensor:
    """Minibatch estimate of TC = KL(q(z) || prod_d q(z_d)) (Chen et al. 2018, sec. 4.1), scalar.

    q(z_i) is estimated from the batch, log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log B, and the
    same per dimension for the marginals (minibatch-weighted sampling; the paper's extra
    -log N in every density changes the estimate by a constant only, not the gradient).
    About 0 when the aggregate posterior factorises; positive when the dimensions are dependent.

    The (B, B, D) matrix of log q(z_i,d | x_j) is built in chunks of rows of at most
    ``chunk_elements`` elements, each recomputed in the backward pass (activation checkpointing),
    so a large GPU batch fits: same value as the one-piece formula.
    """
    b, d = z.shape
    rows = max(1, chunk_elements // max(1, b * d))
    if rows >= b:
        return _tc_rows(z, q.mu, q.logvar).mean()
    from torch.utils.checkpoint import checkpoint

    parts = [checkpoint(_tc_rows, z[i : i + rows], q.mu, q.logvar, use_reentrant=False) for i in range(0, b, rows)]
    return torch.cat(parts).mean()


def _tc_rows(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z_i) - sum_d log q(z_i,d) for the rows ``z`` (shape (c, D)) against the whole batch."""
    b = mu.shape[0]
    lq = Posterior(mu[None], logvar[None]).log_prob_per_dim(z[:, None])  # (c, B, D)
    log_qz = torch.logsumexp(lq.sum(2), dim=1) - math.log(b)
    log_prod = (torch.logsumexp(lq, dim=1) - math.log(b)).sum(1)
    return log_qz - log_prod
