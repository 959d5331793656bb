"""Evaluation metrics over a whole split: -ELBO, reconstruction, KL per dimension, active units,
and the importance-weighted estimate of -log p(x) (Burda et al. 2016)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..data import ImageData, to_float
from ..model.hvae import HVAE, group_dims
from ..model.likelihoods import bits_per_dim
from ..model.posterior import Posterior
from ..model.vae import VAE

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016, sec. 5.2: dimension j is active when Cov_x(E_q[z_j|x]) > 0.01


def active_mask(mu_variance: list[float]) -> list[bool]:
    """Which latent dimensions are active units (Burda et al. 2016, sec. 5.2): those whose posterior
    mean varies over the data, Var_x(E_q[z_j | x]) > :data:`ACTIVE_THRESHOLD`."""
    return [v > ACTIVE_THRESHOLD for v in mu_variance]


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
    bits_per_dim: float | None = None  # -ELBO in bits per dimension, for a discrete likelihood only
    per_dim_marginal: bool = False  # per_dim_kl are KLs to the prior's marginals (a prior that does not factorise)
    # a hierarchical model's spatial groups, deepest first: KL per image (nats) and active units of each
    # (kl is the top latent's plus these; per_dim_kl and active_units are the top latent's)
    group_kl: list[float] = field(default_factory=list)
    group_active_units: list[int] = field(default_factory=list)

    def brief(self) -> dict[str, float]:
        """The headline numbers: -ELBO, reconstruction and KL (nats/image), and bits/dim where they apply."""
        out = {"neg_elbo": self.neg_elbo, "recon": self.recon, "kl": self.kl}
        if self.bits_per_dim is not None:
            out["bits_per_dim"] = self.bits_per_dim
        return out


class ElboTerms(NamedTuple):
    """The one-sample ELBO's terms of a batch (nats, per image)."""

    recon: torch.Tensor  # -log p(x|z), (B,)
    kl: torch.Tensor  # KL(q(z|x) || p(z)), (B,): closed form, or the one-sample estimate for a mixture prior
    kl_dims: torch.Tensor  # per dimension, (B, D): exact where the prior factorises, else KL to each marginal
    exact_dims: bool  # kl is the sum of kl_dims (of the top latent's, for a hierarchical model: plus its groups')
    q: Posterior
    groups: list[Any] | None = None  # a hierarchical model's spatial groups (model.hvae.GroupPass each), else None


def one_sample_elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> ElboTerms:
    """The one-sample ELBO's terms for a batch, with z ~ q(z|x) drawn once (Kingma & Welling 2014,
    eq. 10): -ELBO = recon + KL (a hierarchical model: the KLs of all its groups, its ``kl_dims`` the
    top latent's). For a prior that does not factorise (the VampPrior) the KL is the
    estimate log q(z|x) - log p(z) and the per-dimension figures are KLs to the prior's marginals."""
    out = model(x, generator=generator)  # a hierarchical model infers its groups top-down here
    q, z = out.posterior, out.z
    recon = model.likelihood.nll(out.params, x)
    groups = out.group_kl()
    kl_dims = model.prior.kl_per_dim(q, z)
    if kl_dims is not None:
        kl = kl_dims.sum(-1)
        return ElboTerms(recon, kl if groups is None else kl + groups, kl_dims, True, q, out.groups)
    kl = model.prior.kl(q, z, out.prior)
    return ElboTerms(recon, kl if groups is None else kl + groups, model.prior.marginal_kl_per_dim(q, z), False, q, out.groups)


