"""Priors fitted after training to where the encoder puts images: a Gaussian mixture or a flow on z.

A VAE trained against N(0, I) does not fill N(0, I): its aggregate posterior q(z) = E_x q(z|x)
leaves regions that no image maps to, and prior samples from there decode to in-between figures.
Fitting a density to the encoded training images and sampling from it instead is the "ex-post
density estimation" of Ghosh et al. 2020 ("From Variational to Deterministic Autoencoders", §4:
a 10-component full-covariance Gaussian mixture on the codes). Two kinds, each a
:class:`~vaecli.model.priors.Prior`:

* ``gmm``: :class:`GaussianMixture`, full covariances, fitted by EM (Dempster et al. 1977; Bishop
  2006, §9.2.2) in float64 from a k-means++ start (Arthur & Vassilvitskii 2007), with a small ridge
  on the covariances; the number of components is chosen by held-out log-likelihood.
* ``flow``: :class:`RealNVP`, affine coupling layers (Dinh et al. 2017, "Density estimation using
  Real NVP", eqs. 7-9) after a fixed whitening by the data's mean and Cholesky factor, so that it
  starts as the one-component Gaussian and learns from there; trained with Adam, the weights of the
  best held-out log-likelihood kept.

What they are fitted to (``fit_on``): ``draws`` (one z ~ q(z|x) per training image, drawn afresh
every flow epoch: samples of the aggregate posterior itself, what the decoder was trained on) or
``means`` (the posterior means, narrower than q(z)). The validation split chooses (components,
best flow epoch); the test split only reports: log p(z) in nats per latent vector, beside the same
under N(0, I). A stored prior is ``prior.safetensors`` (tensors) + ``prior.json`` (kind, sizes,
what it was fitted on, the scores, the SHA-256 of the tensors, and the file and fingerprint of the
model weights it was fitted to), written atomically, never pickled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..model.flow import Report, _quiet, fit_flow
from ..model.mixture import EMResult, fit_gmm
from ..model.posterior import Posterior
from ..model.priors import Prior, StandardNormal, mean_log_prob
from ..runs.priors import KINDS, PRIOR_FORMAT, FitResult
from ..runs.store import weights_fingerprint

FIT_ON = ("draws", "means")
DEFAULT_FIT_ON = "draws"  # measured: benchmarks/results/priors_fmnist.json, docs/priors.md
COMPONENT_GRID = (1, 2, 5, 10, 20, 50, 100)  # candidates when --components is not given
MAX_COMPONENTS = 1000


def component_grid(n: int, dim: int) -> list[int]:
    """The candidate component counts for ``n`` vectors of ``dim`` dimensions: :data:`COMPONENT_GRID`,
    up to one component per D vectors (fewer points than dimensions cannot span a covariance; the
    validation split judges the rest)."""
    cap = max(1, n // dim)
    return [k for k in COMPONENT_GRID if k <= cap] or [1]


@dataclass
class Encoded:
    """The posteriors of one split's images: q(z|x) as a Posterior, and the image count."""

    posterior: Posterior
    images: int

    def vectors(self, fit_on: str, generator: torch.Generator) -> torch.Tensor:
        """The posterior means, or one draw z ~ q(z|x) per image."""
        return self.posterior.mean if fit_on == "means" else self.posterior.sample(generator)


def encode_splits(model: Any, data_cfg: Any, splits: dict[str, Any] | None = None) -> dict[str, Encoded]:
    """Encode the run's train, val and test splits as the model sees them (a ``--binarize`` run:
    the fixed binarisation its test split gets, for the training and validation images too);
    ``splits``: those splits already in memory (ImageData by name), else loaded by ``data_cfg``."""
    from ..data import binarize_fixed, load_splits, to_float
    from ..eval.inference import encode

    splits = splits if splits is not None else load_splits(data_cfg)
    out = {}
    for name, data in splits.items():
        if data_cfg.binarize and name != "test":  # load_splits binarises the test split already
            data = binarize_fixed(data)
        out[name] = Encoded(encode(model, to_float(data.images)), len(data))
    return out


