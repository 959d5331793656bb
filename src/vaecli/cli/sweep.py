"""`vae sweep` (one `vae train` run per value of the swept flags, resumable) and `vae compare` (finished runs side by side)."""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import app
from .common import check_outputs, check_positive, fmt, print_json, stderr_console, stdout_console
from .options import Device, Json

OptStr = Optional[str]  # noqa: UP045 - Typer reads these annotations at run time on Python 3.10
OptInt = Optional[int]  # noqa: UP045

SCORE_HELP = (
    "Score each finished run: sample quality (FD, KID, precision, recall) in the default feature space of `vae eval-samples` "
    "(28x28 grayscale: vaecli-fmnist-net-v1, else mobilenet-v2-imagenet), MIG and FactorVAE score on --data shapes."
)
N_SCORED = 2000  # default -n: enough for stable FD/KID ranks of a sweep, a few seconds per run on a CPU
N_HELP = "Prior samples scored per run against as many test images (FD and KID depend on n: compare at the same n)."


# ----------------------------------------------------------------------------- vae train's own options


def _base_type(annotation: Any) -> Any:
    """``Annotated[Optional[int], ...]`` -> int."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0] if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else annotation
    )


def train_flags() -> list[Any]:
    """Every option of `vae train`, read off the command's own parameters (so new flags are sweepable
    as they come): name, option strings, value kind, and whether the value is comma-separated by itself."""
    from ..experiments.sweep import Flag
    from .train import train_cmd

    hints = inspect.signature(train_cmd, eval_str=True).parameters
    flags = []
    for p in _train_command().params:
        base = _base_type(hints[p.name].annotation) if p.name in hints else str
        kind = "bool" if getattr(p, "is_flag", False) else {int: "int", float: "float"}.get(base, "str")
        takes_list = kind == "str" and "comma-separated" in (p.help or "").lower()
        flags.append(Flag(p.name, tuple(p.opts) + tuple(getattr(p, "secondary_opts", ())), kind, takes_list))
    return flags


def _train_command() -> Any:
    """`vae train` as the click command typer builds (its parser and parameters)."""
    group: Any = typer.main.get_command(app)
    return group.commands["train"]


def check_train_args(run: Any) -> None:
    """Parse one run's `vae train` arguments with `vae train`'s own parser and check the values
    (config.check_given), so that a bad value is one line before any run starts."""
    from ..config import MODEL_FIELDS, TRAIN_FIELDS, check_given
    from ..errors import ConfigError
    from .train import parse_lists

    cmd = _train_command()
    try:
        ctx = cmd.make_context("vae train", list(run.args), resilient_parsing=False)
    except Exception as exc:
        if hasattr(exc, "format_message"):
            raise ConfigError(f"run {run.name}: {exc.format_message()}") from None
        raise
    given = {k: v for k, v in ctx.params.items() if k in MODEL_FIELDS | TRAIN_FIELDS}
    given.update(parse_lists(given))
    try:
        check_given(given)
    except ConfigError as exc:
        raise ConfigError(f"run {run.name}: {exc}") from None


# ----------------------------------------------------------------------------- progress, one line per run


class _Board:
    """The live status of every run (a rich table redrawn in place on a terminal; elsewhere one line per start and end)."""

    def __init__(self, plan: Any, statuses: dict[str, Any], console: Any, quiet: bool) -> None:
        self.plan, self.console, self.quiet = plan, console, quiet
        self.rows: dict[str, list[str]] = {}
        for run in plan.runs:
            st = statuses[run.name]
            text = {"done": "done (skipped)", "interrupted": f"to resume (step {st.steps})", "absent": "queued"}[st.state]
            self.rows[run.name] = [run.label(), text, ""]
        self.live: Any = None

    def __enter__(self) -> _Board:
        if not self.quiet and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, auto_refresh=False, transient=False)  # no thread: children are forked
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
            self.live.stop()

    def _table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"sweep {self.plan.name}", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("run", "values", "status", "progress"):
            t.add_column(col, overflow="fold" if col == "progress" else "ellipsis", no_wrap=col != "progress")
        for name, (label, status, detail) in self.rows.items():
            style = (
                "green"
                if status.startswith("done")
                else "red"
                if status.startswith("failed")
                else "yellow"
                if "interrupt" in status
                else ""
            )
            t.add_row(name, label, f"[{style}]{status}[/{style}]" if style else status, detail)
        return t

    def event(self, e: Any) -> None:
        row = self.rows[e.run]
        if e.kind == "start":
            row[1] = "resuming" if e.action == "resume" else "training"
            line = f"{e.run}: {'resumed' if e.action == 'resume' else 'started'}"
        elif e.kind == "progress":
            row[1] = f"{'resuming' if e.action == 'resume' else 'training'} {e.seconds:.0f}s"
            row[2] = e.detail
            line = ""
        else:
            row[1] = f"{e.outcome} ({e.seconds:.0f}s)"
            row[2] = e.detail
            line = f"{e.run}: {e.outcome} after {e.seconds:.0f}s: {e.detail}"
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
        elif line and not self.quiet:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)


def _execute(
    plan: Any, todo: list[Any], jobs: int, env: list[dict[str, str]], board: _Board, err: Any
) -> tuple[dict[str, str], str, list[str]]:
    """Run the commands; Ctrl-C forwards SIGINT to the runs (each saves), SIGTERM ends them at once.
    Returns (run -> outcome, how the sweep was stopped ('' when it was not), one line per failed run)."""
    from ..experiments.sweep import Executor

    executor = Executor(plan, jobs, env, board.event)

    def on_sigint(signum: int, frame: Any) -> None:
        again = bool(executor.stopping)
        executor.interrupt()
        err.print(
            "[yellow]"
            + (
                "second Ctrl-C: the runs abort without saving"
                if again
                else "stopping: every running run saves after its step (Ctrl-C again to abort them)"
            )
            + "[/yellow]"
        )

    main = threading.current_thread() is threading.main_thread()
    old = (signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, lambda s, f: executor.terminate())) if main else None
    try:
        outcomes = executor.run(todo)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old[0])
            signal.signal(signal.SIGTERM, old[1])
    failures = [f"{run}: {executor.details.get(run, '')}" for run, o in outcomes.items() if o == "failed"]
    return outcomes, executor.stopping, failures


# ----------------------------------------------------------------------------- results


def _study(
    rows: list[dict[str, Any]], *, score: bool, n: int, device: str, cache: Path | None, err: Any, quiet: bool
) -> tuple[list[Any], list[str]]:
    """Scores (merged into the rows) and the pictures' material of every row, with a status line."""
    from ..experiments.compare import study_run

    studies: list[Any] = []
    notes: dict[str, list[str]] = {}
    with contextlib.nullcontext() if quiet else err.status("") as status:
        for i, row in enumerate(rows, 1):
            if status is not None:
                status.update(f"{'scoring and drawing' if score else 'drawing'} {row['run']} ({i}/{len(rows)})")
            scores, run_notes, study = study_run(row, score=score, n=n, device=device, cache=cache)
            row.update(scores)
            for note in run_notes:
                notes.setdefault(note, []).append(row["run"])
            studies.append(study)
    return studies, [f"{', '.join(runs)}: {note}" for note, runs in notes.items()]


