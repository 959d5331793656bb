"""Training benchmarks of vaecli against the plain recipe, side by side, written as JSON.

Run by hand (never in CI), from the repository root::

    VAE_DATA_DIR=/work/shared/data python benchmarks/bench_train.py --out bench.json
    python benchmarks/bench_train.py --modes quality --budget 120 --out q120.json

Modes (``--modes``, comma separated; default ``throughput,levers,startup,rss``):

* ``throughput``: alternates the plain recipe (``reference``) and ``vae train --arch seed
  --max-steps 45 --json`` (``vaecli``) ``--rounds`` times (ref, ours, ref, ours, ...), each in a
  fresh process, and reports images/s of both and their ratio. The reference is what a user
  writes from the seed: ``model.VAE(ModelConfig(arch='seed'))``, a torchvision ``ToTensor``
  DataLoader over FashionMNIST, Adam lr 1e-3, batch 128, fp32, BCE (sum over pixels) + KL,
  gradient-norm clip 1.0; images/s over ``--steps`` steps after 5 warm-up steps, the same
  window ``vae train`` reports. ``--reference-env K=V`` runs an extra reference variant with
  that environment (e.g. ``OMP_WAIT_POLICY=PASSIVE``, to separate that lever from the rest).
* ``startup``: wall time of ``vae --help``; ``vae sample -n 64`` on a trained run against
  ``python -c "import torch, torchvision"`` (skipped when this checkout has no ``sample``).
* ``rss``: peak RSS of ``vae train`` on the full data (``--rss-steps`` steps, default arch),
  from ``wait4`` of that process alone. Every ``vae train`` above records its peak RSS too.
* ``quality``: ``vae train --time-budget T`` (default model) and its test -ELBO; with
  ``--quality-reference`` also the plain recipe trained for the same wall time, evaluated the
  same way (eval mode, one posterior sample per test image).
* ``levers``: in this one process, interleaved in short bursts (robust to a busy machine):
  the plain recipe's step against vaecli's step with each lever on or off (uint8 data in
  memory, channels_last, fused Adam); CPU and wall milliseconds per step of the seed model.
* ``roofline``: dense matmul GFLOP/s in fp32 and bf16 and the FLOPs of one training image of the
  seed and conv models (torch's FlopCounterMode, forward + backward): the images/s ceiling.
* ``profile``: torch.profiler over a few steps of the seed model's training step as vaecli runs
  it; the top operators by self CPU time (where the time goes).
* ``overhead``: in this one process, interleaved rounds of a bare loop (uint8 data in memory,
  channels_last, fused Adam, no checks) and ``vae train``'s loop (the body of Trainer.fit on a
  real Trainer) on the same model and data: images/s of both and their ratio (target >= 0.9).
  ``--overhead-profile`` adds a cProfile of the trainer rounds.
* ``omp``: ``overhead`` in fresh processes under OMP_WAIT_POLICY=PASSIVE and ACTIVE, on an idle
  machine and with a second process burning a core (the thread-policy decision).
* ``bf16``: ``vae train --max-steps S`` in fp32 and in bf16 (same seed) and the difference in
  test -ELBO (the bf16 safety check; slow where the CPU has no native bf16).

Every measurement records the load average and the number of other running processes, since
the machine may be shared: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DEFAULT_DATA = os.environ.get("VAE_DATA_DIR", "/work/shared/data")
WARMUP = 5


# --------------------------------------------------------------------------- helpers
def machine_load() -> dict[str, Any]:
    """Load average and how many other processes are running right now (state R)."""
    running = 0
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :].startswith("R"):
            running += 1
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"loadavg": load, "running_processes": running}


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, exit code, stdout, stderr tail and its own peak RSS (MiB).

    The peak RSS is the child's ``VmHWM`` polled from /proc every few ms (monotonic, so the last
    read is the peak up to the last few ms). Not ``wait4``'s ``ru_maxrss``: on Linux that starts
    from the parent's RSS at fork/exec, so it reports this (large) benchmark process instead."""
    before = machine_load()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        hwm_kib = 0
        while True:
            hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status = os.waitpid(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(hwm_kib / 1024, 1),
        "stdout": stdout,
        "stderr_tail": stderr[-1500:] if proc.returncode != 0 else "",
        "load_before": before,
        "load_after": machine_load(),
    }


