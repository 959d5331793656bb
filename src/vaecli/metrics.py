"""Evaluation metrics over a whole split: -ELBO, reconstruction, KL per dimension, active units,
and the importance-weighted estimate of -log p(x) (Burda et al. 2016)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import ImageData, to_float
from .losses import reconstruction_nll
from .model import VAE
from .posterior import Posterior, standard_normal_log_prob

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016, sec. 5.2: dimension j is active when Cov_x(E_q[z_j|x]) > 0.01


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


def one_sample_elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Posterior]:
    """The one-sample ELBO's terms for a batch: -log p(x|z) per image, (B,), with z ~ q(z|x) drawn
    once (Kingma & Welling 2014, eq. 10), and q itself (its KL gives the rest: -ELBO = recon + KL)."""
    q = Posterior(*(t.float() for t in model.encode(x)))
    logits = model.decode_logits(q.sample(generator))
    return reconstruction_nll(logits, x, model.config.likelihood, getattr(model, "log_scale", None)), q


@torch.no_grad()
def elbo_per_image(
    model: VAE,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    binarize: bool = False,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction -log p(x|z) and KL(q(z|x) || N(0, I)) in nats, each (N,), on the CPU,
    with one posterior sample per image as :func:`evaluate`. ``images`` are floats in [0, 1]."""
    model.eval()
    dev = next(model.parameters()).device
    recons, kls = [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].float().to(dev)
        if binarize:
            x = (x > 0.5).float()
        recon, q = one_sample_elbo(model, x, generator)
        recons.append(recon.float().cpu())
        kls.append(q.kl().cpu())
    if not recons:
        return torch.empty(0), torch.empty(0)
    return torch.cat(recons), torch.cat(kls)


def latent_stats(
    model: VAE,
    summary: dict[str, Any],
    test: Callable[[], ImageData | None],
    *,
    limit: int | None = None,
    seed: int = 0,
    binarize: bool = False,
) -> tuple[list[float] | None, list[float] | None, str]:
    """Per-dimension KL and Var(mu) on the test split, with where they came from: ``summary.json``'s
    ``test_per_dim_kl`` / ``test_mu_variance`` when training stored them, else computed by
    :func:`evaluate` on the first ``limit`` images that ``test()`` returns (None: unavailable)."""
    from .checkpoint import summary_floats

    d = model.config.latent_dim
    kl, var = summary_floats(summary, "test_per_dim_kl", d), summary_floats(summary, "test_mu_variance", d)
    if kl is not None and var is not None:
        return kl, var, "summary.json"
    data = test()
    if data is None:
        return kl, var, "summary.json" if kl is not None else "unavailable"
    if limit is not None and len(data) > limit:
        data = ImageData(images=data.images[:limit])
    res = evaluate(model, data, device=next(model.parameters()).device, seed=seed, binarize=binarize)
    return res.per_dim_kl, res.mu_variance, f"{len(data)} test images"


