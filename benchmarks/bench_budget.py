"""Quality at equal wall time, side by side: ``vae train --time-budget T`` for named sets of flags,
one after the other in one invocation (rounds alternate the configurations when ``--rounds`` > 1),
each scored on the test split by its own summary (the weights model.safetensors keeps). Run by hand,
on a quiet machine (wall time measures the neighbours too)::

    python benchmarks/bench_wall.py --data fashion-mnist --data-dir /path/to/data --budgets 120,600 \\
        --config default= --config no_val="--val-size 0" --out benchmarks/results/bench_val_split.json
    python benchmarks/bench_wall.py --data fashion-mnist --data-dir /path/to/data --budgets 120 \\
        --config fp32="--precision fp32" --config bf16="--precision bf16" --out benchmarks/results/bench_bf16_mlp.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="vae train --data")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budgets", default="120", help="comma-separated --time-budget seconds")
    p.add_argument("--config", action="append", default=[], help="NAME=FLAGS (vae train flags; '' = the defaults)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--iw", type=int, default=0, help="also vae eval-kl --iw-samples K on the test split")
    p.add_argument("--iw-limit", type=int, default=None, help="... on its first N images only")
    p.add_argument("--out", required=True)
    p.add_argument("--note", default=None)
    args = p.parse_args()
    configs = [c.split("=", 1) for c in args.config or ["default="]]
    if args.clock == "cpu":
        args.vae = [sys.executable, str(harness.ROOT / "benchmarks" / "cpu_budget.py")]
    home = Path(tempfile.mkdtemp(prefix="vae-wall-"))
    rows: list[dict[str, Any]] = []
    for budget in args.budgets.split(","):
        for r in range(args.rounds):
            for name, flags in configs:
                run = f"{name}-{budget}-{r}"
                argv = [
                    "train",
                    "--data",
                    args.data,
                    "--time-budget",
                    budget,
                    "--name",
                    run,
                    "--overwrite",
                    "--json",
                    "-q",
                    *shlex.split(flags),
                ]
                m = harness.run_vae(args, home, argv)
                res = m.get("result") or {}
                summary = harness.read_json(home / run / "summary.json") if (home / run / "summary.json").exists() else {}
                row = {"config": name, "flags": flags, "budget_s": float(budget), "round": r, "rc": m["rc"], "wall_s": m["wall_s"],
                       "peak_rss_mib": m["peak_rss_mib"], "test": res.get("test"), "best": res.get("best"), "last": res.get("last"),
                       "stopped": res.get("stopped"), "epochs": res.get("epochs"), "images_per_second": res.get("images_per_second"),
                       "precision": summary.get("precision"), "likelihood": res.get("likelihood"), "error": m.get("stderr_tail") or None}  # fmt: skip
                if args.iw and m["rc"] == 0:
                    row["iw"] = _iw(args, home, run)
                harness.log(f"{name} @ {budget}s: test {(res.get('test') or {}).get('neg_elbo')} iw {row.get('iw', {}).get('iw_nll')} "
                            f"({res.get('images_per_second')} img/s)")  # fmt: skip
                rows.append(row)
    harness.write_json(args.out, {"benchmark": "bench_budget", "clock": args.clock, "command": " ".join(map(shlex.quote, sys.argv)), "data": args.data,
                                  "rows": rows, "machine": harness.machine_info(args.note)})  # fmt: skip
    return 0


def _iw(args: argparse.Namespace, home: Path, run: str) -> dict[str, Any]:
    """``vae eval-kl --iw-samples K --json`` of the run's test split (in real time, one process)."""
    argv = ["eval-kl", "--run", run, "--iw-samples", str(args.iw), "--json", *(["--limit", str(args.iw_limit)] if args.iw_limit else [])]
    m = harness.run_measured([sys.executable, "-m", "vaecli", *argv], env=harness.vae_env(home, args.data_dir))
    out = harness.last_json(m["stdout"]) or {}
    keep = ("images", "iw_samples", "iw_nll", "iw_nll_stderr", "iw_bits_per_dim", "neg_elbo", "kl", "likelihood")
    return {**{k: out.get(k) for k in keep}, "wall_s": m["wall_s"], "rc": m["rc"]}


if __name__ == "__main__":
    sys.exit(main())
