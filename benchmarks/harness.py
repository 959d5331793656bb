"""What every benchmark shares: this checkout's ``src`` first on ``sys.path``, the machine block,
measured ``vae ...`` subprocesses, in-process trainers, and JSON results written atomically.

A benchmark imports this module first (``import harness``: the scripts run from ``benchmarks/``)::

    import harness                      # ./src is now importable as vaecli
    from vaecli.train.run import start_run

and, when it has modes, hands them to :func:`main`, which parses the common flags, records the
machine, runs the modes and writes one JSON file with a ``machine`` block. ``python
benchmarks/harness.py machine`` prints the machine block alone (scripts/gpu_check.sh uses it).

Benchmarks are run by hand, never in CI: the numbers are only comparable within one run, and
every result records the load average and the processes running beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

OMP_GIVEN = os.environ.get("OMP_WAIT_POLICY")  # the user's own OpenMP wait policy, if any
WARMUP = 5  # steps before a rate is timed, as `vae train` reports images/s (vaecli.train.session.RATE_WARMUP_STEPS)
Mode = Callable[[argparse.Namespace, Path], dict[str, Any]]


# --------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_load() -> dict[str, Any]:
    """The load average and how many other processes are running right now (state R)."""
    running, me = 0, os.getpid()
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        running += stat[stat.rfind(")") + 2 :].startswith("R")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"loadavg": load, "running_processes": running}


def machine_info(note: str | None = None) -> dict[str, Any]:
    """The ``machine`` block of every result: CPU, cores, torch's CPU capability, native bf16
    (:func:`vaecli.device.cpu_has_bf16`), versions, threads, the load, and the GPU when there is one."""
    import torch

    from vaecli.device import cpu_has_bf16

    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_has_bf16": cpu_has_bf16(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "python": platform.python_version(), "platform": platform.platform(), **machine_load(),
    }  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "compute_capability": f"{p.major}.{p.minor}",
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False)}  # fmt: skip
    if note:
        info["note"] = note
    return info


# --------------------------------------------------------------------------- JSON out
def write_json(path: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write ``result`` atomically (:func:`vaecli.fileio.atomic_write_json`), with a ``machine``
    block added when it has none."""
    from vaecli.fileio import atomic_write_json

    if "machine" not in result:
        result = {"machine": machine_info(), **result}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, result)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A result file written before ({} when there is none)."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def last_json(text: str) -> dict[str, Any] | None:
    """The JSON object ``vae ... --json`` printed: the whole output, else its last line that is one."""
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


def log(msg: str) -> None:
    """One progress line on stderr (stdout may carry the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float], digits: int = 2) -> float:
    """The median of the non-zero values (0.0 when there are none)."""
    xs = [x for x in xs if x]
    return round(statistics.median(xs), digits) if xs else 0.0


# --------------------------------------------------------------------------- measured subprocesses
def run_measured(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, exit code, stdout, the stderr tail (on failure) and its own
    peak RSS in MiB: the child's ``VmHWM`` polled from /proc every few ms (``wait4``'s ``ru_maxrss``
    would start from this process's RSS at fork). Stopped after ``timeout`` seconds (``timed_out``)."""
    before = machine_load()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = None if timeout is None else time.monotonic() + timeout
        hwm_kib, timed_out = 0, False
        while True:
            hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status = os.waitpid(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 3), "peak_rss_mib": round(hwm_kib / 1024, 1), "stdout": stdout,
            "stderr_tail": stderr[-1500:] if proc.returncode != 0 else "", "timed_out": timed_out,
            "load_before": before, "load_after": machine_load()}  # fmt: skip


def _vm_hwm_kib(pid: int) -> int:
    """The peak resident set size (VmHWM, KiB) of a running process; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def plain_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment as the user had it (without the OpenMP policy :func:`main` set), plus ``extra``:
    for the plain recipe, which does not choose a policy as ``vae`` does."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY" or OMP_GIVEN is not None}
    return {**env, **(extra or {})}


def vae_env(home: Path | None = None, data_dir: str | None = None, extra: dict[str, str] | None = None, src: Path = SRC) -> dict[str, str]:
    """The environment of a ``vae`` subprocess: ``src`` first on PYTHONPATH, runs under ``home``
    (default: ``$VAE_HOME`` as it is), data under ``data_dir``, ``VAE_DEBUG`` off, then ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if home is not None:
        env["VAE_HOME"] = str(home)
    if data_dir:
        env["VAE_DATA_DIR"] = data_dir
    env.pop("VAE_DEBUG", None)
    env.update(extra or {})
    return env


def vae_command(args: argparse.Namespace | None = None) -> list[str]:
    """The ``vae`` command: ``--vae`` when given, else this Python's ``-m vaecli``."""
    given = getattr(args, "vae", None)
    return list(given) if given else [sys.executable, "-m", "vaecli"]


