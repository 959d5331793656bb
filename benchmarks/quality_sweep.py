"""Quality per CPU-second of one training recipe: how the default ``conv`` recipe was chosen.

Trains with a budget of *CPU* seconds of one thread (``time.perf_counter`` inside the training loop
is replaced by ``time.process_time``), so that several recipes can be compared fairly while sharing
a busy machine, and appends one JSON line with the test -ELBO to ``--out``. Run by hand::

    python benchmarks/quality_sweep.py '{"model": {"widths": [16, 32]}, "train": {"lr": 5e-3}}' 120 w16_lr5 \\
        --data-dir /path/to/data --out benchmarks/results/quality_sweep.jsonl

The results of the sweep behind the defaults are in ``benchmarks/results/quality_sweep.jsonl``
(``docs/performance.md`` has the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import harness


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help='JSON: {"model": {...ModelConfig fields}, "train": {...TrainConfig fields}}')
    p.add_argument("budget", type=float, help="CPU seconds of training (one thread)")
    p.add_argument("tag")
    p.add_argument("--data-dir", default=None, help="folder holding FashionMNIST/raw (default: $VAE_DATA_DIR)")
    p.add_argument("--out", default="quality_sweep.jsonl")
    args = p.parse_args()
    harness.use_cpu_clock()
    from vaecli.config import DataConfig, ModelConfig, TrainConfig
    from vaecli.train.run import start_run

    spec = json.loads(args.spec)
    mc = ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.get("model", {}).items()})
    tc = TrainConfig(**{"epochs": 1000, "device": "cpu", "precision": "fp32", "time_budget": args.budget, "save_every": 1e9,
                        **spec.get("train", {})})  # fmt: skip
    os.environ["VAE_HOME"] = tempfile.mkdtemp(prefix="vae-sweep-")
    tr = start_run(mc, DataConfig(name="fashion-mnist", root=args.data_dir), tc, name=args.tag, overwrite=True)
    w0 = time.perf_counter()
    r = tr.fit()
    out = {"tag": args.tag, "spec": spec, "budget_cpu_s": args.budget, "test": r.test["neg_elbo"], "steps": r.steps,
           "epochs_done": r.epochs, "images": r.steps * tc.batch_size, "ips_cpu": r.images_per_second,
           "wall_s": time.perf_counter() - w0, "val_history": [h["val"]["neg_elbo"] for h in tr.history if "val" in h],
           "machine": harness.machine_info()}  # fmt: skip
    print(json.dumps(out))
    with open(args.out, "a") as f:  # one line per run: appending is the format (a torn last line is the only risk)
        f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
