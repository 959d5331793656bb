"""Training hooks: what a run does around its loop besides the optimisation, as a small list of
callbacks in the spirit of Lightning's (``setup``, ``on_fit_start``, ``on_step_end``,
``on_epoch_end``, ``on_fit_end``), not Lightning itself.

The list is built from the run's recorded :class:`~vaecli.config.TrainConfig` by :func:`build_hooks`,
so a resumed run runs the same hooks as the run it continues: keeping the best and last weights,
early stopping, the moving average of the weights, fitting a prior and scoring samples after
training. ``summary.json`` names them (``hooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import TrainConfig
from .ema import EMA

if TYPE_CHECKING:  # pragma: no cover
    from .summary import TrainResult

Trainer = Any  # a vaecli.train.trainer.Trainer (not imported: the trainer imports this module)

SAMPLES_SCORED = 10_000  # --eval-samples: samples and real images compared, as `vae eval-samples` -n (clamped to the split)


class Hook:
    """A training callback: each method is called at its point of the run (rank 0 and the others alike,
    unless the hook says otherwise); ``on_epoch_end`` may return a reason to stop."""

    name = "hook"

    def setup(self, trainer: Trainer) -> None:
        """After the model is built and initialised, before any checkpoint is restored."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """At the start of every :meth:`Trainer.fit` (a resume included)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After an optimisation step (``step``: global steps done). Only hooks that override it are called."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], best: bool) -> str | None:
        """After an epoch's evaluation (``row``: its metrics.jsonl row; ``best``: the best validation
        -ELBO so far); returns a stop reason or None."""
        return None

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After the test split is scored and summary.json written (not for an interrupted run)."""


class Checkpointing(Hook):
    """Every epoch end: the resume point (``train_state.safetensors``, the last weights) and, when the
    validation -ELBO is the best so far (or there is no validation split), ``model.safetensors``."""

    name = "checkpoint"

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], best: bool) -> str | None:
        trainer.save(best=best)
        return None


class EarlyStopping(Hook):
    """``--early-stop N``: stop after N evaluations in a row without a better validation -ELBO."""

    name = "early_stop"

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], best: bool) -> str | None:
        return "early_stop" if trainer.state.evals_since_best >= self.patience else None


class ExponentialAverage(Hook):
    """``--ema DECAY``: a moving average of the weights (:class:`~vaecli.train.ema.EMA`), evaluated,
    saved and sampled in place of the raw weights. Made in :meth:`setup`, after the model's
    initialisation (a VampPrior's pseudo-inputs included), so the average starts from the weights
    that train."""

    name = "ema"

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def setup(self, trainer: Trainer) -> None:
        trainer.ema = EMA(trainer.model, self.decay)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        trainer.ema.update(step)


class AfterTraining(Hook):
    """A step after training, on rank 0, for a run that was not interrupted: its result goes into
    ``summary.json`` under :attr:`name` (and the result's summary)."""

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        from .. import distributed
        from ..runs import store as ckpt

        if result.stopped == "interrupted" or not distributed.is_main():
            return
        trainer.notify(f"{self.describe()} (--{self.name.replace('_', '-')})")
        result.summary[self.name] = self.run(trainer)
        ckpt.write_summary(trainer.path, result.summary)

    def describe(self) -> str:
        """What the step does, in a few words for a notice line."""
        raise NotImplementedError

    def run(self, trainer: Trainer) -> dict[str, Any]:
        """Do it; the JSON-able result."""
        raise NotImplementedError


class FitPrior(AfterTraining):
    """``--fit-prior KIND``: fit a prior to the encoded training images with the kept (best) weights
    and store it in the run, as `vae fit-prior --kind KIND` does; `vae sample` then draws from it."""

    name = "fit_prior"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def describe(self) -> str:
        return f"fitting a {self.kind} prior to the encoded training images"

    def run(self, trainer: Trainer) -> dict[str, Any]:
        from ..runs import store as ckpt
        from ..runs.priors import save_prior
        from .fit_prior import fit_prior

        model, cfg, folder = ckpt.load_model(trainer.path, str(trainer.device))
        result = fit_prior(model, cfg.data, self.kind)
        save_prior(folder, result, folder / ckpt.MODEL)
        return result.info


class EvalSamples(AfterTraining):
    """``--eval-samples``: score samples of the kept weights (from the run's fitted prior when it has
    one) as `vae eval-samples` does with its defaults."""

    name = "eval_samples"

    def describe(self) -> str:
        return "scoring samples"

    def run(self, trainer: Trainer) -> dict[str, Any]:
        from ..eval.features import default_features
        from ..eval.fidelity import evaluate_run
        from ..runs import store as ckpt
        from ..runs.priors import load_prior

        model, cfg, folder = ckpt.load_model(trainer.path, str(trainer.device))
        picked = load_prior(folder, "auto", model)
        features = default_features(cfg.model.channels, cfg.model.image_size)
        res = evaluate_run(model, cfg, SAMPLES_SCORED, "test", 1.0, 0, features, prior=picked.prior, memorise=True)
        return {"run": folder.name, "prior": picked.to_dict(), **res}


def build_hooks(train: TrainConfig) -> list[Hook]:
    """The hooks of a run with this (recorded) config, in the order they run: the weights average
    first (it is what is saved), checkpointing, early stopping, then the steps after training (the
    prior first: the sample scores use it)."""
    hooks: list[Hook] = []
    if train.ema:
        hooks.append(ExponentialAverage(train.ema))
    hooks.append(Checkpointing())
    if train.early_stop:
        hooks.append(EarlyStopping(train.early_stop))
    if train.fit_prior:
        from .fit_prior import check_fit_options

        check_fit_options(train.fit_prior, flag="--fit-prior")
        hooks.append(FitPrior(train.fit_prior))
    if train.eval_samples:
        hooks.append(EvalSamples())
    return hooks
