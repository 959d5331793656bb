#!/usr/bin/env python
"""Train the feature net of `vae eval-samples` (vaecli-fmnist-net-v1) on Fashion-MNIST.

    python scripts/train_feature_net.py --data-dir /path/with/FashionMNIST

Deterministic for a given seed, torch build and thread count (--threads, default 1): Adam 1e-3,
batch 128, cosine decay, 4 epochs over the 60,000 training images, no data augmentation, no model
selection on the test set. Writes src/vaecli/assets/fmnist-net-v1.safetensors (weights in float32,
metadata: test accuracy, command, seed; the feature scale as a tensor) and prints the test accuracy and
the scores of real and damaged images against the 10,000 test images (--report-only: only those).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vaecli.config import DataConfig  # noqa: E402
from vaecli.data import load_data, to_float  # noqa: E402
from vaecli.eval.features import FMNIST_NET, FMNIST_NET_FILE, FMNIST_NET_FORMAT, FmnistNet, fmnist_net  # noqa: E402
from vaecli.eval.fidelity import compare  # noqa: E402


def accuracy(net: FmnistNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(to_float(images[i : i + 1000])).argmax(1) for i in range(0, len(images), 1000)])
    return float((pred == labels).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--data-dir", default=None, help="dataset root holding FashionMNIST/raw (default $VAE_DATA_DIR)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="do not train: print the score table of the shipped net")
    ap.add_argument("-o", "--output", default=str(ROOT / "src" / "vaecli" / "assets" / FMNIST_NET_FILE))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test, _ = load_data(DataConfig(name="fashion-mnist", root=args.data_dir), download=False)
    if args.report_only:
        report(train.images, test.images)
        return
    assert train.labels is not None and test.labels is not None
    net = FmnistNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = 128
    steps_per_epoch = math.ceil(len(train) / batch)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(train), generator=g)
        loss_sum = 0.0
        for i in range(0, len(train), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(net(to_float(train.images[idx])), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {loss_sum / len(train):.4f}  "
              f"test accuracy {accuracy(net, test.images, test.labels):.4f}  {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    acc = accuracy(net, test.images, test.labels)
    # The feature scale: the root mean square of the 128 units over the training images.
    with torch.no_grad():
        sq = sum(float(net.hidden(to_float(train.images[i : i + 1000])).double().pow(2).sum()) for i in range(0, len(train), 1000))
    net.feature_scale.fill_(math.sqrt(sq / (len(train) * 128)))
    command = f"python scripts/train_feature_net.py --epochs {args.epochs} --seed {args.seed} --threads {args.threads}"
    meta = {"format": FMNIST_NET_FORMAT, "name": FMNIST_NET, "test_accuracy": f"{acc:.4f}", "epochs": str(args.epochs),
            "seed": str(args.seed), "command": command, "torch": torch.__version__,
            "feature_scale": f"{float(net.feature_scale):.6f}"}  # fmt: skip
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    out = Path(args.output)
    save_file(state, str(out), metadata=meta)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"test accuracy {acc:.4f} after {args.epochs} epochs ({seconds:.0f}s, {args.threads} thread(s)); "
          f"wrote {out} ({out.stat().st_size:,} bytes, sha256 {sha[:16]})")  # fmt: skip

    report(train.images, test.images)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (separable, zero padding) of float images (N, 1, H, W)."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))


def report(train: torch.Tensor, test: torch.Tensor) -> None:
    """The scores of real and corrupted images against the test split in the shipped feature space:
    the floor of the sample scores (real training images) and how they grow with damage."""
    g = torch.Generator().manual_seed(0)
    ext = fmnist_net()
    real = ext(to_float(test))
    other = to_float(train[torch.randperm(len(train), generator=g)[: len(test)]])
    shuffled = to_float(test).flatten(1)[:, torch.randperm(28 * 28, generator=g)].reshape(test.shape)
    sets = {"training images": other, "the same, blur sigma 1": blur(other, 1.0), "the same, blur sigma 2": blur(other, 2.0),
            "test images, pixels shuffled": shuffled, "uniform noise": torch.rand(test.shape, generator=g)}  # fmt: skip
    print(f"| {len(test):,} of each vs the {len(test):,} test images ({FMNIST_NET}) | FD | KID | precision | recall |")
    print("|---|---|---|---|---|")
    for name, images in sets.items():
        s = compare(real, ext(images), seed=0)
        print(f"| {name} | {s.fd:.3f} | {s.kid:.4f} ± {s.kid_std:.4f} | {s.precision:.3f} | {s.recall:.3f} |", flush=True)


if __name__ == "__main__":
    main()