def _vm_hwm_kib(pid: int) -> int:
    """The peak resident set size (VmHWM, KiB) of a running process; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def vae_cmd(args: argparse.Namespace) -> list[str]:
    return list(args.vae) if args.vae else [sys.executable, "-m", "vaecli"]


def vae_env(args: argparse.Namespace, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["VAE_HOME"] = str(home)
    env["VAE_DATA_DIR"] = args.data_dir
    env.update(extra or {})
    return env


def last_json(text: str) -> dict[str, Any] | None:
    """The JSON object ``vae ... --json`` printed (the last line that parses as one)."""
    start = text.find("{")
    if start >= 0:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            pass
    for line in reversed(text.splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "stdout"}


# --------------------------------------------------------------------------- the plain recipe (child process)
def reference_child(data_dir: str, steps: int, seconds: float | None, threads: int | None) -> dict[str, Any]:
    """The plain recipe: train the seed architecture the way a user writes it from the seed."""
    sys.path.insert(0, str(SRC))
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from vaecli.config import ModelConfig
    from vaecli.model import VAE

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    train = torchvision.datasets.FashionMNIST(data_dir, train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(train, batch_size=128, shuffle=True, drop_last=True)
    model = VAE(ModelConfig(arch="seed"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        recon = F.binary_cross_entropy(torch.sigmoid(out.logits), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
        return (recon + kl) / x.shape[0]

    model.train()
    done = 0
    t_warm = None
    t0 = time.perf_counter()
    while True:
        for x, _ in loader:
            loss = loss_fn(x)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            if done == WARMUP:
                t_warm = time.perf_counter()
            if seconds is None and done >= WARMUP + steps:
                break
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                break
        else:
            continue
        break
    t_end = time.perf_counter()
    timed = done - WARMUP
    result: dict[str, Any] = {
        "steps": done,
        "images_per_second": round(timed * 128 / (t_end - t_warm), 2) if t_warm and timed > 0 else 0.0,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    if seconds is not None:  # quality: evaluate like vae train (eval mode, one posterior sample per image)
        test = torchvision.datasets.FashionMNIST(data_dir, train=False, download=False, transform=transforms.ToTensor())
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, _ in DataLoader(test, batch_size=500):
                out = model(x)
                recon = F.binary_cross_entropy_with_logits(out.logits, x, reduction="sum")
                kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
                total += float(recon + kl)
                n += x.shape[0]
        result["test_neg_elbo"] = total / n
        result["train_seconds"] = round(t_end - t0, 2)
    return result


def run_reference(args: argparse.Namespace, extra_env: dict[str, str] | None = None, seconds: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-reference", "--data-dir", args.data_dir, "--steps", str(args.steps)]
    if seconds is not None:
        cmd += ["--child-seconds", str(seconds)]
    env = dict(os.environ)
    env.update(extra_env or {})
    r = run_measured(cmd, env=env)
    r["result"] = last_json(r["stdout"])
    return strip(r)


def run_vae_train(
    args: argparse.Namespace, home: Path, name: str, extra: list[str], env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd = vae_cmd(args) + ["train", "--data", "fashion-mnist", "--name", name, "--overwrite", "--json", "-q", *extra]
    r = run_measured(cmd, env=vae_env(args, home, env_extra))
    r["result"] = last_json(r["stdout"])
    return strip(r)


# --------------------------------------------------------------------------- modes
def mode_throughput(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    variants = [("reference", None)] + [(f"reference[{kv}]", dict([kv.split("=", 1)])) for kv in args.reference_env]
    for i in range(args.rounds):
        row: dict[str, Any] = {}
        for label, env in variants:
            row[label] = run_reference(args, env)
            _log(f"round {i + 1} {label}: {_ips(row[label])} img/s")
        row["vaecli"] = run_vae_train(args, home, "bench-seed", ["--arch", "seed", "--max-steps", str(WARMUP + args.steps), *args.vae_args])
        _log(f"round {i + 1} vaecli: {_ips(row['vaecli'])} img/s")
        rounds.append(row)
    out: dict[str, Any] = {"rounds": rounds, "steps_timed": args.steps, "warmup_steps": WARMUP, "batch_size": 128}
    ours = [_ips(r["vaecli"]) for r in rounds]
    for label, _ in variants:
        ref = [_ips(r[label]) for r in rounds]
        pairs = [o / f for o, f in zip(ours, ref) if o and f]
        out[label] = {"images_per_second": ref, "median": _median(ref)}
        out[f"ratio_vs_{label}"] = {"per_round": [round(p, 3) for p in pairs], "median_ratio": round(_median(pairs), 3) if pairs else None}
    out["vaecli"] = {"images_per_second": ours, "median": _median(ours), "peak_rss_mib": [r["vaecli"]["peak_rss_mib"] for r in rounds]}
    return out


def mode_startup(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    env = vae_env(args, home)
    helps = [run_measured(vae_cmd(args) + ["--help"], env=env)["wall_s"] for _ in range(args.repeat)]
    out: dict[str, Any] = {"vae_help_s": helps, "vae_help_median_s": _median(helps)}
    run = home / "bench-sample"
    if not (run / "model.safetensors").exists():
        tr = run_vae_train(args, home, "bench-sample", ["--max-steps", "20"])
        if tr["rc"] != 0:
            out["sample"] = {"skipped": "could not train a run to sample from", "stderr": tr["stderr_tail"][-300:]}
            return out
    cmd = vae_cmd(args) + ["sample", "--run", "bench-sample", "-n", "64", "-o", str(home / "samples.png")]
    samples, imports = [], []
    for _ in range(args.repeat):  # alternate: import baseline, sample
        imports.append(run_measured([sys.executable, "-c", "import torch, torchvision"])["wall_s"])
        r = run_measured(cmd, env=env)
        if r["rc"] != 0:
            out["sample"] = {"skipped": f"`{' '.join(cmd[-6:])}` failed", "stderr": r["stderr_tail"][-300:]}
            return out
        samples.append(r["wall_s"])
    out["sample"] = {
        "cmd": " ".join(cmd[len(vae_cmd(args)) :]),
        "sample_s": samples,
        "import_torch_torchvision_s": imports,
        "ratio_median": round(_median(samples) / _median(imports), 3),
    }
    return out


def mode_rss(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    r = run_vae_train(args, home, "bench-rss", ["--max-steps", str(args.rss_steps), *args.vae_args])
    return {"max_steps": args.rss_steps, "peak_rss_mib": r["peak_rss_mib"], "rc": r["rc"], "run": r}


def mode_quality(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"budget_s": args.budget}
    r = run_vae_train(args, home, f"bench-q{int(args.budget)}", ["--time-budget", str(args.budget), *args.vae_args])
    res = r["result"] or {}
    out["vaecli"] = {"test_neg_elbo": (res.get("test") or {}).get("neg_elbo"), "epochs": res.get("epochs"), "steps": res.get("steps"),
                     "images_per_second": res.get("images_per_second"), "peak_rss_mib": r["peak_rss_mib"], "run": r}  # fmt: skip
    _log(f"quality vaecli {args.budget}s: test -ELBO {out['vaecli']['test_neg_elbo']}")
    if args.quality_reference:
        ref = run_reference(args, seconds=args.budget)
        out["reference"] = {"test_neg_elbo": (ref["result"] or {}).get("test_neg_elbo"), "run": ref}
        _log(f"quality reference {args.budget}s: test -ELBO {out['reference']['test_neg_elbo']}")
    return out


def mode_bf16(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"max_steps": args.bf16_steps}
    for prec in ("fp32", "bf16"):
        r = run_vae_train(args, home, f"bench-{prec}", ["--max-steps", str(args.bf16_steps), "--precision", prec, *args.vae_args])
        res = r["result"] or {}
        out[prec] = {"test_neg_elbo": (res.get("test") or {}).get("neg_elbo"), "images_per_second": res.get("images_per_second"), "run": r}
        _log(f"bf16 check {prec}: test -ELBO {out[prec]['test_neg_elbo']} at {out[prec]['images_per_second']} img/s")
    a, b = out["fp32"]["test_neg_elbo"], out["bf16"]["test_neg_elbo"]
    out["abs_diff_nats"] = round(abs(a - b), 3) if a is not None and b is not None else None
    return out


def mode_levers(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Ablation of the step's levers, in-process and interleaved (seed model, batch 128)."""
    sys.path.insert(0, str(SRC))
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from vaecli.config import ModelConfig
    from vaecli.data import read_idx, to_float
    from vaecli.losses import elbo_terms, kl_divergence, reconstruction_nll
    from vaecli.model import VAE

    raw = Path(args.data_dir) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images = read_idx(raw.read_bytes()).unsqueeze(1)  # uint8 (N, 1, 28, 28)
    ds = torchvision.datasets.FashionMNIST(args.data_dir, train=True, download=False, transform=transforms.ToTensor())

    def make(plain: bool, channels_last: bool, adam: dict[str, bool]) -> Any:
        torch.manual_seed(0)
        model = VAE(ModelConfig(arch="seed"))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **adam)
        params = list(model.parameters())
        gen = torch.Generator().manual_seed(1)
        loader = iter(DataLoader(ds, batch_size=128, shuffle=True, drop_last=True))
        perm = torch.randperm(len(images))
        pos = [0]

        def step() -> None:
            if plain:
                x, _ = next(loader)
                out = model(x)
                kl = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
                loss = (F.binary_cross_entropy(torch.sigmoid(out.logits), x, reduction="sum") + kl) / x.shape[0]
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                return
            i = pos[0] % (len(images) // 128)
            pos[0] += 1
            x = to_float(images[perm[i * 128 : (i + 1) * 128]]).contiguous(memory_format=fmt)
            out = model(x, generator=gen)
            terms = elbo_terms(reconstruction_nll(out.logits, x), kl_divergence(out.mu, out.logvar), 1.0)
            bool(torch.isfinite(terms.loss))
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return step

    variants = {
        "reference": make(True, False, {}),
        "vaecli_uint8_only": make(False, False, {"foreach": True}),
        "vaecli_no_channels_last": make(False, False, {"fused": True}),
        "vaecli_foreach_adam": make(False, True, {"foreach": True}),
        "vaecli": make(False, True, {"fused": True}),
    }
    for step in variants.values():
        for _ in range(WARMUP):
            step()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.lever_rounds):
        for k, step in variants.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(3):
                step()
            wall[k].append((time.perf_counter() - t) / 3 * 1000)
            cpu[k].append((time.process_time() - c) / 3 * 1000)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                           "rounds": args.lever_rounds, "steps_per_burst": 3}  # fmt: skip
    ref_w, ref_c = statistics.median(wall["reference"]), statistics.median(cpu["reference"])
    for k in variants:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        out[k] = {"wall_ms_per_step": round(w, 1), "cpu_ms_per_step": round(c, 1),
                  "speedup_wall": round(ref_w / w, 3), "speedup_cpu": round(ref_c / c, 3)}  # fmt: skip
        _log(f"levers {k}: {w:.0f} ms/step wall, {c:.0f} ms CPU (x{ref_w / w:.2f} / x{ref_c / c:.2f} vs reference)")
    return out


