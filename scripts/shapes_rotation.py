"""Is position encoded but rotated? For a run trained on ``--data shapes``: the linear R^2 of each
factor from all latent means, and the best MIG reachable by rotating one plane of two active
dimensions (5-degree steps). Used for the beta = 4 diagnosis in docs/experiments.md::

    python scripts/shapes_rotation.py shapes-b4-s0 --data-dir /path/to/data
"""

from __future__ import annotations

import argparse
import math

import torch

from vaecli.data.shapes import FACTORS, load_shapes
from vaecli.eval.disentangle import latent_means, mig
from vaecli.paths import data_root
from vaecli.runs.store import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--data-dir", default=None, help="where the shapes cache is (default: as vae train)")
    args = p.parse_args()
    model, cfg, _ = load_model(args.run)
    data = load_shapes(args.data_dir or data_root(), cfg.model.image_size)
    codes, factors = latent_means(model, data.images).double(), data.labels
    x = torch.cat([codes, torch.ones(len(codes), 1, dtype=torch.float64)], 1)
    for k, name in enumerate(FACTORS):
        y = factors[:, k].double()
        fit = x @ torch.linalg.lstsq(x, y[:, None]).solution
        print(f"{name:9s} linear R^2 from all latent means {float(1 - (fit.squeeze() - y).var() / y.var()):.3f}")
    base = mig(codes.float(), factors).mig
    active = [j for j in range(codes.shape[1]) if codes[:, j].std() > 0.3]
    best = (base, None, 0)
    for a in range(len(active)):
        for b in range(a + 1, len(active)):
            i, j = active[a], active[b]
            for deg in range(5, 90, 5):
                t, c = math.radians(deg), codes.clone()
                c[:, i] = math.cos(t) * codes[:, i] - math.sin(t) * codes[:, j]
                c[:, j] = math.sin(t) * codes[:, i] + math.cos(t) * codes[:, j]
                m = mig(c.float(), factors).mig
                if m > best[0]:
                    best = (m, (i, j), deg)
    print(f"MIG {base:.3f}; best after rotating one plane: {best[0]:.3f} (dims {best[1]}, {best[2]} degrees)")


if __name__ == "__main__":
    main()
