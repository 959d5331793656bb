"""Numbers that explain themselves: what a run's figures mean, in words, with the reference
figures that place them (``vae info`` and the end of ``vae train``; docs/metrics.md, "Reading your
numbers").

:func:`explain` turns a run's config and ``summary.json`` into rows of (name, value, unit, meaning,
reference); the CLI prints them, ``--json`` gives them as an object keyed by ``key``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..config import RunConfig

UNIFORM_BITS = 8.0  # bits per dimension of a uniform model of 8-bit pixels


@dataclass
class Number:
    """One explained figure."""

    key: str
    name: str
    value: float | int | None
    unit: str
    meaning: str
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON."""
        return asdict(self)


def likelihood_units(name: str, discrete: bool) -> str:
    """The unit of a run's nats in a few words: BCE nats/image, Gaussian nats/image or nats/image."""
    if name == "bernoulli" and not discrete:
        return "BCE nats/image"
    return "Gaussian nats/image" if name == "gaussian" else "nats/image"


def _num(d: dict[str, Any] | None, key: str) -> float | None:
    v = (d or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def explain(cfg: RunConfig, summary: dict[str, Any]) -> list[Number]:
    """The run's figures with their meaning: -ELBO, rate, distortion, bits/dim, the likelihood in
    words, normalised beta (Higgins et al. 2017), active units, the train/held-out gap, best/last."""
    name, discrete = _text(summary.get("likelihood_name")) or cfg.model.likelihood, summary.get("discrete") is True
    unit = likelihood_units(name, discrete)
    return [*_loss_rows(cfg, summary, name, discrete), *_latent_rows(cfg, summary), *_training_rows(summary, unit)]


def _loss_rows(cfg: RunConfig, summary: dict[str, Any], name: str, discrete: bool) -> list[Number]:
    """The likelihood in words, then the test split's -ELBO, distortion, rate and (when known) bits/dim."""
    unit, test = likelihood_units(name, discrete), summary.get("test") or {}
    rows = [
        Number(
            "likelihood",
            "likelihood",
            None,
            "",
            _text(summary.get("likelihood")) or cfg.model.likelihood,
            "a true likelihood of the pixels: comparable across models and likelihoods"
            if discrete
            else "not a likelihood of the 8-bit pixels: compare only with runs of the same likelihood",
        ),
        Number(
            "neg_elbo",
            "-ELBO (test)",
            _num(test, "neg_elbo"),
            unit,
            "distortion + rate: an upper bound on -log p(x); lower is better",
            _floor_reference(summary, name, discrete),
        ),
        Number(
            "distortion",
            "distortion (test)",
            _num(test, "recon"),
            unit,
            "the reconstruction term -log p(x|z): what the decoder cannot recover from z",
        ),
        Number(
            "rate",
            "rate (test)",
            _num(test, "kl"),
            "nats/image",
            "the KL term KL(q(z|x) || p(z)): the information z carries about each image",
            "0 = the decoder ignores z (posterior collapse)",
        ),
    ]
    if _num(test, "bits_per_dim") is not None:
        rows.append(
            Number(
                "bits_per_dim",
                "bits per dimension (test)",
                _num(test, "bits_per_dim"),
                "bits/dim",
                "-ELBO / (pixels x channels x ln 2)",
                f"{UNIFORM_BITS:g} = a uniform model of 8-bit pixels",
            )
        )
    return rows


def _latent_rows(cfg: RunConfig, summary: dict[str, Any]) -> list[Number]:
    """Normalised beta and the active units."""
    m, beta = cfg.model, cfg.train.beta
    dims = m.channels * m.image_size * m.image_size
    active = summary.get("active_units")
    return [
        Number(
            "normalised_beta",
            "normalised beta",
            beta * m.latent_dim / dims,
            "",
            f"beta x latent dims / input dims = {beta:g} x {m.latent_dim} / {dims} (Higgins et al. 2017)",
            "compares beta across image and latent sizes",
        ),
        Number(
            "active_units",
            "active units",
            active if isinstance(active, int) else None,
            f"of {m.latent_dim}",
            "dimensions whose posterior mean varies over images (Var > 0.01, Burda et al. 2016)",
            "the others carry nothing: a smaller --latent-dim would do",
        ),
    ]


def _training_rows(summary: dict[str, Any], unit: str) -> list[Number]:
    """The held-out gap and the best epoch, when the run has them."""
    rows = []
    gap = _gap(summary)
    if gap is not None:
        rows.append(
            Number(
                "gap",
                "held-out gap",
                gap,
                unit,
                "validation -ELBO minus the training -ELBO (its running mean over the last epoch)",
                "near 0 or below: no overfitting; large and growing: the model memorises its training images",
            )
        )
    best, last = summary.get("best") or {}, summary.get("last") or {}
    if best:
        kept = "model.safetensors holds these weights (the best by validation -ELBO)"
        rows.append(
            Number(
                "best_epoch",
                "best epoch",
                _num(best, "epoch"),
                "epochs",
                kept,
                f"last evaluated: epoch {last.get('epoch')}; training stopped: {summary.get('stopped', '?')}",
            )
        )
    return rows


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _floor_reference(summary: dict[str, Any], name: str, discrete: bool) -> str:
    floor = _num(summary, "test_bce_floor")
    if name == "bernoulli" and not discrete and floor is not None:
        return f"{floor:.2f} = the pixels' own entropy (the BCE floor of the test split: no model goes below it)"
    return ""


def _gap(summary: dict[str, Any]) -> float | None:
    val = _num((summary.get("last") or {}).get("val"), "neg_elbo")
    train = _num(summary.get("train"), "neg_elbo")
    return None if val is None or train is None else val - train
