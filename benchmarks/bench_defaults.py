"""How the defaults are chosen: quality at equal wall time, by hand (never in CI).

Each row is one ``vae train --time-budget SECONDS --json`` in a fresh process (wall-clock budget,
the CLI's own threads), taken under ``flock LOCK`` so that two timing jobs never overlap on a
shared machine. One run of the script produces, in one JSON file:

* ``fmnist``: the Fashion-MNIST sweep at ``--budget`` seconds (arch, widths, batch, lr, warm-up,
  latent size), then the best ``--finalists`` of it again at ``--long`` seconds;
* ``colour``: a colour folder (noto-emoji 64 px RGB by default): today's pinned recipe against
  the new defaults and the variants, with the BCE floor of the test split (the test pixels' own
  entropy, the best any Bernoulli decoder can do on continuous pixels) and each run's excess over
  it. A Gaussian-likelihood run is scored in BCE nats too: the BCE of its decoder means plus the
  KL, one posterior sample per test image, eval mode (as ``test.neg_elbo`` is for Bernoulli runs).

Usage::

    VAE_HOME=/tmp/vh python benchmarks/bench_defaults.py --data-dir /work/shared/data \\
        --folder /work/shared/data/noto-emoji-64 --out benchmarks/results/bench_defaults.json

``--parts fmnist,long,colour`` selects parts; ``--only TAG,...`` selects rows; rows already in
``--out`` are kept and re-used (``--rerun`` to redo them), so a sweep can be run in pieces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# tag -> vae train flags (beyond --data and --time-budget). "default" rows pass no model/optimiser flags.
FMNIST: dict[str, list[str]] = {
    "default": [],
    "conv_today": ["--arch", "conv", "--widths", "16,32", "--hidden", "512", "--latent-dim", "32", "--batch-size", "128",
                   "--lr", "5e-3", "--warmup-steps", "0"],
    "mlp512x2_b256_lr2e-3": ["--arch", "mlp", "--widths", "512,512", "--batch-size", "256", "--lr", "2e-3", "--warmup-steps", "0"],
    "mlp512x2_b256_lr3e-3_wu200": ["--arch", "mlp", "--widths", "512,512", "--batch-size", "256", "--lr", "3e-3", "--warmup-steps", "200"],
    "mlp1024x2_b256_lr2e-3": ["--arch", "mlp", "--widths", "1024,1024", "--batch-size", "256", "--lr", "2e-3", "--warmup-steps", "0"],
    "mlp512x2_b128_lr2e-3": ["--arch", "mlp", "--widths", "512,512", "--batch-size", "128", "--lr", "2e-3", "--warmup-steps", "0"],
    "mlp512x2_b256_lr2e-3_z64": ["--arch", "mlp", "--widths", "512,512", "--batch-size", "256", "--lr", "2e-3", "--warmup-steps", "0",
                                 "--latent-dim", "64"],
    "mlp512x2_b512_lr3e-3": ["--arch", "mlp", "--widths", "512,512", "--batch-size", "512", "--lr", "3e-3", "--warmup-steps", "0"],
    "mlp512x3_b256_lr2e-3": ["--arch", "mlp", "--widths", "512,512,512", "--batch-size", "256", "--lr", "2e-3", "--warmup-steps", "0"],
    "convmlp16-32_b256_lr2e-3": ["--arch", "conv-mlp", "--widths", "16,32", "--hidden", "512", "--batch-size", "256", "--lr", "2e-3",
                                 "--warmup-steps", "0"],
}  # fmt: skip

EMOJI = ["--image-size", "64", "--channels", "3"]
COLOUR: dict[str, list[str]] = {
    "pinned_today": [*EMOJI, "--arch", "conv", "--widths", "16,32", "--hidden", "512", "--latent-dim", "32", "--batch-size", "128",
                     "--lr", "5e-3", "--warmup-steps", "0"],
    "default": [*EMOJI],
    "conv32-64-128_b64_lr2e-3_wu100": [*EMOJI, "--arch", "conv", "--widths", "32,64,128", "--hidden", "512", "--latent-dim", "32",
                                       "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100"],
    "mlp512x2_b64_lr2e-3_wu100": [*EMOJI, "--arch", "mlp", "--widths", "512,512", "--latent-dim", "32",
                                  "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100"],
    "conv16-32-64_b64_lr3e-3_wu100": [*EMOJI, "--arch", "conv", "--widths", "16,32,64", "--hidden", "512", "--latent-dim", "32",
                                      "--batch-size", "64", "--lr", "3e-3", "--warmup-steps", "100"],
    "conv16-32-64_b64_lr3e-3_wu100_z64": [*EMOJI, "--arch", "conv", "--widths", "16,32,64", "--hidden", "512", "--latent-dim", "64",
                                          "--batch-size", "64", "--lr", "3e-3", "--warmup-steps", "100"],
    "conv16-32-64_b64_lr3e-3_wu100_gauss": [*EMOJI, "--arch", "conv", "--widths", "16,32,64", "--hidden", "512", "--latent-dim", "32",
                                          "--batch-size", "64", "--lr", "3e-3", "--warmup-steps", "100", "--likelihood", "gaussian"],
    "conv16-32-64_b64_lr3e-3_wu100_group": [*EMOJI, "--arch", "conv", "--widths", "16,32,64", "--hidden", "512", "--latent-dim", "32",
                                          "--batch-size", "64", "--lr", "3e-3", "--warmup-steps", "100", "--norm", "group"],
    "conv16-32-64_b32_lr3e-3_wu100": [*EMOJI, "--arch", "conv", "--widths", "16,32,64", "--hidden", "512", "--latent-dim", "32",
                                      "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "100"],
    "conv32-64-128_b64_lr2e-3_wu100_gauss": [*EMOJI, "--arch", "conv", "--widths", "32,64,128", "--hidden", "512", "--latent-dim", "32",
                                             "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100", "--likelihood", "gaussian"],
    "conv32-64-128_b64_lr2e-3_wu100_group": [*EMOJI, "--arch", "conv", "--widths", "32,64,128", "--hidden", "512", "--latent-dim", "32",
                                             "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100", "--norm", "group"],
    "conv32-64-128_b64_lr2e-3_wu100_z64": [*EMOJI, "--arch", "conv", "--widths", "32,64,128", "--hidden", "512", "--latent-dim", "64",
                                           "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100"],
    "conv32-64-128_b128_lr2e-3_wu100": [*EMOJI, "--arch", "conv", "--widths", "32,64,128", "--hidden", "512", "--latent-dim", "32",
                                        "--batch-size", "128", "--lr", "2e-3", "--warmup-steps", "100"],
}  # fmt: skip


def machine_info() -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text(errors="ignore") if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "").split()
    return {
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), platform.processor()),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "note": "shared machine: other developers' unit tests ran at times; timing runs were serialised by a lock",
    }  # fmt: skip


def train(
    tag: str,
    data: list[str],
    flags: list[str],
    budget: float,
    lock: str | None,
    clock: str,
) -> dict[str, Any]:
    """One ``vae train`` run under the lock; returns its JSON summary plus the command. ``clock``
    cpu: the budget is CPU seconds of one thread (benchmarks/cpu_budget.py); wall: plain ``vae``."""
    entry = [str(ROOT / "benchmarks" / "cpu_budget.py")] if clock == "cpu" else ["-m", "vaecli"]
    cmd = [sys.executable, *entry, "train", *data, *flags, "--time-budget", str(budget),
           "--name", tag.replace(",", "-").replace(".", "p"), "--overwrite", "--json", "-q"]  # fmt: skip
    full = (["flock", lock] if lock else []) + cmd
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    t0 = time.time()
    p = subprocess.run(full, capture_output=True, text=True, env=env, check=False)
    row: dict[str, Any] = {"tag": tag, "flags": flags, "budget_s": budget, "rc": p.returncode, "wall_s": round(time.time() - t0, 1),
                           "clock": clock, "loadavg_after": os.getloadavg(), "cmd": "vae " + " ".join(cmd[len(entry) + 1 :])}  # fmt: skip
    if p.returncode == 0:
        r = json.loads(p.stdout)
        row.update(test_neg_elbo=r["test"]["neg_elbo"], test_recon=r["test"]["recon"], test_kl=r["test"]["kl"], steps=r["steps"],
                   epochs=r["epochs"], images_per_second=r["images_per_second"], active_units=r["active_units"], run=r["path"])  # fmt: skip
    else:
        row["stderr_tail"] = p.stderr[-2000:]
    print(
        json.dumps({k: row.get(k) for k in ("tag", "rc", "test_neg_elbo", "steps", "wall_s")}),
        flush=True,
    )
    return row


def bce_floor(folder: str, flags: list[str]) -> dict[str, float]:
    """Sum over the test split's pixels of -x ln x - (1-x) ln(1-x), per image (the split of ``vae train --seed 0``)."""
    import torch

    from vaecli.config import DataConfig
    from vaecli.data import load_data

    size, ch = (
        int(flags[flags.index("--image-size") + 1]),
        int(flags[flags.index("--channels") + 1]),
    )
    _, test, _ = load_data(DataConfig(name=folder, image_size=size, channels=ch, split_seed=0))
    x = test.images.double() / 255.0
    h = -(torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x))
    return {"floor": float(h.flatten(1).sum(1).mean()), "test_images": len(test)}


