"""The mobilenet-v2-imagenet feature space validated on real colour images, as the Fashion-MNIST net was
(docs/eval-samples.md). Run by hand, never in CI (CPU-heavy: some 7,000 images through MobileNetV2)::

    TORCH_HOME=../shared/weights/torch-hub python benchmarks/bench_mobilenet_space.py \\
        --data ../shared/data/noto-emoji-64 --out benchmarks/results/bench_mobilenet_space.json

The folder's files are split 90/10 by ``--seed`` exactly as ``vae train --data FOLDER`` splits them
(:func:`vaecli.data.split_indices`); ``--train`` of the training files (a seeded choice) stand for the
training side. Measured, in the feature space, against the held-out files:

* the floor: the training images against the held-out images;
* FD, KID and precision/recall (for several k) of damaged training images: Gaussian blur sigma 1, 2
  and 3 (each channel, edges repeated), pixels shuffled (one permutation for all), uniform noise;
  all with the compared sets at ``--train`` images, and again with them cut to as many images as
  the held-out side (what `vae eval-samples` compares on this folder: n = its test split);
* KID's feature scale: ``|f|^2 / d`` over the real images (the cubic kernel ``(a.b / d + 1)^3``
  expects about 1);
* the nearest-neighbour radii that precision/recall's balls are made of, with the near-duplicates
  (emoji that differ only by a skin-tone modifier) counted;
* the memorisation check: new real images, exact copies, copies with pixel noise, blurred copies,
  shuffled pixels and noise as the "samples", against the training images.

Prints the tables in Markdown; the JSON has every number and the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import harness

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vae` does, before torch loads: no spinning threads on a shared machine
ROOT = harness.ROOT
KS = (3, 5, 10, 20)
TONE = re.compile(r"-1f3f[b-f]")  # the five Fitzpatrick skin-tone modifiers in a Noto file name


def blur(x: Any, sigma: float) -> Any:
    """Gaussian blur of float images (N, C, H, W), each channel, edges repeated (a white surround stays white)."""
    import torch
    import torch.nn.functional as F

    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(-1, 1, 1, 2 * r + 1), groups=x.shape[1])
    return F.conv2d(x, k.view(-1, 1, 2 * r + 1, 1), groups=x.shape[1])


def load(folder: Path, names: list[str]) -> Any:
    """The files as float RGB (N, 3, H, W) in [0, 1], transparency composited on white (vaecli's loader)."""
    import torch

    from vaecli.data.files import load_image

    return torch.stack([load_image(folder / n, channels=3) for n in names]).float() / 255


def scores(real: Any, fake: Any, seed: int) -> dict[str, Any]:
    """FD, KID ± std (as `vae eval-samples`: 100 subsets) and precision/recall for every k of KS."""
    from vaecli.eval import fidelity as fid

    s = fid.compare(real, fake, seed=seed).to_dict()
    s.pop("precision"), s.pop("recall")
    s["pr"] = {str(k): dict(zip(("precision", "recall"), fid.precision_recall(real, fake, k))) for k in KS}
    return s


def feature_scale(f: Any) -> dict[str, float]:
    """``|f|^2 / d`` over the rows: median, 1st and 99th percentile, max; and the features' RMS."""
    import torch

    sq = f.double().pow(2).sum(1) / f.shape[1]
    q = torch.quantile(sq, torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)).tolist()
    return {"p1": q[0], "median": q[1], "p99": q[2], "max": float(sq.max()), "rms": float(f.double().pow(2).mean().sqrt())}


def radii(f: Any) -> dict[str, float]:
    """Median distance from each point to its k-th nearest neighbour in the same set, for k in 1 and KS."""
    import torch

    d = torch.cdist(f.double(), f.double()).sort(1).values  # column 0: the point itself
    return {str(k): float(d[:, k].median()) for k in (1, *KS)}


