"""Training throughput of vaecli against the plain recipe (benchmarks/reference.py), as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_throughput.py --data-dir /path/to/data --rounds 3 --out bench_cpu.json

Modes (``--modes``, comma separated; default ``throughput,levers``):

* ``throughput``: alternates the plain recipe and ``vae train --arch seed --max-steps 45 --json``
  ``--rounds`` times (plain, vaecli, plain, vaecli, ...), each in a fresh process; images/s of
  both over ``--steps`` steps after 5 warm-up steps (the window ``vae train`` reports) and their
  ratio. ``--reference-env K=V`` adds a plain-recipe variant run with that environment (e.g.
  ``OMP_WAIT_POLICY=PASSIVE``, to separate that lever from the rest).
* ``levers``: in this one process, interleaved in bursts of 3 steps (robust to a busy machine):
  the plain recipe, the plain recipe with each of vaecli's levers switched on (uint8 data in
  memory, fused or foreach Adam, channels_last), and vaecli's own step
  (``Trainer.train_steps`` on the same model); wall and CPU milliseconds per step, seed model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
import reference


def mode_throughput(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    variants: list[tuple[str, dict[str, str] | None]] = [("reference", None)]
    variants += [(f"reference[{kv}]", dict([kv.split("=", 1)])) for kv in args.reference_env]
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        row: dict[str, Any] = {}
        for label, env in variants:
            row[label] = reference.run(args.data_dir, args.steps, env=env)
            harness.log(f"round {i + 1} {label}: {harness.images_per_second(row[label])} img/s")
        flags = ["--arch", "seed", "--max-steps", str(harness.WARMUP + args.steps), *args.vae_args]
        row["vaecli"] = harness.train_json(args, home, "bench-seed", flags)
        harness.log(f"round {i + 1} vaecli: {harness.images_per_second(row['vaecli'])} img/s")
        rounds.append(row)
    out: dict[str, Any] = {"rounds": rounds, "steps_timed": args.steps, "warmup_steps": harness.WARMUP, "batch_size": reference.BATCH}
    ours = [harness.images_per_second(r["vaecli"]) for r in rounds]
    for label, _ in variants:
        ref = [harness.images_per_second(r[label]) for r in rounds]
        pairs = [o / f for o, f in zip(ours, ref) if o and f]
        out[label] = {"images_per_second": ref, "median": harness.median(ref)}
        out[f"ratio_vs_{label}"] = {
            "per_round": [round(p, 3) for p in pairs],
            "median_ratio": round(statistics.median(pairs), 3) if pairs else None,
        }
    out["vaecli"] = {
        "images_per_second": ours,
        "median": harness.median(ours),
        "peak_rss_mib": [r["vaecli"]["peak_rss_mib"] for r in rounds],
    }
    return out


def mode_levers(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Each lever's share of the step, in-process and interleaved (seed model, batch 128)."""
    import torch

    cl = torch.channels_last
    plain = {
        "reference": {},
        "uint8": {"memory": True},
        "uint8_fused_adam": {"memory": True, "adam": {"fused": True}},
        "uint8_channels_last_foreach_adam": {"memory": True, "memory_format": cl, "adam": {"foreach": True}},
        "uint8_channels_last_fused_adam": {"memory": True, "memory_format": cl, "adam": {"fused": True}},
    }
    recipes = {k: reference.PlainRecipe(args.data_dir, **kw) for k, kw in plain.items()}
    bursts: dict[str, Any] = {k: (lambda n, r=r: [r.step() for _ in range(n)]) for k, r in recipes.items()}
    bursts["vaecli"] = harness.make_trainer(harness.load_fmnist(args.data_dir), {"arch": "seed"}, "bench-levers").train_steps
    for burst in bursts.values():
        burst(harness.WARMUP)
    wall: dict[str, list[float]] = {k: [] for k in bursts}
    cpu: dict[str, list[float]] = {k: [] for k in bursts}
    for _ in range(args.lever_rounds):
        for k, burst in bursts.items():
            t, c = time.perf_counter(), time.process_time()
            burst(3)
            wall[k].append((time.perf_counter() - t) / 3 * 1000)
            cpu[k].append((time.process_time() - c) / 3 * 1000)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "rounds": args.lever_rounds, "steps_per_burst": 3}
    ref_w, ref_c = statistics.median(wall["reference"]), statistics.median(cpu["reference"])
    for k in bursts:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        out[k] = {
            "wall_ms_per_step": round(w, 1),
            "cpu_ms_per_step": round(c, 1),
            "speedup_wall": round(ref_w / w, 3),
            "speedup_cpu": round(ref_c / c, 3),
        }
        harness.log(f"levers {k}: {w:.0f} ms/step wall, {c:.0f} ms CPU (x{ref_w / w:.2f} / x{ref_c / c:.2f} vs reference)")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=2, help="throughput: plain/vaecli alternations")
    p.add_argument("--steps", type=int, default=40, help="throughput: timed steps after the 5 warm-up steps")
    p.add_argument("--reference-env", action="append", default=[], metavar="K=V", help="throughput: a plain-recipe variant with this env")
    p.add_argument("--lever-rounds", type=int, default=8, help="levers: interleaved bursts of 3 steps per variant")


MODES = {"throughput": mode_throughput, "levers": mode_levers}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "throughput,levers", add_arguments))