def run_vae(
    args: argparse.Namespace, home: Path, argv: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """One measured ``vae ARGV`` (:func:`run_measured`) with its ``--json`` output parsed into ``result``."""
    r = run_measured(vae_command(args) + argv, env=vae_env(home, args.data_dir, env), timeout=timeout)
    r["result"] = last_json(r.pop("stdout"))
    return r


def train_json(args: argparse.Namespace, home: Path, name: str, flags: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``vae train`` on the benchmark's Fashion-MNIST as run ``name`` (``--json -q``), measured."""
    argv = ["train", "--data", "fashion-mnist", "--data-dir", args.data_dir, "--name", name, "--overwrite", "--json", "-q", *flags]
    return run_vae(args, home, argv, env)


def images_per_second(run: dict[str, Any]) -> float:
    """images/s of a measured run's JSON result (0.0 when it printed none)."""
    return float((run.get("result") or {}).get("images_per_second") or 0.0)


# --------------------------------------------------------------------------- data and trainers in this process
def mini_as_torchvision(root: Path) -> Path:
    """Write the shipped ``fashion-mnist-mini`` as torchvision's ``FashionMNIST/raw`` IDX files under
    ``root``, so that every benchmark (the plain recipe's ``ToTensor`` loader included) can run on it."""
    import torch

    from vaecli.data import IDX_FILES, load_mini

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train, test = load_mini("train"), load_mini("test")
    tensors = (train.images[:, 0], train.labels, test.images[:, 0], test.labels)
    for name, t in zip(IDX_FILES, tensors):
        t = t.to(torch.uint8).contiguous()
        (raw / name).write_bytes(struct.pack(">HBB", 0, 8, t.dim()) + struct.pack(f">{t.dim()}I", *t.shape) + t.numpy().tobytes())
    return root


def load_fmnist(data_dir: str) -> tuple[Any, Any]:
    """Fashion-MNIST (train, test) as :class:`vaecli.data.ImageData` from ``data_dir`` (no download)."""
    from vaecli.config import DataConfig
    from vaecli.data import load_data

    train, test, _ = load_data(DataConfig(name="fashion-mnist", root=data_dir), download=False)
    return train, test


def make_trainer(data: tuple[Any, Any], given: dict[str, Any], name: str, data_name: str = "fashion-mnist",
                 val_size: int = 500, test_size: int = 500) -> Any:  # fmt: skip
    """A fresh :class:`vaecli.train.trainer.Trainer` on ``data`` = (train, test) with the rule's defaults
    for that data (:func:`vaecli.train.recipe.build_configs`) under ``given`` (e.g. ``{"arch": "seed",
    "max_steps": 45}``), on the CPU, with epochs enough never to end (each ``fit`` call then runs
    ``max_steps`` steps); small validation and test splits keep ``fit``'s evaluations short (they
    are never counted in its images/s)."""
    import torch

    from vaecli.config import DataConfig
    from vaecli.data import subset
    from vaecli.train.recipe import build_configs
    from vaecli.train.run import start_run

    train, test = data
    model_cfg, train_cfg = build_configs({"device": "cpu", "save_every": 1e9, "epochs": 10**6, **given}, train.image_size, train.channels)
    test = subset(test, torch.arange(min(test_size, len(test))))
    data_cfg = DataConfig(name=data_name, val_size=min(val_size, len(train) // 10))
    return start_run(model_cfg, data_cfg, train_cfg, name=name, overwrite=True, data=(train, test))


def use_cpu_clock() -> None:
    """Make ``vae train``'s clock (``--time-budget``, images/s) count CPU seconds of this process
    on one thread, so that recipes compare fairly on a shared machine; call before training."""
    import torch

    from vaecli.train import session

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)
    session.clock = time.process_time


# --------------------------------------------------------------------------- the runner of a benchmark's modes
def main(doc: str, modes: dict[str, Mode], default: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         argv: list[str] | None = None, note: str | None = None) -> int:  # fmt: skip
    """Parse the common flags (``--modes``, ``--out``, ``--data-dir``, ``--data``, ``--vae``,
    ``--vae-args``, ``--keep``, ``--note``) and the benchmark's own, run the modes in order with a fresh runs
    folder, and write one JSON report (``--out``, else stdout) with the machine and the load."""
    from vaecli.paths import data_root

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the vae entry point does, before torch loads: trainers run here
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default=default, help=f"comma separated, of: {', '.join(modes)} (default {default})")
    p.add_argument("--out", help="write the JSON here, atomically (default: stdout)")
    p.add_argument("--data-dir", default=None, help="folder holding FashionMNIST/raw (default: $VAE_DATA_DIR)")
    p.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "fashion-mnist-mini"),
                   help="fashion-mnist-mini: the shipped 2,000 + 500 images, a dry run in seconds")  # fmt: skip
    p.add_argument("--vae", nargs="+", help="the vae command (default: this python -m vaecli with ./src first)")
    p.add_argument("--vae-args", nargs=argparse.REMAINDER, default=[], help="extra arguments for every vae train (last)")
    p.add_argument("--keep", action="store_true", help="keep the runs folder")
    p.add_argument("--note", default=note, help="a line about the machine for the JSON (e.g. 'shared with other jobs')")
    if add_arguments:
        add_arguments(p)
    args = p.parse_args(argv)
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in chosen if m not in modes]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)} (choose from {', '.join(modes)})")
    home = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    if args.data == "fashion-mnist-mini":
        args.data_dir = str(mini_as_torchvision(home / "data"))
    args.data_dir = str(data_root(args.data_dir))
    if not (Path(args.data_dir) / "FashionMNIST" / "raw").is_dir():
        p.error(f"no FashionMNIST/raw under {args.data_dir} (use --data-dir, or --data fashion-mnist-mini)")
    saved_home = os.environ.get("VAE_HOME")
    os.environ["VAE_HOME"] = str(home / "runs")  # in-process trainers write their runs here
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                              "data": args.data, "machine": machine_info(args.note)}  # fmt: skip
    try:
        for m in chosen:
            log(f"mode {m}")
            report[m] = modes[m](args, home / "runs")
    finally:
        report["load_at_end"] = machine_load()
        if saved_home is None:
            os.environ.pop("VAE_HOME", None)
        else:
            os.environ["VAE_HOME"] = saved_home
        if not args.keep:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    if args.out:
        write_json(args.out, report)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["machine"]:
        sys.exit("usage: python benchmarks/harness.py machine   (prints the machine block as JSON)")
    print(json.dumps(machine_info()))
