"""Sample quality as numbers: Fréchet distance, KID, precision and recall between two feature sets.

Pure torch in float64, no scipy. Each function takes features (N, D) of real and generated images
(from :mod:`vaecli.eval.features`; the scores mean nothing without naming the feature space) and
returns plain floats. :func:`evaluate_samples` runs the whole comparison for a trained model.

* Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to
  a Local Nash Equilibrium", eq. 6; Dowson & Landau 1982):
  ``||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)``.
* Kernel inception distance (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 4 and §4):
  the unbiased MMD^2 estimator with the cubic polynomial kernel ``k(a, b) = (a.b / d + 1)^3``,
  averaged over random subsets; its standard deviation over the subsets comes with it.
* Precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", eqs. 1-3): each set's manifold is the union of balls around its
  points with the radius to the k-th nearest neighbour (k = 3; a feature space may ask for more where
  there are images enough, see :func:`pr_k`); precision is the share of generated points inside the
  real manifold, recall the share of real points inside the generated one.
* Memorisation: the distance from each sample to its nearest training image, against the same for
  held-out real images (the nearest-neighbour test of Meehan et al. 2020 and of the "copy" checks
  in the GAN literature, reduced to one ratio): ``median_i d(sample_i, train) / median_j
  d(held-out_j, train)``. About 1 when samples are no nearer the training set than new real images
  are; far below 1 when they copy training images (a copy is at distance 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .features import PR_K, PR_K_SHARE  # 3 (Kynkäänniemi et al.); a feature space may set its own (FeatureExtractor.pr_k)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
_CHUNK = 1024  # rows of a distance matrix at a time (10,000 x 1,024 float64 = 80 MB)


def _f64(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim != 2:
        raise ConfigError(f"{what}: expected features (N, D), got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what}: features must be finite")
    return x


def mean_cov(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64; needs N >= 2."""
    x = _f64(features, "mean_cov")
    if x.shape[0] < 2:
        raise ConfigError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition
    (eigenvalues below zero from rounding are clipped to zero)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_gaussians(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)
    (Heusel et al. 2017, eq. 6): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``.

    ``tr((S1 S2)^1/2)`` is computed as ``tr((S1^1/2 S2 S1^1/2)^1/2)`` (the same eigenvalues, but a
    symmetric PSD matrix, so eigh applies and singular covariances are fine)."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    s1, s2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ConfigError(
            f"Fréchet distance: shapes do not match ({tuple(mu1.shape)}, {tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)})"
        )
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    tr_covmean = w.sqrt().sum()
    d = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)
    return max(d, 0.0)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D) ("FID" when
    the features are Inception's). Biased upwards at finite N: compare numbers at equal N only.

    With fewer points than dimensions (N, M <= D) the trace term is computed from the N x M
    cross-Gram matrix instead of two D x D eigendecompositions: with centred features A, B,
    ``tr((S1 S2)^1/2) = ||A B^T||_* / sqrt((N - 1)(M - 1))`` (the nonzero eigenvalues of
    ``A^T A B^T B`` are those of ``(A B^T)(A B^T)^T``)."""
    x, y = _f64(real, "Fréchet distance"), _f64(fake, "Fréchet distance")
    (n, d), m = x.shape, y.shape[0]
    if y.shape[1] != d or n < 2 or m < 2 or max(n, m) > d:
        return frechet_distance_gaussians(*mean_cov(x), *mean_cov(y))
    a, b = x - x.mean(0), y - y.mean(0)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n - 1) * (m - 1))
    dist = ((x.mean(0) - y.mean(0)) ** 2).sum() + (a * a).sum() / (n - 1) + (b * b).sum() / (m - 1) - 2 * tr_covmean
    return max(float(dist), 0.0)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between two feature sets with the cubic polynomial kernel
    ``k(a, b) = (a.b / d + 1)^3`` (Bińkowski et al. 2018, eq. 4 with the kernel of §4):
    ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (mn)``.
    Can be negative (it is unbiased); its expectation is 0 for equal distributions."""
    x, y = _f64(x, "KID"), _f64(y, "KID")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ConfigError(f"KID needs at least 2 feature vectors on each side, got {m} and {n}")
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        generator: torch.Generator | None = None) -> tuple[float, float]:  # fmt: skip
    """Kernel inception distance: mean and standard deviation of :func:`mmd2_unbiased` over
    ``subsets`` random subsets of ``min(subset_size, N, M)`` points of each set, each drawn
    without replacement (as Bińkowski et al.'s code does; the subsets overlap when N is small)."""
    if subsets < 1 or subset_size < 2:
        raise ConfigError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    x, y = _f64(real, "KID"), _f64(fake, "KID")
    size = min(subset_size, x.shape[0], y.shape[0])
    vals = torch.tensor([mmd2_unbiased(x[torch.randperm(x.shape[0], generator=generator)[:size]],
                                       y[torch.randperm(y.shape[0], generator=generator)[:size]])
                         for _ in range(subsets)], dtype=torch.float64)  # fmt: skip
    return float(vals.mean()), float(vals.std()) if subsets > 1 else 0.0


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point of ``x`` to its k-th nearest neighbour in ``x`` (itself excluded)."""
    out = []
    for i in range(0, x.shape[0], _CHUNK):
        d = torch.cdist(x[i : i + _CHUNK], x)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def pr_k(space_k: int, n: int) -> int:
    """The k of precision/recall for ``n`` images a side in a feature space that asks for ``space_k``: that k
    where it is at most ``n // PR_K_SHARE`` (a small share of the set), else ``n // PR_K_SHARE`` but at least
    :data:`PR_K` (3), and never above n - 1. MobileNetV2's k = 10 holds from 350 images a side."""
    return max(1, min(space_k, max(PR_K, n // PR_K_SHARE), n - 1))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-th-nearest-neighbour balls:
    precision = share of ``fake`` points within the ball of some real point, recall = share of
    ``real`` points within the ball of some fake point (a point on a ball's boundary is inside)."""
    x, y = _f64(real, "precision/recall"), _f64(fake, "precision/recall")
    if not 1 <= k < min(x.shape[0], y.shape[0]):
        raise ConfigError(f"precision/recall needs k in 1..{min(x.shape[0], y.shape[0]) - 1} (fewer points than k + 1), got k = {k}")
    rx, ry = _kth_radius(x, k), _kth_radius(y, k)
    fake_in = torch.zeros(y.shape[0], dtype=torch.bool)
    real_in = []
    for i in range(0, x.shape[0], _CHUNK):
        d = torch.cdist(x[i : i + _CHUNK], y)  # (chunk of real, all fake)
        fake_in |= (d <= rx[i : i + _CHUNK, None]).any(0)
        real_in.append((d <= ry[None, :]).any(1))
    return float(fake_in.double().mean()), float(torch.cat(real_in).double().mean())


def nearest_distances(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of ``x`` (N, D) to its nearest row of ``ref`` (M, D), (N,) float64."""
    x, ref = _f64(x, "nearest distances"), _f64(ref, "nearest distances")
    if ref.shape[0] == 0 or ref.shape[1] != x.shape[1]:
        raise ConfigError(f"nearest distances need a non-empty reference of {x.shape[1]}-d features, got shape {tuple(ref.shape)}")
    return (
        torch.cat([torch.cdist(x[i : i + _CHUNK], ref).min(1).values for i in range(0, x.shape[0], _CHUNK)]) if len(x) else x.new_empty(0)
    )


@dataclass
class Memorisation:
    """Nearest-training-image distances of samples against those of held-out real images."""

    ratio: float  # median d(sample, train) / median d(held-out, train): ~1 fine, << 1 copies
    sample_median: float
    held_out_median: float
    closer_than_p1: float  # share of samples nearer the training set than 99% of held-out images are (~0.01 fine)
    train_images: int
    held_out_images: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def memorisation(train: torch.Tensor, held_out: torch.Tensor, fake: torch.Tensor) -> Memorisation:
    """The memorisation check: features of the training images (M, D), of held-out real images
    (N_h, D) and of samples (N, D); distances are to the nearest training image (see the module docstring)."""
    if held_out.shape[0] < 1 or fake.shape[0] < 1:
        raise ConfigError("the memorisation check needs held-out images and samples")
    d_fake, d_held = nearest_distances(fake, train), nearest_distances(held_out, train)
    med_fake, med_held = float(d_fake.median()), float(d_held.median())
    p1 = torch.quantile(d_held, 0.01)
    return Memorisation(ratio=med_fake / med_held if med_held > 0 else math.nan, sample_median=med_fake, held_out_median=med_held,
                        closer_than_p1=float((d_fake < p1).double().mean()), train_images=int(train.shape[0]),
                        held_out_images=int(held_out.shape[0]))  # fmt: skip


@dataclass
class Scores:
    """Every score of one comparison (real features vs generated features)."""

    fd: float
    kid: float
    kid_std: float
    precision: float
    recall: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, k: int = PR_K, kid_subsets: int = KID_SUBSETS,
            kid_subset_size: int = KID_SUBSET_SIZE) -> Scores:  # fmt: skip
    """FD, KID (mean, std over subsets) and precision/recall of ``fake`` against ``real`` features."""
    g = torch.Generator().manual_seed(seed)
    kid_mean, kid_std = kid(real, fake, kid_subsets, kid_subset_size, g)
    p, r = precision_recall(real, fake, k)
    return Scores(frechet_distance(real, fake), kid_mean, kid_std, p, r)


# ----------------------------------------------------------------------------- a trained model


def evaluate_samples(model: Any, real_images: torch.Tensor, n: int, extractor: Any, temperature: float = 1.0, seed: int = 0,
                     reconstructions: bool = True, prior: Any = None, train_images: torch.Tensor | None = None,
                     held_out: torch.Tensor | None = None, group_temperature: float | list[float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Compare ``n`` prior samples of ``model`` (decoder means of z drawn from ``prior`` at
    ``temperature``; default the model's own prior, N(0, I)) with ``n`` of the ``real_images`` (float,
    in [0, 1]; a seeded random subset when there are more), in the feature space of ``extractor``;
    with ``reconstructions``, also the model's reconstructions (posterior means decoded) of those same
    real images, as a reference. With ``train_images``: the :func:`memorisation` check, against the
    compared real images, or against ``held_out`` when given (when the real images are training images).
    ``n`` must not exceed the real images."""
    from .inference import reconstruct, sample, sample_group_temperature

    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"--temperature must be a finite number > 0, got {temperature}")
    total = real_images.shape[0]
    if not 2 <= n <= total:
        raise ConfigError(f"-n must be between 2 and the {total:,} real images, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values if n < total else torch.arange(total)
    real = real_images[idx]
    real_f = extractor(real)
    fake = sample(model, n, temperature, g, prior, group_temperature)
    fake_f = extractor(fake)
    k = pr_k(getattr(extractor, "pr_k", PR_K), n)
    out: dict[str, Any] = {"features": extractor.name, "feature_dim": int(real_f.shape[1]), "n": n, "temperature": temperature,
                           **({"group_temperature": gt} if (gt := sample_group_temperature(model, group_temperature)) is not None else {}),
                           "seed": seed, "k": k, "kid_subsets": KID_SUBSETS, "kid_subset_size": min(KID_SUBSET_SIZE, n)}  # fmt: skip
    out.update(compare(real_f, fake_f, seed, k).to_dict())
    if reconstructions:
        out["reconstructions"] = compare(real_f, extractor(reconstruct(model, real)), seed, k).to_dict()
    if train_images is not None:
        held_f = real_f if held_out is None else extractor(held_out)
        out["memorisation"] = memorisation(extractor(train_images), held_f, fake_f).to_dict()
    return out


def evaluate_run(model: Any, cfg: Any, n: int, split: str = "test", temperature: float = 1.0, seed: int = 0, features: str = "auto",
                 reconstructions: bool = True, data: Any = None, prior: Any = None, memorise: bool = False,
                 group_temperature: float | list[float] | None = None) -> dict[str, Any]:  # fmt: skip
    """:func:`evaluate_samples` of a loaded run (``cfg`` its RunConfig) against a split of its own data, as
    `vae eval-samples` scores it. The real side is ``split`` on its original pixels (a ``--binarize`` run is
    compared with the grayscale images its decoder means estimate); ``n`` above the split's size is clamped
    (the result's ``n`` says how many were used). ``features``: a name of :data:`vaecli.eval.features.FEATURES`
    or ``auto`` (:func:`vaecli.eval.features.default_features`); ``data``: that split already loaded (ImageData,
    original pixels); ``prior``: where the samples come from (default the model's own); ``memorise``: the
    memorisation check against the run's training split (the compared images are its held-out side, the
    test split when ``split`` is train). Nothing is downloaded but Inception's weights."""
    from dataclasses import replace

    from ..data import load_splits, to_float
    from .features import default_features, get_extractor

    splits = load_splits(replace(cfg.data, binarize=False)) if data is None or memorise else {}
    data = data if data is not None else splits[split]
    name = default_features(cfg.model.channels, cfg.model.image_size) if features == "auto" else features
    extractor = get_extractor(name, next(model.parameters()).device)
    train_images = to_float(splits["train"].images) if memorise else None
    held_out = to_float(splits["test"].images) if memorise and split == "train" else None
    res = evaluate_samples(model, to_float(data.images), min(n, len(data)), extractor, temperature, seed, reconstructions,
                           prior=prior, train_images=train_images, held_out=held_out, group_temperature=group_temperature)  # fmt: skip
    if memorise:
        res["memorisation"]["held_out_split"] = "test" if split == "train" else split
    return {"split": split, **res}
