"""Evaluation metrics over a whole split: -ELBO, reconstruction, KL per dimension, active units."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import ImageData, to_float
from .losses import kl_per_dim, reconstruction_nll
from .model import VAE


@dataclass
class EvalResult:
    """Averages per image, in nats, over every image of the split."""

    images: int
    neg_elbo: float
    recon: float
    kl: float
    per_dim_kl: list[float] = field(default_factory=list)
    active_units: int = 0
    mu_variance: list[float] = field(default_factory=list)

    def brief(self) -> dict[str, float]:
        """The three headline numbers."""
        return {"neg_elbo": self.neg_elbo, "recon": self.recon, "kl": self.kl}


@torch.no_grad()
def evaluate(
    model: VAE,
    data: ImageData,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    active_threshold: float = 0.01,
    binarize: bool = False,
) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every image of ``data`` with one posterior sample each.

    Active units (Burda et al. 2016, sec. 5.2): dimension j is active when
    Cov_x(E_q[z_j | x]) > ``active_threshold``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(data)
    d = model.config.latent_dim
    sum_recon = torch.zeros((), dtype=torch.float64, device=device)
    sum_kl = torch.zeros(d, dtype=torch.float64, device=device)
    mu_sum = torch.zeros(d, dtype=torch.float64, device=device)
    mu_sq = torch.zeros(d, dtype=torch.float64, device=device)
    log_scale = getattr(model, "log_scale", None)
    for start in range(0, n, batch_size):
        x = to_float(data.images[start : start + batch_size].to(device))
        if binarize:
            x = (x > 0.5).float()
        out = model(x, generator=gen)
        recon = reconstruction_nll(out.logits, x, model.config.likelihood, log_scale)
        sum_recon += recon.double().sum()
        sum_kl += kl_per_dim(out.mu, out.logvar).double().sum(0)
        mu = out.mu.double()
        mu_sum += mu.sum(0)
        mu_sq += mu.pow(2).sum(0)
    model.train(was_training)
    if n == 0:
        return EvalResult(images=0, neg_elbo=float("nan"), recon=float("nan"), kl=float("nan"))
    per_dim = (sum_kl / n).cpu()
    mean = mu_sum / n
    var = (mu_sq / n - mean.pow(2)).clamp_min(0).cpu()
    recon_mean = float(sum_recon / n)
    kl_total = float(per_dim.sum())
    return EvalResult(
        images=n,
        neg_elbo=recon_mean + kl_total,
        recon=recon_mean,
        kl=kl_total,
        per_dim_kl=[float(v) for v in per_dim],
        active_units=int((var > active_threshold).sum()),
        mu_variance=[float(v) for v in var],
    )