def mode_roofline(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """What this CPU can do at best: dense matmul GFLOP/s (fp32, bf16) and the seed model's FLOPs
    per training image (forward + backward, counted by torch), hence its images/s limit."""
    sys.path.insert(0, str(SRC))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vaecli.config import ModelConfig
    from vaecli.losses import kl_divergence, reconstruction_nll
    from vaecli.model import VAE

    def gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "matmul_n": 2048}
    out["matmul_gflops_fp32"] = round(gflops(torch.float32), 1)
    # 512 for bf16: without native bf16 (AVX2 only) one 2048^3 product takes a minute
    out["matmul_gflops_bf16"] = round(gflops(torch.bfloat16, n=512, seconds=2.0), 2)
    for arch in ("seed", "conv"):
        model = VAE(ModelConfig(arch=arch))
        x = torch.rand(128, 1, 28, 28)
        with FlopCounterMode(display=False) as fc:
            o = model(x)
            (reconstruction_nll(o.logits, x) + kl_divergence(o.mu, o.logvar)).mean().backward()
        per_image = fc.get_total_flops() / 128 / 1e9
        out[arch] = {"gflop_per_training_image": round(per_image, 4),
                     "limit_images_per_second_fp32": round(out["matmul_gflops_fp32"] / per_image, 1),
                     "limit_images_per_second_bf16": round(out["matmul_gflops_bf16"] / per_image, 1)}  # fmt: skip
    _log(f"roofline: {out}")
    return out