@torch.no_grad()
def elbo_per_image(
    model: VAE, images: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction -log p(x|z) and KL(q(z|x) || p(z)) in nats, each (N,), on the CPU,
    with one posterior sample per image as :func:`evaluate`. ``images`` are floats in [0, 1]."""
    model.eval()
    dev = next(model.parameters()).device
    recons, kls = [], []
    for i in range(0, images.shape[0], batch_size):
        recon, kl, *_ = one_sample_elbo(model, images[i : i + batch_size].float().to(dev), generator)
        recons.append(recon.float().cpu())
        kls.append(kl.float().cpu())
    if not recons:
        return torch.empty(0), torch.empty(0)
    return torch.cat(recons), torch.cat(kls)


def latent_stats(
    model: VAE, summary: dict[str, Any], test: Callable[[], ImageData | None], *, limit: int | None = None, seed: int = 0
) -> tuple[list[float] | None, list[float] | None, str]:
    """Per-dimension KL and Var(mu) on the test split, with where they came from: ``summary.json``'s
    ``test_per_dim_kl`` / ``test_mu_variance`` when training stored them, else computed by
    :func:`evaluate` on the first ``limit`` images that ``test()`` returns (None: unavailable)."""
    d = model.config.latent_dim
    kl, var = summary_floats(summary, "test_per_dim_kl", d), summary_floats(summary, "test_mu_variance", d)
    if kl is not None and var is not None:
        return kl, var, "summary.json"
    data = test()
    if data is None:
        return kl, var, "summary.json" if kl is not None else "unavailable"
    if limit is not None and len(data) > limit:
        data = ImageData(images=data.images[:limit])
    res = evaluate(model, data, device=next(model.parameters()).device, seed=seed)
    return res.per_dim_kl, res.mu_variance, f"{len(data)} test images"


@torch.no_grad()
def evaluate(
    model: VAE,
    data: ImageData,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on every image of ``data`` with one posterior sample each.

    Active units (Burda et al. 2016, sec. 5.2): dimension j is active when
    Cov_x(E_q[z_j | x]) > :data:`ACTIVE_THRESHOLD`. Bits per dimension are given when the
    likelihood is a discrete one for these pixels (the logistic mixture; Bernoulli on binary images).

    ``shard=(rank, world)`` (DDP): this rank takes batches rank, rank + world, ... and the sums
    are all-reduced, so every rank returns the numbers of the whole split (its noise per rank).
    """
    device = torch.device(device)
    rank, world = shard or (0, 1)
    was_training = model.training
    model.eval()
    sums, exact = _elbo_sums(model, data, batch_size, device, seed, (rank, world))
    model.train(was_training)
    if world > 1:
        from ..distributed import all_reduce_sum

        all_reduce_sum(sums)
    return _result(model, data, sums, exact)


def _elbo_sums(
    model: VAE, data: ImageData, batch_size: int, device: torch.device, seed: int, shard: tuple[int, int]
) -> tuple[torch.Tensor, bool]:
    """This rank's sums over its batches, one posterior sample per image (generator seeded ``seed +
    rank``): reconstruction, KL, KL per dimension, the posterior means' sum and sum of squares, and a
    hierarchical model's KL per group and its groups' posterior means' sums and sums of squares, in
    one tensor (:func:`_layout`, so that DDP all-reduces them at once); and whether the KL per
    dimension adds up to the top latent's KL (False for a prior whose dimensions do not factorise)."""
    from ..device import accumulator_dtype

    rank, world = shard
    gen = torch.Generator(device=device).manual_seed(seed + rank)
    acc = accumulator_dtype(device)  # float64; float32 on MPS (no float64 there)
    d, gdims = model.config.latent_dim, group_dims(model)
    sums = torch.zeros(_layout(d, gdims)[-1], dtype=acc, device=device)
    p = _parts(sums, d, gdims)
    exact = True
    for start in range(rank * batch_size, len(data), batch_size * world):
        t = one_sample_elbo(model, to_float(data.images[start : start + batch_size].to(device)), gen)
        exact = t.exact_dims
        p["recon"] += t.recon.to(acc).sum()
        p["kl"] += t.kl.to(acc).sum()
        p["kl_dims"] += t.kl_dims.to(acc).sum(0)
        mu = t.q.mu.to(acc)
        p["mu_sum"] += mu.sum(0)
        p["mu_sq"] += mu.pow(2).sum(0)
        if t.groups:  # activity: E_q[z_l | x] with every group above at its posterior mean too, not at a draw
            means = model(to_float(data.images[start : start + batch_size].to(device)), sample=False).groups or []
        for g, gp in enumerate(t.groups or []):
            p["group_kl"][g] += gp.kl.to(acc).sum()
            gm = means[g].q_mean.flatten(1).to(acc)
            p["group_mu_sum"][g] += gm.sum(0)
            p["group_mu_sq"][g] += gm.pow(2).sum(0)
    return sums, exact


def _layout(d: int, gdims: list[int]) -> list[int]:
    """Offsets in the sums of :func:`_elbo_sums`: recon, KL, KL per dim (d), mu sum (d), mu^2 sum (d),
    KL per group, then each group's mean sums and mean^2 sums; the last entry is the length."""
    g, total = len(gdims), sum(gdims)
    sizes = [1, 1, d, d, d, g, total, total]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def _parts(sums: torch.Tensor, d: int, gdims: list[int]) -> dict[str, Any]:
    """Views of the sums of :func:`_elbo_sums` by name (``group_mu_sum``, ``group_mu_sq``: one view per group)."""
    o = _layout(d, gdims)
    names = ("recon", "kl", "kl_dims", "mu_sum", "mu_sq", "group_kl", "group_mu_sum", "group_mu_sq")
    views: dict[str, Any] = {n: sums[o[i] : o[i + 1]] for i, n in enumerate(names)}
    views["recon"], views["kl"] = views["recon"][0], views["kl"][0]
    for n in ("group_mu_sum", "group_mu_sq"):
        views[n] = list(torch.split(views[n], gdims)) if gdims else []
    return views


def _result(model: VAE, data: ImageData, sums: torch.Tensor, exact: bool) -> EvalResult:
    """The means per image of :func:`_elbo_sums`' sums over the whole of ``data``, and what follows
    from them: active units (the top latent's and each group's), Var(mu) per dimension, bits/dim where
    the likelihood is discrete."""
    n, d, gdims = len(data), model.config.latent_dim, group_dims(model)
    if n == 0:
        return EvalResult(images=0, neg_elbo=float("nan"), recon=float("nan"), kl=float("nan"))
    p = _parts(sums, d, gdims)
    var = _variance(p["mu_sum"], p["mu_sq"], n)
    per_dim = (p["kl_dims"] / n).cpu()
    recon_mean = float(p["recon"] / n)
    group_kl = [float(v) for v in (p["group_kl"] / n).cpu()]
    kl_mean = (float(per_dim.sum()) + sum(group_kl)) if exact else float(p["kl"] / n)  # a sum of its parts where it can be
    discrete = model.likelihood.is_discrete(is_binarized(data))
    return EvalResult(
        images=n,
        neg_elbo=recon_mean + kl_mean,
        recon=recon_mean,
        kl=kl_mean,
        per_dim_kl=[float(v) for v in per_dim],
        per_dim_marginal=not exact,
        active_units=sum(active_mask(var.tolist())),
        mu_variance=[float(v) for v in var],
        bits_per_dim=bits_per_dim(recon_mean + kl_mean, image_dims(data)) if discrete else None,
        group_kl=group_kl,
        group_active_units=[sum(active_mask(_variance(a, b, n).tolist())) for a, b in zip(p["group_mu_sum"], p["group_mu_sq"])],
    )


def _variance(total: torch.Tensor, squares: torch.Tensor, n: int) -> torch.Tensor:
    """Var over n images from the sum and the sum of squares, clamped at 0, on the CPU."""
    mean = total / n
    return (squares / n - mean.pow(2)).clamp_min(0).cpu()


def bce_floor(data: ImageData, batch_size: int = 1000) -> float:
    """The lowest BCE any model can reach on ``data``, nats/image: the pixels' own entropy,
    sum_pixels -(x ln x + (1 - x) ln(1 - x)) for continuous x in [0, 1] (0 on binary images)."""
    total = 0.0
    for i in range(0, len(data), batch_size):
        x = to_float(data.images[i : i + batch_size]).double()
        total += float(-(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x)).sum())
    return total / max(1, len(data))


