"""Fitted priors on disk: ``prior.safetensors`` (tensors) + ``prior.json`` (kind, sizes, what it was
fitted on, the scores, the SHA-256 of the tensors, and the file and fingerprint of the model weights
it was fitted to), written atomically, never pickled; and the choice of the prior a command samples from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..model.flow import RealNVP
from ..model.mixture import GaussianMixture
from ..model.priors import Prior, StandardNormal
from . import store as ckpt

PRIOR_TENSORS, PRIOR_JSON = ckpt.PRIOR, ckpt.PRIOR_INFO
PRIOR_FORMAT = "vaecli-prior-1"
KINDS = ("gmm", "flow")
CHOICES = ("auto", "fitted", "normal")
NORMAL_LABEL = "N(0, I)"


@dataclass
class FitResult:
    """A fitted prior and its description (the content of ``prior.json``)."""

    prior: Prior
    info: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def has_prior(run: Path) -> bool:
    """Whether the run folder holds a fitted prior."""
    return (Path(run) / PRIOR_JSON).exists()


def save_prior(run: Path, result: FitResult, weights: Path | None = None) -> Path:
    """Store ``result`` in the run folder: ``prior.safetensors`` first, then ``prior.json`` (which names
    the tensors' SHA-256, so that a half-replaced pair is detected); both written atomically.
    ``weights``: the file of the weights it was fitted to (default: the run's model.safetensors), named
    in ``model_weights`` beside their fingerprint, which :func:`~vaecli.train.fit_prior.fit_prior` took."""
    from ..fileio import atomic_write_json

    run = Path(run)
    ckpt.check_writable(run, "a fitted prior")
    tensors = {k: v for k, v in result.prior.state_dict().items()}
    ckpt.write_safetensors(run / PRIOR_TENSORS, tensors, {"format": PRIOR_FORMAT, "kind": result.prior.kind})
    fitted_to = {
        "file": _file_name(run, Path(weights) if weights is not None else run / ckpt.MODEL),
        **result.info.get("model_weights", {}),
    }
    info = {**result.info, "created": ckpt.utc_now(), "tensors_sha256": _sha256(run / PRIOR_TENSORS), "model_weights": fitted_to}
    atomic_write_json(run / PRIOR_JSON, info)
    result.info = info
    return run / PRIOR_JSON


def _file_name(run: Path, path: Path) -> str:
    """``path`` relative to the run folder when inside it (``model.safetensors``), else absolute."""
    try:
        return str(path.resolve().relative_to(run.resolve()))
    except ValueError:
        return str(path.resolve())


def read_prior_info(run: Path) -> dict[str, Any]:
    """``prior.json`` of a run (CheckpointError when missing or damaged)."""
    path = Path(run) / PRIOR_JSON
    missing = CheckpointError(f"run {Path(run).name!r} has no fitted prior: fit one with `vae fit-prior --run {Path(run).name}`")
    info = ckpt.read_json_file(path, missing)
    if not isinstance(info, dict) or info.get("format") != PRIOR_FORMAT or info.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: not a vaecli prior (format {PRIOR_FORMAT})")
    return info


def load_fitted(run: Path, latent_dim: int) -> tuple[Prior, dict[str, Any]]:
    """The stored prior of a run and its ``prior.json``; refuses a prior of another latent size than
    ``latent_dim`` and tensors that are not the ones ``prior.json`` names."""
    run = Path(run)
    info = read_prior_info(run)
    if info.get("latent_dim") != latent_dim:
        raise CheckpointError(f"the fitted prior in {run} is for {info.get('latent_dim')} latent dimensions, the model has {latent_dim}: "
                              f"refit it with `vae fit-prior`")  # fmt: skip
    path = run / PRIOR_TENSORS
    if not path.exists():
        raise CheckpointError(f"{path} is missing: refit the prior with `vae fit-prior`")
    if _sha256(path) != info.get("tensors_sha256"):
        raise CheckpointError(f"{path} is not the file {PRIOR_JSON} describes: refit the prior with `vae fit-prior`")
    tensors, meta = ckpt.read_safetensors(path)
    if meta.get("format") != PRIOR_FORMAT:
        raise CheckpointError(f"{path}: not a vaecli prior")
    cfg: dict[str, Any] = info["config"] if isinstance(info.get("config"), dict) else {}
    try:
        if info["kind"] == "gmm":
            prior: Prior = GaussianMixture(tensors["weights"], tensors["means"], tensors["scale_tril"])
        else:
            prior = RealNVP(latent_dim, int(cfg["layers"]), int(cfg["hidden"]))
            ckpt.load_checked(prior, tensors, path)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: damaged prior ({exc.__class__.__name__}: {exc})") from None
    return prior.eval(), info


def describe(info: dict[str, Any]) -> str:
    """A prior in a few words: ``gmm, 10 components, fitted to posterior draws``."""
    size = f"{info['config']['components']} components" if info["kind"] == "gmm" else f"{info['config']['layers']} coupling layers"
    return f"{info['kind']}, {size}, fitted to posterior {info['fitted_on']['vectors']}"


@dataclass
class PriorChoice:
    """The prior a command samples from: the Prior, its label, its ``prior.json`` (None for N(0, I)),
    and a note for stderr (None when there is nothing to say)."""

    prior: Prior
    label: str
    info: dict[str, Any] | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What JSON outputs say about the prior."""
        if self.info is None:
            return {"kind": "normal", "label": self.label}
        keep = ("kind", "config", "fitted_on", "chosen", "created")
        return {"label": self.label, **{k: self.info.get(k) for k in keep}}


def load_prior(run: Path, choice: str | None, model: Any) -> PriorChoice:
    """The prior to sample ``model`` (of run folder ``run``) from: ``fitted`` (the stored one; an error
    when there is none), ``normal`` (N(0, I)) or ``auto``/None (the fitted one when the run has one,
    with a note, else the model's own prior)."""
    choice = choice or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"--prior must be {', '.join(CHOICES)}, got {choice!r}")
    d = int(model.config.latent_dim)
    if choice == "normal" or (choice == "auto" and not has_prior(run)):
        own = getattr(model, "prior", None) if choice == "auto" else None
        if isinstance(own, Prior) and own.kind != "normal":
            return PriorChoice(own, f"the model's {own.kind} prior")
        return PriorChoice(StandardNormal(d), NORMAL_LABEL)
    prior, info = load_fitted(run, d)
    dev = next(model.parameters()).device
    prior = prior.to(dev)
    label = describe(info)
    notes = []
    if choice == "auto":
        notes.append(f"sampling from the run's fitted prior ({label}); --prior normal for N(0, I)")
    note = _other_weights(info, model)
    if note:
        notes.append(note)
    return PriorChoice(prior, label, info, "; ".join(notes) or None)


def _other_weights(info: dict[str, Any], model: Any) -> str | None:
    """A note when ``model``'s weights are not the ones the prior was fitted to (compared by the
    fingerprint, which costs no hashing for a model that load_model returned: see
    :func:`vaecli.runs.store.weights_fingerprint`); None for a prior that recorded none."""
    fitted_to = info.get("model_weights")
    if not isinstance(fitted_to, dict) or not fitted_to.get("sha256"):
        return None
    if fitted_to["sha256"] == ckpt.weights_fingerprint(model):
        return None
    return (f"the fitted prior was fitted to other weights than these ({fitted_to.get('file', ckpt.MODEL)} when it was fitted): "
            f"refit it with `vae fit-prior` on the weights you sample from")  # fmt: skip