@torch.no_grad()
def evaluate(
    model: VAE,
    data: ImageData,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    active_threshold: float = ACTIVE_THRESHOLD,
    binarize: bool = False,
    shard: tuple[int, int] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every image of ``data`` with one posterior sample each.

    Active units (Burda et al. 2016, sec. 5.2): dimension j is active when
    Cov_x(E_q[z_j | x]) > ``active_threshold``.

    ``shard=(rank, world)`` (DDP): this rank takes batches rank, rank + world, ... and the sums
    are all-reduced, so every rank returns the numbers of the whole split (its noise per rank).
    """
    from .device import accumulator_dtype

    device = torch.device(device)
    rank, world = shard or (0, 1)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed + rank)
    n = len(data)
    d = model.config.latent_dim
    acc = accumulator_dtype(device)  # float64; float32 on MPS (no float64 there)
    sums = torch.zeros(1 + 3 * d, dtype=acc, device=device)  # recon, KL per dim, mu sum, mu^2 sum
    sum_recon, sum_kl, mu_sum, mu_sq = sums[0], sums[1 : 1 + d], sums[1 + d : 1 + 2 * d], sums[1 + 2 * d :]
    for start in range(rank * batch_size, n, batch_size * world):
        x = to_float(data.images[start : start + batch_size].to(device))
        if binarize:
            x = (x > 0.5).float()
        recon, q = one_sample_elbo(model, x, gen)
        sum_recon += recon.to(acc).sum()
        sum_kl += q.kl_per_dim().to(acc).sum(0)
        mu = q.mu.to(acc)
        mu_sum += mu.sum(0)
        mu_sq += mu.pow(2).sum(0)
    model.train(was_training)
    if world > 1:
        from .distributed import all_reduce_sum

        all_reduce_sum(sums)
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


# ----------------------------------------------------------------------------- importance-weighted NLL

LN2 = math.log(2.0)


def likelihood_label(likelihood: str, binarized: bool) -> str:
    """What the nats of a run measure, in words (printed next to every likelihood number).

    A Bernoulli decoder on continuous pixels in [0, 1] gives binary cross-entropy, which is
    not a normalised likelihood of those pixels; on binarised pixels ({0, 1}) it is the true
    log-likelihood, comparable with the binarised-MNIST literature. A Gaussian decoder gives a
    density on [0, 1] pixels, comparable with neither.
    """
    if likelihood == "bernoulli":
        if binarized:
            return "Bernoulli log-likelihood of binarised pixels (a normalised likelihood, nats)"
        return "BCE nats on continuous pixels, not a normalised likelihood"
    if likelihood == "gaussian":
        return "Gaussian density of continuous pixels (nats; not comparable with discrete likelihoods)"
    return f"{likelihood} likelihood (nats)"


def is_binarized(data: ImageData) -> bool:
    """True when every pixel is 0 or 255 (the images are binary)."""
    imgs = data.images
    return bool(((imgs == 0) | (imgs == 255)).all()) if imgs.numel() else False


@dataclass
class IWResult:
    """Importance-weighted estimate of -log p(x) (Burda et al. 2016), per image, over a split."""

    images: int
    k: int
    iw_nll: float  # mean over images of -log p_hat_k(x), nats
    iw_nll_stderr: float  # standard error of that mean over images
    bits_per_dim: float  # iw_nll / (D ln 2), D = channels * height * width
    binarized: bool
    label: str


@torch.no_grad()
def log_importance_weights(
    model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None, max_decode: int = 4096
) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x), shape (B, k).

    Burda et al. (2016), eq. 8. Decoded in chunks of at most ``max_decode`` images.
    """
    q = Posterior(*(t.float() for t in model.encode(x)))
    b = x.shape[0]
    log_scale = getattr(model, "log_scale", None)
    chunk = max(1, min(k, max_decode // max(1, b)))
    out = []
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        z = q.sample(generator, n=c)  # (c, B, D)
        logits = model.decode_logits(z.reshape(c * b, -1))
        xr = x.unsqueeze(0).expand(c, *x.shape).reshape(c * b, *x.shape[1:])
        log_px_z = -reconstruction_nll(logits, xr, model.config.likelihood, log_scale).reshape(c, b)
        out.append((log_px_z + standard_normal_log_prob(z) - q.log_prob(z)).t())
    from .device import accumulator_dtype

    return torch.cat(out, dim=1).to(accumulator_dtype(x.device))  # float64; float32 on MPS


@torch.no_grad()
def iw_nll(
    model: VAE,
    data: ImageData,
    k: int = 100,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> IWResult:
    """Importance-weighted -log p(x) with ``k`` samples (Burda et al. 2016, eq. 8), per image.

    -log p_hat_k(x) = -(logsumexp_i log w_i - log k). Its expectation is an upper bound on
    -log p(x) that decreases with k; k = 1 is the one-sample -ELBO. Returns the mean over the
    images of ``data``, its standard error over images and bits per dimension.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    per_image = []
    try:
        for start in range(0, len(data), batch_size):
            x = to_float(data.images[start : start + batch_size].to(device))
            lw = log_importance_weights(model, x, k, generator)
            per_image.append(-(torch.logsumexp(lw, dim=1) - math.log(k)).cpu())
    finally:
        model.train(was_training)
    binarized = is_binarized(data)
    label = likelihood_label(model.config.likelihood, binarized)
    if not per_image:
        return IWResult(0, k, float("nan"), float("nan"), float("nan"), binarized, label)
    v = torch.cat(per_image)
    n = v.numel()
    mean = float(v.mean())
    stderr = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    dims = data.channels * data.image_size * data.images.shape[-2]
    return IWResult(n, k, mean, stderr, mean / (dims * LN2), binarized, label)
