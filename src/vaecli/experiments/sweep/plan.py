"""The plan of a sweep: its runs (:class:`PlannedRun`), built from the parsed flags, recorded in
``<runs dir>/sweeps/NAME/plan.json`` and compared with the one recorded before."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...fileio import atomic_write_json
from ...paths import runs_dir
from ...runs import store as ckpt
from .flags import Flag, parse_values, value_text

SWEEPS = ckpt.SWEEPS  # <runs dir>/sweeps/NAME/
PLAN = "plan.json"
PROGRESS = "progress.json"  # every invocation of every run: kind, steps before and after, exit code, seconds
PLAN_FORMAT = 1
BUDGETS = ("time_budget", "epochs", "max_steps")  # the budget flags: one value for every run
SEED = "seed"  # swept seeds are repeats (mean ± std), not a factor
SPLIT_SEED = ("split_seed", "--split-seed")  # with seeds swept, one for every run (the first seed unless given)
PER_RUN_FOLDER = "tb_dir"  # --tensorboard-dir DIR: each run logs in DIR/<run name>, side by side
MAX_RUNS = 1000


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
        if flag.name == PER_RUN_FOLDER and text:  # absolute: a planned command may run elsewhere
            text = str(Path(text).expanduser().absolute())
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
    if SEED in swept and SPLIT_SEED[0] not in options:  # repeats vary the model's seed on one data split
        fixed.append((SPLIT_SEED[0], value_text(swept[SEED][0])))
        options[SPLIT_SEED[0]] = SPLIT_SEED[1]
    total = math.prod(len(v) for v in swept.values())
    if total > MAX_RUNS:
        raise ConfigError(f"the sweep would train {total:,} runs (at most {MAX_RUNS:,})")
    plan = Plan(name or "", swept, options, fixed)
    if name is None:
        digest = hashlib.sha256(json.dumps(plan.identity(), sort_keys=True).encode()).hexdigest()[:6]
        plan.name = f"sweep-{'-'.join(swept).replace('_', '-')}-{digest}"
    ckpt.validate_run_name(plan.name)
    base = [a for k, v in fixed if k != PER_RUN_FOLDER for a in ((options[k],) if v is None else (options[k], v))]
    folder = plan.fixed_value(PER_RUN_FOLDER)
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
        own = [options[PER_RUN_FOLDER], str(Path(folder) / run)] if folder else []
        plan.runs.append(PlannedRun(run, values, [*base, *own, *swept_args, "--name", run]))
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
