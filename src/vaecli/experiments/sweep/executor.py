"""The executor: the ``vae train`` commands of a plan as subprocesses, N at a time, with their logs
and ``progress.json`` (every invocation of every run), interrupted or terminated on request."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...fileio import atomic_write_json
from ...runs import store as ckpt
from .plan import PROGRESS, Plan, PlannedRun
from .status import RunStatus, resume_args, run_status

LOGS = "logs"
POLL_SECONDS = 0.25
# the folder that holds this vaecli package (a checkout's src/), first on the runs' PYTHONPATH
SOURCE_ROOT = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]


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
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this vaecli
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


def invocations(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Every recorded invocation of the sweep's runs (``progress.json``): run -> list of records."""
    try:
        data = json.loads((plan.folder / PROGRESS).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