def _pictures(folder: Path, result: dict[str, Any], studies: list[Any], factors: list[str]) -> dict[str, str]:
    from ..experiments.compare import rd_png, samples_png, traverse_png

    files = {"rd": folder / "rd.png", "samples": folder / "samples.png", "traverse": folder / "traverse.png"}
    rd_png(files["rd"], result, factors)
    samples_png(files["samples"], studies)
    traverse_png(files["traverse"], studies)
    return {k: str(v) for k, v in files.items()}


def _cell(row: dict[str, Any], key: str, digits: int, std: dict[str, Any] | None = None) -> str:
    v = row.get(key)
    if std is not None and std.get(key) is not None and v is not None:
        return f"{fmt(float(v), digits)} ± {fmt(float(std[key]), digits)}"
    if key == "active_units" and v is not None and "latent_dim" in row:
        return f"{v}/{row['latent_dim']}"
    return fmt(float(v), digits) if isinstance(v, (int, float)) and not isinstance(v, bool) else fmt(v)


Line = tuple[list[str], dict[str, Any], dict[str, Any] | None]  # a table line: its key cells, its numbers, their stds (seeds)


def _lines(result: dict[str, Any], factors: list[str]) -> tuple[list[str], list[Line], bool]:
    """The table's key columns and one line per row: per group of seeds (mean ± std) when seeds repeat,
    else per run (its swept values in a sweep, its name in a comparison). Also whether seeds repeat."""
    from ..experiments.compare import cell_text

    runs = result["runs"]
    if result.get("groups") and any(g["n"] > 1 for g in result["groups"]):
        lines: list[Line] = []
        for g in result["groups"]:
            first = next(r for r in runs if r["run"] == g["runs"][0])
            numbers = {**g["mean"], "latent_dim": first["latent_dim"], "units": g["units"]}
            lines.append(([cell_text(g["values"][k]) for k in factors] + [str(g["n"])], numbers, g["std"]))
        return [*factors, "seeds"], lines, True
    if result["kind"] != "sweep":
        return ["run"], [([r["run"]], r, None) for r in runs], False
    swept = list(result.get("swept", {}))
    return swept, [([cell_text(r["values"].get(k)) for k in swept], r, None) for r in runs], False


