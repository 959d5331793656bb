"""This checkout against an earlier commit, side by side in one run: start-up (``vae --help``) and
training speed (images/s of ``vae train --max-steps N`` with the same flags), rounds alternating the
two source trees under the same Python, so that the machine's noise falls on both.

Run by hand, on a quiet machine (never in CI)::

    python benchmarks/bench_versions.py --ref 44be421 --data-dir /path/to/data \\
        --folder /path/to/colour-folder --out benchmarks/results/bench_versions.json

The earlier commit is checked out into a temporary git worktree (removed at the end). The
training flags are pinned so that both versions build the same model (``--val-size 0`` is left
out: an older tree may not know it). Fashion-MNIST uses the defaults of both; the colour folder
is trained twice: with each tree's own defaults and with the former colour recipe pinned by flags.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness

COLOUR_FLAGS = ["--arch", "conv", "--likelihood", "gaussian", "--widths", "16,32,64", "--latent-dim", "32", "--hidden", "512"]


def _startup(src: Path, home: Path) -> float:
    r = harness.run_measured([sys.executable, "-m", "vaecli", "--help"], env=harness.vae_env(home, src=src))
    return float(r["wall_s"]) if r["rc"] == 0 else 0.0


def _train(src: Path, home: Path, data: list[str], flags: list[str], steps: int, data_dir: str | None) -> float:
    argv = [
        sys.executable,
        "-m",
        "vaecli",
        "train",
        *data,
        "--name",
        "bv",
        "--overwrite",
        "--json",
        "-q",
        "--max-steps",
        str(steps),
        *flags,
    ]
    r = harness.run_measured(argv, env=harness.vae_env(home, data_dir, src=src))
    if r["rc"] != 0:
        harness.log(f"train failed ({src}): {r['stderr_tail'][-300:]}")
    return harness.images_per_second({"result": harness.last_json(r["stdout"])})


def versions(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Alternating rounds of start-up and training speed, the earlier commit's tree against this one's."""
    root = harness.ROOT
    sha = subprocess.run(["git", "rev-parse", args.ref], cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    sets: list[tuple[str, list[str], list[str]]] = [("fmnist_default", ["--data", "fashion-mnist"], [])]
    if args.folder:
        sets.append(("colour_default", ["--data", args.folder], []))  # each tree's own default for the folder
        sets.append(("colour_former_recipe", ["--data", args.folder], COLOUR_FLAGS))
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), sha], cwd=root, check=True, capture_output=True)
        trees = {"before": before / "src", "after": harness.SRC}
        res: dict[str, Any] = {"startup_s": {k: [] for k in trees}, **{s: {k: [] for k in trees} for s, _, _ in sets}}
        try:
            for rnd in range(args.rounds):
                order = list(trees) if rnd % 2 == 0 else list(trees)[::-1]
                for k in order:
                    res["startup_s"][k] += [_startup(trees[k], home) for _ in range(args.startup_repeat)]
                for name, data, flags in sets:
                    for k in order:
                        ips = _train(trees[k], home, data, flags, args.steps, args.data_dir)
                        res[name][k].append(ips)
                        harness.log(f"round {rnd + 1} {name} {k}: {ips:.0f} img/s")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=root, capture_output=True)
    summary: dict[str, Any] = {}
    for key, vals in res.items():
        b, a = harness.median(vals["before"], 3), harness.median(vals["after"], 3)
        summary[key] = {"before": b, "after": a, "after_over_before": round(a / b, 3) if b else None}
    return {"before": sha, "after": head, "steps": args.steps, "rounds": args.rounds, "summary": summary, "raw": res}


MODES: dict[str, harness.Mode] = {"versions": versions}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--folder", default=None, help="a colour image folder (optional)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--startup-repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)


if __name__ == "__main__":
    raise SystemExit(harness.main(__doc__, MODES, "versions", add_arguments))
