"""Beta schedules and learning-rate schedules."""

from __future__ import annotations

import math


def beta_at(epoch_progress: float, beta: float, anneal_epochs: int, cycles: int = 0, total_epochs: int = 0) -> float:
    """Beta at a (fractional) epoch: a linear ramp from 0 to ``beta`` over ``anneal_epochs``.

    The seed's KL annealing (Bowman et al. 2016): beta = beta_max * min(1, epoch / N).
    ``epoch_progress`` counts completed epochs plus the fraction of the current one, so the
    ramp is smooth within an epoch. ``anneal_epochs == 0`` means a constant ``beta``.
    ``cycles > 0`` selects cyclical annealing over ``total_epochs`` instead (:func:`cyclical_beta_at`).
    """
    if cycles > 0:
        return cyclical_beta_at(epoch_progress, beta, total_epochs, cycles)
    if anneal_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0.0, epoch_progress) / anneal_epochs)


def cyclical_beta_at(epoch_progress: float, beta: float, total_epochs: int, cycles: int, ratio: float = 0.5) -> float:
    """Cyclical annealing (Fu et al. 2019, eq. 6): the run is split into ``cycles`` equal cycles;
    within each, beta ramps linearly from 0 to ``beta`` over the first ``ratio`` of the cycle,
    then stays at ``beta``. tau = (t mod L) / L, f(tau) = min(1, tau / ratio)."""
    if cycles <= 0 or total_epochs <= 0:
        return float(beta)
    length = total_epochs / cycles
    tau = (max(0.0, epoch_progress) % length) / length
    return float(beta) * min(1.0, tau / ratio)


def capacity_at(epoch_progress: float, c_max: float, ramp_epochs: float) -> float:
    """The target KL capacity C (Burgess et al. 2018, sec. 5): linear from 0 to ``c_max`` over
    ``ramp_epochs``, then constant."""
    if ramp_epochs <= 0:
        return float(c_max)
    return float(c_max) * min(1.0, max(0.0, epoch_progress) / ramp_epochs)


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
