"""The cost of keeping the last finite state in memory (the rollback after a non-finite loss), as JSON.

Every ``vaecli.train.trainer.SNAPSHOT_STEPS`` steps, ``Trainer.fit`` copies the weights, the Adam
moments, the moving average and the running sums (``vaecli.train.health.Snapshot``), so that a
non-finite step can be rolled back. This measures what that costs, in one process, on the
default Fashion-MNIST model and the default 64 px colour model (the rule's defaults for the data,
``vaecli.train.recipe.build_configs``), both fp32 on the CPU::

    python benchmarks/bench_recovery.py --data-dir /path/to/data --out benchmarks/results/bench_recovery.json

(about 3 minutes on 2 busy cores).

* ``recovery``: one trainer per variant (a copy every 10, 100, 1000 steps, and without: no copy
  after the first, which falls in the warm-up), ``--rounds`` interleaved rounds (the order turns
  each round) of ``Trainer.fit`` with ``max_steps`` (the loop of ``vae train``, control checks
  included: ``Trainer.train_steps`` makes no copies); images/s after the 5 warm-up steps of each
  round, and the ratio to "without" in the same round (median of the per-round ratios).
  Each copy is also timed where it happens (``Snapshot.take`` wrapped with a clock; the copy itself
  is unchanged), which gives the cost at any interval k far less disturbed by a shared machine than the
  rounds are: copy time / (k x step time), the step time from the "without" rounds.

The colour data is ``--colour``: a folder of images (default: ``noto-emoji-64`` under the data
dir when it is there), or ``synthetic`` (smooth random 64 px colour images made in memory).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness

WITHOUT = 10**12  # an interval no run reaches: the copy taken at the first step is the only one


@contextlib.contextmanager
def timed_copies() -> Iterator[list[dict[str, Any]]]:
    """Every ``Snapshot.take`` while inside: its global step, seconds, whether it copied, bytes copied."""
    import torch

    from vaecli.train import health

    events: list[dict[str, Any]] = []
    take = health.Snapshot.take

    def timed(self: Any, tensors: Any, step: int) -> bool:
        t = time.perf_counter()
        copied = take(self, tensors, step)
        if tensors and tensors[0].is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        events.append({"step": step, "seconds": seconds, "copied": copied, "bytes": sum(x.numel() * x.element_size() for x in tensors)})
        return copied

    health.Snapshot.take = timed  # type: ignore[method-assign]
    try:
        yield events
    finally:
        health.Snapshot.take = take  # type: ignore[method-assign]


def synthetic_colour(n: int = 700, size: int = 64, seed: int = 0) -> tuple[Any, Any]:
    """Smooth random colour images (8 x 8 noise, upsampled bilinearly) as (train, test) ImageData."""
    import torch
    import torch.nn.functional as F

    from vaecli.data import ImageData

    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    cut = n * 6 // 7
    return ImageData(images[:cut].contiguous()), ImageData(images[cut:].contiguous())


def colour_data(args: argparse.Namespace) -> tuple[str, tuple[Any, Any]]:
    """(name, (train, test)) of the colour data: ``--colour``, a folder or ``synthetic``."""
    from vaecli.config import DataConfig
    from vaecli.data import load_data

    folder = args.colour or str(Path(args.data_dir) / "noto-emoji-64")
    if folder == "synthetic" or not Path(folder).is_dir():
        return "synthetic-64-rgb", synthetic_colour()
    train, test, _ = load_data(DataConfig(name=folder, image_size=64, channels=3))
    return folder, (train, test)


def measure(name: str, data: tuple[Any, Any], data_name: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """The A/B rounds of one model (see the module docstring)."""
    from vaecli.train import trainer as training

    variants = {"without": WITHOUT, **{f"every_{k}": k for k in args.intervals}}
    given = {"max_steps": harness.WARMUP + steps}
    trainers = {v: harness.make_trainer(data, given, f"recovery-{name}-{v}", data_name=data_name) for v in variants}
    cfg = next(iter(trainers.values())).cfg
    ips: dict[str, list[float]] = {v: [] for v in variants}
    copies: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}  # every copy of the variant's trainer
    timed: dict[str, int] = {v: 0 for v in variants}  # of them, those inside the timed steps
    chosen = training.SNAPSHOT_STEPS
    try:
        with timed_copies() as events:
            for r in range(args.rounds):
                order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
                for v in order:
                    training.SNAPSHOT_STEPS = variants[v]
                    tr, start, first = trainers[v], trainers[v].state.global_step, len(events)
                    ips[v].append(float(tr.fit().images_per_second or 0.0))
                    new = [e for e in events[first:] if e["copied"]]
                    copies[v] += new
                    timed[v] += sum(e["step"] - start >= harness.WARMUP for e in new)
                harness.log(f"recovery {name} round {r + 1}: " + ", ".join(f"{v} {ips[v][-1]:.0f}" for v in variants) + " img/s")
    finally:
        training.SNAPSHOT_STEPS = chosen
    steady = [e["seconds"] for v in variants for e in copies[v][1:]]  # a trainer's first copy also allocates the buffers
    copy_s = statistics.median(steady) if steady else 0.0
    first = next((c[0] for c in copies.values() if c), None)
    step_s = cfg.train.batch_size / statistics.median(ips["without"])
    out: dict[str, Any] = {
        "data": data_name, "model": cfg.model.to_dict(), "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
        "rounds": args.rounds, "steps_timed_per_round": steps, "copy_mib": round(first["bytes"] / 2**20, 2) if first else None,
        "copy_ms_median": round(copy_s * 1000, 3), "copies_timed_for_the_median": len(steady), "step_ms_without": round(step_s * 1000, 3), "variants": {},
    }  # fmt: skip
    for v, k in variants.items():
        ratios = [a / b for a, b in zip(ips[v], ips["without"]) if b]
        row: dict[str, Any] = {"interval": None if k == WITHOUT else k, "images_per_second": [round(x, 1) for x in ips[v]],
                               "median_images_per_second": round(statistics.median(ips[v]), 1),
                               "copies_in_timed_steps": timed[v], "ratio_to_without_per_round": [round(x, 4) for x in ratios],
                               "median_ratio_to_without": round(statistics.median(ratios), 4)}  # fmt: skip
        if k != WITHOUT:
            row["measured_cost_percent"] = round(100 * (1 - row["median_ratio_to_without"]), 2)
            row["cost_from_copy_time_percent"] = round(100 * copy_s / (k * step_s), 3)
        out["variants"][v] = row
    at = out["variants"].get(f"every_{chosen}")
    if at:
        out["chosen_interval"] = {"steps": chosen, "cost_from_copy_time_percent": at["cost_from_copy_time_percent"],
                                  "measured_cost_percent": at["measured_cost_percent"], "target_percent": 3.0,
                                  "met": at["cost_from_copy_time_percent"] < 3.0}  # fmt: skip
    return out


def mode_recovery(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from vaecli.train import trainer as training

    out: dict[str, Any] = {"snapshot_steps_in_vaecli": training.SNAPSHOT_STEPS, "intervals": args.intervals}
    if "fmnist" in args.models:
        out["fmnist"] = measure("fmnist", harness.load_fmnist(args.data_dir), "fashion-mnist", args.fmnist_steps, args)
    if "colour64" in args.models:
        name, data = colour_data(args)
        out["colour64"] = measure("colour64", data, name, args.colour_steps, args)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of every variant")
    p.add_argument("--intervals", type=lambda s: [int(v) for v in s.split(",")], default=[10, 100, 1000], help="steps between copies")
    p.add_argument("--models", type=lambda s: s.split(","), default=["fmnist", "colour64"], help="fmnist,colour64")
    p.add_argument("--fmnist-steps", type=int, default=200, help="timed steps per round, Fashion-MNIST model")
    p.add_argument("--colour-steps", type=int, default=30, help="timed steps per round, 64 px colour model")
    p.add_argument("--colour", default=None, help="colour data: a folder of images or 'synthetic' (default: DATA_DIR/noto-emoji-64)")


MODES = {"recovery": mode_recovery}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "recovery", add_arguments))