NO_FIT = "none"  # vae train --fit-prior none: no prior fitted after training (where the rule for defaults fits one)


def check_fit_options(kind: str, components: int | None = None, fit_on: str | None = None, flag: str = "--kind") -> None:
    """Refuse bad fit options (one line) before any work; ``flag`` names the option that gave ``kind``
    (``--fit-prior`` also takes ``none``)."""
    kinds = (*KINDS, NO_FIT) if flag == "--fit-prior" else KINDS
    if kind not in kinds:
        raise ConfigError(f"{flag} must be {', '.join(kinds[:-1])} or {kinds[-1]}, got {kind!r}")
    if fit_on is not None and fit_on not in FIT_ON:
        raise ConfigError(f"--fit-on must be {' or '.join(FIT_ON)}, got {fit_on!r}")
    if components is not None:
        if kind != "gmm":
            raise ConfigError("--components is for --kind gmm")
        if not 1 <= components <= MAX_COMPONENTS:
            raise ConfigError(f"--components must be between 1 and {MAX_COMPONENTS}, got {components}")


def fit_prior(model: Any, data_cfg: Any, kind: str = "gmm", components: int | None = None, fit_on: str | None = None,
              seed: int = 0, report: Report = _quiet, splits: dict[str, Any] | None = None) -> FitResult:  # fmt: skip
    """Fit a prior of ``kind`` to the encoded training split of a run (model + its DataConfig).

    Validation (the run's val split; without one, 10% carved from the encoded training split, said
    in ``info["validation"]``) chooses the components (``gmm``, unless ``components``) or the best
    epoch (``flow``); the encoded test split is scored once, under the prior and under N(0, I).
    ``splits``: the run's train, val and test ImageData already in memory (a trainer's), else loaded."""
    check_fit_options(kind, components, fit_on)
    fit_on = fit_on or DEFAULT_FIT_ON
    start, cpu_start = time.perf_counter(), time.process_time()
    model.eval()
    fitted_to = {"sha256": weights_fingerprint(model)}  # what sampling compares with (vaecli.runs.priors.load_prior)
    report("encoding the train, val and test splits", False)
    enc = encode_splits(model, data_cfg, splits)
    g = torch.Generator().manual_seed(seed)
    train, val, val_source = _train_and_validation(enc, g)
    x_val = val.vectors(fit_on, g)
    x_test = enc["test"].vectors(fit_on, g)
    if kind == "gmm":
        fit = _fit_gmm(train.vectors(fit_on, g), x_val, components, seed, report)
    else:
        fit = _fit_flow(train.posterior if fit_on == "draws" else train.vectors(fit_on, g), x_val, seed, report)
    vectors = "one posterior draw z ~ q(z|x) per image" + (", drawn afresh every epoch" if kind == "flow" else "")
    info: dict[str, Any] = {
        "format": PRIOR_FORMAT,
        "kind": kind,
        "latent_dim": x_val.shape[1],
        "config": fit.prior.config(),  # type: ignore[operator]
        "parameters": fit.prior.free_parameters(),  # type: ignore[operator]
        "chosen": {**fit.chosen, "by": fit.how},
        "fitted_on": {
            "split": "train",
            "images": train.images,
            "vectors": fit_on,
            "description": vectors if fit_on == "draws" else "the posterior means",
        },
        "validation": {"source": val_source, "images": val.images},
        "selection": fit.selection,
        "scores": _scores(fit, val.images, x_val, enc["test"].images, x_test),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),  # all threads; an upper bound of the wall time on idle cores
        "threads": torch.get_num_threads(),
        "model_weights": fitted_to,
    }
    return FitResult(fit.prior, info)


class _Fit(NamedTuple):
    """A fitted prior, its validation log-likelihood, what was chosen and by what, and every candidate's (or epoch's) numbers."""

    prior: Prior
    val_ll: float
    chosen: dict[str, Any]
    how: str
    selection: list[dict[str, Any]]