def memorisation_rows(train_f: Any, held_f: Any, sets: dict[str, Any]) -> dict[str, Any]:
    """The memorisation check against the training images for each set of "samples"."""
    from vaecli.eval import fidelity as fid

    half = len(held_f) // 2
    rows = {
        "new real images (half the held-out images, the other half as reference)": fid.memorisation(train_f, held_f[half:], held_f[:half])
    }
    rows.update({name: fid.memorisation(train_f, held_f, f) for name, f in sets.items()})
    return {k: v.to_dict() for k, v in rows.items()}


def siblings(train_names: list[str], held_names: list[str]) -> dict[str, Any]:
    """How many files are skin-tone variants, and how many held-out files have a variant among the training files."""
    stem = lambda n: TONE.sub("", n)  # noqa: E731
    train_stems = {stem(n) for n in train_names}
    return {"held_out_with_a_training_sibling": sum(stem(n) in train_stems for n in held_names), "held_out": len(held_names),
            "tone_variant_files": sum(bool(TONE.search(n)) for n in train_names + held_names)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vaecli.data import split_indices
    from vaecli.data.files import image_names
    from vaecli.eval import fidelity as fid
    from vaecli.eval.features import MOBILENET, get_extractor

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    folder = Path(args.data)
    names = image_names(folder)
    tr, te = split_indices(len(names), args.seed)
    g = torch.Generator().manual_seed(args.seed)
    tr = tr[torch.randperm(len(tr), generator=g)[: args.train]].sort().values
    train_names, held_names = [names[i] for i in tr.tolist()], [names[i] for i in te.tolist()]
    harness.log(f"{len(names)} files: {len(train_names)} training of {len(names) - len(te)}, {len(held_names)} held out")
    train, held = load(folder, train_names), load(folder, held_names)
    n_img = train.shape[-1] * train.shape[-2]
    images = {
        "training images (the floor)": train,
        "the same, blur sigma 1": blur(train, 1.0),
        "the same, blur sigma 2": blur(train, 2.0),
        "the same, blur sigma 3": blur(train, 3.0),
        "the same, pixels shuffled": train.flatten(2)[:, :, torch.randperm(n_img, generator=g)].reshape(train.shape),
        "uniform noise": torch.rand(train.shape, generator=g),
    }
    noisy_copies = (train[: len(held)] + 0.05 * torch.randn(train[: len(held)].shape, generator=g)).clamp(0, 1)
    ext = get_extractor(MOBILENET, "cpu")
    t0, cpu0 = time.perf_counter(), time.process_time()
    held_f = ext(held)
    feats = {}
    for name, x in images.items():
        harness.log(f"features: {name}")
        feats[name] = ext(x)
    noisy_f = ext(noisy_copies)
    harness.log("features: the held-out images damaged")
    held_damaged = {"the same, blur sigma 1": blur(held, 1.0), "the same, blur sigma 2": blur(held, 2.0),
                    "the same, pixels shuffled": held.flatten(2)[:, :, torch.randperm(n_img, generator=g)].reshape(held.shape)}  # fmt: skip
    dense = {"held-out images": held_f, **{k: ext(v) for k, v in held_damaged.items()}}
    n_feat = len(held) * (2 + len(held_damaged)) + sum(len(x) for x in images.values())
    feat_s, feat_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    harness.log(f"{n_feat} images in {feat_s:.0f} s")
    n_eq = len(held)
    rows = {name: {"n": scores(held_f, f, args.seed), "equal_n": scores(held_f, f[:n_eq], args.seed)} for name, f in feats.items()}
    train_f = feats["training images (the floor)"]
    # the other way round: the training images as the real side, dense with near-duplicates (skin-tone siblings)
    dense_pr = {name: {str(k): dict(zip(("precision", "recall"), fid.precision_recall(train_f, f, k))) for k in KS}
                for name, f in dense.items()}  # fmt: skip
    mem = memorisation_rows(train_f, held_f, {
        "exact copies of training images": train_f[:n_eq],
        "copies with pixel noise (sd 0.05)": noisy_f,
        "blurred copies (sigma 1)": feats["the same, blur sigma 1"][:n_eq],
        "blurred copies (sigma 2)": feats["the same, blur sigma 2"][:n_eq],
        "pixels shuffled": feats["the same, pixels shuffled"][:n_eq],
        "uniform noise": feats["uniform noise"][:n_eq],
    })  # fmt: skip
    return {
        "benchmark": "bench_mobilenet_space",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "features": MOBILENET,
        "pr_k_in_use": ext.pr_k,
        "data": {
            "folder": str(folder),
            "files": len(names),
            "train_used": len(train_names),
            "held_out": len(held_names),
            "seed": args.seed,
            **siblings(train_names, held_names),
        },  # fmt: skip
        "timing": {
            "feature_images": n_feat,
            "feature_wall_s": round(feat_s, 1),
            "feature_cpu_s": round(feat_cpu, 1),
            "ms_per_image_wall": round(1000 * feat_s / n_feat, 1),
            "torch_threads": torch.get_num_threads(),
            "total_wall_s": round(time.perf_counter() - t_start, 1),
        },  # fmt: skip
        "feature_scale": {"held_out": feature_scale(held_f), "training": feature_scale(train_f)},
        "knn_radius_median": {"held_out": radii(held_f), "training": radii(train_f)},
        "rows": rows,
        "training_as_reference": dense_pr,
        "memorisation": mem,
    }


def markdown(res: dict[str, Any]) -> str:
    """The tables of docs/eval-samples.md."""
    d = res["data"]
    out = [f"| {d['train_used']:,} of each vs the {d['held_out']} held-out images | FD | KID ± std | "
           + " | ".join(f"P / R (k = {k})" for k in KS) + " |", "|---|---|---|" + "---|" * len(KS)]  # fmt: skip
    for name, r in res["rows"].items():
        s = r["n"]
        out.append(f"| {name} | {s['fd']:.2f} | {s['kid']:.4f} ± {s['kid_std']:.4f} | "
                   + " | ".join(f"{s['pr'][str(k)]['precision']:.3f} / {s['pr'][str(k)]['recall']:.3f}" for k in KS) + " |")  # fmt: skip
    out += ["", f"| {d['held_out']} of each (as eval-samples on this folder) | FD | KID ± std | "
            + " | ".join(f"P / R (k = {k})" for k in KS) + " |", "|---|---|---|" + "---|" * len(KS)]  # fmt: skip
    for name, r in res["rows"].items():
        s = r["equal_n"]
        out.append(f"| {name} | {s['fd']:.2f} | {s['kid']:.4f} ± {s['kid_std']:.4f} | "
                   + " | ".join(f"{s['pr'][str(k)]['precision']:.3f} / {s['pr'][str(k)]['recall']:.3f}" for k in KS) + " |")  # fmt: skip
    out += ["", f"| P / R against the {d['train_used']:,} training images | " + " | ".join(f"k = {k}" for k in KS) + " |",
            "|---|" + "---|" * len(KS)]  # fmt: skip
    for name, pr in res["training_as_reference"].items():
        out.append(f"| {name} | " + " | ".join(f"{pr[str(k)]['precision']:.3f} / {pr[str(k)]['recall']:.3f}" for k in KS) + " |")
    out += ["", "| memorisation: samples are | ratio | closer than p1 |", "|---|---|---|"]
    out += [f"| {name} | {m['ratio']:.3f} | {m['closer_than_p1']:.3f} |" for name, m in res["memorisation"].items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "noto-emoji-64"), help="a folder of colour images")
    p.add_argument("--train", type=int, default=1000, help="training files used (a seeded choice; default 1,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time per image on one core)")
    p.add_argument("--seed", type=int, default=0, help="the 90/10 split (as vae train's --seed) and every draw")
    p.add_argument("--out", default=str(harness.RESULTS / "bench_mobilenet_space.json"))
    args = p.parse_args(argv)
    res = run(args)
    harness.write_json(args.out, res)
    print(markdown(res))
    print(f"\nfeature scale |f|^2/d (held out): {res['feature_scale']['held_out']}; timing: {res['timing']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
