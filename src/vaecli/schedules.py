"""Beta schedules and learning-rate schedules."""

from __future__ import annotations

import math


def beta_at(epoch_progress: float, beta: float, anneal_epochs: int) -> float:
    """Beta at a (fractional) epoch: a linear ramp from 0 to ``beta`` over ``anneal_epochs``.

    The seed's KL annealing (Bowman et al. 2016): beta = beta_max * min(1, epoch / N).
    ``epoch_progress`` counts completed epochs plus the fraction of the current one, so the
    ramp is smooth within an epoch. ``anneal_epochs == 0`` means a constant ``beta``.
    """
    if anneal_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0.0, epoch_progress) / anneal_epochs)


def lr_at(
    step: int,
    total_steps: int | None,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    time_fraction: float | None = None,
) -> float:
    """Learning rate at ``step``: optional linear warm-up, then constant or cosine decay to 1% of base.

    The cosine (Loshchilov & Hutter 2017, SGDR without restarts) runs over ``total_steps``, or,
    when a time budget is set, over whichever ends first: the steps or the budget
    (``time_fraction`` = elapsed seconds / budget seconds). So ``--time-budget`` runs anneal
    the learning rate to its floor by the end of the budget however fast the machine is.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine" and (total_steps or time_fraction is not None):
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps) if total_steps else 0.0
        if time_fraction is not None:
            t = max(t, time_fraction)
        t = min(1.0, max(0.0, t))
        return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))
    return base_lr
