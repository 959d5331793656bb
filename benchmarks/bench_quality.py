"""Quality at a training budget, and bf16 against fp32, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_quality.py --data-dir /path/to/data --budget 120 --quality-reference --out q120.json
    python benchmarks/bench_quality.py --data-dir /path/to/data --modes bf16 --bf16-steps 150 --out bf16.json

Modes (``--modes``; default ``quality``):

* ``quality``: ``vae train --time-budget T`` (the default model) and its test -ELBO; with
  ``--quality-reference`` also the plain recipe (benchmarks/reference.py) trained for the same wall
  time and scored the same way (``vaecli.eval.metrics.evaluate``: eval mode, one posterior sample per image).
* ``bf16``: ``vae train --max-steps S`` in fp32 and in bf16 (same seed) and the difference in test
  -ELBO (the bf16 safety check; slow where the CPU has no native bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import harness
import reference


def _scored(r: dict[str, Any]) -> dict[str, Any]:
    res = r["result"] or {}
    return {"test_neg_elbo": (res.get("test") or {}).get("neg_elbo"), "epochs": res.get("epochs"), "steps": res.get("steps"),
            "images_per_second": res.get("images_per_second"), "peak_rss_mib": r["peak_rss_mib"], "run": r}  # fmt: skip


def mode_quality(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"budget_s": args.budget}
    out["vaecli"] = _scored(
        harness.train_json(args, home, f"bench-q{int(args.budget)}", ["--time-budget", str(args.budget), *args.vae_args])
    )
    harness.log(f"quality vaecli {args.budget}s: test -ELBO {out['vaecli']['test_neg_elbo']}")
    if args.quality_reference:
        ref = reference.run(args.data_dir, seconds=args.budget)
        out["reference"] = {"test_neg_elbo": (ref["result"] or {}).get("test_neg_elbo"), "run": ref}
        harness.log(f"quality reference {args.budget}s: test -ELBO {out['reference']['test_neg_elbo']}")
    return out


def mode_bf16(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"max_steps": args.bf16_steps}
    for prec in ("fp32", "bf16"):
        out[prec] = _scored(
            harness.train_json(args, home, f"bench-{prec}", ["--max-steps", str(args.bf16_steps), "--precision", prec, *args.vae_args])
        )
        harness.log(f"bf16 check {prec}: test -ELBO {out[prec]['test_neg_elbo']} at {out[prec]['images_per_second']} img/s")
    a, b = out["fp32"]["test_neg_elbo"], out["bf16"]["test_neg_elbo"]
    out["abs_diff_nats"] = round(abs(a - b), 3) if a is not None and b is not None else None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=float, default=120.0, help="quality: --time-budget seconds")
    p.add_argument("--quality-reference", action="store_true", help="quality: also train the plain recipe for the budget")
    p.add_argument("--bf16-steps", type=int, default=100, help="bf16: --max-steps of each run")


MODES = {"quality": mode_quality, "bf16": mode_bf16}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "quality", add_arguments))
