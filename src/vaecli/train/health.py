"""Training health: the in-memory last finite state a run rolls back to after a non-finite step,
the gradient-norm watch, and the alarms a run raises while it trains (posterior collapse,
overfitting, a learning rate that is too high). Each alarm is one line, given once per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

COLLAPSE_EVALS = 2  # evaluations in a row with collapsed latents, after any beta ramp, before the alarm
COLLAPSE_KL = 0.5  # nats: a total KL below this is a collapsed posterior
COLLAPSE_ACTIVE = 1  # active units at most this many is a collapsed posterior
OVERFIT_EVALS = 3  # held-out -ELBO rising this many evaluations in a row while the training -ELBO fell
GRAD_SPIKE = 100.0  # a gradient norm this many times its running median is an alarm
GRAD_WINDOW = 256  # steps in the running median of the gradient norm
GRAD_WARMUP = 10  # steps before the gradient-norm alarm can fire (the median needs a few values)


class Snapshot:
    """Copies of a fixed list of tensors (weights, optimizer moments, running sums), taken with one
    foreach copy and put back with another: the last state known to be finite."""

    def __init__(self) -> None:
        self._copies: list[torch.Tensor] = []
        self.step: int | None = None  # the global step the copy was taken at (None: never taken)

    @torch.no_grad()
    def take(self, tensors: Sequence[torch.Tensor], step: int) -> bool:
        """Copy ``tensors`` if they are all finite (one reduction); returns whether it did."""
        if not _all_finite(tensors):
            return False
        if len(self._copies) != len(tensors) or any(a.shape != b.shape for a, b in zip(self._copies, tensors)):
            self._copies = [torch.empty_like(t) for t in tensors]
        torch._foreach_copy_(self._copies, list(tensors))
        self.step = step
        return True

    @torch.no_grad()
    def restore(self, tensors: Sequence[torch.Tensor]) -> None:
        """Put the copies back into ``tensors`` (the same list as :meth:`take` was given)."""
        if len(tensors) != len(self._copies):
            raise RuntimeError("the snapshot does not match the tensors it is restored into")
        torch._foreach_copy_(list(tensors), self._copies)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats:
        return True
    norms = torch._foreach_norm(floats)
    return bool(torch.isfinite(torch.stack(norms)).all())


class GradWatch:
    """Per-step gradient norms kept on the device (no host sync per step): the epoch's mean and max
    for metrics.jsonl, and a spike test against the running median of the last steps."""

    def __init__(self, device: torch.device) -> None:
        self.ring = torch.zeros(GRAD_WINDOW, dtype=torch.float32, device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum, max, count of the epoch
        self.recent_max = torch.zeros((), dtype=torch.float32, device=device)  # max since the last check
        self.steps = 0

    def add(self, norm: torch.Tensor) -> None:
        """Record one step's (pre-clip) gradient norm."""
        n = norm.detach().float()
        self.ring[self.steps % GRAD_WINDOW] = n
        self.sums[0] += n.double()
        self.sums[1] = torch.maximum(self.sums[1], n.double())
        self.sums[2] += 1
        self.recent_max.copy_(torch.maximum(self.recent_max, n))
        self.steps += 1

    def spike(self) -> tuple[float, float] | None:
        """(the largest norm since the last call, the running median) when it exceeds
        :data:`GRAD_SPIKE` x the median, else None. One host read."""
        if self.steps < GRAD_WARMUP:
            self.recent_max.zero_()
            return None
        median = self.ring[: min(self.steps, GRAD_WINDOW)].median()
        top, med = (float(v) for v in torch.stack((self.recent_max, median)).tolist())
        self.recent_max.zero_()
        return (top, med) if math.isfinite(top) and med > 0 and top > GRAD_SPIKE * med else None

    def epoch_stats(self) -> dict[str, float]:
        """Mean and max gradient norm of the epoch so far; resets them."""
        total, top, count = self.sums.tolist()
        self.sums.zero_()
        return {"mean": total / count, "max": top} if count else {}

    def tensors(self) -> list[torch.Tensor]:
        """What a :class:`Snapshot` must hold so that a rollback also forgets the bad steps' norms."""
        return [self.ring, self.sums, self.recent_max]


def held_out(row: dict[str, Any]) -> dict[str, Any] | None:
    """A metrics row's held-out numbers: the validation split's (``val``)."""
    val = row.get("val")
    return val if isinstance(val, dict) else None


def collapse_alarm(rows: Sequence[dict[str, Any]], ramp_epochs: float, latent_dim: int) -> str | None:
    """Posterior collapse: active units <= 1 or total KL < 0.5 nats in the last two evaluations,
    both after the beta ramp ended (``ramp_epochs``); with what to try."""
    late = [r for r in rows if float(r.get("epochs_done", r.get("epoch", 0))) > ramp_epochs]
    if len(late) < COLLAPSE_EVALS:
        return None

    def collapsed(r: dict[str, Any]) -> bool:
        numbers = held_out(r) or r.get("train") or {}
        kl = numbers.get("kl")
        return (r.get("active_units") is not None and r["active_units"] <= COLLAPSE_ACTIVE) or (kl is not None and kl < COLLAPSE_KL)

    if not all(collapsed(r) for r in late[-COLLAPSE_EVALS:]):
        return None
    last = late[-1]
    kl = (held_out(last) or last.get("train") or {}).get("kl", float("nan"))
    return (
        f"posterior collapse: {last.get('active_units')} of {latent_dim} latent units active and KL {kl:.2f} nats for "
        f"{COLLAPSE_EVALS} evaluations: the decoder ignores z (try --free-bits 0.5, --anneal 10 or a smaller --beta)"
    )


