"""The hierarchical VAE against the plain default on Fashion-MNIST, as JSON. Run by hand (never in CI)::

    python benchmarks/bench_hvae.py --mode iw --data-dir ../shared/data --cpu-seconds 1200 --out benchmarks/results/bench_hvae_iw.json
    python benchmarks/bench_hvae.py --mode elbo --data-dir ../shared/data --budgets 120,600 --out benchmarks/results/bench_hvae_fmnist.json

* ``iw``: binarised Fashion-MNIST (``--binarize``: x ~ Bernoulli(pixel) per batch, a fixed binarisation
  of the test set). Each configuration trains for the same CPU time, ``--cpu-seconds`` of one thread
  (``--time-budget`` counted on the process's CPU clock, ``torch.set_num_threads(1)``), the configurations
  in parallel, one core each; then ``vae eval-kl --iw-samples K`` on all 10,000 test images: the
  importance-weighted bound -log p(x) in nats (Burda et al. 2016) with its standard error.
* ``elbo``: Fashion-MNIST's continuous pixels, ``vae train --time-budget T`` (wall clock; ``--clock cpu``:
  CPU seconds of ``--threads`` threads, 240 = 120 s of 2 cores, fair on a busy machine) per budget, one configuration after the other: test -ELBO in BCE nats, images per second, and the
  samples' FD, KID, precision and recall in the shipped Fashion-MNIST net's features (``vae eval-samples``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from bench_own_images import CPU_CLOCK, ROOT, vae

CONFIGS = {"plain": "", "hvae": "--arch hvae"}


def _env(home: Path, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "VAE_HOME": str(home),
        "VAE_DATA_DIR": args.data_dir,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def _popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``vae ARGV`` on one thread, its budget on the CPU clock."""
    code = CPU_CLOCK.format(threads=1)
    return subprocess.Popen([sys.executable, "-c", code, *argv], env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_all(procs: dict[str, subprocess.Popen[str]]) -> dict[str, tuple[int, str, str]]:
    return {name: (p.wait(), *p.communicate()) for name, p in procs.items()}


def mode_iw(args: argparse.Namespace, home: Path) -> dict:
    env = _env(home, args)
    budget = str(args.cpu_seconds)
    procs = {
        name: _popen(
            [
                "train",
                "--data",
                "fashion-mnist",
                "--binarize",
                "--time-budget",
                budget,
                "--name",
                f"iw-{name}",
                "--json",
                "-q",
                *flags.split(),
            ],
            env,
        )  # fmt: skip
        for name, flags in CONFIGS.items()
    }
    trained = _wait_all(procs)
    out: dict = {"cpu_seconds": args.cpu_seconds, "threads": 1, "k": args.k}
    for name, (rc, _, err) in trained.items():
        if rc != 0:
            out[name] = {"error": err.strip().splitlines()[-1:]}
    t0 = time.perf_counter()
    evals = {
        name: _popen(["eval-kl", "--run", f"iw-{name}", "--iw-samples", str(args.k), "--json", "--batch-size", "100"], env)
        for name in CONFIGS
        if name not in out
    }
    for name, (rc, stdout, err) in _wait_all(evals).items():
        if rc != 0:
            out[name] = {"error": err.strip().splitlines()[-1:]}
            continue
        res = json.loads(stdout)
        summary = json.loads((home / f"iw-{name}" / "summary.json").read_text())
        out[name] = {
            "flags": CONFIGS[name], "iw_nll": res["iw_nll"], "iw_nll_stderr": res["iw_nll_stderr"], "neg_elbo": res["neg_elbo"],
            "kl": res["kl"], "groups": res.get("groups"), "images": res["images"], "epochs_done": summary.get("epochs_done"),
            "steps": summary.get("steps"), "model": json.loads((home / f"iw-{name}" / "config.json").read_text())["model"],
        }  # fmt: skip
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if "iw_nll" in out.get("plain", {}) and "iw_nll" in out.get("hvae", {}):
        out["hvae_minus_plain_nats"] = out["hvae"]["iw_nll"] - out["plain"]["iw_nll"]
    return out


def mode_elbo(args: argparse.Namespace, home: Path) -> dict:
    env = _env(home, args)
    rows = []
    for budget in args.budgets.split(","):
        for name, flags in CONFIGS.items():
            run = f"elbo-{name}-{budget}"
            tr = vae(
                ["train", "--data", "fashion-mnist", "--time-budget", budget, "--name", run, "--json", "-q", *flags.split()], env, "wall", 0
            )
            if tr.returncode != 0:
                rows.append({"config": name, "budget_s": float(budget), "error": tr.stderr.strip().splitlines()[-1:]})
                continue
            summary = json.loads((home / run / "summary.json").read_text())
            ev = vae(["eval-samples", "--run", run, "-n", str(args.samples), "--json"], env, "wall", 0)
            scores = json.loads(ev.stdout) if ev.returncode == 0 else {"error": ev.stderr.strip().splitlines()[-1:]}
            keep = ("features", "n", "fd", "kid", "kid_std", "precision", "recall", "reconstructions", "error")
            rows.append({
                "config": name, "flags": flags, "budget_s": float(budget), "test": summary["test"],
                "images_per_second": summary.get("images_per_second"), "epochs_done": summary.get("epochs_done"),
                "samples": {k: scores[k] for k in keep if k in scores},
                "model": json.loads((home / run / "config.json").read_text())["model"],
            })  # fmt: skip
            print(json.dumps(rows[-1])[:300], file=sys.stderr, flush=True)
    return {"rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("iw", "elbo"), required=True)
    p.add_argument("--data-dir", required=True, help="the folder holding FashionMNIST/raw")
    p.add_argument("--cpu-seconds", type=float, default=1200.0, help="iw: CPU seconds of one thread per configuration")
    p.add_argument("-k", type=int, default=200, help="iw: importance samples per test image")
    p.add_argument("--budgets", default="120,600", help="elbo: wall-clock --time-budget seconds")
    p.add_argument("--samples", type=int, default=10_000, help="elbo: samples scored against the test split")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="elbo: the budget on the wall clock or in CPU seconds")
    p.add_argument("--threads", type=int, default=2, help="elbo, --clock cpu: torch threads of each run")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hvae-") as tmp:
        t0 = time.perf_counter()
        res = (mode_iw if args.mode == "iw" else mode_elbo)(args, Path(tmp))
    res = {"mode": args.mode, "wall_s": round(time.perf_counter() - t0, 1), "configs": CONFIGS, **res}
    harness.write_json(args.out, res)  # with the machine block: the CPU, its bf16, the load
    print(json.dumps(res, indent=2)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
