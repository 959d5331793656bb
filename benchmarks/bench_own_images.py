"""Own images trained for real: held-out reconstructions of a colour folder, scored in pixel space.

The protocol: every ``--every``-th file (sorted) of ``--folder`` is held out of training; each
configuration trains with ``vae train --data REST --time-budget T`` (the defaults plus the
configuration's flags), then ``vae reconstruct HELD --out-dir`` reconstructs the held-out files,
which are scored against the originals converted by the run's rule (composited on white, resized):
mean PSNR and MSE, plus the run's test bits/dim (or nats), best and last epochs. Every configuration
runs in the same invocation, one after the other, so they compare side by side. Run by hand::

    python benchmarks/bench_own_images.py --folder ../shared/data/noto-emoji-64 --budgets 120,600 \\
        --config default= --config gaussian16="--likelihood gaussian --widths 16,32,64" \\
        --out benchmarks/results/bench_own_images.json

``--clock cpu --threads 1`` counts the budget in CPU seconds of one thread (for comparing recipes on a
shared machine); the default ``wall`` is what a user's ``--time-budget`` means.

``--samples N`` also scores generation, as `vae sample` draws it: for each prior of ``--priors``
(``normal`` = N(0, I); ``gmm`` and ``flow`` fitted in turn with `vae fit-prior`), FD, KID, precision
and recall of N samples against the run's training files in ``--features`` (default the MobileNetV2
ImageNet space), with 64-sample grids written to ``--images DIR`` to look at::

    python benchmarks/bench_own_images.py --folder ../shared/data/noto-emoji-64 --budgets 120,600 \
        --samples 2000 --images /tmp/grids --config spatial= --config flat128="--arch conv --latent-dim 128 --blocks 1" \
        --out benchmarks/results/bench_generation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vaecli.eval.inference import SAMPLE_GROUP_TEMPERATURE  # noqa: E402  (after the path: the checkout's vaecli)

CPU_CLOCK = (
    "import sys, time, torch; torch.set_num_threads({threads}); from vaecli.train import session; "
    "session.clock = time.process_time; "
    "from vaecli.cli import main; sys.argv = ['vae', *sys.argv[1:]]; main()"
)


def split_folder(folder: Path, every: int, work: Path) -> tuple[Path, Path, list[Path]]:
    """Symlink every ``every``-th image (sorted) into HELD, the rest into REST (the folder is only read)."""
    from vaecli.data import list_images

    rest, held = work / "rest", work / "held"
    rest.mkdir(parents=True)
    held.mkdir()
    files = list_images(folder)
    held_files = []
    for i, f in enumerate(files):
        target = held if i % every == 0 else rest
        (target / f.name).symlink_to(f.resolve())
        if target is held:
            held_files.append(f)
    return rest, held, held_files


def vae(args: list[str], env: dict[str, str], clock: str, threads: int) -> subprocess.CompletedProcess[str]:
    """Run ``vae ARGS`` in a subprocess (``--clock cpu``: the budget in CPU seconds of ``threads`` threads)."""
    code = (
        CPU_CLOCK.format(threads=threads)
        if clock == "cpu"
        else "from vaecli.cli import main; import sys; sys.argv=['vae', *sys.argv[1:]]; main()"
    )
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)


def psnr_of(run: Path, held_files: list[Path], out_dir: Path) -> dict[str, float]:
    """Mean PSNR (dB, per image then averaged) and MSE of the reconstructions against the originals."""
    import torch

    from vaecli.data import load_image
    from vaecli.runs.store import read_config

    cfg = read_config(run)
    m = cfg.model
    psnrs, mses = [], []
    for f in held_files:
        orig = load_image(f, m.channels, m.image_size, cfg.data.fit).float() / 255
        rec = load_image(out_dir / (f.stem + ".png"), m.channels, m.image_size, cfg.data.fit).float() / 255
        mse = float((orig - rec).pow(2).mean())
        mses.append(mse)
        psnrs.append(10 * math.log10(1 / max(mse, 1e-10)))
    return {
        "psnr_db": sum(psnrs) / len(psnrs),
        "mse": sum(mses) / len(mses),
        "images": len(held_files),
        "psnr_median_db": float(torch.tensor(psnrs).median()),
    }


def run_config(
    name: str, flags: str, budget: float, rest: Path, held: Path, held_files: list[Path], home: Path, args: argparse.Namespace
) -> dict:
    env = {**os.environ, "VAE_HOME": str(home), "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    run_name = f"{name}-{int(budget)}"
    t0 = time.perf_counter()
    cmd = [
        "train",
        "--data",
        str(rest),
        "--time-budget",
        str(budget),
        "--name",
        run_name,
        "--overwrite",
        "--json",
        "-q",
        *shlex.split(flags),
    ]
    tr = vae(cmd, env, args.clock, args.threads)
    wall = time.perf_counter() - t0
    if tr.returncode != 0:
        return {"config": name, "flags": flags, "budget": budget, "error": tr.stderr.strip().splitlines()[-1:] or tr.stdout[-300:]}
    out_dir = home / f"recon-{run_name}"
    rc = vae(["reconstruct", str(held), "--out-dir", str(out_dir), "--run", run_name], env, "wall", args.threads)
    if rc.returncode != 0:
        return {"config": name, "flags": flags, "budget": budget, "error": rc.stderr.strip()}
    run = home / run_name
    summary = json.loads((run / "summary.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    generation = {}
    temps = [None] if cfg["model"]["arch"] != "hvae" else [float(t) for t in args.group_temperatures.split(",")]
    for kind in [k for k in args.priors.split(",") if k] if args.samples else []:
        for i, t in enumerate(temps):  # a hierarchical model: each group temperature, the prior fitted once
            generation[kind if t is None else f"{kind}@{t:g}"] = samples_of(run_name, kind, env, args, t, fit=i == 0)
    return {
        "config": name, "flags": flags, "budget_s": budget, "clock": args.clock, "wall_s": round(wall, 1),
        **psnr_of(run, held_files, out_dir),
        "test": summary["test"], "likelihood": summary.get("likelihood"), "best": summary.get("best"),
        "last": summary.get("last"), "stopped": summary.get("stopped"), "epochs_done": summary.get("epochs_done"),
        "images_per_second": summary.get("images_per_second"), "notices": [n["message"] for n in summary.get("notices", [])],
        "model": cfg["model"], "train": {k: cfg["train"][k] for k in ("batch_size", "lr", "warmup_steps", "ema", "precision")},
        "samples": generation,
    }  # fmt: skip


def samples_of(
    run_name: str, kind: str, env: dict[str, str], args: argparse.Namespace, group_temperature: float | None = None, fit: bool = True
) -> dict:
    """Generation as `vae sample` draws it with prior ``kind`` (normal: N(0, I); gmm / flow: fitted
    first with `vae fit-prior --kind KIND`): FD, KID, precision and recall of ``--samples`` samples
    against the run's training files in ``--features``, the seconds the fit took, and a grid of 64
    samples (``--images DIR``); a hierarchical model's groups at ``group_temperature``."""
    out: dict = {}
    temp = [] if group_temperature is None else ["--group-temperature", f"{group_temperature:g}"]
    if kind != "normal" and fit:
        t0 = time.perf_counter()
        fit = vae(["fit-prior", "--run", run_name, "--kind", kind, "--json"], env, "wall", args.threads)
        if fit.returncode != 0:
            return {"error": fit.stderr.strip().splitlines()[-1:]}
        info = json.loads(fit.stdout)
        out.update(fit_seconds=round(time.perf_counter() - t0, 1), prior=info.get("config"), chosen=info.get("chosen"))
    choice = "normal" if kind == "normal" else "fitted"
    ev = vae(["eval-samples", "--run", run_name, "-n", str(args.samples), "--split", "train", "--features", args.features,
              "--prior", choice, "--json", *temp], env, "wall", args.threads)  # fmt: skip
    if ev.returncode != 0:
        return {**out, "error": ev.stderr.strip().splitlines()[-1:]}
    res = json.loads(ev.stdout)
    keep = ("n", "features", "fd", "kid", "kid_std", "precision", "recall", "k", "reconstructions", "memorisation")
    out.update({k: res[k] for k in keep if k in res})
    if args.images:
        Path(args.images).mkdir(parents=True, exist_ok=True)
        grid = Path(args.images) / f"{run_name}-{kind}{'' if group_temperature is None else f'-t{group_temperature:g}'}-samples.png"
        vae(["sample", "--run", run_name, "-n", "64", "--prior", choice, "--seed", "1", "-o", str(grid), *temp], env, "wall", args.threads)
        out["grid"] = str(grid)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--budgets", default="120,600")
    p.add_argument("--config", action="append", default=[], help="NAME=FLAGS (FLAGS: vae train options, '' = the defaults)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--out", default="bench_own_images.json")
    p.add_argument("--samples", type=int, default=0, help="score generation: N samples per prior against the training files (0: off)")
    p.add_argument("--priors", default="normal,gmm,flow", help="with --samples: the priors scored (normal, gmm, flow; fitted in turn)")
    p.add_argument("--features", default="mobilenet-v2-imagenet", help="with --samples: the feature space")
    p.add_argument(
        "--group-temperatures",
        default=f"{SAMPLE_GROUP_TEMPERATURE:g}",
        help="with --samples, hierarchical runs: the group temperatures scored (default: what vae sample draws)",
    )
    p.add_argument("--images", default=None, help="with --samples: a folder for 64-sample grids of every run and prior")
    p.add_argument("--keep", action="store_true", help="keep the work folder (the split, the runs, the reconstructions) and print its path")
    args = p.parse_args()
    import torch

    from vaecli.device import cpu_has_bf16

    configs = [c.split("=", 1) for c in (args.config or ["default="])]
    work = Path(tempfile.mkdtemp(prefix="vae-own-"))
    rest, held, held_files = split_folder(Path(args.folder).expanduser(), args.every, work)
    results = []
    for budget in (float(b) for b in args.budgets.split(",")):
        for name, flags in configs:
            res = run_config(name, flags, budget, rest, held, held_files, work / "runs", args)
            brief = {k: res.get(k) for k in ("config", "budget_s", "psnr_db", "test", "images_per_second", "error")}
            brief["fd"] = {kind: s.get("fd") for kind, s in res.get("samples", {}).items()}
            print(json.dumps(brief), flush=True)
            results.append(res)
    machine = {"cpu": _cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_bf16(),
               "cores": os.cpu_count(), "torch": torch.__version__, "load_average": os.getloadavg()}  # fmt: skip
    out = {"protocol": f"every {args.every}th file of {Path(args.folder).name} held out ({len(held_files)} files)", "machine": machine,
           "command": " ".join(shlex.quote(a) for a in sys.argv), "results": results}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if args.keep:
        print(f"kept {work} (runs under {work / 'runs'})", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