def overfit_alarm(rows: Sequence[dict[str, Any]], best_epoch: float | None, keeps_best: bool) -> str | None:
    """The held-out -ELBO rose for three evaluations in a row while the training -ELBO fell, and ends
    above it: a gap that opens. (A held-out -ELBO still below the training one is noise of a small
    validation split at a high learning rate, not overfitting: measured on the emoji folder, where it
    rose three times at epoch 42 of 187 and then kept improving to the end.)"""
    evals = [r for r in rows if held_out(r) is not None]
    if len(evals) < OVERFIT_EVALS + 1:
        return None
    last = evals[-(OVERFIT_EVALS + 1) :]
    val = [float((held_out(r) or {})["neg_elbo"]) for r in last]
    train = [r["train"]["neg_elbo"] for r in last]
    if not all(b > a for a, b in zip(val, val[1:])) or not all(b < a for a, b in zip(train, train[1:])) or val[-1] <= train[-1]:
        return None
    kept = (
        f"model.safetensors keeps the best weights, of epoch {best_epoch:g}" if keeps_best and best_epoch else "the last weights are kept"
    )
    return (
        f"overfitting: the validation -ELBO rose for {OVERFIT_EVALS} evaluations in a row ({val[0]:.2f} -> {val[-1]:.2f}) "
        f"while the training -ELBO fell; {kept} (--early-stop N ends such a run)"
    )


def lr_alarm(top: float, median: float, step: int, lr: float) -> str:
    """The gradient-norm spike line."""
    return (
        f"learning rate too high? the gradient norm reached {top:.3g} at step {step}, {top / median:.0f}x its running median "
        f"{median:.3g} (lr {lr:.3g}; try a lower --lr or more --warmup-steps)"
    )


class Health:
    """One run's watch, for the Trainer: the first non-finite step (flagged on the device, no host
    sync), the gradient norms, the last finite state to roll back to, and the notices (alarms and
    recoveries) kept in the :class:`~vaecli.runs.state.TrainState`."""

    def __init__(self, device: torch.device, max_nonfinite: int) -> None:
        self.max_nonfinite = max_nonfinite
        self.grads = GradWatch(device)
        self.snapshot = Snapshot()
        self.first_nonfinite = torch.full((), -1, dtype=torch.int64, device=device)  # global step, -1: none

    def note_step(self, loss: torch.Tensor, step: int) -> None:
        """Remember ``step`` if its loss is the first non-finite one (on the device)."""
        self.first_nonfinite = torch.where(torch.isfinite(loss) | (self.first_nonfinite >= 0), self.first_nonfinite, step)

    def keep(self, tensors: Callable[[], Sequence[torch.Tensor]], step: int, every: int) -> bool:
        """Copy the (finite) state: the first copy is the starting state (of a new run or a resumed one),
        then one every ``every`` steps, so that a loss that goes non-finite in the first steps (a learning
        rate too high for the start) rolls back to the start with the learning rate halved. ``tensors``
        lists the state only when a copy is due (not every step). Returns whether a copy was taken."""
        if self.snapshot.step is None or step - self.snapshot.step >= every:
            return self.snapshot.take(tensors(), step)
        return False

    def roll_back(self, tensors: Sequence[torch.Tensor], state: Any, lr: float, steps_per_epoch: int, checkpointed: bool) -> str:
        """A non-finite step: put the last finite state back, halve ``state.lr_scale`` and record the
        event (returns its line); on the run's ``max_nonfinite``-th one, or with no finite state to go
        back to, raise a TrainingError that names the step and what is on disk."""
        from ..errors import TrainingError

        at = int(self.first_nonfinite)
        where = f"at epoch {at // steps_per_epoch + 1}, step {at % steps_per_epoch + 1}" if at >= 0 else "on another rank"
        if len(state.recoveries) + 1 >= self.max_nonfinite or self.snapshot.step is None:
            kept = "the last good checkpoint is kept" if checkpointed else "no checkpoint was written yet"
            raise TrainingError(
                f"non-finite loss {where}: stopped, {kept} (try a lower --lr or more --warmup-steps, or --skip-nonfinite to skip such batches)"
            )
        self.snapshot.restore(tensors)
        self.first_nonfinite.fill_(-1)
        state.lr_scale /= 2
        state.recoveries.append({"step": at, "lr_before": lr, "lr_after": lr / 2, "rolled_back_to": self.snapshot.step})
        return (
            f"non-finite loss {where}: rolled back to step {self.snapshot.step}, learning rate {lr:.3g} -> {lr / 2:.3g} "
            f"({len(state.recoveries)} of {self.max_nonfinite - 1} recoveries)"
        )

    @staticmethod
    def add_notice(state: Any, kind: str, message: str, epoch: float) -> bool:
        """Record a notice in the state; alarms once per kind and run (recoveries each time). True when new."""
        if kind != "recovery" and any(n["kind"] == kind for n in state.notices):
            return False
        state.notices.append({"kind": kind, "epoch": epoch, "message": message})
        return True

    @staticmethod
    def epoch_alarms(
        history: Sequence[dict[str, Any]], train: Any, latent_dim: int, best_epoch: float | None, keeps_best: bool
    ) -> list[tuple[str, str]]:
        """The (kind, line) alarms the metrics rows so far raise: posterior collapse after any beta
        ramp, overfitting."""
        ramp = max(train.anneal, train.capacity_epochs if train.capacity else 0, train.epochs if train.cyclical else 0)
        found = [("collapse", collapse_alarm(history, ramp, latent_dim)), ("overfit", overfit_alarm(history, best_epoch, keeps_best))]
        return [(k, m) for k, m in found if m]