def bce_of_run(run: str, seed: int = 0) -> dict[str, float]:
    """BCE -ELBO of a run's model on its test split: BCE of the decoder's means + KL, one sample per image."""
    import torch
    import torch.nn.functional as F

    from vaecli.checkpoint import load_model
    from vaecli.data import load_data
    from vaecli.losses import kl_divergence

    model, cfg, _ = load_model(run)
    _, test, _ = load_data(cfg.data)
    g = torch.Generator().manual_seed(seed)
    tot_r = tot_k = 0.0
    with torch.no_grad():
        for i in range(0, len(test), 256):
            x = test.images[i : i + 256].float() / 255.0
            out = model(x, generator=g)
            mean = torch.sigmoid(out.logits.float()).clamp(1e-6, 1 - 1e-6)
            tot_r += float(F.binary_cross_entropy(mean, x, reduction="none").flatten(1).sum(1).sum())
            tot_k += float(kl_divergence(out.mu, out.logvar).sum())
    n = len(test)
    return {
        "bce_neg_elbo": (tot_r + tot_k) / n,
        "bce_recon": tot_r / n,
        "kl": tot_k / n,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR", "/work/shared/data"))
    p.add_argument("--folder", default="/work/shared/data/noto-emoji-64")
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--long", type=float, default=600.0)
    p.add_argument("--finalists", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="budget in CPU seconds of one thread (default) or wall seconds",
    )
    p.add_argument("--parts", default="fmnist,long,colour")
    p.add_argument("--only", default="", help="comma-separated tags (default: all)")
    p.add_argument("--rerun", action="store_true")
    p.add_argument(
        "--lock",
        default="/work/wt/bench.lock",
        help="flock file around each run ('' = none)",
    )
    p.add_argument("--out", default="benchmarks/results/bench_defaults.json")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    out = Path(args.out)
    res: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    res.setdefault("runs_of_script", []).append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": sys.argv[1:],
        }
    )
    res["machine"] = machine_info()
    only = set(filter(None, args.only.split(",")))
    lock = args.lock or None

    def save() -> None:
        out.write_text(json.dumps(res, indent=1) + "\n")

    def sweep(section: str, table: dict[str, list[str]], data: list[str], budget: float) -> None:
        rows = res.setdefault(section, {})
        for tag, flags in table.items():
            if (only and tag not in only) or (tag in rows and not args.rerun):
                continue
            rows[tag] = train(f"{section}-{tag}", data, flags, budget, lock, args.clock)
            if section.startswith("colour") and rows[tag].get("rc") == 0:
                rows[tag].update(bce_of_run(rows[tag]["run"]))
                fl = res["colour_floor"]["floor"]
                rows[tag]["excess_over_floor"] = rows[tag]["bce_neg_elbo"] - fl
            save()

    parts = args.parts.split(",")
    fm = ["--data", "fashion-mnist", "--data-dir", args.data_dir]
    c = args.clock
    if "fmnist" in parts:
        sweep(f"fmnist_{c}{args.budget:g}s", FMNIST, fm, args.budget)
    if "long" in parts:
        rows = res.get(f"fmnist_{c}{args.budget:g}s", {})
        ranked = sorted((r["test_neg_elbo"], t) for t, r in rows.items() if r.get("rc") == 0)
        best = [t for _, t in ranked[: args.finalists]]
        sweep(
            f"fmnist_{c}{args.long:g}s",
            {t: FMNIST[t] for t in best if t in FMNIST},
            fm,
            args.long,
        )
    if "colour" in parts:
        res["colour_floor"] = {"folder": args.folder, **bce_floor(args.folder, EMOJI)}
        sweep(f"colour_{c}{args.budget:g}s", COLOUR, ["--data", args.folder], args.budget)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
