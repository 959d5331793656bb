"""The training loop's overhead against a bare loop, and the OpenMP wait policy, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_overhead.py --data-dir /path/to/data --rounds 12 --profile --out overhead.json
    python benchmarks/bench_overhead.py --data-dir /path/to/data --modes omp --rounds 8 --steps 10 --out omp.json

Modes (``--modes``; default ``overhead``):

* ``overhead``: in this one process, interleaved rounds on the same model (the default one for
  Fashion-MNIST unless ``--arch``) and data, batch of the rule, fp32; images/s over ``--steps``
  steps after 5 warm-up steps in each round, of
  - ``bare``: the plain recipe (benchmarks/reference.py) with vaecli's levers (uint8 data in
    memory, vaecli's memory format and Adam): forward, BCE + KL, backward, clip, Adam, nothing else;
  - ``trainer_steps``: ``Trainer.train_steps``, vaecli's step (schedules, the non-finite flag on the
    device, running sums, the gradient-norm watch);
  - ``trainer_fit``: ``Trainer.fit`` with ``max_steps`` (the whole loop of ``vae train``: the control
    check before every step, progress reports, the in-memory copy of the last finite state; its
    evaluations and checkpoints are not counted, as ``vae train`` does not count them).
  The ratios to ``bare`` are medians of per-round ratios (target >= 0.9). ``--profile`` adds a
  cProfile of the ``trainer_fit`` rounds (top functions by own time).
* ``omp``: ``overhead`` in fresh processes under OMP_WAIT_POLICY=PASSIVE and ACTIVE, on the
  machine as it is ("idle") and with a second process burning one core ("busy").
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
import reference


def mode_overhead(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    import torch

    from vaecli.device import adam_kwargs

    steps = harness.WARMUP + args.steps
    given = {"max_steps": steps, **({"arch": args.arch} if args.arch else {})}
    tr = harness.make_trainer(harness.load_fmnist(args.data_dir), given, "bench-overhead")
    tc = tr.cfg.train
    bare = reference.PlainRecipe(args.data_dir, model=tr.cfg.model, memory=True, memory_format=tr.memory_format,
                                 adam=adam_kwargs(torch.device("cpu")), lr=tc.lr)  # fmt: skip
    prof = cProfile.Profile() if args.profile else None

    def fit() -> float:
        if prof is not None:
            prof.enable()
        try:
            return float(tr.fit().images_per_second or 0.0)
        finally:
            if prof is not None:
                prof.disable()

    variants = {"bare": lambda: bare.train(args.steps)["images_per_second"], "trainer_steps": lambda: tr.train_steps(steps) or 0.0,
                "trainer_fit": fit}  # fmt: skip
    ips: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.rounds):
        for k, f in variants.items():
            ips[k].append(float(f()))
        harness.log(f"overhead round {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in ips.items()) + " img/s")
    out: dict[str, Any] = {
        "model": tr.cfg.model.to_dict(), "batch_size": tc.batch_size, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "rounds": args.rounds, "steps_timed_per_round": args.steps,
        "per_round": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
    }  # fmt: skip
    for k in variants:
        out[f"{k}_images_per_second"] = round(statistics.median(ips[k]), 1)
    for k in ("trainer_steps", "trainer_fit"):
        ratios = [t / b for t, b in zip(ips[k], ips["bare"]) if b]
        out[f"ratio_{k}_to_bare"] = round(statistics.median(ratios), 3) if ratios else None
        out[f"ratios_{k}_per_round"] = [round(r, 3) for r in ratios]
    if prof is not None:
        rows = sorted(pstats.Stats(prof).stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]  # type: ignore[attr-defined]
        n = args.rounds * steps
        out["profile_top_own_time"] = [{"function": f"{Path(fn).name}:{line}({name})", "own_ms_per_step": round(v[2] / n * 1000, 3),
                                        "calls_per_step": round(v[1] / n, 2)} for (fn, line, name), v in rows]  # fmt: skip
    harness.log(f"overhead: fit / bare {out['ratio_trainer_fit_to_bare']}, train_steps / bare {out['ratio_trainer_steps_to_bare']}")
    return out


def mode_omp(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """``overhead`` in a fresh process per OpenMP wait policy, idle and with one core burning."""
    keys = ("bare_images_per_second", "trainer_steps_images_per_second", "trainer_fit_images_per_second", "ratio_trainer_fit_to_bare")
    out: dict[str, Any] = {}
    for load in ("idle", "busy"):
        burner = None
        if load == "busy":  # burns one core until this process ends (it polls its parent, so it dies with it)
            burner = subprocess.Popen([sys.executable, "-c", "import os\np = os.getppid()\nwhile os.getppid() == p: pass"])
        try:
            for policy in ("PASSIVE", "ACTIVE"):
                cmd = [sys.executable, __file__, "--modes", "overhead", "--data-dir", args.data_dir, "--rounds", str(args.rounds),
                       "--steps", str(args.steps), *(["--arch", args.arch] if args.arch else [])]  # fmt: skip
                r = harness.run_measured(cmd, env={**os.environ, "OMP_WAIT_POLICY": policy}, timeout=args.omp_timeout)
                res = (harness.last_json(r["stdout"]) or {}).get("overhead") or {}
                cell = {k: res.get(k) for k in keys} | {"rc": r["rc"], "wall_s": r["wall_s"], "load_before": r["load_before"]}
                if r["timed_out"]:  # slower than the steps it had to run in that time
                    cell["timed_out_after_s"] = args.omp_timeout
                out[f"{load}_{policy.lower()}"] = cell
                harness.log(f"omp {load} {policy}: {cell}")
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the three loops")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round and loop, after 5 warm-up steps")
    p.add_argument("--arch", default=None, help="the model's arch (default: the rule's for Fashion-MNIST)")
    p.add_argument("--profile", action="store_true", help="overhead: cProfile the trainer_fit rounds")
    p.add_argument("--omp-timeout", type=float, default=150.0, help="omp: seconds per child before it is stopped")


MODES = {"overhead": mode_overhead, "omp": mode_omp}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "overhead", add_arguments))
