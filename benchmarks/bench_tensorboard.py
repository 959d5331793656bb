"""What ``vae train --tensorboard`` costs: training images/s and wall seconds with and without it, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_tensorboard.py --data-dir /path/to/data --rounds 4 --epochs 1 --out benchmarks/results/bench_tensorboard.json
    python benchmarks/bench_tensorboard.py --data fashion-mnist-mini --rounds 3 --epochs 4   # a dry run in seconds

Mode ``tensorboard`` (the only one): in this one process, rounds that alternate the order of two
fresh runs of the default model for Fashion-MNIST (the rule's recipe, fp32, the CPU), ``--epochs``
whole epochs each (the hook works at epoch ends: scalars, a reconstruction and a sample grid every
epoch, hparams at the end), one with ``TrainConfig.tensorboard`` (``--tensorboard``), one without:

- ``images_per_second``: what ``vae train`` reports (training steps only; the evaluation at an
  epoch end, where the hook runs, is not counted);
- ``fit_seconds``: the wall seconds of the whole ``fit`` (evaluations, hooks, the test score, the
  files written), the cost a user waits for.

The costs are medians of per-round ratios (``1 - with / without`` for images/s, ``with / without
- 1`` for seconds; target under 2%); on a shared machine they carry its noise, so the seconds spent
in the hook's own methods are timed too (``hook_share_of_fit_seconds``: the cost without the noise). One run of each, untimed, goes first: torch.utils.tensorboard's
import (once per process) is not a cost per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness


def _timed(hook: Any, spent: list[float]) -> None:
    """Add the wall seconds of each call of the hook's methods to ``spent[0]``."""
    for method in ("on_fit_start", "on_epoch_end", "on_fit_end"):
        inner = getattr(hook, method)

        def timed(*a: Any, _inner: Any = inner) -> Any:
            t0 = time.perf_counter()
            try:
                return _inner(*a)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(hook, method, timed)


def _fit(data: tuple[Any, Any], epochs: int, logged: bool, name: str) -> tuple[float, float, float]:
    """One fresh run of ``epochs`` epochs: (images/s as vae train reports it, wall seconds of fit,
    seconds spent in the TensorBoard hook)."""
    from vaecli.train.hooks import TensorBoard

    given = {"epochs": epochs, "tensorboard": "tb" if logged else None, "log_images_every": 1}
    tr = harness.make_trainer(data, given, name)
    spent = [0.0]
    for hook in tr.hooks:
        if isinstance(hook, TensorBoard):
            _timed(hook, spent)
    t0 = time.perf_counter()
    res = tr.fit()
    return float(res.images_per_second or 0.0), time.perf_counter() - t0, spent[0]


def mode_tensorboard(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    data = harness.load_fmnist(args.data_dir)
    for logged in (False, True):  # untimed: the imports and first allocations
        _fit(data, 1, logged, "warm")
    ips: dict[str, list[float]] = {"without": [], "with": []}
    secs: dict[str, list[float]] = {"without": [], "with": []}
    hook: list[float] = []
    for i in range(args.rounds):
        order = ("without", "with") if i % 2 == 0 else ("with", "without")
        for k in order:
            rate, wall, in_hook = _fit(data, args.epochs, k == "with", f"bench-tb-{k}")
            ips[k].append(rate)
            secs[k].append(wall)
            if k == "with":
                hook.append(in_hook)
        harness.log(f"tensorboard round {i + 1}: " + ", ".join(f"{k} {ips[k][-1]:.0f} img/s {secs[k][-1]:.2f} s" for k in ips))
    ips_cost = [1 - w / wo for w, wo in zip(ips["with"], ips["without"]) if wo]
    wall_cost = [w / wo - 1 for w, wo in zip(secs["with"], secs["without"]) if wo]
    tr = harness.make_trainer(data, {"epochs": 1}, "bench-tb-shape")
    out: dict[str, Any] = {
        "model": tr.cfg.model.to_dict(),
        "batch_size": tr.cfg.train.batch_size,
        "train_images": len(tr.train_data),
        "val_images": len(tr.val_data),
        "epochs_per_run": args.epochs,
        "rounds": args.rounds,
        "per_round": {
            "images_per_second": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
            "fit_seconds": {k: [round(v, 3) for v in vs] for k, vs in secs.items()},
        },  # fmt: skip
        "images_per_second_without": round(statistics.median(ips["without"]), 1),
        "images_per_second_with": round(statistics.median(ips["with"]), 1),
        "fit_seconds_without": round(statistics.median(secs["without"]), 3),
        "fit_seconds_with": round(statistics.median(secs["with"]), 3),
        "cost_images_per_second": round(statistics.median(ips_cost), 4),
        "cost_fit_seconds": round(statistics.median(wall_cost), 4),
        "hook_seconds_per_run": round(statistics.median(hook), 3),
        "hook_share_of_fit_seconds": round(statistics.median(h / w for h, w in zip(hook, secs["with"])), 4),
        "cost_images_per_second_per_round": [round(c, 4) for c in ips_cost],
        "cost_fit_seconds_per_round": [round(c, 4) for c in wall_cost],
    }
    harness.log(f"tensorboard: img/s cost {out['cost_images_per_second']:.2%}, fit seconds cost {out['cost_fit_seconds']:.2%}, "
                f"in the hook {out['hook_share_of_fit_seconds']:.2%} of the fit")  # fmt: skip
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=4, help="rounds, each one run with and one without --tensorboard")
    p.add_argument("--epochs", type=int, default=1, help="whole epochs per run")


MODES = {"tensorboard": mode_tensorboard}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "tensorboard", add_arguments))