def _columns(runs: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The number columns (key, heading, digits): scores only where some run has them."""
    has = lambda k: any(r.get(k) is not None for r in runs)  # noqa: E731
    cols = [("rate", "rate", 2), ("distortion", "distortion", 2), ("neg_elbo", "-ELBO", 2)]
    cols += [("bits_per_dim", "bits/dim", 4)] if has("bits_per_dim") else []
    cols += [("active_units", "active", 1)]
    cols += [("fd", "FD", 3), ("kid", "KID", 5), ("precision", "P", 3), ("recall", "R", 3)] if has("fd") else []
    cols += [("mig", "MIG", 3), ("factorvae_score", "FactorVAE", 3)] if has("mig") else []
    return [*cols, ("images_per_second", "img/s", 0), ("train_seconds", "train s", 1)]


def _legend(runs: list[dict[str, Any]], unit: str | None) -> str:
    """What the columns mean, in one line under the table."""
    features = next((r.get("features") for r in runs if r.get("features")), "")
    return (
        "rate = test KL(q(z|x) || p(z)) in nats/image; distortion = test -log p(x|z); -ELBO = distortion + rate"
        + (f"; both in {unit}" if unit else "; in the units of each run")
        + (
            f"; FD/KID/P/R: prior samples against test images in the {features} feature space"
            if any(r.get("fd") is not None for r in runs)
            else ""
        )
        + "; active: latent dims with Var(mu) > 0.01; img/s, train s: training speed and seconds"
    )


def print_results(result: dict[str, Any], factors: list[str], console: Any) -> None:
    """The rich table of a sweep or comparison (groups of seeds as mean ± std), then its notes and files."""
    from rich import box
    from rich.table import Table

    runs = result["runs"]
    units = {r["units"] for r in runs}
    unit = next(iter(units)) if len(units) == 1 else None
    heads, lines, seeds = _lines(result, factors)
    cols = _columns(runs)
    title = f"{result['kind']} {result.get('name', '')}: {len(runs)} runs, test split" + (", mean ± std over seeds" if seeds else "")
    if not console.is_terminal:  # a file or pipe: the whole table on one line per row
        console.width = max(console.width, 150)
    t = Table(title=title, box=box.SIMPLE_HEAD)
    for h in heads:
        t.add_column(h, justify="right" if result["kind"] == "sweep" else "left")
    if unit is None:
        t.add_column("units")
    for _, head, _ in cols:
        t.add_column(head, justify="right")
    for keys, row, std in lines:
        t.add_row(*keys, *([row["units"]] if unit is None else []), *(_cell(row, k, d, std) for k, _, d in cols))
    console.print(t)
    console.print(_legend(runs, unit), highlight=False, markup=False, soft_wrap=True)
    for note in result.get("notes", []):
        console.print(f"[yellow]note: {note}[/yellow]", highlight=False, soft_wrap=True)
    for kind, path in result.get("files", {}).items():
        console.print(f"{kind}: {path}", highlight=False, markup=False, soft_wrap=True)


def _finish(result: dict[str, Any], factors: list[str], as_json: bool) -> None:
    if as_json:
        print_results(result, factors, stderr_console())
        print_json(result)
    else:
        print_results(result, factors, stdout_console())


# ----------------------------------------------------------------------------- vae sweep


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep_cmd(
    ctx: typer.Context,
    name: Annotated[
        OptStr,
        typer.Option(
            "--name",
            help="Sweep name; its runs are NAME-beta0.5 ... (default: sweep-<flags>-<hash of the plan>, the same for the same command).",
        ),
    ] = None,
    jobs: Annotated[
        OptInt,
        typer.Option(
            "--jobs",
            "-j",
            help="Runs at a time (default: one per GPU; on a CPU one per core with --epochs or "
            "--max-steps, 1 with --time-budget; the cores are split between the runs).",
        ),
    ] = None,
    plan_only: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Record the plan and print each run's `vae train` command, one per line "
            "(for a job array or any scheduler); train nothing.",
        ),
    ] = False,
    collect: Annotated[
        OptStr,
        typer.Option(
            "--collect",
            help="Build the results of sweep NAME from its run folders (runs trained elsewhere from --plan's commands); train nothing.",
            metavar="NAME",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace another plan recorded under this name (its runs are trained afresh) and any planned run's folder "
            "that holds another run (trained by hand with other values).",
        ),
    ] = False,
    score: Annotated[bool, typer.Option("--score/--no-score", help=SCORE_HELP)] = True,
    n: Annotated[int, typer.Option("-n", "--num", help=N_HELP)] = N_SCORED,
    config: Annotated[
        OptStr,
        typer.Option(
            "--config",
            help="The base of every run: a TOML file of vae train options (as vae train --config; a run's config.toml); "
            "the flags given here override it.",
            metavar="FILE",
        ),
    ] = None,
    as_json: Json = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Train one run per value of the swept flags and compare them: `vae sweep --beta 0.25,1,4 --time-budget 60`.

    Any numeric `vae train` flag given comma-separated values is swept; two make a grid; `--seed 0,1,2` are repeats (mean ± std) on one data split (`--split-seed`: the first seed unless given).

    Every other `vae train` option goes to every run as it is; all get the same budget: --time-budget, --epochs or --max-steps.

    Results: a table, and sweep.json, sweep.csv, rd.png (rate-distortion), samples.png, traverse.png in <runs dir>/sweeps/NAME/.

    Run the same command again to continue: finished runs are skipped, interrupted ones resumed (Ctrl-C leaves them resumable)."""
    from ..experiments.sweep import SweepLock

    t0 = time.perf_counter()
    check_positive("-n", n, 10)
    if jobs is not None:
        check_positive("--jobs", jobs, 1)
    err = stderr_console()
    plan = _plan_of(ctx.args, name=name, collect=collect, plan_only=plan_only, config=config)
    if plan_only:
        _record_and_print(plan, overwrite, quiet, err)
        return
    with SweepLock(plan):
        failed, run_seconds = ({}, 0.0) if collect is not None else _train(plan, jobs, overwrite, quiet, err)
        result = _results(plan, score=score, n=n, err=err, quiet=quiet, seconds={"runs": run_seconds, "start": t0})
    _finish(result, plan.factors if result.get("groups") else [], as_json)
    if failed:
        err.print(
            f"[red]{len(failed)} run{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)} (logs in {plan.folder / 'logs'})[/red]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _plan_of(args: list[str], *, name: str | None, collect: str | None, plan_only: bool, config: str | None = None) -> Any:
    """The sweep's plan: the recorded one of ``--collect NAME``, else built from the `vae train` options
    ``args`` over those of the ``config`` file, each run's arguments checked by `vae train`'s own rules."""
    from ..errors import ConfigError
    from ..experiments.sweep import build_plan, file_args, parse_args, read_plan
    from .train import base_options, option_kinds

    if collect is not None:
        if args or name or plan_only or config:
            raise ConfigError("--collect NAME reads the recorded plan: give no vae train options, --name, --plan or --config with it")
        return read_plan(collect)
    flags = train_flags()
    pairs = parse_args(args, flags)
    if config is not None:
        pairs = file_args(base_options(option_kinds(_train_command()), config, None), flags, pairs, config) + pairs
    plan = build_plan(name, pairs)
    for run in plan.runs:
        check_train_args(run)
    return plan


def _record_and_print(plan: Any, overwrite: bool, quiet: bool, err: Any) -> None:
    """--plan: record the plan, then each run's `vae train` command on stdout, one per line."""
    from ..experiments.sweep import SweepLock, record_plan

    with SweepLock(plan):  # --overwrite removes run folders: never under a running sweep
        outcome = record_plan(plan, overwrite)
    if not quiet:
        err.print(
            f"sweep {plan.name}: {len(plan.runs)} runs, plan {'recorded' if outcome != 'same' else 'unchanged'} in "
            f"{plan.folder}; collect them with `vae sweep --collect {plan.name}`",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for run in plan.runs:
        sys.stdout.write(run.command() + "\n")
    sys.stdout.flush()


def _train(plan: Any, jobs: int | None, overwrite: bool, quiet: bool, err: Any) -> tuple[dict[str, str], float]:
    """Record the plan, then start, resume or skip each run (``jobs`` at a time; default by the plan).
    Returns the failed runs (run -> outcome) and the seconds the runs took; a stopped sweep exits
    (130 after Ctrl-C, 143 after SIGTERM), as does one whose runs all failed (1)."""
    from ..experiments.sweep import check_run_matches, default_jobs, record_plan, run_status, slot_env

    outcome = record_plan(plan, overwrite)
    for run in plan.runs:  # a folder that holds another run: refused, or with --overwrite removed
        diff = check_run_matches(run, overwrite)
        if diff and not quiet:
            err.print(f"{run.name}: trained with {diff}: removed, to be trained as planned", highlight=False, markup=False, soft_wrap=True)
    statuses = {run.name: run_status(run.name) for run in plan.runs}
    todo = [(run, statuses[run.name]) for run in plan.runs if statuses[run.name].state != "done"]
    n_jobs = jobs or default_jobs(plan, len(todo))
    if not quiet:
        _announce(plan, statuses, n_jobs, replaced=outcome == "replaced", err=err)
    if not todo:
        return {}, 0.0
    t_runs = time.perf_counter()
    with _Board(plan, statuses, err, quiet) as board:
        outcomes, stopping, failures = _execute(plan, todo, n_jobs, slot_env(n_jobs, plan.fixed_value("device")), board, err)
    _exit_if_stopped(plan, stopping, err)
    failed = {r: o for r, o in outcomes.items() if o == "failed"}
    for line in failures:
        err.print(f"failed: {line}", style="red", highlight=False, markup=False, soft_wrap=True)
    if failed and all(run_status(run.name).state != "done" for run in plan.runs):
        err.print(f"no run finished (logs in {plan.folder / 'logs'})", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
    return failed, time.perf_counter() - t_runs


def _announce(plan: Any, statuses: dict[str, Any], n_jobs: int, *, replaced: bool, err: Any) -> None:
    """The sweep's first line: its runs by state, runs at a time, the budget."""
    counts = {s: sum(1 for st in statuses.values() if st.state == s) for s in ("done", "interrupted", "absent")}
    err.print(
        f"sweep {plan.name}: {len(plan.runs)} runs ({counts['done']} finished, {counts['interrupted']} to resume, "
        f"{counts['absent']} to start), {n_jobs} at a time, budget "
        + ", ".join(f"{plan.options[k]} {v:g}" for k, v in plan.budget().items())
        + ("; the previous plan was replaced" if replaced else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _exit_if_stopped(plan: Any, stopping: str, err: Any) -> None:
    """After Ctrl-C (130: every run saved) or SIGTERM (143: the runs stopped without saving), exit with a line that says so."""
    if stopping == "terminate":
        err.print("terminated: the runs stopped without saving; run the same command again to continue from their checkpoints")
        raise typer.Exit(143)
    if stopping:
        err.print(
            f"interrupted: every run is saved; run the same command again to continue (sweep {plan.name})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(130)


def _results(plan: Any, *, score: bool, n: int, err: Any, quiet: bool, seconds: dict[str, float]) -> dict[str, Any]:
    """Rows of the plan's finished runs, scores, groups of seeds, notes, files (sweep.json/.csv, pictures);
    ``seconds``: the wall-clock start of the command and the seconds its runs took (recorded with the results)."""
    t_results = time.perf_counter()
    from ..errors import ConfigError
    from ..experiments.compare import aggregate, comparability_notes, run_row, write_tables
    from ..experiments.sweep import SEED, run_status
    from ..paths import runs_dir

    rows, missing = [], []
    for run in plan.runs:
        st = run_status(run.name)
        if st.state == "done":
            rows.append(run_row(runs_dir() / run.name, run.values, run.label()))
        else:
            missing.append(f"{run.name} ({'interrupted at step ' + str(st.steps) if st.state == 'interrupted' else 'not trained'})")
    if not rows:
        raise ConfigError(f"sweep {plan.name!r} has no finished runs yet ({len(missing)} planned: train them, then collect)")
    device = plan.fixed_value("device") or "auto"
    cache = plan.folder / "scores"
    cache.mkdir(parents=True, exist_ok=True)
    studies, notes = _study(rows, score=score, n=n, device=device, cache=cache, err=err, quiet=quiet)
    notes = [*(f"not finished: {m}" for m in missing), *comparability_notes(rows, budgets=False), *notes]
    factors = plan.factors
    result: dict[str, Any] = {
        "kind": "sweep",
        "name": plan.name,
        "path": str(plan.folder),
        "swept": plan.swept,
        "fixed": [[k, v] for k, v in plan.fixed],
        "runs": rows,
        "notes": notes,
    }
    if SEED in plan.swept:
        result["groups"] = aggregate(rows, factors)
    result["files"] = _pictures(plan.folder, result, studies, factors)
    now = time.perf_counter()
    result["seconds"] = {"runs": round(seconds["runs"], 3), "results": round(now - t_results, 3), "total": round(now - seconds["start"], 3)}
    result["files"].update(write_tables(plan.folder, "sweep", result, list(plan.swept)))
    return result


# ----------------------------------------------------------------------------- vae compare


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[str], typer.Argument(help="Runs to compare: names or folders (two or more).")],
    out_dir: Annotated[
        str, typer.Option("--out-dir", help="Folder for compare.json, compare.csv, rd.png, samples.png, traverse.png.")
    ] = "compare",
    score: Annotated[bool, typer.Option("--score/--no-score", help=SCORE_HELP)] = True,
    n: Annotated[int, typer.Option("-n", "--num", help=N_HELP)] = N_SCORED,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Finished runs side by side: the table and pictures of `vae sweep` for any runs (other
    architectures, likelihoods, budgets), with a note where their numbers do not compare."""
    from ..errors import ConfigError
    from ..experiments.compare import comparability_notes, run_row, write_tables
    from ..runs import store as ckpt

    check_positive("-n", n, 10)
    if len(runs) < 2:
        raise ConfigError("vae compare needs two or more runs")
    folders = [ckpt.resolve_run(r) for r in runs]
    if len({f.resolve() for f in folders}) < len(folders):
        raise ConfigError("a run is given twice")
    check_outputs(None, out_dir=out_dir)
    out = Path(out_dir).expanduser()
    rows, notes = [], []
    for f in folders:
        if not ckpt.read_summary(f) or not (f / ckpt.MODEL).is_file():
            raise ConfigError(
                f"run {f.name!r} has no finished training (no summary.json or weights): finish it with vae train --resume {f.name}"
            )
        row = run_row(f)
        if not row["finished"]:
            notes.append(f"{f.name} is not finished (stopped: {row['stopped']}): its numbers are those of its last invocation")
        rows.append(row)
    err = stderr_console()
    out.mkdir(parents=True, exist_ok=True)
    studies, score_notes = _study(rows, score=score, n=n, device=device, cache=None, err=err, quiet=False)
    result: dict[str, Any] = {
        "kind": "compare",
        "name": "",
        "path": str(out),
        "runs": rows,
        "notes": [*comparability_notes(rows), *notes, *score_notes],
    }
    result["files"] = _pictures(out, result, studies, [])
    result["files"].update(write_tables(out, "compare", result))
    _finish(result, [], as_json)
