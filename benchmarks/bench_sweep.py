"""What `vae sweep` costs beyond its runs, and whether two jobs finish a sweep sooner than one, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_sweep.py --data-dir /path/to/data --out benchmarks/results/bench_sweep.json
    python benchmarks/bench_sweep.py --data fashion-mnist-mini --budget 10 --steps 150 --out short.json   # a check that it works

Modes (``--modes``; default ``overhead,jobs``), each one ``vae sweep ... --json`` process, measured:

* ``overhead``: a ``--runs``-run beta sweep at ``--time-budget BUDGET``, one job at a time, scored
  with ``-n`` samples. The sweep's wall time against the sum of its runs' own wall time (each ``vae
  train`` subprocess from start to exit: start-up, training, the test evaluation; the sweep's
  ``progress.json``). The rest is the sweep's own: its start-up and planning, polling, scoring
  (FD/KID/precision/recall), pictures and files (``sweep.json``'s ``seconds``). Target: under 10%.
* ``jobs``: a 4-run sweep of equal work (``--max-steps STEPS`` each, no scoring) with ``--jobs 1``
  and with ``--jobs 2`` (each job then gets cores // 2 torch threads): which finishes sooner, and the
  runs' images/s. At equal work the runs are the same either way; with a ``--time-budget`` they
  would not be (parallel runs each get a share of the machine for their seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness

BETAS = ["0.25", "0.5", "1", "2", "4", "8", "16", "32"]


def _sweep(args: argparse.Namespace, home: Path, flags: list[str]) -> dict[str, Any]:
    """One measured ``vae sweep --json`` on the benchmark's Fashion-MNIST: wall seconds, the runs' own seconds, the results."""
    argv = ["sweep", "--data", "fashion-mnist", "--data-dir", args.data_dir, *flags, "--json", "-q"]
    r = harness.run_vae(args, home, argv)
    out = r.get("result")
    if r["rc"] != 0 or not out:
        raise SystemExit(f"vae sweep failed (exit {r['rc']}): {r['stderr_tail']}")
    progress = json.loads((Path(out["path"]) / "progress.json").read_text())
    own = {run: sum(c["seconds"] for c in calls) for run, calls in progress.items()}
    return {"cmd": "vae " + " ".join(argv), "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"], "sweep_seconds": out.get("seconds"),
            "run_seconds": {k: round(v, 2) for k, v in own.items()}, "runs_sum_s": round(sum(own.values()), 2),
            "images_per_second": {row["run"]: row["images_per_second"] for row in out["runs"]},
            "test_neg_elbo": {row["run"]: row["neg_elbo"] for row in out["runs"]},
            "load_before": r["load_before"], "load_after": r["load_after"]}  # fmt: skip


def mode_overhead(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    betas = ",".join(BETAS[: args.runs])
    r = _sweep(args, home / "overhead", ["--beta", betas, "--time-budget", str(args.budget), "--name", "overhead", "--jobs", "1",
                                         "-n", str(args.n)])  # fmt: skip
    r["overhead_s"] = round(r["wall_s"] - r["runs_sum_s"], 2)  # everything but the runs: the sweep process, start-up included
    r["overhead_fraction"] = round(r["overhead_s"] / r["runs_sum_s"], 4)
    r["scoring_and_pictures_s"] = r["sweep_seconds"]["results"]
    r["overhead_without_scoring_fraction"] = round((r["overhead_s"] - r["scoring_and_pictures_s"]) / r["runs_sum_s"], 4)
    harness.log(f"overhead: {json.dumps({k: r[k] for k in ('wall_s', 'runs_sum_s', 'overhead_s', 'overhead_fraction')})}")
    return r


def mode_jobs(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for jobs in (1, 2):
        out[str(jobs)] = r = _sweep(args, home / f"jobs{jobs}", ["--beta", "0.5,1,2,4", "--max-steps", str(args.steps), "--name", f"jobs{jobs}",
                                                                   "--jobs", str(jobs), "--no-score"])  # fmt: skip
        harness.log(f"jobs {jobs}: wall {r['wall_s']} s, runs' own {r['runs_sum_s']} s")
    w1, w2 = out["1"]["wall_s"], out["2"]["wall_s"]
    out["faster"] = 2 if w2 < w1 else 1
    out["speedup_2_over_1"] = round(w1 / w2, 3)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=float, default=60.0, help="overhead: --time-budget of each run")
    p.add_argument("--runs", type=int, default=6, help="overhead: runs of the sweep (at most 8)")
    p.add_argument("-n", type=int, default=2000, help="overhead: samples scored per run")
    p.add_argument("--steps", type=int, default=1000, help="jobs: --max-steps of each of the 4 runs")


MODES = {"overhead": mode_overhead, "jobs": mode_jobs}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "overhead,jobs", add_arguments))
