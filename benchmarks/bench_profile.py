"""What this CPU can do at best and where a training step goes, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_profile.py --data-dir /path/to/data --modes roofline,profile --out profile.json

Modes (``--modes``; default ``roofline,profile``):

* ``roofline``: dense matmul GFLOP/s in fp32 and bf16, and the FLOPs of one training image
  (forward + backward of vaecli's loss, counted by torch's FlopCounterMode) of the seed model and
  of the 28 px gray ``conv`` and ``mlp`` defaults: the images/s ceiling at the matmul peak.
* ``profile``: torch.profiler over ``--profile-steps`` steps of ``Trainer.train_steps`` (the seed
  model unless ``--arch``); the top operators by self CPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import harness


def mode_roofline(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vaecli.config import TrainConfig
    from vaecli.model.vae import VAE
    from vaecli.train.objective import Objective
    from vaecli.train.recipe import build_configs

    def gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "matmul_n": 2048}
    out["matmul_gflops_fp32"] = round(gflops(torch.float32, seconds=args.matmul_seconds), 1)
    # 512 for bf16: without native bf16 one 2048^3 product takes a minute
    out["matmul_gflops_bf16"] = round(gflops(torch.bfloat16, n=512, seconds=args.matmul_seconds * 2 / 3), 2)
    objective = Objective(TrainConfig())
    for arch in ("seed", "conv", "mlp"):
        model = VAE(build_configs({"arch": arch}, 28, 1)[0])
        x = torch.rand(128, 1, 28, 28)
        with FlopCounterMode(display=False) as fc:
            objective(model, model(x), x, 0.0).loss.backward()
        per_image = fc.get_total_flops() / 128 / 1e9
        out[arch] = {"gflop_per_training_image": round(per_image, 4),
                     "limit_images_per_second_fp32": round(out["matmul_gflops_fp32"] / per_image, 1),
                     "limit_images_per_second_bf16": round(out["matmul_gflops_bf16"] / per_image, 1)}  # fmt: skip
    harness.log(f"roofline: {out}")
    return out


def mode_profile(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    tr = harness.make_trainer(harness.load_fmnist(args.data_dir), {"arch": args.arch}, "bench-profile")
    tr.train_steps(harness.WARMUP)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr.train_steps(args.profile_steps)
    wall = (time.perf_counter() - t0) / args.profile_steps
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    top = [{"op": e.key, "calls_per_step": e.count / args.profile_steps,
            "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / args.profile_steps, 2),
            "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:15]]  # fmt: skip
    for r in top[:8]:
        harness.log(f"profile {r['op']}: {r['self_cpu_ms_per_step']} ms/step ({r['share']:.0%})")
    return {"arch": args.arch, "steps": args.profile_steps, "wall_ms_per_step_profiled": round(wall * 1000, 1), "top_ops": top}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--matmul-seconds", type=float, default=3.0, help="roofline: seconds of fp32 matmuls")
    p.add_argument("--profile-steps", type=int, default=10, help="profile: profiled steps")
    p.add_argument("--arch", default="seed", help="profile: the model's arch (default seed)")


MODES = {"roofline": mode_roofline, "profile": mode_profile}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "roofline,profile", add_arguments))
