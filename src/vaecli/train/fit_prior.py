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
what it was fitted on, the scores, the SHA-256 of both the tensors and the model weights it was
fitted to), written atomically, never pickled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..model.flow import Report, _quiet, fit_flow
from ..model.mixture import EMResult, fit_gmm
from ..model.posterior import Posterior
from ..model.priors import Prior, StandardNormal, mean_log_prob
from ..runs.priors import KINDS, PRIOR_FORMAT, FitResult

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


def encode_splits(model: Any, data_cfg: Any) -> dict[str, Encoded]:
    """Encode the run's train, val and test splits as the model sees them (a ``--binarize`` run:
    the fixed binarisation its test split gets, for the training and validation images too)."""
    from ..data import binarize_fixed, load_splits, to_float
    from ..eval.inference import encode

    splits = load_splits(data_cfg)
    out = {}
    for name, data in splits.items():
        if data_cfg.binarize and name != "test":  # load_splits binarises the test split already
            data = binarize_fixed(data)
        out[name] = Encoded(encode(model, to_float(data.images)), len(data))
    return out


def check_fit_options(kind: str, components: int | None = None, fit_on: str | None = None, flag: str = "--kind") -> None:
    """Refuse bad fit options (one line) before any work; ``flag`` names the option that gave ``kind``."""
    if kind not in KINDS:
        raise ConfigError(f"{flag} must be {' or '.join(KINDS)}, got {kind!r}")
    if fit_on is not None and fit_on not in FIT_ON:
        raise ConfigError(f"--fit-on must be {' or '.join(FIT_ON)}, got {fit_on!r}")
    if components is not None:
        if kind != "gmm":
            raise ConfigError("--components is for --kind gmm")
        if not 1 <= components <= MAX_COMPONENTS:
            raise ConfigError(f"--components must be between 1 and {MAX_COMPONENTS}, got {components}")


def fit_prior(model: Any, data_cfg: Any, kind: str = "gmm", components: int | None = None, fit_on: str | None = None,
              seed: int = 0, report: Report = _quiet) -> FitResult:  # fmt: skip
    """Fit a prior of ``kind`` to the encoded training split of a run (model + its DataConfig).

    Validation (the run's val split; without one, 10% carved from the encoded training split, said
    in ``info["validation"]``) chooses the components (``gmm``, unless ``components``) or the best
    epoch (``flow``); the encoded test split is scored once, under the prior and under N(0, I)."""
    from .recipe import validation_size

    check_fit_options(kind, components, fit_on)
    fit_on = fit_on or DEFAULT_FIT_ON
    start, cpu_start = time.perf_counter(), time.process_time()
    model.eval()
    report("encoding the train, val and test splits", False)
    enc = encode_splits(model, data_cfg)
    g = torch.Generator().manual_seed(seed)
    train, val = enc["train"], enc["val"]
    if val.images == 0:  # carve the validation vectors out of the encoded training split
        n = train.images
        n_val = max(1, validation_size(n))
        if n - n_val < 2:
            raise ConfigError(f"fitting a prior needs at least 3 training images, the run has {n}")
        perm = torch.randperm(n, generator=g)
        q = train.posterior
        val = Encoded(Posterior(q.mu[perm[:n_val]], q.logvar[perm[:n_val]]), n_val)
        train = Encoded(Posterior(q.mu[perm[n_val:]], q.logvar[perm[n_val:]]), n - n_val)
        val_source = f"{n_val:,} images carved out of the encoded training split (the run has no validation split)"
    else:
        val_source = "the run's validation split"
    x_val = val.vectors(fit_on, g)
    x_test = enc["test"].vectors(fit_on, g)
    dim = x_val.shape[1]
    info: dict[str, Any] = {"format": PRIOR_FORMAT, "kind": kind, "latent_dim": dim}
    selection: list[dict[str, Any]] = []
    if kind == "gmm":
        x_train = train.vectors(fit_on, g)
        grid = [components] if components is not None else component_grid(x_train.shape[0], dim)
        best: tuple[float, EMResult] | None = None
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
        prior: Prior = best[1].mixture
        val_ll, chosen = best[0], {"components": best[1].mixture.components, "iterations": best[1].iterations}
        how = "--components" if components is not None else "validation log-likelihood (candidates in turn until one does not improve it)"
    else:
        flow_res = fit_flow(train.posterior if fit_on == "draws" else train.vectors(fit_on, g), x_val, seed, report=report)
        prior = flow_res.flow
        val_ll = flow_res.val_curve[flow_res.best_epoch - 1]
        chosen = {"best_epoch": flow_res.best_epoch, "epochs": len(flow_res.val_curve)}
        selection = [{"epoch": i + 1, "train_log_likelihood": t, "val_log_likelihood": v}
                     for i, (t, v) in enumerate(zip(flow_res.train_curve, flow_res.val_curve))]  # fmt: skip
        how = "the epoch of the highest validation log-likelihood"
    normal = StandardNormal(dim)
    vectors = "one posterior draw z ~ q(z|x) per image" + (", drawn afresh every epoch" if kind == "flow" else "")
    info.update(
        config=prior.config(),  # type: ignore[operator]
        parameters=prior.free_parameters(),  # type: ignore[operator]
        chosen={**chosen, "by": how},
        fitted_on={
            "split": "train",
            "images": train.images,
            "vectors": fit_on,
            "description": vectors if fit_on == "draws" else "the posterior means",
        },
        validation={"source": val_source, "images": val.images},
        selection=selection,
        scores={
            "unit": "nats per latent vector (mean log p(z))",
            "val": {"images": val.images, "log_likelihood": val_ll, "normal_log_likelihood": mean_log_prob(normal, x_val)},
            "test": {
                "images": enc["test"].images,
                "log_likelihood": mean_log_prob(prior, x_test),
                "normal_log_likelihood": mean_log_prob(normal, x_test),
            },
        },
        seed=seed,
        seconds=round(time.perf_counter() - start, 3),
        cpu_seconds=round(time.process_time() - cpu_start, 3),  # all threads; an upper bound of the wall time on idle cores
        threads=torch.get_num_threads(),
    )
    return FitResult(prior, info)