def mode_profile(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Where one training step of the seed model goes: torch.profiler over ``--profile-steps``
    steps of vaecli's own step (Trainer internals are not needed: the same model, loss and
    fused Adam on uint8 data in memory, channels_last), top operators by self CPU time."""
    sys.path.insert(0, str(SRC))
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vaecli.config import ModelConfig
    from vaecli.data import read_idx, to_float
    from vaecli.losses import elbo_terms, kl_divergence, reconstruction_nll
    from vaecli.model import VAE

    raw = Path(args.data_dir) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images = read_idx(raw.read_bytes()).unsqueeze(1)
    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="seed")).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        x = to_float(images[i * 128 : (i + 1) * 128]).contiguous(memory_format=torch.channels_last)
        o = model(x, generator=gen)
        terms = elbo_terms(reconstruction_nll(o.logits, x), kl_divergence(o.mu, o.logvar), 1.0)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for i in range(WARMUP):
        step(i)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.profile_steps):
            step(WARMUP + i)
    wall = (time.perf_counter() - t0) / args.profile_steps
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    top = [{"op": e.key, "calls_per_step": e.count / args.profile_steps,
            "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / args.profile_steps, 2),
            "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:15]]  # fmt: skip
    for r in top[:8]:
        _log(f"profile {r['op']}: {r['self_cpu_ms_per_step']} ms/step ({r['share']:.0%})")
    return {"steps": args.profile_steps, "wall_ms_per_step_profiled": round(wall * 1000, 1), "top_ops": top}


def mode_overhead(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The training loop's overhead (issue 14): in this one process, interleaved rounds of a bare
    loop and of ``vae train``'s loop on the same model (``--overhead-arch``, default conv) and data
    (Fashion-MNIST uint8 in memory, batch 128, fp32, channels_last, fused Adam, clip 1.0):

    * ``bare``: index, convert, forward, BCE + KL, zero_grad, backward, clip, Adam; nothing else;
    * ``trainer``: the body of :meth:`Trainer.fit`'s inner loop on a real Trainer (``_should_stop``,
      ``_step``, ``_count``, progress reports every 0.1 s to a callback): schedules, the
      non-finite flag, running sums, clocks and checks included; epoch ends excluded.

    Reports images/s of both (median over rounds) and trainer / bare; ``--overhead-profile`` adds
    a cProfile of the trainer rounds (top functions by own time)."""
    sys.path.insert(0, str(SRC))
    os.environ.setdefault("VAE_HOME", str(home))
    import cProfile
    import pstats

    import torch

    from vaecli import training
    from vaecli.config import DataConfig, ModelConfig, TrainConfig
    from vaecli.data import ImageData, read_idx, to_float
    from vaecli.losses import bernoulli_nll, kl_divergence
    from vaecli.model import VAE
    from vaecli.recipe import default_recipe

    raw = Path(args.data_dir) / "FashionMNIST" / "raw"
    images = read_idx((raw / "train-images-idx3-ubyte").read_bytes()).unsqueeze(1)
    test = read_idx((raw / "t10k-images-idx3-ubyte").read_bytes()).unsqueeze(1)[:500]
    arch = args.overhead_arch
    rec = default_recipe(28, 1, "cpu", arch)
    mcfg = ModelConfig(**{k: v for k, v in rec.items() if k in ("arch", "widths", "hidden", "latent_dim", "likelihood")})
    bs, burst = 128, args.overhead_steps

    torch.manual_seed(0)
    model = VAE(mcfg).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=rec["lr"], fused=True)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(images))
    pos = [0]

    def bare(n: int) -> None:
        for _ in range(n):
            i = pos[0] % (len(images) // bs)
            pos[0] += 1
            x = to_float(images[perm[i * bs : (i + 1) * bs]]).contiguous(memory_format=torch.channels_last)
            out = model(x, generator=gen)
            loss = (bernoulli_nll(out.logits, x) + kl_divergence(out.mu, out.logvar)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

    tcfg = TrainConfig(
        **{k: v for k, v in rec.items() if k in ("batch_size", "lr", "lr_schedule", "warmup_steps")}, epochs=10, device="cpu"
    )
    tr = training.start_run(mcfg, DataConfig(name="fashion-mnist"), tcfg, name="overhead", overwrite=True,
                            data=(ImageData(images), ImageData(test)))  # fmt: skip
    s = tr._session()
    tperm = training.epoch_permutation(len(images), 0, 0)
    reports = [0]

    def cb(p: Any) -> None:
        reports[0] += 1

    def trainer(n: int) -> None:  # Trainer.fit's inner loop body, verbatim
        for _ in range(n):
            if tr.step >= s.spe - 1:  # stay inside the epoch (epoch ends are not the loop's overhead)
                tr.step = 0
            if tr._should_stop(s, None):
                raise RuntimeError("unexpected stop")
            terms, beta, lr = tr._step(s, tperm)
            tr._count(s)
            if tr._report_due(s):
                tr._report(s, cb, terms, beta, lr)

    variants = {"bare": bare, "trainer": trainer}
    for f in variants.values():
        f(WARMUP)
    ips: dict[str, list[float]] = {k: [] for k in variants}
    prof = cProfile.Profile() if args.overhead_profile else None
    for _ in range(args.overhead_rounds):
        for k, f in variants.items():
            if prof is not None and k == "trainer":
                prof.enable()
            t = time.perf_counter()
            f(burst)
            ips[k].append(burst * bs / (time.perf_counter() - t))
            if prof is not None and k == "trainer":
                prof.disable()
    med = {k: statistics.median(v) for k, v in ips.items()}
    ratios = [t / b for t, b in zip(ips["trainer"], ips["bare"], strict=True)]
    out: dict[str, Any] = {
        "arch": arch, "batch_size": bs, "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "rounds": args.overhead_rounds, "steps_per_round": burst, "reports": reports[0],
        "bare_images_per_second": round(med["bare"], 1), "trainer_images_per_second": round(med["trainer"], 1),
        "ratio_trainer_to_bare": round(statistics.median(ratios), 3), "ratios_per_round": [round(r, 3) for r in ratios],
        "per_round": {k: [round(v, 1) for v in vs] for k, vs in ips.items()},
    }  # fmt: skip
    if prof is not None:
        st = pstats.Stats(prof)
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:20]  # type: ignore[attr-defined]
        steps = args.overhead_rounds * burst
        out["profile_top_own_time"] = [{"function": f"{Path(fn).name}:{line}({name})", "own_ms_per_step": round(v[2] / steps * 1000, 3),
                                        "calls_per_step": round(v[1] / steps, 2)} for (fn, line, name), v in rows]  # fmt: skip
    _log(f"overhead ({arch}): bare {med['bare']:.0f} img/s, trainer {med['trainer']:.0f} img/s, ratio {out['ratio_trainer_to_bare']}")
    return out


def mode_omp(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The OpenMP wait policy by measurement: ``--modes overhead`` in a fresh process under
    OMP_WAIT_POLICY=PASSIVE and =ACTIVE, on the machine as it is ("idle") and with a second
    process burning one core ("busy"); images/s of the trainer loop and the bare loop in each."""
    out: dict[str, Any] = {}
    for load in ("idle", "busy"):
        burner = None
        if load == "busy":
            # burns one core until this process ends (it polls its parent, so it dies with it)
            burner = subprocess.Popen([sys.executable, "-c", "import os\np = os.getppid()\nwhile os.getppid() == p: pass"])
        try:
            for policy in ("PASSIVE", "ACTIVE"):
                env = {**os.environ, "OMP_WAIT_POLICY": policy}
                cmd = [sys.executable, str(Path(__file__).resolve()), "--modes", "overhead", "--data-dir", args.data_dir,
                       "--overhead-rounds", str(args.overhead_rounds), "--overhead-steps", str(args.overhead_steps),
                       "--overhead-arch", args.overhead_arch]  # fmt: skip
                r = run_measured(cmd, env=env, timeout=args.omp_timeout)
                res = (last_json(r["stdout"]) or {}).get("overhead") or {}
                out[f"{load}_{policy.lower()}"] = {
                    k: res.get(k) for k in ("bare_images_per_second", "trainer_images_per_second", "ratio_trainer_to_bare")
                }
                out[f"{load}_{policy.lower()}"].update(rc=r["rc"], wall_s=r["wall_s"], load_before=r["load_before"])
                if not res:  # killed at the timeout: slower than the steps it had to run in that time
                    out[f"{load}_{policy.lower()}"]["timed_out_after_s"] = args.omp_timeout
                _log(f"omp {load} {policy}: {out[f'{load}_{policy.lower()}']}")
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    return out


def _ips(r: dict[str, Any]) -> float:
    return float((r.get("result") or {}).get("images_per_second") or 0.0)


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x]
    return round(statistics.median(xs), 2) if xs else 0.0


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="ignore")
        info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")
        flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
        info["avx512f"] = " avx512f" in flags
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx_bf16"] = "amx_bf16" in flags
    except OSError:
        pass
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import torch, json; from vaecli.device import cpu_has_bf16; "
         "print(json.dumps({'torch': torch.__version__, 'capability': torch.backends.cpu.get_cpu_capability(), "
         "'threads': torch.get_num_threads(), 'cpu_has_bf16': cpu_has_bf16()}))", str(SRC)],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode == 0:
        info.update(json.loads(probe.stdout))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--modes", default="throughput,levers,startup,rss", help="throughput,levers,startup,rss,quality,bf16,roofline,profile,overhead,omp"
    )
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="folder holding FashionMNIST/raw (default $VAE_DATA_DIR)")
    p.add_argument("--rounds", type=int, default=2, help="throughput: ref/ours alternations")
    p.add_argument("--steps", type=int, default=40, help="timed steps after the 5 warm-up steps")
    p.add_argument("--reference-env", action="append", default=[], metavar="K=V", help="extra reference variant with this env")
    p.add_argument("--repeat", type=int, default=3, help="startup: repetitions")
    p.add_argument("--rss-steps", type=int, default=100)
    p.add_argument("--budget", type=float, default=120.0, help="quality: --time-budget seconds")
    p.add_argument("--quality-reference", action="store_true", help="quality: also train the plain recipe for the budget")
    p.add_argument("--bf16-steps", type=int, default=100)
    p.add_argument("--profile-steps", type=int, default=10, help="profile: profiled steps")
    p.add_argument("--lever-rounds", type=int, default=8, help="levers: interleaved bursts of 3 steps per variant")
    p.add_argument("--overhead-rounds", type=int, default=10, help="overhead: interleaved rounds of bare and trainer")
    p.add_argument("--overhead-steps", type=int, default=20, help="overhead: steps per round and variant")
    p.add_argument("--overhead-arch", default="conv", help="overhead: conv (the default model) | seed")
    p.add_argument("--overhead-profile", action="store_true", help="overhead: cProfile the trainer rounds")
    p.add_argument("--omp-timeout", type=float, default=150.0, help="omp: seconds per child before it is stopped")
    p.add_argument("--vae", nargs="+", help="the vae command (default: this python -m vaecli with ./src first)")
    p.add_argument("--vae-args", nargs=argparse.REMAINDER, default=[], help="extra arguments for every vae train (last)")
    p.add_argument("--keep", action="store_true", help="keep the runs folder")
    p.add_argument("--child-reference", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_reference:
        print(json.dumps(reference_child(args.data_dir, args.steps, args.child_seconds, None)))
        return 0
    if not (Path(args.data_dir) / "FashionMNIST" / "raw").is_dir():
        p.error(f"no FashionMNIST/raw under {args.data_dir} (use --data-dir)")

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    table = {"throughput": mode_throughput, "levers": mode_levers, "startup": mode_startup, "rss": mode_rss, "quality": mode_quality,
             "bf16": mode_bf16, "roofline": mode_roofline, "profile": mode_profile, "overhead": mode_overhead, "omp": mode_omp}  # fmt: skip
    bad = [m for m in modes if m not in table]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}")
    home = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(), "load_at_start": machine_load(),
                              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}  # fmt: skip
    try:
        for m in modes:
            _log(f"mode {m}")
            report[m] = table[m](args, home)
    finally:
        report["load_at_end"] = machine_load()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        sys.path.insert(0, str(SRC))
        from vaecli.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
