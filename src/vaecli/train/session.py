"""One invocation's clocks and counters (:class:`Session`) and the progress reports it sends
(:class:`Progress`): the training clock that ``--time-budget`` and images/s count, with evaluation and
checkpoints excluded."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ..config import TrainConfig
from ..errors import TrainingError
from ..runs.state import TrainState, steps_per_epoch
from .schedules import lr_at

clock = time.perf_counter  # the training clock (--time-budget, images/s); benchmarks may count CPU time instead
RATE_WARMUP_STEPS = 5  # steps excluded from images_per_second
REPORT_SECONDS = 0.1  # CPU: progress (reading the loss values) at most 10 times a second
CHECK_STEPS_DEVICE = 50  # CUDA / MPS: the control check (a host read: a device sync) every N steps
CHECK_STEPS_DDP = 4  # DDP: steps between the control checks (one small all-reduce each)


@dataclass
class Progress:
    """One progress report (``kind`` is 'start', 'step', 'epoch', 'notice' (an alarm or a recovery), 'note' (what the run does now) or 'end')."""

    kind: str
    epoch: int  # 0-based index of the current epoch
    epochs: int
    step: int  # step within the epoch (completed)
    steps_per_epoch: int
    global_step: int
    loss: float = float("nan")
    recon: float = float("nan")
    kl: float = float("nan")
    beta: float = 0.0
    lr: float = 0.0
    images_per_second: float | None = None  # None before the warm-up steps (nothing measured yet)
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # 'notice': one line for the user


@dataclass
class Session:
    """Clocks and counters of one :meth:`Trainer.fit` call (or :meth:`Trainer.train_steps`)."""

    steps_per_epoch: int  # of this rank
    batch_size: int  # images per step of this rank
    rank_images: int  # images per epoch of this rank: the last step takes the rest
    total_steps: int
    check_every: int  # steps between control checks (a host read; DDP: one all-reduce)
    t0: float = field(default_factory=lambda: clock())
    excluded: float = 0.0  # seconds evaluating / checkpointing: neither --time-budget nor img/s counts them
    steps: int = 0
    images: int = 0  # images of all ranks
    warm_t: float | None = None  # training seconds at the end of the warm-up steps
    warm_images: int = 0
    last_report: float = 0.0
    last_save: float = 0.0
    seg_start: float = 0.0  # start of the training time not yet added to the state's train_seconds
    before: float = 0.0  # the run's training seconds before this invocation (the schedule's and the budget's clock go on from there)

    def __post_init__(self) -> None:
        self.last_save = self.seg_start = self.t0

    def elapsed(self) -> float:
        """Seconds since this invocation started, evaluation and checkpoints included."""
        return clock() - self.t0

    def trained(self) -> float:
        """Seconds of training in this invocation so far."""
        return clock() - self.t0 - self.excluded

    def run_seconds(self) -> float:
        """Seconds of training of the run so far: before this invocation and in it. ``--time-budget``
        (the run's, see :func:`vaecli.train.run.resume_run`) and the cosine schedule's time run on this clock."""
        return self.before + self.trained()

    def rate(self) -> float | None:
        """Images per second after the warm-up steps; None before them (nothing measured)."""
        if self.warm_t is None:
            return None
        seconds = self.trained() - self.warm_t
        return (self.images - self.warm_images) / seconds if seconds > 0 else 0.0

    @classmethod
    def for_run(cls, n: int, train: TrainConfig, device: torch.device, before: float = 0.0) -> Session:
        """The session of a run with ``n`` training images on ``device`` (DDP: this rank's share);
        ``before``: the run's training seconds before this invocation."""
        n_rank = distributed.shard_size(n)  # DDP: images per rank per epoch (n in a single process)
        batch = min(train.batch_size, n_rank)
        spe = steps_per_epoch(n_rank, batch)
        if spe == 0:
            raise TrainingError("the training split is empty")
        check = CHECK_STEPS_DDP if distributed.is_distributed() else 1 if device.type == "cpu" else CHECK_STEPS_DEVICE
        return cls(
            steps_per_epoch=spe, batch_size=batch, rank_images=n_rank, total_steps=spe * train.epochs, check_every=check, before=before
        )

    def lr(self, state: TrainState, train: TrainConfig) -> float:
        """The learning rate of the next step: the schedule at this step and (with a budget) this time,
        scaled by the state's ``lr_scale`` (halved by every recovery)."""
        frac = self.run_seconds() / train.time_budget if train.time_budget else None
        return state.lr_scale * lr_at(
            state.global_step, self.total_steps, train.lr, train.lr_schedule, train.warmup_steps, time_fraction=frac
        )

    def flags(self, stop: threading.Event | None, train: TrainConfig) -> list[bool]:
        """This process's (interrupted, time budget spent, checkpoint due)."""
        budget = train.time_budget is not None and self.run_seconds() >= train.time_budget
        return [stop is not None and stop.is_set(), budget, clock() - self.last_save >= train.save_every]

    def report_due(self) -> bool:
        """Whether to report progress now: by time on the CPU (at most every :data:`REPORT_SECONDS`),
        at the control checks elsewhere (each report reads values: a device sync)."""
        now = clock()
        if (self.check_every == 1 and now - self.last_report < REPORT_SECONDS) or (self.check_every > 1 and self.steps % self.check_every):
            return False
        self.last_report = now
        return True

    def count_step(self, state: TrainState, world: int, device: torch.device) -> None:
        """Advance the position and the counters after a step (the rate's warm-up ends after a few)."""
        self.images += min(self.batch_size, self.rank_images - state.step * self.batch_size) * world  # DDP: every rank takes a batch
        state.step, state.global_step, self.steps = state.step + 1, state.global_step + 1, self.steps + 1
        if self.steps == RATE_WARMUP_STEPS:
            sync_device(device)
            self.warm_t, self.warm_images = self.trained(), self.images

    @contextlib.contextmanager
    def paused(self, state: TrainState) -> Iterator[None]:
        """Stop the training clock around a checkpoint or an evaluation: the time until now is
        added to ``state.train_seconds``; what the block takes counts as excluded."""
        now = clock()
        state.train_seconds += now - self.seg_start
        try:
            yield
        finally:
            self.last_save = self.seg_start = clock()
            self.excluded += self.seg_start - now


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA; a no-op elsewhere), so that a clock reading counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
