"""Fitted priors on one trained run, by hand (never in CI): `vae fit-prior` then `vae eval-samples --json`.

Each row fits one prior with ``vae fit-prior ... --json`` in a fresh process (its wall time, and
the fit's own ``seconds``: data loading, encoding the three splits, fitting and scoring), then scores
it with ``vae eval-samples --prior fitted --json`` at each temperature of the row (10,000 samples
against the test split by default, the memorisation check against the training split). The rows
without a fit score N(0, I) (``--prior normal``). At the end the run keeps the default prior
(``vae fit-prior`` with no options), as a user's run would.

Two more parts: ``reference`` scores the aggregate posterior itself (one draw z ~ q(z|x) for each
of n training images, decoded: what a perfect fit to the posterior draws would give, computed
in-process with the library), ``timing`` runs the default ``vae fit-prior`` three times (wall,
fit and CPU seconds, load average) and ``pixels`` (not in the default parts) the memorisation check
with pixels as features, for runs that no offline feature net covers (64 px colour).

Usage (the run: ``vae train --data-dir /path/to/data --time-budget 120 --name fm120``)::

    VAE_HOME=RUNS_DIR python benchmarks/bench_priors.py --run fm120 \\
        --out benchmarks/results/priors_fmnist.json [--parts rows,reference,timing]

The machine's load average is stored beside every timing: on a shared machine the wall times
are upper bounds.
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

# (tag, fit-prior options or None for N(0, I), temperatures)
ROWS: list[tuple[str, list[str] | None, list[float]]] = [
    ("normal", None, [1.0, 0.8, 1.2]),
    ("gmm10-means", ["--kind", "gmm", "--components", "10", "--fit-on", "means"], [1.0, 1.2]),
    ("gmm10-draws", ["--kind", "gmm", "--components", "10", "--fit-on", "draws"], [1.0, 1.2]),
    ("gmm-chosen-means", ["--kind", "gmm", "--fit-on", "means"], [1.0, 1.2]),
    ("gmm-chosen-draws", ["--kind", "gmm", "--fit-on", "draws"], [1.0, 1.1, 1.2]),
    ("flow-draws", ["--kind", "flow", "--fit-on", "draws"], [1.0, 1.2]),
    ("flow-means", ["--kind", "flow", "--fit-on", "means"], [1.0]),
]


def vae(*args: str) -> tuple[dict[str, Any], float, list[float]]:
    """Run ``python -m vaecli ARGS --json``; returns (its JSON, wall seconds, load averages before and after)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    load = [os.getloadavg()[0]]
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vaecli", *args, "--json"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    load.append(os.getloadavg()[0])
    if p.returncode != 0:
        raise SystemExit(f"vae {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout), round(wall, 2), load


def scores(res: dict[str, Any]) -> dict[str, Any]:
    keep = ("fd", "kid", "kid_std", "precision", "recall")
    return {**{k: res[k] for k in keep}, "memorisation": res["memorisation"], "prior": res["prior"]}


def reference(run: str, n: int, seed: int = 0) -> dict[str, Any]:
    """The aggregate posterior decoded: one posterior draw for each of ``n`` training images (a seeded
    subset), scored as `vae eval-samples` scores samples (the same ``n`` test images, the same features);
    and the reconstructions of those test images, as eval-samples reports them."""
    from dataclasses import replace

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from vaecli.data import load_splits, to_float
    from vaecli.eval.features import default_features, get_extractor
    from vaecli.eval.fidelity import compare, memorisation
    from vaecli.eval.inference import decode, reconstruct
    from vaecli.runs import store as ckpt
    from vaecli.train.fit_prior import encode_splits

    model, cfg, _ = ckpt.load_model(run)
    splits = load_splits(replace(cfg.data, binarize=False))
    test, train = to_float(splits["test"].images), to_float(splits["train"].images)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n].sort().values if n < len(test) else torch.arange(len(test))
    q = encode_splits(model, cfg.data)["train"].posterior
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    z = q.sample(torch.Generator().manual_seed(seed))[pick]
    net = get_extractor(default_features(cfg.model.channels, cfg.model.image_size))
    real_f, fake_f = net(test[idx]), net(decode(model, z))
    return {"what": f"one posterior draw for each of {n:,} training images, decoded (the aggregate posterior itself)",
            **compare(real_f, fake_f, seed).to_dict(), "memorisation": memorisation(net(train), real_f, fake_f).to_dict(),
            "reconstructions": compare(real_f, net(reconstruct(model, test[idx])), seed).to_dict()}  # fmt: skip


