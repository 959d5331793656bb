"""What `vae sweep` costs beyond its runs, and whether two jobs finish a sweep sooner than one (by hand, never in CI).

* ``overhead``: a RUNS-run beta sweep at ``--time-budget BUDGET``, one job at a time. The sweep's
  wall time against the sum of its runs' own wall time (each ``vae train`` subprocess from start to
  exit: start-up, training, the test evaluation; ``progress.json``). The rest is the sweep's own:
  start-up and planning, polling, scoring (FD/KID/precision/recall with ``-n``), pictures and files
  (``sweep.json`` ``seconds``). Target: under 10% of the runs' own time.
* ``jobs``: the same 4-run sweep of equal work (``--max-steps STEPS`` each) with ``--jobs 1`` and
  ``--jobs 2`` (each job then gets cores // 2 torch threads): which finishes sooner, and the runs'
  images/s. Fresh runs folder each time; no scoring (the runs alone are compared).

Each sweep is one ``python -m vaecli sweep ... --json`` process, under ``flock LOCK`` when given so
that two timing jobs never overlap on a shared machine. Usage::

    python benchmarks/bench_sweep.py --data-dir /work/shared/data --lock /tmp/bench.lock          # the full measurement
    python benchmarks/bench_sweep.py --data fashion-mnist-mini --budget 10 --steps 150 \\
        --out benchmarks/results/bench_sweep_short.json                                           # a short check that it works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BETAS = ["0.25", "0.5", "1", "2", "4", "8", "16", "32"]


def sweep(home: Path, args: list[str], lock: str | None) -> dict[str, Any]:
    """One ``vae sweep --json`` in a fresh process; its JSON, wall seconds and the runs' own seconds."""
    cmd = [sys.executable, "-m", "vaecli", "sweep", *args, "--json", "-q"]
    env = {**os.environ, "VAE_HOME": str(home), "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    p = subprocess.run((["flock", lock] if lock else []) + cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep failed (exit {p.returncode}): {p.stderr[-2000:]}")
    out = json.loads(p.stdout)
    progress = json.loads((Path(out["path"]) / "progress.json").read_text())
    own = {run: sum(c["seconds"] for c in calls) for run, calls in progress.items()}
    return {"cmd": "vae sweep " + " ".join(args), "wall_s": round(wall, 2), "sweep_seconds": out.get("seconds"),
            "run_seconds": {k: round(v, 2) for k, v in own.items()}, "runs_sum_s": round(sum(own.values()), 2),
            "images_per_second": {r["run"]: r["images_per_second"] for r in out["runs"]},
            "test_neg_elbo": {r["run"]: r["neg_elbo"] for r in out["runs"]}, "loadavg_after": os.getloadavg()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--budget", type=float, default=60.0, help="--time-budget of each run of the overhead sweep")
    ap.add_argument("--runs", type=int, default=6, help="runs of the overhead sweep")
    ap.add_argument("-n", type=int, default=2000, help="samples scored per run in the overhead sweep")
    ap.add_argument("--steps", type=int, default=1000, help="--max-steps of each run of the jobs sweeps")
    ap.add_argument("--parts", default="overhead,jobs")
    ap.add_argument("--lock", default=None, help="flock file around each sweep")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_sweep.json"))
    a = ap.parse_args()
    data = ["--data", a.data] + (["--data-dir", a.data_dir] if a.data_dir else [])
    parts = a.parts.split(",")
    result: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                              "args": vars(a)}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        if "overhead" in parts:
            betas = ",".join(BETAS[: a.runs])
            r = sweep(tmp / "overhead", ["--beta", betas, *data, "--time-budget", str(a.budget), "--name", "overhead", "--jobs", "1",
                                         "-n", str(a.n)], a.lock)  # fmt: skip
            r["overhead_s"] = round(r["wall_s"] - r["runs_sum_s"], 2)  # everything but the runs: the whole process, start-up included
            r["overhead_fraction"] = round(r["overhead_s"] / r["runs_sum_s"], 4)
            r["scoring_and_pictures_s"] = r["sweep_seconds"]["results"]
            r["overhead_without_scoring_fraction"] = round((r["overhead_s"] - r["scoring_and_pictures_s"]) / r["runs_sum_s"], 4)
            result["overhead"] = r
            print(
                json.dumps({k: r[k] for k in ("wall_s", "runs_sum_s", "overhead_s", "overhead_fraction", "scoring_and_pictures_s")}),
                flush=True,
            )
        if "jobs" in parts:
            result["jobs"] = {}
            for jobs in (1, 2):
                r = sweep(tmp / f"jobs{jobs}", ["--beta", "0.5,1,2,4", *data, "--max-steps", str(a.steps), "--name", f"jobs{jobs}",
                                                "--jobs", str(jobs), "--no-score"], a.lock)  # fmt: skip
                result["jobs"][str(jobs)] = r
                print(json.dumps({"jobs": jobs, "wall_s": r["wall_s"], "runs_sum_s": r["runs_sum_s"]}), flush=True)
            w1, w2 = result["jobs"]["1"]["wall_s"], result["jobs"]["2"]["wall_s"]
            result["jobs_faster"] = 2 if w2 < w1 else 1
            result["jobs_speedup_2_over_1"] = round(w1 / w2, 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
