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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_json
from ..paths import runs_dir
from ..runs import store as ckpt

SWEEPS = ckpt.SWEEPS  # <runs dir>/sweeps/NAME/
PLAN = "plan.json"
PROGRESS = "progress.json"  # every invocation of every run: kind, steps before and after, exit code, seconds
LOCK = "lock"
LOGS = "logs"
PLAN_FORMAT = 1
BUDGETS = ("time_budget", "epochs", "max_steps")  # the budget flags: one value for every run
SEED = "seed"  # swept seeds are repeats (mean ± std), not a factor
FINISHED = ckpt.FINISHED
MAX_RUNS = 1000
POLL_SECONDS = 0.25
REFUSED = {
    "resume": "a sweep resumes its own runs (run the same `vae sweep` command again)",
    "eval_samples": "the sweep scores every run itself (see --score and -n of vae sweep)",
}


@dataclass(frozen=True)
class Flag:
    """A ``vae train`` option as the sweep sees it: its parameter name (``latent_dim``), its option
    strings (``--latent-dim``), the kind of value (int, float, str or bool for an on/off flag) and
    whether its own value is comma-separated (``--widths 16,32``: never a sweep)."""

    name: str
    opts: tuple[str, ...]
    kind: str
    takes_list: bool = False

    @property
    def option(self) -> str:
        """The long option string (``--beta``)."""
        return next((o for o in self.opts if o.startswith("--")), self.opts[0])

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


# ----------------------------------------------------------------------------- values


def parse_values(flag: Flag, text: str) -> list[int | float]:
    """``"0.25,0.5,1"`` -> [0.25, 0.5, 1.0] for a numeric ``flag`` (whole numbers for an int flag);
    anything else, a repeated value or a non-finite one is a ConfigError naming the flag."""
    if not flag.numeric:
        raise ConfigError(f"{flag.option} takes text, not numbers: only numeric vae train flags can be swept")
    values: list[int | float] = []
    for part in text.split(","):
        p = part.strip()
        try:
            v: int | float = int(p) if flag.kind == "int" else float(p)
        except ValueError:
            kind = "a whole number" if flag.kind == "int" else "a number"
            raise ConfigError(f"{flag.option} {text}: {p!r} is not {kind}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{flag.option} {text}: {p!r} is not a finite number")
        if v in values:
            raise ConfigError(f"{flag.option} {text}: {value_text(v)} is listed twice")
        values.append(v)
    return values


def value_text(v: int | float) -> str:
    """A swept value as it is written in commands and run names: ``0.25``, ``1``, ``1e-05``."""
    if isinstance(v, int):
        return str(v)
    return f"{v:.12g}"


def parse_args(tokens: Sequence[str], flags: Sequence[Flag]) -> list[tuple[Flag, str | None]]:
    """``vae train`` options (``--beta 0.5,1 --binarize --lr=1e-3``) as (flag, value) pairs, in order;
    an on/off flag has value None. Unknown options, stray words and repeated flags are ConfigErrors."""
    by_opt = {o: f for f in flags for o in f.opts}
    out: list[tuple[Flag, str | None]] = []
    seen: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        opt, eq, val = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        flag = by_opt.get(opt)
        if flag is None:
            if not tok.startswith("-"):
                raise ConfigError(f"unexpected argument {tok!r}: vae sweep takes vae train options, e.g. --beta 0.5,1,4")
            raise ConfigError(f"unknown option {opt}: not a vae train flag (see vae train --help)")
        if flag.name in REFUSED:
            raise ConfigError(f"{flag.option} is not for a sweep: {REFUSED[flag.name]}")
        if flag.name in seen:
            raise ConfigError(f"{flag.option} is given twice")
        seen.add(flag.name)
        if flag.kind == "bool":
            if eq:
                raise ConfigError(f"{flag.option} takes no value")
            out.append((flag, None))
            i += 1
            continue
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{flag.option} needs a value")
            val, i = tokens[i + 1], i + 2
        else:
            i += 1
        out.append((flag, val))
    return out


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlannedRun:
    """One run of a sweep: its name, its swept values and its ``vae train`` arguments."""

    name: str
    values: dict[str, int | float]
    args: list[str]

    def command(self) -> str:
        """The ``vae train`` command line of the run (valid shell, quoted)."""
        return shlex.join(["vae", "train", *self.args])

    def label(self) -> str:
        """``beta=0.25`` (``beta=0.25 latent_dim=8`` in a grid)."""
        return " ".join(f"{k}={value_text(v)}" for k, v in self.values.items())


