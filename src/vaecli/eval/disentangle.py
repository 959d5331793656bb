"""Disentanglement metrics on data with known generative factors: tensors in, numbers out.

* MIG, the mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement
  in VAEs", eq. 5): for each factor v_k, the gap between the two latent dimensions with the
  highest mutual information with v_k, divided by the entropy H(v_k); averaged over factors.
  Mutual information is estimated, as in disentanglement_lib (Locatello et al. 2019), from the
  latent means discretised into equal-width bins.
* The FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising", sec. 4): fix one
  factor in a batch of images, find the latent dimension with the smallest variance (each
  dimension normalised by its standard deviation over the whole data), and let a majority-vote
  classifier map that dimension to the fixed factor; the score is its accuracy on fresh votes.

``codes`` are (N, D) float latent means, ``factors`` are (N, K) integer factor indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


def discretize(codes: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """Each column mapped to ``bins`` equal-width bins over its own [min, max], shape (N, D), long."""
    codes = codes.double()
    lo, hi = codes.min(0).values, codes.max(0).values
    width = (hi - lo).clamp_min(1e-12) / bins
    return ((codes - lo) / width).floor().clamp(0, bins - 1).long()


def entropy(a: torch.Tensor) -> float:
    """Entropy in nats of the empirical distribution of the integer labels ``a`` (N,)."""
    _, counts = torch.unique(a, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log()).sum())


def mutual_info(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mutual information in nats between two integer label vectors (N,), from their contingency table."""
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    joint = torch.bincount(ai * nb + bi, minlength=na * nb).double().reshape(na, nb)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa * pb).expand_as(joint)[nz]).log()).sum())


def mutual_info_matrix(codes: torch.Tensor, factors: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """I(z_j; v_k) in nats for every latent dimension j and factor k, shape (D, K)."""
    disc = discretize(codes, bins)
    d, k = disc.shape[1], factors.shape[1]
    return torch.tensor([[mutual_info(disc[:, j], factors[:, i]) for i in range(k)] for j in range(d)], dtype=torch.float64)


@dataclass
class MIGResult:
    """MIG and its per-factor parts (normalised by each factor's entropy)."""

    mig: float
    per_factor: list[float]  # the gap of each factor / H(v_k)
    best_dim: list[int]  # the latent dimension with the highest MI per factor
    second_dim: list[int]  # the runner-up (-1 when there is only one dimension)
    normalized_mi: list[list[float]]  # I(z_j; v_k) / H(v_k), (D, K)
    entropies: list[float]


def _check(codes: torch.Tensor, factors: torch.Tensor) -> None:
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0] or codes.shape[0] < 2:
        raise ValueError(f"need codes (N, D) and factors (N, K) with N >= 2, got {tuple(codes.shape)} and {tuple(factors.shape)}")


def mig(codes: torch.Tensor, factors: torch.Tensor, bins: int = 20) -> MIGResult:
    """Mutual information gap (Chen et al. 2018, eq. 5) from discretised latent means.

    MIG = 1/K sum_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), a and b the dimensions with the
    largest and second-largest I(z_j; v_k). Factors that never vary (H = 0) are skipped.
    1 for a code with one dimension per factor; about 0 for a code that ignores the factors.
    """
    _check(codes, factors)
    mi = mutual_info_matrix(codes, factors.long(), bins)  # (D, K)
    ents = [entropy(factors[:, i].long()) for i in range(factors.shape[1])]
    per, best, second, norm = [], [], [], torch.zeros_like(mi)
    for i, h in enumerate(ents):
        order = torch.argsort(mi[:, i], descending=True)
        best.append(int(order[0]))
        second.append(int(order[1]) if order.numel() > 1 else -1)
        if h <= 0:
            per.append(float("nan"))
            continue
        norm[:, i] = mi[:, i] / h
        top2 = mi[order[:2], i]
        gap = float(top2[0] - (top2[1] if top2.numel() > 1 else 0.0))
        per.append(gap / h)
    valid = [p for p in per if not math.isnan(p)]
    return MIGResult(
        mig=sum(valid) / len(valid) if valid else float("nan"),
        per_factor=per,
        best_dim=best,
        second_dim=second,
        normalized_mi=norm.tolist(),
        entropies=ents,
    )


@dataclass
class FactorVAEResult:
    """FactorVAE score (eval accuracy of the majority-vote classifier) and its workings."""

    score: float
    train_accuracy: float
    dim_to_factor: list[int]  # the classifier: the factor each latent dimension votes for (-1: inactive)
    votes: list[list[int]]  # train votes (D, K): how often dim j had the smallest variance with factor k fixed
    active_dims: list[int] = field(default_factory=list)


