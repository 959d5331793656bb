"""Loading benchmark of image folders, written as JSON. Run by hand, never in CI::

    VAE_DATA_DIR=/path/to/data python benchmarks/bench_load.py --work $(mktemp -d) \\
        --out benchmarks/results/bench_load.json

Builds (once) two folders under ``--work``: the 70,000 Fashion-MNIST images as 28 px gray PNGs
(``fmnist-png``) and ``--colour-count`` of them upscaled to 64 px and tinted per class as RGB
PNGs (``fmnist-64-rgb``). Then, each in a fresh process (so peak RSS, VmHWM, is the load's own):

* ``serial``: decode without cache, one worker;
* ``process`` / ``thread``: decode without cache on a pool of ``--workers`` (default: the usable cores);
* ``first``: the default load (parallel, writes the cache) into an empty cache;
* ``cached``: the default load again (reads the cache).

Each reports wall seconds of ``load_data`` (listing, decode or cache read, split, fingerprint),
peak RSS and the RSS before loading (python + torch), and the data fingerprint (all modes
must agree). The load average is recorded: on a shared machine compare numbers of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(folder: str, mode: str, workers: int | None, cache: str) -> None:
    """One measurement in this process; prints one JSON line."""
    os.environ["VAE_CACHE_DIR"] = cache
    from vaecli.config import DataConfig
    from vaecli.data import FolderLoad, load_data

    rss0 = _status("VmRSS")
    if mode in ("serial", "process", "thread"):
        opts = FolderLoad(use_cache=False, workers=1 if mode == "serial" else workers, pool="thread" if mode == "thread" else "process")
    else:
        opts = FolderLoad(workers=workers)
    t = time.perf_counter()
    train, test, cfg = load_data(DataConfig(name=folder), load=opts)
    dt = time.perf_counter() - t
    print(json.dumps({"mode": mode, "seconds": round(dt, 3), "images": len(train) + len(test), "shape": list(train.images.shape[1:]),
                      "peak_rss_mb": round(_status("VmHWM") / 2**20, 1), "rss_before_mb": round(rss0 / 2**20, 1),
                      "data_mb": round((train.images.numel() + test.images.numel()) / 2**20, 1), "fingerprint": cfg.fingerprint}))  # fmt: skip


def _write_pngs(args: tuple[int, int, str, int, bool]) -> None:
    import numpy as np
    from PIL import Image

    start, stop, out, size, colour = args
    imgs, labels = _idx(IDX_DIR)
    tints = [(255, 80, 80), (80, 255, 80), (80, 80, 255), (255, 255, 80), (80, 255, 255),
             (255, 80, 255), (255, 160, 40), (160, 40, 255), (40, 160, 160), (200, 200, 200)]  # fmt: skip
    for i in range(start, stop):
        im = Image.fromarray(imgs[i], "L")
        if size != 28:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        if colour:
            a = np.asarray(im, dtype=np.float32)[:, :, None] * (np.array(tints[labels[i]], dtype=np.float32) / 255.0)
            im = Image.fromarray(a.round().astype(np.uint8), "RGB")
        p = Path(out) / f"{labels[i]}" / f"{i:05d}.png"
        im.save(p)


IDX_DIR = ""


def _idx(raw: str):  # type: ignore[no-untyped-def]
    from vaecli.data import read_idx

    parts = []
    for prefix in ("train", "t10k"):
        im = read_idx(Path(raw, f"{prefix}-images-idx3-ubyte").read_bytes()).numpy()
        lb = read_idx(Path(raw, f"{prefix}-labels-idx1-ubyte").read_bytes()).numpy()
        parts.append((im, lb))
    import numpy as np

    return np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]])


def build(out: Path, count: int, size: int, colour: bool, procs: int) -> Path:
    """Write the PNG folder once (a ``.done`` marker says it is complete)."""
    if (out / ".done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for c in range(10):
        (out / str(c)).mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ProcessPoolExecutor

    step = 2000
    jobs = [(a, min(a + step, count), str(out), size, colour) for a in range(0, count, step)]
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_write_pngs, jobs))
    (out / ".done").write_text("ok\n")
    return out


def run_child(folder: Path, mode: str, workers: int | None, cache: Path) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, __file__, "--child", str(folder), mode, str(workers or 0), str(cache)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["loadavg"] = os.getloadavg()[0]
    return rec


def main() -> None:
    global IDX_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--idx", default=None, help="folder holding Fashion-MNIST's four IDX files (default: $VAE_DATA_DIR/FashionMNIST/raw)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "vae-data-bench"), help="where the PNG folders are built (once)")
    ap.add_argument("--out", default=str(harness.RESULTS / "bench_load.json"))
    ap.add_argument("--colour-count", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="serial,process,thread,first,cached")
    ap.add_argument("--sets", default="fmnist-png,fmnist-64-rgb")
    ap.add_argument("--note", default=None, help="a line about the machine for the JSON (e.g. 'shared with other jobs')")
    ap.add_argument("--build-only", action="store_true", help="Write the folders and stop (no lock needed: nothing timed).")
    args = ap.parse_args()
    from vaecli.paths import data_root

    IDX_DIR = args.idx or str(data_root() / "FashionMNIST" / "raw")
    work = Path(args.work)
    procs = len(os.sched_getaffinity(0))
    folders = {
        "fmnist-png": lambda: build(work / "fmnist-png", 70_000, 28, False, procs),
        "fmnist-64-rgb": lambda: build(work / "fmnist-64-rgb", args.colour_count, 64, True, procs),
    }
    if args.build_only:
        for name in args.sets.split(","):
            folders[name]()
        return
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": harness.machine_info(args.note), "sets": {}}
    for name in args.sets.split(","):
        t = time.perf_counter()
        folder = folders[name]()
        build_s = time.perf_counter() - t
        runs = []
        for _ in range(args.rounds):
            cache = work / "cache" / name
            for mode in args.modes.split(","):
                if mode == "first":
                    shutil.rmtree(cache, ignore_errors=True)
                rec = run_child(folder, mode, args.workers, cache)
                print(name, rec, flush=True)
                runs.append(rec)
        best = {m: min(r["seconds"] for r in runs if r["mode"] == m) for m in args.modes.split(",")}
        fps = {r["fingerprint"] for r in runs}
        result["sets"][name] = {"folder": str(folder), "build_seconds": round(build_s, 1), "runs": runs, "best_seconds": best,
                                "same_data_in_every_mode": len(fps) == 1,
                                "speedup_process_over_serial": round(best["serial"] / best["process"], 2) if "process" in best else None,
                                "speedup_thread_over_serial": round(best["serial"] / best["thread"], 2) if "thread" in best else None,
                                "speedup_first_over_serial": round(best["serial"] / best["first"], 2) if "first" in best else None}  # fmt: skip
    harness.write_json(args.out, result)
    print(json.dumps({k: v["best_seconds"] for k, v in result["sets"].items()}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, folder, mode, workers, cache = sys.argv
        child(folder, mode, int(workers) or None, cache)
    else:
        main()
