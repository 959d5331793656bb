"""Where each run of a plan is (absent, interrupted, done), whether its folder holds the planned run,
and the ``vae train --resume`` arguments that continue it with what is left of its budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import CheckpointError, ConfigError
from ...paths import runs_dir
from ...runs import store as ckpt
from .flags import value_text
from .plan import Plan, PlannedRun, remove_run

FINISHED = ckpt.FINISHED


@dataclass
class RunStatus:
    """Where a run of the plan is: 'absent' (to start), 'interrupted' (to resume) or 'done'."""

    state: str
    steps: int = 0  # optimisation steps done (global step)
    train_seconds: float = 0.0  # training seconds done, all invocations
    stopped: str | None = None  # summary.json's stop reason


def run_status(name: str) -> RunStatus:
    """Ask the run folder: finished (summary.json says a finished stop, of the latest training state)
    -> 'done'; a training state to continue -> 'interrupted'; nothing usable -> 'absent'."""
    folder = runs_dir() / name
    if not (folder / ckpt.CONFIG).is_file():
        return RunStatus("absent")  # a folder that failed at start holds nothing: vae train replaces it
    summary = ckpt.read_summary(folder)
    state = ckpt.read_train_state(folder)
    stopped = summary.get("stopped")
    steps: int = summary["steps"] if isinstance(summary.get("steps"), int) else -1
    if stopped in FINISHED and (state is None or state.global_step <= steps):
        return RunStatus("done", steps, float(summary.get("train_seconds") or 0.0), stopped)
    if state is not None:
        return RunStatus("interrupted", state.global_step, state.train_seconds, stopped)
    if (folder / ckpt.STATE).exists():  # never replaced behind the user's back: its weights may be all there is
        raise CheckpointError(f"run {name!r}: {ckpt.STATE} cannot be read; resume or remove the run by hand")
    return RunStatus("absent")  # nothing saved yet (weights come with the first state): vae train replaces it


def run_mismatch(run: PlannedRun) -> str | None:
    """How the existing folder of a planned run differs from it (``beta = 4, not 1``: a swept value its
    config.json has otherwise); None when the folder holds the planned run or there is none."""
    folder = runs_dir() / run.name
    if not (folder / ckpt.CONFIG).is_file():
        return None
    cfg = ckpt.read_config(folder)
    for key, want in run.values.items():
        section = next((s for s in (cfg.train, cfg.model, cfg.data) if hasattr(s, key)), None)
        have = getattr(section, key, None)
        if isinstance(have, (int, float)) and not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12):
            return f"{key} = {value_text(have)}, not {value_text(want)}"
    return None


def check_run_matches(run: PlannedRun, overwrite: bool = False) -> str | None:
    """An existing folder of a planned run must hold that run (:func:`run_mismatch`): a run of the same
    name trained otherwise is a ConfigError, never overwritten silently; with ``overwrite`` it is
    removed, to be trained as planned, and the difference returned (None: nothing was removed)."""
    diff = run_mismatch(run)
    if diff is None:
        return None
    if not overwrite:
        raise ConfigError(
            f"run {run.name!r} exists but was trained with {diff}: give --overwrite to retrain it as planned, or another --name"
        )
    remove_run(run.name)
    return diff


def resume_args(plan: Plan, run: PlannedRun, status: RunStatus) -> list[str]:
    """``vae train`` arguments that continue an interrupted run with what is left of its budget
    (``--time-budget`` and ``--max-steps`` count per invocation in ``vae train``). A run with nothing
    left (killed between its last step and its summary) gets the smallest budget: one step at most."""
    args = ["--resume", run.name]
    budget = plan.budget()
    if "time_budget" in budget:
        args += ["--time-budget", f"{max(budget['time_budget'] - status.train_seconds, 0.001):.3f}"]
    if "max_steps" in budget:
        args += ["--max-steps", str(max(int(budget["max_steps"]) - status.steps, 1))]
    device = plan.fixed_value("device")
    if device is not None:
        args += [plan.options["device"], device]
    return args
