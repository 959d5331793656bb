"""Start-up time and peak memory of ``vae`` commands, as JSON.

Run by hand (never in CI), from the repository root::

    python benchmarks/bench_startup.py --data-dir /path/to/data --out bench_startup_rss.json

Modes (``--modes``; default ``startup,rss``):

* ``startup``: wall time of ``vae --help``; ``vae sample -n 64`` on a trained run against
  ``python -c "import torch, torchvision"``, alternating, ``--repeat`` times each.
* ``rss``: peak RSS of ``vae train`` on the full data (``--rss-steps`` steps, the default model),
  the child's own ``VmHWM`` (see ``harness.run_measured``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import harness


def mode_startup(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    env = harness.vae_env(home, args.data_dir)
    vae = harness.vae_command(args)
    helps = [harness.run_measured([*vae, "--help"], env=env)["wall_s"] for _ in range(args.repeat)]
    out: dict[str, Any] = {"vae_help_s": helps, "vae_help_median_s": harness.median(helps, 3)}
    trained = harness.train_json(args, home, "bench-sample", ["--max-steps", "20"])
    if trained["rc"] != 0:
        out["sample"] = {"skipped": "could not train a run to sample from", "stderr": trained["stderr_tail"][-300:]}
        return out
    cmd = ["sample", "--run", "bench-sample", "-n", "64", "-o", str(home / "samples.png")]
    samples, imports = [], []
    for _ in range(args.repeat):  # alternate: the import baseline, then sample
        imports.append(harness.run_measured([sys.executable, "-c", "import torch, torchvision"])["wall_s"])
        r = harness.run_measured([*vae, *cmd], env=env)
        if r["rc"] != 0:
            out["sample"] = {"skipped": f"`vae {' '.join(cmd)}` failed", "stderr": r["stderr_tail"][-300:]}
            return out
        samples.append(r["wall_s"])
    out["sample"] = {"cmd": " ".join(cmd), "sample_s": samples, "import_torch_torchvision_s": imports,
                     "ratio_median": round(harness.median(samples, 3) / harness.median(imports, 3), 3)}  # fmt: skip
    return out


def mode_rss(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    r = harness.train_json(args, home, "bench-rss", ["--max-steps", str(args.rss_steps), *args.vae_args])
    return {"max_steps": args.rss_steps, "peak_rss_mib": r["peak_rss_mib"], "rc": r["rc"], "run": r}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=3, help="startup: repetitions")
    p.add_argument("--rss-steps", type=int, default=100, help="rss: --max-steps of the measured run")


MODES = {"startup": mode_startup, "rss": mode_rss}

if __name__ == "__main__":
    sys.exit(harness.main(__doc__, MODES, "startup,rss", add_arguments))
