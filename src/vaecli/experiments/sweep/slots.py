"""Job slots: how many runs at a time (one per GPU, or per CPU core for a budget of work) and each
slot's environment (its GPU, or its share of the cores)."""

from __future__ import annotations

import os

from .plan import Plan


def gpu_count(device: str | None) -> int:
    """GPUs the runs may use: CUDA devices when ``device`` is auto or cuda, else 0."""
    if device not in (None, "auto") and not str(device).startswith("cuda"):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable CUDA build
        return 0


def default_jobs(plan: Plan, runs: int) -> int:
    """Runs at a time when --jobs is not given: one per GPU where there are GPUs. On a CPU, with a
    budget of work (``--epochs``, ``--max-steps``), one per core up to ``runs``: each gets cores // jobs
    threads, and several one-thread runs finish sooner than one run on all the cores
    (benchmarks/bench_sweep.py, docs/sweep.md); with a ``--time-budget``, one: each run has the whole
    machine for its seconds, as ``vae train --time-budget`` alone would (parallel runs would each get a
    share of it and train less in the same seconds)."""
    gpus = gpu_count(plan.fixed_value("device"))
    if gpus:
        return gpus
    if "time_budget" in plan.budget():
        return 1
    return max(1, min(cpu_cores(), runs))


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slot_env(jobs: int, device: str | None) -> list[dict[str, str]]:
    """Environment additions of each of ``jobs`` slots: with GPUs, one GPU per slot (round robin);
    on a CPU with jobs > 1, torch threads = cores // jobs each (OMP_NUM_THREADS), so that the jobs
    share the cores instead of oversubscribing them."""
    gpus = gpu_count(device)
    if gpus:
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()] or [str(i) for i in range(gpus)]
        return [{"CUDA_VISIBLE_DEVICES": visible[i % len(visible)]} for i in range(jobs)]
    if jobs <= 1:
        return [{}]
    threads = str(max(1, cpu_cores() // jobs))
    return [{"OMP_NUM_THREADS": threads} for _ in range(jobs)]