def pixel_memorisation(run: str, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The memorisation check with pixels as the features (for runs no offline feature net covers,
    e.g. 64 px colour): N(0, I), the default gmm and the flow, each fitted in-process (not stored)."""
    from dataclasses import replace

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from vaecli.data import load_splits, to_float
    from vaecli.eval.fidelity import memorisation
    from vaecli.eval.inference import sample
    from vaecli.model.priors import StandardNormal
    from vaecli.runs import store as ckpt
    from vaecli.train.fit_prior import fit_prior

    model, cfg, _ = ckpt.load_model(run)
    splits = load_splits(replace(cfg.data, binarize=False))
    train, test = to_float(splits["train"].images).flatten(1), to_float(splits["test"].images).flatten(1)
    priors = {"normal": StandardNormal(cfg.model.latent_dim), "gmm": fit_prior(model, cfg.data, "gmm", seed=seed).prior,
              "flow": fit_prior(model, cfg.data, "flow", seed=seed).prior}  # fmt: skip
    out: dict[str, Any] = {"features": "pixels", "n": n}
    for name, prior in priors.items():
        for t in (1.0, 1.2):
            fake = sample(model, n, t, torch.Generator().manual_seed(seed), prior).flatten(1)
            out[f"{name} T={t:g}"] = memorisation(train, test, fake).to_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default="benchmarks/results/priors_fmnist.json")
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--only", default="", help="comma-separated row tags (default: all)")
    ap.add_argument("--parts", default="rows,reference,timing")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    parts = set(args.parts.split(","))
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    out: dict[str, Any] = {
        **prev,
        "run": args.run,
        "n": args.n,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if "reference" in parts:
        out["reference"] = reference(args.run, args.n)
        r = out["reference"]
        print(f"reference: FD {r['fd']:.3f} precision {r['precision']:.3f} recall {r['recall']:.3f} mem {r['memorisation']['ratio']:.3f}")
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if "pixels" in parts:
        out["pixel_memorisation"] = pm = pixel_memorisation(args.run)
        print("pixel memorisation: " + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in pm.items() if isinstance(v, dict)))
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if "timing" in parts:
        out["timing"] = []
        for _ in range(3):
            info, wall, load = vae("fit-prior", "--run", args.run)
            out["timing"].append({"command_seconds": wall, "fit_seconds": info["seconds"], "cpu_seconds": info.get("cpu_seconds"),
                                  "threads": info.get("threads"), "load_average": load, "config": info["config"]})  # fmt: skip
            print(f"timing: {wall:.1f} s wall, fit {info['seconds']:.1f} s, CPU {info.get('cpu_seconds')} s, load {load}", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if "rows" not in parts:
        return
    out["rows"] = [r for r in prev.get("rows", []) if only and r["tag"] not in only]
    for tag, fit, temps in ROWS:
        if only and tag not in only:
            continue
        row: dict[str, Any] = {"tag": tag, "fit_args": fit}
        if fit is not None:
            info, wall, load = vae("fit-prior", "--run", args.run, *fit)
            row["fit"] = {"command_seconds": wall, "fit_seconds": info["seconds"], "load_average": load, "config": info["config"],
                          "chosen": info["chosen"], "fitted_on": info["fitted_on"], "scores": info["scores"],
                          "selection": info["selection"] if info["kind"] == "gmm" else None}  # fmt: skip
            print(f"{tag}: fit {wall:.1f} s (fit {info['seconds']:.1f} s, load {load[0]:.1f}) {info['config']} "
                  f"test log p(z) {info['scores']['test']['log_likelihood']:.3f} vs N(0, I) {info['scores']['test']['normal_log_likelihood']:.3f}",
                  flush=True)  # fmt: skip
        row["eval"] = []
        for t in temps:
            prior = "normal" if fit is None else "fitted"
            res, wall, load = vae("eval-samples", "--run", args.run, "-n", str(args.n), "--prior", prior, "--temperature", str(t))
            row["eval"].append({"temperature": t, **scores(res), "command_seconds": wall, "load_average": load})
            m = res["memorisation"]["ratio"]
            print(f"  T={t:g}: FD {res['fd']:.3f} KID {res['kid']:.4f} precision {res['precision']:.3f} recall {res['recall']:.3f} "
                  f"mem {m:.3f} ({wall:.0f} s)", flush=True)  # fmt: skip
        out["rows"].append(row)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    info, wall, load = vae("fit-prior", "--run", args.run)  # leave the run with the default prior
    out["default_fit"] = {"command_seconds": wall, "fit_seconds": info["seconds"], "load_average": load, "config": info["config"],
                          "chosen": info["chosen"], "scores": info["scores"]}  # fmt: skip
    print(f"default: fit {wall:.1f} s (fit {info['seconds']:.1f} s) {info['config']}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
