"""The training loop. Reports progress through a callback and never prints.

:func:`start_run` creates a run folder and :func:`resume_run` reopens one; both return a
:class:`Trainer` whose :meth:`Trainer.fit` trains until the epochs are done, ``max_steps`` or
``time_budget`` seconds of training (per invocation; evaluation and checkpoints excluded) are
reached, ``--early-stop`` ends it, or ``stop`` is set (Ctrl-C in the CLI).

Every epoch ends with an evaluation on the validation split (carved out of the training split):
``model.safetensors`` holds the best weights by validation -ELBO, ``train_state.safetensors`` the
last ones, the resume point, written at every epoch end, every ``save_every`` seconds and when
stopping. The test split is scored once, at the end, with the best weights. A non-finite step is
rolled back to the last finite state in memory with the learning rate halved (:mod:`vaecli.train.health`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from .. import distributed
from ..config import ModelConfig, RunConfig
from ..data import ImageData, split_validation, to_float
from ..device import accumulator_dtype, adam_kwargs, autocast, configure_cuda, memory_format_for
from ..eval.metrics import EvalResult, evaluate
from ..model.priors import VampPrior
from ..model.vae import VAE
from ..runs import store as ckpt
from ..runs.state import EpochSums, TrainState, epoch_permutation, match_state_layout, restore_rng, rng_states
from .ema import EMA
from .health import Health, lr_alarm
from .hooks import Hook, build_hooks
from .objective import LossTerms, Objective
from .recipe import resolve_precision
from .session import Progress, Session, sync_device
from .summary import TrainResult, conclude

PLOT_SECONDS = 10.0  # loss.png is redrawn at most this often (drawing it costs about 0.1 s), and at the end
SNAPSHOT_STEPS = 100  # steps between in-memory copies of the last finite state (benchmarks/bench_recovery.py)
NAN_STEPS_ENV = "VAE_TEST_NAN_STEPS"  # test hook: comma-separated global steps whose loss is made NaN

__all__ = ["Progress", "TrainResult", "Trainer"]


class Trainer:
    """Owns the model, optimizer, data and position (:class:`~vaecli.runs.state.TrainState`) of one run."""

    def __init__(self, path: Path, cfg: RunConfig, train: ImageData, test: ImageData) -> None:
        self.path, self.cfg = path, cfg
        tc = cfg.train
        self.device = distributed.device_for(tc.device)  # DDP: cuda:LOCAL_RANK or cpu under torchrun
        self.precision = resolve_precision(tc.precision, self.device, cfg.model)
        self.runtime: dict[str, Any] = configure_cuda(self.device)  # cuDNN autotune + TF32 policy on CUDA
        torch.manual_seed(tc.seed)
        self.model = VAE(cfg.model).to(self.device)
        self.memory_format = memory_format_for(self.model, self.device)
        self.model.to(memory_format=self.memory_format)
        self.net = distributed.wrap(self.model, self.device)  # DDP: the training forward; ``model`` stays the bare VAE
        # DDP: other ranks draw their own noise (seed + 1 + rank) and dropout masks (seed + rank)
        if distributed.rank() > 0:
            torch.manual_seed(tc.seed + distributed.rank())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr, **adam_kwargs(self.device))
        self.objective = Objective(tc)
        self.train_data, self.val_data = split_validation(train, cfg.data.val_size or 0, cfg.data.split_seed)
        self.test_data = test
        self.train_images = self.train_data.images.to(self.device)
        if isinstance(self.model.prior, VampPrior):  # pseudo-inputs start at training images (restore() replaces them)
            pick = torch.randperm(len(self.train_data), generator=torch.Generator().manual_seed(tc.seed))
            pick = pick.repeat(-(-cfg.model.pseudo_inputs // len(pick)))[: cfg.model.pseudo_inputs]
            self.model.prior.start_from(to_float(self.train_images[pick.to(self.device)]))
        self.ema: EMA | None = None  # set by the ExponentialAverage hook (--ema)
        self.hooks = build_hooks(tc)  # recorded in config.json: a resume runs the same ones
        for hook in self.hooks:
            hook.setup(self)  # after the initialisation above: the weights average starts from the weights that train
        self._step_hooks = [h for h in self.hooks if type(h).on_step_end is not Hook.on_step_end]
        self._moments_kept = False  # whether the rollback copy holds the optimizer's moments
        self.noise = torch.Generator(device=self.device).manual_seed(tc.seed + 1 + distributed.rank())
        self.state = TrainState(world_size=distributed.world_size(), noise_device=self.device.type)
        self.health = Health(self.device, tc.max_nonfinite)
        self.history: list[dict[str, Any]] = []  # complete epochs only (metrics.jsonl may add one partial row)
        self.notices: list[str] = []  # one-line notes for the user (e.g. a resume that is not bit-exact)
        self.sums = EpochSums(self.device, accumulator_dtype(self.device))
        self.validation = Validation(self.val_data, self.device, tc.seed)
        self._lr = tc.lr  # the learning rate the param groups hold (set only when it changes)
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, this rank's order on the device)
        self._nan_steps = {int(v) for v in os.environ.get(NAN_STEPS_ENV, "").split(",") if v.strip()}
        self._cb: Callable[[Progress], None] = _ignore  # fit()'s callback, for notices
        self._spe = 1  # steps per epoch of this rank (set by _session)
        self.metrics = MetricsWriter(path)

    @property
    def eval_model(self) -> VAE:
        """The weights that are evaluated, saved and sampled: the moving average when ``--ema`` is on."""
        return cast(VAE, self.ema.shadow) if self.ema is not None else self.model

    def save(self, best: bool = False) -> None:
        """Write the resume point (last weights, optimizer, RNG, :class:`TrainState`) and, when
        ``best`` (or with no validation split), first the weights analysis commands use. Under DDP
        every rank calls this (the running sums are all-reduced); rank 0 writes."""
        self.sums.fold(self.state, distributed.all_reduce_sum)
        if distributed.is_main():
            if best or not len(self.val_data):
                ckpt.save_model(self.path, self.eval_model, self.cfg.model.to_dict())
            rng = rng_states(self.noise)
            ckpt.save_train_state(self.path, self.optimizer, rng, self.state, self.model, self.ema.shadow if self.ema else None)
        distributed.barrier()  # DDP: the others wait until the checkpoint is on disk

    def restore(self) -> None:
        """Load the last weights, optimizer, :class:`TrainState` and RNG states from the run folder."""
        if distributed.is_main():  # DDP: only the writer (another rank could delete its temp file mid-write)
            ckpt.remove_temp_files(self.path)  # left by a killed writer
        rng, self.state = ckpt.load_train_state(self.path, self.optimizer, self.model, self.ema.shadow if self.ema else None)
        self.state.for_world_size(distributed.world_size(), len(self.train_data), self.cfg.train.batch_size)
        self.notices += restore_rng(rng, self.noise, self.state, self.cfg.train.seed)
        match_state_layout(self.optimizer)
        done = self.state.epoch
        self.history = [r for r in ckpt.read_metrics(self.path) if int(r.get("epoch", 0)) <= done and not r.get("partial")]

    def fit(self, callback: Callable[[Progress], None] | None = None, stop: threading.Event | None = None) -> TrainResult:
        """Train; returns the final numbers. Checkpoints as it goes (see the module docstring)."""
        tc, st = self.cfg.train, self.state
        s = self._session()
        self._cb = callback or _ignore
        self._progress("start", s)
        for hook in self.hooks:
            hook.on_fit_start(self)
        self.model.train()
        stopped = None
        try:
            while st.epoch < tc.epochs and stopped is None:
                perm = self._epoch_order()
                while st.step < s.steps_per_epoch and stopped is None:
                    stopped = self._control(s, stop)
                    if stopped is None:
                        terms, lr = self._step(s, perm)
                        if st.step == s.steps_per_epoch or s.report_due():
                            self._report(s, terms, lr)
                if st.step == s.steps_per_epoch:
                    stopped = self._end_epoch(s) or stopped
        except BaseException:
            self.metrics.flush(st.notices)  # loss.png is drawn at most every 10 s: a failing run still shows its last epochs
            raise
        return self._finish(s, stopped or "done")

    def train_steps(self, steps: int) -> float | None:
        """Run ``steps`` optimisation steps from the current position, continuing into the next
        epoch's order when one ends, with no evaluation, checkpoint or control check: the inner loop
        that benchmarks time. Returns images per second after the warm-up steps."""
        s = self._session()
        self.model.train()
        for _ in range(steps):
            self._step(s, self._epoch_order())
            if self.state.step == s.steps_per_epoch:
                self.state.epoch, self.state.step = self.state.epoch + 1, 0
        sync_device(self.device)
        return s.rate()

    def _session(self) -> Session:
        s = Session.for_run(len(self.train_data), self.cfg.train, self.device, before=self.state.train_seconds)
        self._spe = s.steps_per_epoch
        return s

    def _epoch_order(self) -> torch.Tensor:
        """This rank's order of the current epoch on the device, made on the CPU from (seed, epoch), one copy per epoch."""
        if self._perm is None or self._perm[0] != self.state.epoch:
            perm = epoch_permutation(len(self.train_data), self.cfg.train.seed, self.state.epoch)
            self._perm = (self.state.epoch, distributed.shard(perm).to(self.device))
        return self._perm[1]

    def _step(self, s: Session, perm: torch.Tensor) -> tuple[LossTerms, float]:
        """One optimisation step on batch ``state.step`` of ``perm``, then the position advances.
        No host sync: a non-finite loss is noted on the device and read at the next control check."""
        tc, st = self.cfg.train, self.state
        lr = s.lr(st, tc)
        if lr != self._lr:  # set only when it changes
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self._lr = lr
        x = to_float(self.train_images[perm[st.step * s.batch_size : (st.step + 1) * s.batch_size]]).contiguous(
            memory_format=self.memory_format
        )
        if self.cfg.data.binarize:  # dynamic binarisation, x ~ Bernoulli(pixel) per batch
            x = torch.bernoulli(x, generator=self.noise)
        with autocast(self.device, self.precision):
            out = self.net(x, generator=self.noise)  # DDP: the wrapper averages gradients
        terms = self.objective(self.model, out, x, st.progress(s.steps_per_epoch))
        if st.global_step in self._nan_steps:  # the test hook (VAE_TEST_NAN_STEPS)
            terms.loss = terms.loss * float("nan")
        if tc.skip_nonfinite and not distributed.all_finite(terms.loss):  # a per-step check, only when skipping
            st.nonfinite_skipped += 1
        else:
            self.health.note_step(terms.loss, st.global_step)
            self.optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            self.health.grads.add(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf")))
            self.optimizer.step()
            for hook in self._step_hooks:
                hook.on_step_end(self, st.global_step)
            self.sums.add(terms.neg_elbo, terms.recon, terms.kl, x.shape[0])
        s.count_step(st, distributed.world_size(), self.device)
        return terms, lr

    def _control(self, s: Session, stop: threading.Event | None) -> str | None:
        """The one control check before a step: why to stop, or None. Every ``check_every`` steps the
        flags (stop, budget, save due, a non-finite step) are read (DDP: OR-ed over the ranks in one
        all-reduce, so the ranks stop, save and roll back together); a non-finite step is rolled back,
        a finite state kept every :data:`SNAPSHOT_STEPS`, a checkpoint written when due."""
        tc = self.cfg.train
        if tc.max_steps is not None and s.steps >= tc.max_steps:  # the same count on every rank
            return "max_steps"
        if s.steps % s.check_every:
            return None
        interrupted, budget, save, bad = distributed.any_flags(s.flags(stop, tc), self.health.first_nonfinite >= 0)
        if bad:
            self._roll_back()
        else:
            if self.health.keep(self._state_tensors, self.state.global_step, SNAPSHOT_STEPS):
                self._moments_kept = bool(self.optimizer.state)  # the starting state of a new run has no Adam moments yet
        if interrupted or budget:
            return "interrupted" if interrupted else "time_budget"
        if save:
            with s.paused(self.state):
                self.save()
        return None

    def _state_tensors(self) -> list[torch.Tensor]:
        """What a rollback restores: weights and buffers, the optimizer's moments, the moving average,
        the running sums and the gradient-norm watch."""
        return _state_tensors(self.model, self.optimizer, self.ema, [self.sums.acc, *self.health.grads.tensors()])

    def _roll_back(self) -> None:
        """A non-finite step: back to the last finite state with the learning rate halved, or stop."""
        if not self._moments_kept:  # back to the start: Adam starts afresh, as it did then
            self.optimizer.state.clear()
        line = self.health.roll_back(self._state_tensors(), self.state, self._lr, self._spe, (self.path / ckpt.STATE).exists())
        self._notice("recovery", line)

    def _report(self, s: Session, terms: LossTerms, lr: float) -> None:
        """A 'step' report: reads the loss values (one sync) and the gradient-norm watch."""
        spike = self.health.grads.spike()
        if spike is not None:
            self._notice("lr", lr_alarm(*spike, self.state.global_step, lr))
        loss, recon, kl = torch.stack((terms.loss, terms.recon, terms.kl)).detach().tolist()
        self._progress("step", s, loss=loss, recon=recon, kl=kl, beta=terms.beta, lr=lr, images_per_second=s.rate())

    def _progress(self, kind: str, s: Session | None = None, **fields: Any) -> None:
        st, spe = self.state, s.steps_per_epoch if s is not None else self._spe
        self._cb(Progress(kind, st.epoch, self.cfg.train.epochs, st.step, spe, st.global_step, **fields))

    def notify(self, message: str) -> None:
        """A one-line progress note for the user (a 'note' report), not kept in the run."""
        self._progress("note", message=message)

    def _notice(self, kind: str, message: str) -> None:
        """An alarm or event, kept in the state (summary.json ``notices``, loss.png) and reported once."""
        if self.health.add_notice(self.state, kind, message, round(self.state.progress(self._spe), 4)):
            self._progress("notice", message=message)

    def _end_epoch(self, s: Session) -> str | None:
        """Epoch end: evaluate on the validation split, record the row, keep the best weights,
        run the hooks (checkpointing, early stopping; none of it charged to training), raise alarms;
        the first stop reason a hook gives, if any."""
        tc, st = self.cfg.train, self.state
        with s.paused(st):
            row, best = self._evaluation_row(s)
            st.epoch, st.step, st.epoch_sums = st.epoch + 1, 0, [0.0] * 4
            self.history.append(row)
            self.metrics.write(self.history, st.notices)
            stops = [hook.on_epoch_end(self, row, best) for hook in self.hooks]  # checkpointing among them
        self._progress("epoch", s, metrics=row)
        for kind, line in self.health.epoch_alarms(self.history, tc, self.cfg.model.latent_dim, st.best_epoch, len(self.val_data) > 0):
            self._notice(kind, line)
        return next((why for why in stops if why), None)

    def _evaluation_row(self, s: Session, partial: bool = False) -> tuple[dict[str, Any], bool]:
        """The metrics.jsonl row of the current epoch (complete, or ``partial``: marked, with its
        steps) and whether its validation -ELBO is the best so far (the state records it)."""
        if distributed.any_flags([], self.health.first_nonfinite >= 0)[0]:  # nothing non-finite is evaluated or saved
            self._roll_back()
        st = self.state
        done = st.progress(s.steps_per_epoch) if partial else st.epoch + 1.0
        train = self.sums.means(st, distributed.all_reduce_sum)
        row = _metrics_row(st, self.objective.beta_at(done - 1e-9), self._lr, train, self.health.grads.epoch_stats())
        val = self.validation.evaluate(self.eval_model, st.global_step)
        best = self.validation.judge(val, st, done)
        self.model.train()
        if val is not None:
            row.update(val=val.brief(), active_units=val.active_units)
        if partial:
            row.update(partial=True, steps=st.step, epochs_done=round(done, 4))
        return row, best

    def _finish(self, s: Session, stopped: str) -> TrainResult:
        """The end of fit(): checkpoint a stop (with a partial row when it fell inside an epoch), score
        the test split with the kept weights, write summary.json and build the result."""
        sync_device(self.device)
        seconds = s.elapsed()
        with s.paused(self.state):
            if stopped not in ("done", "early_stop") and s.steps > 0:
                row, best = self._evaluation_row(s, partial=True) if self.state.step > 0 else (None, False)
                if row is not None:  # every run has its numbers: the part of the epoch done so far
                    self.metrics.write([*self.history, row], self.state.notices)
                self.save(best=best)
            self.metrics.flush(self.state.notices)
            kept = (_kept_model(self.path, self.cfg.model, self.device) if len(self.val_data) else None) or self.eval_model
            test = _evaluate(kept, self.test_data, self.device, self.cfg.train.seed)
            self.model.train()
        result = conclude(self, s, stopped, kept, test, seconds)
        for hook in self.hooks:
            hook.on_fit_end(self, result)
        self._progress("end", s, images_per_second=s.rate(), metrics=result.summary)
        return result


class MetricsWriter:
    """metrics.jsonl at every evaluation, loss.png at most every :data:`PLOT_SECONDS` (drawing it
    costs about 0.1 s: a run of tiny epochs would spend its time there) and at the end. DDP: rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.drawn = -PLOT_SECONDS  # when loss.png was last drawn
        self.due: list[dict[str, Any]] | None = None  # rows written since, not drawn yet

    def write(self, rows: list[dict[str, Any]], notices: list[dict[str, Any]]) -> None:
        """Write ``rows`` (metrics before the checkpoint: a resume drops rows past it); draw them when due."""
        if distributed.is_main():
            ckpt.write_metrics(self.path, rows)
            self.due = rows
            if time.monotonic() - self.drawn >= PLOT_SECONDS:
                self.flush(notices)

    def flush(self, notices: list[dict[str, Any]]) -> None:
        """Draw the rows not drawn yet (with the alarms and recoveries marked)."""
        if self.due is not None and distributed.is_main():
            _plot(self.path, self.due, notices)
            self.drawn, self.due = time.monotonic(), None


def _metrics_row(st: TrainState, beta: float, lr: float, train: dict[str, float], grad_norm: dict[str, float]) -> dict[str, Any]:
    """The head of a metrics.jsonl row: the epoch (1-based), the step, beta and lr, the training
    running means, the gradient norms, the training seconds so far."""
    return {
        "epoch": st.epoch + 1,
        "step": st.global_step,
        "beta": beta,
        "lr": lr,
        "train": train,
        "grad_norm": grad_norm,
        "train_seconds": round(st.train_seconds, 3),
    }


def _state_tensors(model: VAE, optimizer: torch.optim.Optimizer, ema: EMA | None, more: list[torch.Tensor]) -> list[torch.Tensor]:
    opt = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return [*model.parameters(), *model.buffers(), *opt, *(ema.tensors() if ema is not None else []), *more]


def _kept_model(path: Path, cfg: ModelConfig, device: torch.device) -> VAE | None:
    """The weights model.safetensors holds (the best by validation), for the test score; None before any."""
    if not (path / ckpt.MODEL).exists():
        return None
    kept = VAE(cfg).to(device)
    ckpt.load_state_dict_into(kept, path / ckpt.MODEL)
    return kept


class Validation:
    """Model selection on the validation split: its evaluation (DDP: sharded; reused while the weights
    are unchanged) and the best -ELBO so far, kept in the :class:`TrainState` for ``--early-stop``."""

    def __init__(self, data: ImageData, device: torch.device, seed: int) -> None:
        self.data, self.device, self.seed = data, device, seed
        self._last: tuple[int, EvalResult] | None = None  # (global step, result)

    def evaluate(self, model: VAE, step: int) -> EvalResult | None:
        """The validation numbers of ``model`` at ``step``; None without a validation split."""
        if not len(self.data):
            return None
        if self._last is None or self._last[0] != step:
            self._last = (step, _evaluate(model, self.data, self.device, self.seed))
        return self._last[1]

    @staticmethod
    def judge(val: EvalResult | None, state: TrainState, epochs_done: float) -> bool:
        """Record ``val`` in the state: True (and the new best) when its -ELBO is the lowest so far."""
        if val is None:
            return False
        best = state.best_neg_elbo is None or val.neg_elbo < state.best_neg_elbo
        if best:
            state.best, state.evals_since_best = {"epoch": round(epochs_done, 4), "val": val.brief()}, 0
        else:
            state.evals_since_best += 1
        return best


def _evaluate(model: VAE, data: ImageData, device: torch.device, seed: int) -> EvalResult:
    """:func:`vaecli.eval.metrics.evaluate` of a split, sharded over the ranks under DDP."""
    shard = (distributed.rank(), distributed.world_size()) if distributed.is_distributed() else None
    return evaluate(model, data, device=device, seed=seed, shard=shard)


def _ignore(progress: Progress) -> None:
    """The callback of a fit() without one."""


def _plot(path: Path, rows: list[dict[str, Any]], notices: list[dict[str, Any]]) -> None:
    from ..render.plot import plot_training_curves  # Pillow only; imported when the first epoch ends

    plot_training_curves(path / ckpt.LOSS_PLOT, rows, marks=[(float(n["epoch"]), n["kind"]) for n in notices])