def _votes(
    codes: torch.Tensor,
    factors: torch.Tensor,
    scale: torch.Tensor,
    active: torch.Tensor,
    n_votes: int,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """(D, K) counts of argmin-variance dimensions over ``n_votes`` batches with one factor fixed."""
    n, k = factors.shape
    d = codes.shape[1]
    counts = torch.zeros(d, k, dtype=torch.long)
    fixed = torch.randint(0, k, (n_votes,), generator=generator)
    act_idx = active.nonzero().flatten()
    for i in range(k):
        m = int((fixed == i).sum())
        if m == 0:
            continue
        order = torch.argsort(factors[:, i], stable=True)
        values, cnt = torch.unique(factors[order, i], return_counts=True)
        offsets = torch.cumsum(cnt, 0) - cnt
        # the fixed value of each vote is that of a random image: values weighted by frequency
        pick = factors[torch.randint(0, n, (m,), generator=generator), i]
        which = torch.searchsorted(values, pick)
        r = torch.rand((m, batch_size), generator=generator)
        rows = order[offsets[which].unsqueeze(1) + (r * cnt[which].unsqueeze(1)).long()]  # (m, L)
        z = codes[rows][:, :, act_idx] / scale[act_idx]  # (m, L, D_active)
        dims = act_idx[z.var(dim=1, unbiased=True).argmin(dim=1)]
        counts[:, i] += torch.bincount(dims, minlength=d)
    return counts


def factorvae_score(
    codes: torch.Tensor,
    factors: torch.Tensor,
    *,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    prune_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> FactorVAEResult:
    """FactorVAE disentanglement score (Kim & Mnih 2018, sec. 4), defaults of disentanglement_lib.

    Dimensions whose standard deviation over the data is below ``prune_std`` (collapsed to the
    prior) are left out. 1 for a code with one dimension per factor; about 1/K for a code that
    ignores the factors.
    """
    _check(codes, factors)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    codes = codes.double()
    factors = factors.long()
    std = codes.std(0, unbiased=True)
    active = std >= prune_std
    d, k = codes.shape[1], factors.shape[1]
    if not bool(active.any()):
        return FactorVAEResult(0.0, 0.0, [-1] * d, [[0] * k for _ in range(d)], [])
    train = _votes(codes, factors, std, active, n_train, batch_size, gen)
    held = _votes(codes, factors, std, active, n_eval, batch_size, gen)
    classifier = train.argmax(dim=1)
    train_acc = float(train.gather(1, classifier[:, None]).sum()) / max(1, int(train.sum()))
    eval_acc = float(held.gather(1, classifier[:, None]).sum()) / max(1, int(held.sum()))
    dim_to_factor = [int(c) if bool(active[j]) and int(train[j].sum()) > 0 else -1 for j, c in enumerate(classifier)]
    return FactorVAEResult(eval_acc, train_acc, dim_to_factor, train.tolist(), active.nonzero().flatten().tolist())


def factor_table(names: list[str] | tuple[str, ...], m: MIGResult, f: FactorVAEResult) -> list[dict[str, Any]]:
    """One row per factor: which latent dimension captures it (MIG's best dimension, its share of the
    factor's entropy, the runner-up, the gap) and which dimensions the FactorVAE classifier maps to it."""
    rows = []
    for i, name in enumerate(names):
        best, second = m.best_dim[i], m.second_dim[i]
        rows.append(
            {
                "factor": name,
                "entropy": m.entropies[i],
                "best_dim": best,
                "best_mi": m.normalized_mi[best][i],
                "second_dim": second,
                "second_mi": m.normalized_mi[second][i] if second >= 0 else 0.0,
                "gap": m.per_factor[i],
                "factorvae_dims": [j for j, c in enumerate(f.dim_to_factor) if c == i],
            }
        )
    return rows


# ----------------------------------------------------------------------------- a model on labelled data


def latent_means(model: Any, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Posterior means E_q[z|x] (N, D) of uint8 images (N, C, H, W), converted chunk by chunk."""
    from ..data import to_float
    from .inference import encode

    chunks = [encode(model, to_float(images[i : i + 5000]), batch_size).mean for i in range(0, images.shape[0], 5000)]
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.latent_dim)


def evaluate_disentanglement(
    model: Any,
    images: torch.Tensor,
    factors: torch.Tensor,
    names: list[str] | tuple[str, ...],
    *,
    bins: int = 20,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """MIG, FactorVAE score and the per-factor table of ``model`` on labelled ``images``.

    ``factors`` (N, K) are the factor indices of ``images``; ``names`` their names.
    """
    codes = latent_means(model, images)
    m = mig(codes, factors, bins)
    f = factorvae_score(
        codes, factors, batch_size=batch_size, n_train=n_train, n_eval=n_eval, generator=torch.Generator().manual_seed(seed)
    )
    return {
        "images": int(codes.shape[0]),
        "latent_dim": int(codes.shape[1]),
        "mig": m.mig,
        "factorvae_score": f.score,
        "factorvae_train_accuracy": f.train_accuracy,
        "active_dims": f.active_dims,
        "bins": bins,
        "votes": {"train": n_train, "eval": n_eval, "batch_size": batch_size},
        "table": factor_table(names, m, f),
    }


def require_factors(cfg: Any) -> None:
    """Refuse a run (``cfg`` its RunConfig) whose data has no known factors (ConfigError)."""
    from ..errors import ConfigError

    if cfg.data.name != "shapes":
        raise ConfigError(
            f"eval-disentangle needs data with known factors: run {cfg.name!r} was trained on {cfg.data.name!r} (train one with --data shapes)"
        )


def evaluate_run(model: Any, cfg: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_disentanglement` of a loaded run trained on ``shapes`` (``cfg`` its RunConfig),
    over all the images of the dataset (binarised as the run saw them when it was trained on binarised
    pixels); ``kwargs``: bins, n_train, n_eval, batch_size, seed. Raises ConfigError for other data."""
    from ..data import binarize_fixed
    from ..data.shapes import FACTORS, load_shapes
    from ..paths import data_root

    require_factors(cfg)
    data = load_shapes(data_root(cfg.data.root), cfg.model.image_size)
    if cfg.data.binarize:
        data = binarize_fixed(data)
    images = data.images.expand(-1, cfg.model.channels, -1, -1)
    assert data.labels is not None  # shapes always has its factors
    return evaluate_disentanglement(model, images, data.labels, FACTORS, **kwargs)


__all__ = [
    "evaluate_run",
    "require_factors",
    "discretize",
    "entropy",
    "mutual_info",
    "mutual_info_matrix",
    "mig",
    "MIGResult",
    "latent_means",
    "evaluate_disentanglement",
    "factorvae_score",
    "FactorVAEResult",
    "factor_table",
]
