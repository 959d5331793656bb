"""Sweeps: one ``vae train`` run per value of the swept flags, trained as subprocesses, resumable.

A sweep is a **plan**, recorded in ``<runs dir>/sweeps/NAME/plan.json``, and the run folders it
names (``NAME-beta0.25``, ``NAME-beta0.25-latent_dim8`` for a grid). Each run is one ``vae train``
command; running the sweep again asks each run folder where it is (:func:`run_status`): a finished
run is skipped, an interrupted one resumed (``vae train --resume``, with what is left of its
budget), an absent one started, so no run is trained twice. :class:`Executor` runs the commands,
N at a time, and forwards an interrupt to them so that they save. The results side (rows from run
folders, scores, files, pictures) is :mod:`vaecli.experiments.compare`.

The flags come from the caller as :class:`Flag` objects (the CLI reads them off ``vae train``'s own
parameters), so this module knows no option list of its own beyond the budget, which must be the
same for every run (an equal ``--time-budget``, ``--epochs`` or ``--max-steps``) for points to compare.

The package, one thing a module: :mod:`.flags` (the flags and their parsing), :mod:`.plan` (the plan,
recorded and compared), :mod:`.status` (where each run is, and how to resume it), :mod:`.slots` (runs
at a time and their environments), :mod:`.executor` (the subprocesses) and :mod:`.lock`.
"""

from __future__ import annotations

from .executor import Event, Executor, invocations
from .flags import Flag, file_args, parse_args, parse_values, value_text
from .lock import SweepLock
from .plan import BUDGETS, SEED, Plan, PlannedRun, build_plan, read_plan, record_plan, remove_run, sweep_folder
from .slots import cpu_cores, default_jobs, gpu_count, slot_env
from .status import FINISHED, RunStatus, check_run_matches, resume_args, run_mismatch, run_status

__all__ = [
    "Flag",
    "Plan",
    "PlannedRun",
    "RunStatus",
    "Event",
    "Executor",
    "SweepLock",
    "parse_values",
    "parse_args",
    "file_args",
    "build_plan",
    "read_plan",
    "record_plan",
    "remove_run",
    "run_status",
    "check_run_matches",
    "run_mismatch",
    "resume_args",
    "cpu_cores",
    "default_jobs",
    "gpu_count",
    "slot_env",
    "sweep_folder",
    "value_text",
    "invocations",
    "FINISHED",
    "BUDGETS",
    "SEED",
]
