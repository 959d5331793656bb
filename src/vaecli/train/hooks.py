"""Training hooks: what a run does around its loop besides the optimisation, as a small list of
callbacks in the spirit of Lightning's (``setup``, ``on_fit_start``, ``on_step_end``,
``on_epoch_end``, ``on_fit_end``), not Lightning itself.

The list is built from the run's recorded :class:`~vaecli.config.TrainConfig` by :func:`build_hooks`,
so a resumed run runs the same hooks as the run it continues: keeping the best and last weights,
early stopping, the moving average of the weights, fitting a prior and scoring samples after
training, logging to TensorBoard. ``summary.json`` names them (``hooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import TrainConfig
from ..errors import ConfigError
from .ema import EMA

if TYPE_CHECKING:  # pragma: no cover
    from .summary import TrainResult

Trainer = Any  # a vaecli.train.trainer.Trainer (not imported: the trainer imports this module)

SAMPLES_SCORED = 10_000  # --eval-samples: samples and real images compared, as `vae eval-samples` -n (clamped to the split)
TENSORBOARD_DIR = "tb"  # --tensorboard without a folder: the run folder's tb/
TENSORBOARD_EXTRA = "pip install 'vaecli[tensorboard]'"


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
        splits = {"train": trainer.train_data, "val": trainer.val_data, "test": trainer.test_data}  # the trainer's: no second load
        result = fit_prior(model, cfg.data, self.kind, splits=splits)
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


class TensorBoard(Hook):
    """``--tensorboard``: on rank 0, every number of each metrics.jsonl row as a scalar of the same
    name (nested keys joined by ``/``: ``train/neg_elbo``, ``grad_norm/max``) at the row's step,
    originals over reconstructions and a grid of prior samples every ``images_every`` epochs (of the
    weights that are evaluated, from fixed images and latents), and at the end the config and the
    test figures as hparams. A resumed run appends to the same folder: what the log holds past the
    resume point (the steps that are trained again) is purged."""

    name = "tensorboard"
    RECONSTRUCTED, SAMPLED = 8, 64  # images of the two grids

    def __init__(self, folder: str, images_every: int) -> None:
        self.folder, self.images_every = folder, images_every
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from .. import distributed

        if distributed.is_main():
            self.close()
            step = trainer.state.global_step  # a resume: the log past this step is trained again
            self.writer = SummaryWriter(str(trainer.path / self.folder), purge_step=step or None)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], best: bool) -> str | None:
        if self.writer is not None:
            log_row(self.writer, row)
            if self.images_every and row["epoch"] % self.images_every == 0:
                self.log_images(trainer, row["step"])
            self.writer.flush()
        return None

    def log_images(self, trainer: Trainer, step: int) -> None:
        """The reconstruction grid (validation images, else test) and the sample grid at ``step``."""
        import numpy as np
        import torch

        from ..data import to_float
        from ..eval.inference import reconstruct, sample
        from ..render.images import default_nrow, grid, pairs_grid

        model = trainer.eval_model
        split = trainer.val_data if len(trainer.val_data) else trainer.test_data
        x = to_float(split.images[: self.RECONSTRUCTED])
        with torch.no_grad():
            pairs = pairs_grid(x, reconstruct(model, x), nrow=len(x))
            z = torch.Generator().manual_seed(trainer.cfg.train.seed)  # the same latents every time: the grid shows the training
            samples = grid(sample(model, self.SAMPLED, generator=z), nrow=default_nrow(self.SAMPLED))
        trainer.model.train()  # inference put the model in eval mode
        for tag, img in (("images/reconstructions", pairs), ("images/samples", samples)):
            self.writer.add_image(tag, np.asarray(img), step, dataformats="HW" if img.mode == "L" else "HWC")

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        from ..runs import store as ckpt

        if self.writer is None:
            return
        rows = ckpt.read_metrics(trainer.path)
        if rows and rows[-1].get("partial"):  # a stop inside an epoch: its row, as metrics.jsonl has it
            log_row(self.writer, rows[-1])
        log_hparams(self.writer, trainer.cfg.to_dict(), {"test": {**result.test, "active_units": result.active_units}}, result.steps)
        self.close()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def flat_numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested dict by ``/``-joined key (``{"val": {"kl": 3}}`` -> ``{"val/kl": 3}``);
    booleans, text and None are left out."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def log_row(writer: Any, row: dict[str, Any]) -> None:
    """Every number of a metrics.jsonl row as a scalar of the same name, at the row's step."""
    for tag, value in flat_numbers(row).items():
        writer.add_scalar(tag, value, row["step"])


def log_hparams(writer: Any, config: dict[str, Any], metrics: dict[str, Any], step: int) -> None:
    """The run's config (``model/latent_dim``, ...; lists as text) and ``metrics`` (flattened) as
    TensorBoard hparams, in the writer's own event file."""
    from torch.utils.tensorboard.summary import hparams

    params: dict[str, Any] = {}
    for section in ("model", "data", "train"):
        for k, v in config[section].items():
            if isinstance(v, (bool, int, float, str)):
                params[f"{section}/{k}"] = v
            elif isinstance(v, list) and all(isinstance(x, (int, float, str)) for x in v):
                params[f"{section}/{k}"] = ",".join(map(str, v))
    numbers = flat_numbers(metrics)
    for summary in hparams(params, numbers):
        writer.file_writer.add_summary(summary, step)
    for tag, value in numbers.items():
        writer.add_scalar(tag, value, step)


def check_tensorboard() -> None:
    """Refuse ``--tensorboard`` in one line when the tensorboard package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package: {TENSORBOARD_EXTRA}") from None


def build_hooks(train: TrainConfig) -> list[Hook]:
    """The hooks of a run with this (recorded) config, in the order they run: the weights average
    first (it is what is saved), checkpointing, early stopping, then the steps after training (the
    prior first: the sample scores use it), TensorBoard last (its hparams close the log)."""
    hooks: list[Hook] = []
    if train.ema:
        hooks.append(ExponentialAverage(train.ema))
    hooks.append(Checkpointing())
    if train.early_stop:
        hooks.append(EarlyStopping(train.early_stop))
    if train.fit_prior:
        from .fit_prior import NO_FIT, check_fit_options

        check_fit_options(train.fit_prior, flag="--fit-prior")
        if train.fit_prior != NO_FIT:
            hooks.append(FitPrior(train.fit_prior))
    if train.eval_samples:
        hooks.append(EvalSamples())
    if train.tensorboard is not None:
        check_tensorboard()
        hooks.append(TensorBoard(train.tensorboard, train.log_images_every))
    return hooks