@dataclass
class Plan:
    """What a sweep trains: the swept flags and values, the options given once, and the runs."""

    name: str
    swept: dict[str, list[int | float]]  # parameter name -> values, in the order given
    options: dict[str, str]  # parameter name -> option string (--beta) of every flag given
    fixed: list[tuple[str, str | None]]  # (parameter name, value) given once, in the order given; None: an on/off flag
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """``<runs dir>/sweeps/NAME``."""
        return sweep_folder(self.name)

    @property
    def factors(self) -> list[str]:
        """The swept flags that are factors (all but the seed, whose values are repeats)."""
        return [k for k in self.swept if k != SEED]

    def budget(self) -> dict[str, float]:
        """The budget flags given (time_budget, epochs, max_steps) and their values."""
        return {k: float(v) for k, v in self.fixed if k in BUDGETS and v is not None}

    def fixed_value(self, key: str) -> str | None:
        return next((v for k, v in self.fixed if k == key), None)

    def identity(self) -> dict[str, Any]:
        """What makes two plans the same: the swept values and the options given once (their order aside)."""
        return {"swept": {k: list(v) for k, v in self.swept.items()}, "fixed": sorted([k, v] for k, v in self.fixed)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "swept": self.swept,
            "options": self.options,
            "fixed": [[k, v] for k, v in self.fixed],
            "created": ckpt.utc_now(),
            "runs": [{"name": r.name, "values": r.values, "args": r.args, "command": r.command()} for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Plan:
        try:
            if data.get("format") != PLAN_FORMAT:
                raise ValueError("format")
            return cls(
                name=str(data["name"]),
                swept={str(k): list(v) for k, v in data["swept"].items()},
                options={str(k): str(v) for k, v in data["options"].items()},
                fixed=[(str(k), None if v is None else str(v)) for k, v in data["fixed"]],
                runs=[PlannedRun(str(r["name"]), dict(r["values"]), [str(a) for a in r["args"]]) for r in data["runs"]],
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: not a vaecli sweep plan") from None


def sweep_folder(name: str) -> Path:
    """The sweep's own folder, ``<runs dir>/sweeps/NAME``."""
    return runs_dir() / SWEEPS / ckpt.validate_run_name(name)


def build_plan(name: str | None, args: Sequence[tuple[Flag, str | None]]) -> Plan:
    """The plan of a sweep from ``vae train`` options (:func:`parse_args`): every numeric option with
    comma-separated values is swept (two or more make a grid, the first varying slowest), the rest is
    given to every run as it is. ``name`` None: ``sweep-<flags>-<hash of the plan>``, the same for the
    same command. Refuses no sweep, a swept text or budget flag, and a sweep without a budget."""
    swept: dict[str, list[int | float]] = {}
    fixed: list[tuple[str, str | None]] = []
    options = {f.name: f.option for f, _ in args}
    for flag, text in args:
        if text is not None and "," in text and not flag.takes_list:
            if not flag.numeric:
                raise ConfigError(f"{flag.option} {text}: {flag.option} takes text, not numbers: only numeric vae train flags can be swept")
            if flag.name in BUDGETS:
                raise ConfigError(
                    f"{flag.option} {text}: the budget is the same for every run of a sweep (give one value), so that points compare"
                )
            swept[flag.name] = parse_values(flag, text)
            continue
        if text is not None and flag.numeric:
            parse_values(flag, text)  # a bad number fails here, before any run
        fixed.append((flag.name, text))
    if not swept:
        raise ConfigError("nothing to sweep: give a numeric vae train flag comma-separated values, e.g. --beta 0.5,1,4")
    if not any(k in BUDGETS for k, _ in fixed):
        raise ConfigError("a sweep needs the same budget for every run: give --time-budget SECONDS or --epochs N (or --max-steps N)")
    total = math.prod(len(v) for v in swept.values())
    if total > MAX_RUNS:
        raise ConfigError(f"the sweep would train {total:,} runs (at most {MAX_RUNS:,})")
    plan = Plan(name or "", swept, options, fixed)
    if name is None:
        digest = hashlib.sha256(json.dumps(plan.identity(), sort_keys=True).encode()).hexdigest()[:6]
        plan.name = f"sweep-{'-'.join(swept).replace('_', '-')}-{digest}"
    ckpt.validate_run_name(plan.name)
    base = [a for k, v in fixed for a in ((options[k],) if v is None else (options[k], v))]
    for combo in itertools.product(*swept.values()):
        values = dict(zip(swept, combo))
        run = f"{plan.name}-" + "-".join(f"{k}{value_text(v).replace('+', '')}" for k, v in values.items())
        try:
            ckpt.validate_run_name(run)
        except ConfigError:
            raise ConfigError(
                f"run name {run!r} is not a valid run name (at most 128 letters, digits, '.', '_', '-'): give a shorter --name"
            ) from None
        swept_args = [a for k, v in values.items() for a in (options[k], value_text(v))]
        plan.runs.append(PlannedRun(run, values, [*base, *swept_args, "--name", run]))
    return plan


def _differences(old: Plan, new: Plan) -> str:
    """What changed between two plans, in a few words."""
    parts = []
    for k in dict.fromkeys([*old.swept, *new.swept]):
        a, b = old.swept.get(k), new.swept.get(k)
        if a != b:
            show = [",".join(map(value_text, vs)) if vs else "not swept" for vs in (a, b)]
            parts.append(f"{old.options.get(k) or new.options.get(k)} {show[0]} -> {show[1]}")
    of, nf = dict(old.fixed), dict(new.fixed)

    def given(d: dict[str, str | None], k: str) -> str:
        return "absent" if k not in d else ("on" if d[k] is None else str(d[k]))

    for k in dict.fromkeys([*of, *nf]):
        if (k in of and k in nf and of[k] == nf[k]) or k in old.swept or k in new.swept:
            continue
        parts.append(f"{old.options.get(k) or new.options.get(k)} {given(of, k)} -> {given(nf, k)}")
    return "; ".join(parts) or "the runs differ"


def read_plan(name: str) -> Plan:
    """The plan recorded for sweep ``name`` (ConfigError when there is none)."""
    path = sweep_folder(name) / PLAN
    missing = ConfigError(f"no sweep named {name!r} in {runs_dir() / SWEEPS} (start it, or record its plan with vae sweep ... --plan)")
    return Plan.from_dict(ckpt.read_json_file(path, missing), str(path))


def record_plan(plan: Plan, overwrite: bool = False) -> str:
    """Write the plan to the sweep's folder: 'new', 'same' (the recorded plan is this one) or 'replaced'
    (another plan was recorded: allowed with ``overwrite``, and its runs that this plan names are
    removed, to be trained afresh). A changed plan without ``overwrite`` is a ConfigError."""
    path = plan.folder / PLAN
    outcome = "new"
    if path.exists():
        old = read_plan(plan.name)
        if old.identity() == plan.identity():
            return "same"
        if not overwrite:
            raise ConfigError(
                f"sweep {plan.name!r} exists with another plan ({_differences(old, plan)}): "
                "give --overwrite to replace it and retrain its runs, or another --name"
            )
        for run in plan.runs:
            remove_run(run.name)
        (plan.folder / PROGRESS).unlink(missing_ok=True)
        outcome = "replaced"
    atomic_write_json(path, plan.to_dict())
    return outcome


def remove_run(name: str) -> None:
    """Delete the run folder ``name`` when it is a run (has a config.json)."""
    import shutil

    folder = runs_dir() / ckpt.validate_run_name(name)
    if (folder / ckpt.CONFIG).is_file():
        shutil.rmtree(folder)


# ----------------------------------------------------------------------------- where each run is


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


def check_run_matches(run: PlannedRun) -> None:
    """An existing folder of a planned run must hold that run: its config has the planned swept values
    (a run of the same name trained otherwise is a ConfigError, never overwritten silently)."""
    folder = runs_dir() / run.name
    if not (folder / ckpt.CONFIG).is_file():
        return
    cfg = ckpt.read_config(folder)
    for key, want in run.values.items():
        for section in (cfg.train, cfg.model, cfg.data):
            if hasattr(section, key):
                have = getattr(section, key)
                if isinstance(have, (int, float)) and not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12):
                    raise ConfigError(
                        f"run {run.name!r} exists but was trained with {key} = {value_text(have)}, not {value_text(want)}: "
                        "give --overwrite to retrain the sweep, or another --name"
                    )
                break


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


# ----------------------------------------------------------------------------- running the commands


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


@dataclass
class Event:
    """A report of :class:`Executor` to its caller: 'start', 'progress' or 'end' of one invocation."""

    kind: str
    run: str
    action: str  # 'start' or 'resume'
    seconds: float = 0.0  # since the invocation started
    detail: str = ""  # progress: the run's last epoch line; end: the outcome in words
    outcome: str = ""  # end: 'done', 'interrupted' or 'failed'
    exit_code: int | None = None


@dataclass
class _Job:
    run: PlannedRun
    action: str
    argv: list[str]
    slot: int
    log: Path
    steps_before: int
    proc: subprocess.Popen[bytes] | None = None
    t0: float = 0.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the sweep dies (a killed sweep leaves no orphan training)."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    except Exception:
        pass


class Executor:
    """Runs the ``vae train`` commands of a plan as subprocesses (``python -m vaecli train ... --json``,
    the same interpreter and environment), ``jobs`` at a time, each in its own process group.
    :meth:`interrupt` (the CLI's Ctrl-C) forwards SIGINT, so each run saves and stops, and starts no
    more; :meth:`terminate` (SIGTERM) ends them at once, leaving their checkpoints as they are.
    Every invocation is logged in the sweep folder (``logs/RUN.log``, ``progress.json``)."""

    def __init__(
        self,
        plan: Plan,
        jobs: int,
        env: Sequence[dict[str, str]],
        on_event: Callable[[Event], None] | None = None,
        python: Sequence[str] = (sys.executable, "-m", "vaecli"),
    ) -> None:
        self.plan, self.jobs, self.env = plan, max(1, jobs), list(env) or [{}]
        self.on_event = on_event or (lambda e: None)
        self.python = list(python)
        self.stopping = ""  # '', 'interrupt' or 'terminate'
        self.details: dict[str, str] = {}  # run -> the last invocation's outcome in words (a failure: its error line)
        self.running: list[_Job] = []
        self.progress_path = plan.folder / PROGRESS

    # ------------------------------------------------------------ records
    def _progress(self) -> dict[str, Any]:
        return invocations(self.plan)

    def _record(self, job: _Job, code: int | None, outcome: str, seconds: float) -> None:
        """Write the invocation's record: at its start with outcome 'running' (a record left so says the
        sweep itself was killed), replaced at its end by the outcome, exit code and steps after."""
        data = self._progress()
        records = data.setdefault(job.run.name, [])
        if code is not None and records and records[-1].get("outcome") == "running":
            records.pop()
        for r in records if code is None else ():
            if r.get("outcome") == "running":  # its sweep was killed: the run's checkpoint is where it was left
                r["outcome"] = "killed with the sweep"
        records.append(
            {
                "action": job.action,
                "args": job.argv,
                "steps_before": job.steps_before,
                "steps_after": run_status(job.run.name).steps if code is not None else None,
                "exit_code": code,
                "outcome": outcome,
                "seconds": round(seconds, 3),
                "at": ckpt.utc_now(),
            }
        )
        atomic_write_json(self.progress_path, data)

    # ------------------------------------------------------------ control
    def interrupt(self) -> None:
        """Ask every running run to stop after its step and save (SIGINT); start no more runs. A second
        call forwards a second SIGINT (the runs then abort without saving, as ``vae train`` does)."""
        self.stopping = self.stopping or "interrupt"
        self._signal(signal.SIGINT)

    def terminate(self) -> None:
        """End every running run now (SIGTERM: no save) and start no more."""
        self.stopping = "terminate"
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        for job in self.running:
            if job.proc is not None and job.proc.poll() is None:
                try:
                    os.killpg(job.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    # ------------------------------------------------------------ the loop
    def run(self, todo: Sequence[tuple[PlannedRun, RunStatus]]) -> dict[str, str]:
        """Start, resume and wait for ``todo`` (runs with their status, 'absent' or 'interrupted'),
        ``jobs`` at a time; returns run name -> 'done', 'interrupted', 'failed' or 'not started'."""
        logs = self.plan.folder / LOGS
        logs.mkdir(parents=True, exist_ok=True)
        queue = list(todo)
        outcomes: dict[str, str] = {}
        free = list(range(self.jobs))
        last_report = 0.0
        while queue or self.running:
            while queue and free and not self.stopping:
                run, status = queue.pop(0)
                self._start(run, status, free.pop(0), logs)
            now = time.monotonic()
            for job in list(self.running):
                code = job.proc.poll() if job.proc is not None else None
                if code is None:
                    continue
                self.running.remove(job)
                free.append(job.slot)
                free.sort()
                outcomes[job.run.name] = self._finish(job, code, now - job.t0)
            if now - last_report >= 1.0:
                last_report = now
                for job in self.running:
                    self.on_event(Event("progress", job.run.name, job.action, now - job.t0, _last_epoch_line(job.log)))
            if self.running or (queue and not self.stopping):
                time.sleep(POLL_SECONDS)
            if self.stopping and not self.running:
                break
        for run, _ in queue:
            outcomes[run.name] = "not started"
        return outcomes

    def _start(self, run: PlannedRun, status: RunStatus, slot: int, logs: Path) -> None:
        if status.state == "interrupted":
            action, argv = "resume", resume_args(self.plan, run, status)
        else:
            action, argv = "start", list(run.args)  # a folder that failed at start is replaced by vae train itself
        job = _Job(run, action, argv, slot, logs / f"{run.name}.log", status.steps)
        env = {**os.environ, "COLUMNS": "160", **self.env[slot % len(self.env)]}  # the log's lines unwrapped
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), *filter(None, [env.get("PYTHONPATH")])]
        )  # this vaecli
        with open(job.log, "ab") as log:
            log.write(f"# {ckpt.utc_now()} {shlex.join(['vae', 'train', *argv])}\n".encode())
            log.flush()
            job.proc = subprocess.Popen(
                [*self.python, "train", *argv, "--json", "-q"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        job.t0 = time.monotonic()
        self._record(job, None, "running", 0.0)
        self.running.append(job)
        self.on_event(Event("start", run.name, action, detail=" ".join(argv)))

    def _finish(self, job: _Job, code: int, seconds: float) -> str:
        status = run_status(job.run.name)
        if code == 0 and status.state == "done":
            outcome, detail = "done", f"{status.stopped}, {status.steps} steps"
        elif code in (130, -signal.SIGINT):
            outcome, detail = "interrupted", f"saved at step {status.steps}" if status.state == "interrupted" else "nothing saved yet"
        elif code in (-signal.SIGTERM, -signal.SIGKILL, 143) and self.stopping:
            outcome = "interrupted"
            detail = (
                f"stopped at once: its checkpoint is at step {status.steps}"
                if status.state == "interrupted"
                else "stopped before its first checkpoint"
            )
        else:
            outcome, detail = "failed", _last_line(job.log) or f"exit code {code}"
        self._record(job, code, outcome, seconds)
        self.details[job.run.name] = detail
        self.on_event(Event("end", job.run.name, job.action, seconds, detail, outcome, code))
        return outcome


def _tail(path: Path, size: int = 8192) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _last_epoch_line(log: Path) -> str:
    """The last 'epoch N/M ...' line of a run's log (what ``vae train`` prints per epoch), shortened."""
    for line in reversed(_tail(log)):
        s = " ".join(line.split())
        if s.startswith("epoch "):
            return s[:110]
    return ""


def _last_line(log: Path) -> str:
    """The last line of a run's log that is not a comment: the error of a failed run."""
    for line in reversed(_tail(log)):
        s = line.strip()
        if s and not s.startswith("#"):
            return s.removeprefix("vae: error: ")[:200]
    return ""


class SweepLock:
    """An exclusive lock on the sweep's folder while one process runs it (released when it exits,
    even when killed); a second process is refused with a ConfigError."""

    def __init__(self, plan: Plan) -> None:
        self.path = plan.folder / LOCK
        self.fh: Any = None

    def __enter__(self) -> SweepLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")  # held for the life of the sweep
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            self.fh.close()
            raise ConfigError(
                f"sweep {self.path.parent.name!r} is being run by another process (pid {pid}): wait for it or stop it"
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()


def invocations(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Every recorded invocation of the sweep's runs (``progress.json``): run -> list of records."""
    try:
        data = json.loads((plan.folder / PROGRESS).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    "build_plan",
    "read_plan",
    "record_plan",
    "run_status",
    "check_run_matches",
    "resume_args",
    "default_jobs",
    "gpu_count",
    "slot_env",
    "sweep_folder",
    "value_text",
    "invocations",
    "FINISHED",
    "BUDGETS",
]