def image_dims(data: ImageData) -> int:
    """Dimensions of one image of ``data``: channels x height x width."""
    return data.channels * int(data.images.shape[-2]) * int(data.images.shape[-1])


# ----------------------------------------------------------------------------- importance-weighted NLL


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
    bits_per_dim: float | None  # iw_nll / (D ln 2), D = channels * height * width; None unless the likelihood is discrete
    binarized: bool
    label: str


@torch.no_grad()
def log_importance_weights(
    model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None, max_decode: int = 4096
) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x), shape (B, k).

    Burda et al. (2016), eq. 8; for a hierarchical model z is every group, drawn top-down, and
    log p(z) - log q(z|x) sums the groups' terms. Decoded in chunks of at most ``max_decode`` images.
    """
    b = x.shape[0]
    chunk = max(1, min(k, max_decode // max(1, b)))
    out = []
    if isinstance(model, HVAE):  # every group drawn top-down from q, its log p - log q added
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            out.append(model.log_weights(x, c, generator).t())
        return _weights(out, x.device)
    q = model.encode(x)
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        z = q.sample(generator, n=c)  # (c, B, D)
        params = model.decode_params(z.reshape(c * b, -1))
        xr = x.unsqueeze(0).expand(c, *x.shape).reshape(c * b, *x.shape[1:])
        log_px_z = -model.likelihood.nll(params, xr).reshape(c, b)
        out.append((log_px_z + model.prior.log_prob(z) - q.log_prob(z)).t())
    return _weights(out, x.device)


def _weights(chunks: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    from ..device import accumulator_dtype

    return torch.cat(chunks, dim=1).to(accumulator_dtype(device))  # float64; float32 on MPS


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
    label = model.likelihood.label(binarized)
    discrete = model.likelihood.is_discrete(binarized)
    if not per_image:
        return IWResult(0, k, float("nan"), float("nan"), float("nan") if discrete else None, binarized, label)
    v = torch.cat(per_image)
    n = v.numel()
    mean = float(v.mean())
    stderr = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return IWResult(n, k, mean, stderr, bits_per_dim(mean, image_dims(data)) if discrete else None, binarized, label)


def summary_floats(summary: dict[str, Any], key: str, length: int) -> list[float] | None:
    """``summary[key]`` when it is a list of ``length`` finite numbers (e.g. ``test_per_dim_kl``), else None."""
    vals = summary.get(key)
    if not isinstance(vals, list) or len(vals) != length:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
        return None
    return [float(v) for v in vals]