def _train_and_validation(enc: dict[str, Encoded], g: torch.Generator) -> tuple[Encoded, Encoded, str]:
    """The training and validation posteriors, and where the validation ones come from: the run's
    validation split, else a random 10% carved out of the encoded training split."""
    from .recipe import validation_size

    train, val = enc["train"], enc["val"]
    if val.images > 0:
        return train, val, "the run's validation split"
    n = train.images
    n_val = max(1, validation_size(n))
    if n - n_val < 2:
        raise ConfigError(f"fitting a prior needs at least 3 training images, the run has {n}")
    perm = torch.randperm(n, generator=g)
    q = train.posterior
    val = Encoded(Posterior(q.mu[perm[:n_val]], q.logvar[perm[:n_val]]), n_val)
    train = Encoded(Posterior(q.mu[perm[n_val:]], q.logvar[perm[n_val:]]), n - n_val)
    return train, val, f"{n_val:,} images carved out of the encoded training split (the run has no validation split)"


def _fit_gmm(x_train: torch.Tensor, x_val: torch.Tensor, components: int | None, seed: int, report: Report) -> _Fit:
    """EM with ``components``, or with each candidate of :func:`component_grid` in turn until one does
    not improve the validation log-likelihood; the best."""
    grid = [components] if components is not None else component_grid(x_train.shape[0], x_val.shape[1])
    best: tuple[float, EMResult] | None = None
    selection: list[dict[str, Any]] = []
    for k in grid:
        report(f"EM with {k} component{'s' if k > 1 else ''}", False)
        res = fit_gmm(x_train, k, seed)
        v = mean_log_prob(res.mixture, x_val)
        selection.append({"components": k, "iterations": res.iterations, "converged": res.converged,
                          "train_log_likelihood": res.train_log_likelihood, "val_log_likelihood": v})  # fmt: skip
        report(f"{k:>4} components: validation {v:.3f} nats per vector ({res.iterations} EM iterations)", True)
        if best is not None and not v > best[0]:
            break  # the first candidate that does not beat the best so far ends the search
        best = (v, res)
    assert best is not None
    chosen = {"components": best[1].mixture.components, "iterations": best[1].iterations}
    how = "--components" if components is not None else "validation log-likelihood (candidates in turn until one does not improve it)"
    return _Fit(best[1].mixture, best[0], chosen, how, selection)


def _fit_flow(train: Posterior | torch.Tensor, x_val: torch.Tensor, seed: int, report: Report) -> _Fit:
    """The RealNVP flow trained on ``train`` (posteriors: a fresh draw every epoch), at its best validation epoch."""
    res = fit_flow(train, x_val, seed, report=report)
    selection = [{"epoch": i + 1, "train_log_likelihood": t, "val_log_likelihood": v}
                 for i, (t, v) in enumerate(zip(res.train_curve, res.val_curve))]  # fmt: skip
    chosen = {"best_epoch": res.best_epoch, "epochs": len(res.val_curve)}
    return _Fit(res.flow, res.val_curve[res.best_epoch - 1], chosen, "the epoch of the highest validation log-likelihood", selection)


def _scores(fit: _Fit, val_images: int, x_val: torch.Tensor, test_images: int, x_test: torch.Tensor) -> dict[str, Any]:
    """Mean log p(z) of the validation and test vectors under the fitted prior and under N(0, I)."""
    normal = StandardNormal(x_val.shape[1])
    return {
        "unit": "nats per latent vector (mean log p(z))",
        "val": {"images": val_images, "log_likelihood": fit.val_ll, "normal_log_likelihood": mean_log_prob(normal, x_val)},
        "test": {
            "images": test_images,
            "log_likelihood": mean_log_prob(fit.prior, x_test),
            "normal_log_likelihood": mean_log_prob(normal, x_test),
        },
    }
