"""How the defaults are chosen: quality at equal wall time, by hand (never in CI).

Each row is one ``vae train --time-budget SECONDS --json`` in a fresh process (by default the
budget is CPU seconds of one thread, ``--clock cpu``), with ``--lock FILE`` under ``flock FILE``
so that two timing jobs never overlap on a shared machine. One run of the script produces, in one JSON file:

* ``fmnist``: the Fashion-MNIST sweep at ``--budget`` seconds (arch, widths, batch, lr, warm-up,
  latent size), then the best ``--finalists`` of it again at ``--long`` seconds;
* ``colour``: a colour folder (noto-emoji 64 px RGB by default): today's pinned recipe against
  the new defaults and the variants, with the BCE floor of the test split (the test pixels' own
  entropy, the best any Bernoulli decoder can do on continuous pixels) and each run's excess over
  it. A Gaussian-likelihood run is scored in BCE nats too: the BCE of its decoder means plus the
  KL, one posterior sample per test image, eval mode (as ``test.neg_elbo`` is for Bernoulli runs).

Usage::

    VAE_HOME=$(mktemp -d) python benchmarks/bench_defaults.py --data-dir /path/to/data \\
        --folder /path/to/noto-emoji-64 --out benchmarks/results/bench_defaults.json

``--parts fmnist,long,colour`` selects parts; ``--only TAG,...`` selects rows; rows already in
``--out`` are kept and re-used (``--rerun`` to redo them), so a sweep can be run in pieces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness

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


def train(tag: str, data: list[str], flags: list[str], budget: float, lock: str | None, clock: str) -> dict[str, Any]:
    """One ``vae train`` run (under ``flock LOCK`` when given); returns its JSON summary plus the command.
    ``clock`` cpu: the budget is CPU seconds of one thread (benchmarks/cpu_budget.py); wall: plain ``vae``."""
    entry = [str(harness.ROOT / "benchmarks" / "cpu_budget.py")] if clock == "cpu" else ["-m", "vaecli"]
    cmd = [sys.executable, *entry, "train", *data, *flags, "--time-budget", str(budget),
           "--name", tag.replace(",", "-").replace(".", "p"), "--overwrite", "--json", "-q"]  # fmt: skip
    p = harness.run_measured((["flock", lock] if lock else []) + cmd, env=harness.vae_env())
    row: dict[str, Any] = {"tag": tag, "flags": flags, "budget_s": budget, "rc": p["rc"], "wall_s": round(p["wall_s"], 1), "clock": clock,
                           "load_after": p["load_after"], "cmd": "vae " + " ".join(cmd[len(entry) + 1 :])}  # fmt: skip
    r = harness.last_json(p["stdout"]) if p["rc"] == 0 else None
    if r:
        row.update(test_neg_elbo=r["test"]["neg_elbo"], test_recon=r["test"]["recon"], test_kl=r["test"]["kl"], steps=r["steps"],
                   epochs=r["epochs"], images_per_second=r["images_per_second"], active_units=r["active_units"], run=r["path"])  # fmt: skip
    else:
        row["stderr_tail"] = p["stderr_tail"]
    print(json.dumps({k: row.get(k) for k in ("tag", "rc", "test_neg_elbo", "steps", "wall_s")}), flush=True)
    return row


def bce_floor(folder: str, flags: list[str]) -> dict[str, float]:
    """The BCE floor of the test split of ``vae train --seed 0`` on ``folder`` at the size and
    channels of ``flags`` (:func:`vaecli.eval.metrics.bce_floor`: the pixels' own entropy, per image)."""
    from vaecli.config import DataConfig
    from vaecli.data import load_data
    from vaecli.eval.metrics import bce_floor as floor

    size, ch = int(flags[flags.index("--image-size") + 1]), int(flags[flags.index("--channels") + 1])
    _, test, _ = load_data(DataConfig(name=folder, image_size=size, channels=ch, split_seed=0))
    return {"floor": floor(test), "test_images": len(test)}


def bce_of_run(run: str, seed: int = 0) -> dict[str, float]:
    """BCE -ELBO of a run's kept weights on its test split, whatever its likelihood: the BCE of the
    decoder's means plus the KL, one posterior sample per image, eval mode."""
    import torch
    import torch.nn.functional as F

    from vaecli.data import load_data, to_float
    from vaecli.runs.store import load_model

    model, cfg, _ = load_model(run)
    _, test, _ = load_data(cfg.data)
    g = torch.Generator().manual_seed(seed)
    tot_r = tot_k = 0.0
    with torch.no_grad():
        for i in range(0, len(test), 256):
            x = to_float(test.images[i : i + 256])
            out = model(x, generator=g)
            mean = model.likelihood.mean(out.params).clamp(1e-6, 1 - 1e-6)
            tot_r += float(F.binary_cross_entropy(mean, x, reduction="none").flatten(1).sum(1).sum())
            tot_k += float(out.posterior.kl().sum())
    n = len(test)
    return {"bce_neg_elbo": (tot_r + tot_k) / n, "bce_recon": tot_r / n, "kl": tot_k / n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder holding FashionMNIST/raw (default: $VAE_DATA_DIR)")
    p.add_argument("--folder", default=None, help="the colour folder (default: DATA_DIR/noto-emoji-64)")
    p.add_argument("--note", default=None, help="a line about the machine for the JSON (e.g. 'shared with other jobs')")
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
    p.add_argument("--lock", default=None, help="flock this file around each run (timing jobs never overlap on a shared machine)")
    p.add_argument("--out", default="benchmarks/results/bench_defaults.json")
    args = p.parse_args()
    from vaecli.paths import data_root

    args.data_dir = str(data_root(args.data_dir))
    args.folder = args.folder or str(Path(args.data_dir) / "noto-emoji-64")
    out = Path(args.out)
    res = harness.read_json(out)
    res.setdefault("runs_of_script", []).append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": sys.argv[1:],
        }
    )
    res["machine"] = harness.machine_info(args.note)
    only = set(filter(None, args.only.split(",")))
    lock = args.lock or None

    def save() -> None:
        harness.write_json(out, res)

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
