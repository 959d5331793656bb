"""Crash test: SIGKILL `vae train` at random moments and check that the run survives every kill.

    python benchmarks/crash_test.py --kills 20 --batch-size 64 --epochs 3 --save-every 0.1 \
        --max-after-start 12 --anytime 0.2 --in-write 0.4 --rng 3 --out benchmarks/results/crash_test.json

Trains a small model (``--latent-dim 8``, the default conv arch) on the embedded
``fashion-mnist-mini`` data on the CPU, with frequent checkpoints (``--save-every``), in a
subprocess that is killed with SIGKILL ``--kills`` times, each at one of three kinds of moment:
``anytime`` (random since the process started: imports, data loading, config writes),
``training`` (random within ``--max-after-start`` seconds of training: steps, evaluation,
checkpoints) or ``write`` (random within ``--write-window`` seconds after a checkpoint's temp file
appears: inside the checkpoint). Nothing in vaecli is patched or slowed down. After every kill it
checks that

- ``vae info NAME --json`` exits 0 and prints a JSON object (once ``config.json`` exists),
- ``config.json`` parses and validates, ``model.safetensors`` loads with
  :func:`vaecli.runs.store.load_model` and ``train_state.safetensors`` with
  :func:`vaecli.runs.store.load_train_state` (whenever the file exists),
- the run can be continued: the next attempt uses ``--resume`` once a training state exists
  (a fresh start with the same ``--name`` before that, which must not be refused).

A kill that breaks any of these counts as a corrupt run. Leftover temp files of interrupted
writes are counted (they show that the kill landed inside a checkpoint write) and must be gone
after the next resume. At the end the run is resumed to completion and its weights and metrics
are compared with an uninterrupted run of the same seed: on the CPU they must be bit-identical.
Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness

ROOT = harness.ROOT


def _train_args(name: str, args: argparse.Namespace) -> list[str]:
    return [
        "--data", "fashion-mnist-mini", "--latent-dim", str(args.latent_dim), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--device", "cpu",
        "--save-every", str(args.save_every), "--name", name, "-q", "--json",
    ]  # fmt: skip


class Attempt:
    """One `vae train` subprocess; ``started`` is set when training begins (its header line)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started = threading.Event()
        self.t_started: float | None = None
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if line.startswith("run ") and not self.started.is_set():
                self.t_started = time.perf_counter() - self.t0
                self.started.set()

    def kill(self) -> float:
        """SIGKILL now; returns seconds since the process started."""
        t = time.perf_counter() - self.t0
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._reader.join(timeout=5)
        return t

    def finish(self, timeout: float) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, out


def _vae(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vaecli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) if run.is_dir() else []


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns if p.exists() else 0


def _write_phase(run: Path, new_temps: list[str], state_mtime_before: int) -> str:
    """Where in a checkpoint the kill landed, from what it left: a new temp file names the file
    being written; a train_state rewritten by this attempt and newer than model.safetensors means
    between the two renames."""
    for name in ("train_state.safetensors", "model.safetensors", "metrics.jsonl", "loss.png", "summary.json", "config.json"):
        if any(t.startswith(f".{name}.") for t in new_temps):
            return f"writing {name}"
    state, model = _mtime(run / "train_state.safetensors"), _mtime(run / "model.safetensors")
    if state != state_mtime_before and state > model:
        return "between train_state and model"
    return "-"


def check_run(run: Path, env: dict[str, str]) -> dict[str, Any]:
    """Everything a user relies on after a crash; ``problems`` lists what is broken."""
    import torch

    from vaecli.model.vae import VAE
    from vaecli.runs import store as ckpt

    rep: dict[str, Any] = {"problems": [], "files": sorted(p.name for p in run.iterdir()) if run.is_dir() else []}
    has_cfg, has_model, has_state = ((run / f).exists() for f in (ckpt.CONFIG, ckpt.MODEL, ckpt.STATE))
    rep["temp_files"] = _temp_files(run)
    if not has_cfg:
        if has_model or has_state:
            rep["problems"].append("weights or state without config.json")
        rep["stage"] = "no run yet"
        return rep
    info = _vae(["info", run.name, "--json"], env)
    if info.returncode != 0:
        rep["problems"].append(f"vae info exit {info.returncode}: {info.stderr.strip()[:200]}")
    else:
        try:
            obj = json.loads(info.stdout)
            assert isinstance(obj, dict) and obj["name"] == run.name
            rep["info_steps"] = obj.get("steps")
        except (ValueError, AssertionError, KeyError) as exc:
            rep["problems"].append(f"vae info printed no valid JSON ({exc!r})")
    try:
        cfg = ckpt.read_config(run)
    except Exception as exc:  # any failure is a finding
        rep["problems"].append(f"config.json: {exc}")
        return rep
    if has_model:
        try:
            model, _, _ = ckpt.load_model(run)
            rep["model_finite"] = all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())
            if not rep["model_finite"]:
                rep["problems"].append("model.safetensors holds non-finite weights")
        except Exception as exc:
            rep["problems"].append(f"model.safetensors: {exc}")
    if has_state:
        try:
            m = VAE(cfg.model)
            opt = torch.optim.Adam(m.parameters(), lr=cfg.train.lr)
            _, st = ckpt.load_train_state(run, opt, m)
            rep["state"] = {"epoch": st.epoch, "step": st.step, "global_step": st.global_step}
        except Exception as exc:
            rep["problems"].append(f"train_state.safetensors: {exc}")
    rep["stage"] = "resumable" if has_state else "config only" if not has_model else "weights without state"
    return rep


def _weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--rng", type=int, default=1, help="seed of the kill times")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--save-every", type=float, default=0.5, help="seconds between checkpoints (small: kills land in writes)")
    ap.add_argument("--max-after-start", type=float, default=3.0, help="kill at most this many seconds into training")
    ap.add_argument("--anytime", type=float, default=0.2, help="fraction of kills at a random moment since process start")
    ap.add_argument(
        "--in-write", type=float, default=0.3, help="fraction of kills aimed at a checkpoint write (after its temp file appears)"
    )
    ap.add_argument("--write-window", type=float, default=0.3, help="aimed kills land 0..this many seconds after the temp file appears")
    ap.add_argument("--src", type=Path, default=harness.SRC, help="vaecli source to test")
    ap.add_argument("--home", type=Path, default=None, help="VAE_HOME (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.src.resolve() != harness.SRC:
        sys.path.insert(0, str(args.src))  # this process checks the runs with the vaecli it tests
    import torch

    torch.set_num_threads(1)  # the checks only; the runs use the default
    rng = random.Random(args.rng)
    home = args.home or Path(tempfile.mkdtemp(prefix="vae-crash-"))
    env = harness.vae_env(home, src=args.src)
    name, ref_name = "crash", "reference"
    run = home / name
    kills: list[dict[str, Any]] = []
    finished_early = False
    t_start_est = 10.0
    t_begin = time.perf_counter()
    seen_temp: set[str] = set()
    while len(kills) < args.kills:
        resume = (run / "train_state.safetensors").exists()
        state_mtime = _mtime(run / "train_state.safetensors")
        cmd = [
            sys.executable,
            "-m",
            "vaecli",
            "train",
            *(["--resume", name, "--save-every", str(args.save_every), "-q", "--json"] if resume else _train_args(name, args)),
        ]
        att = Attempt(cmd, env)
        u = rng.random()
        mode = "anytime" if u < args.anytime else "write" if u < args.anytime + args.in_write else "training"
        if mode == "write":  # wait for a checkpoint write to begin (its temp file), then kill within --write-window s
            while not att.started.wait(0.05):
                if att.proc.poll() is not None:
                    break
            limit = time.perf_counter() + 30
            while att.proc.poll() is None and time.perf_counter() < limit and not _temp_files(run):
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, args.write_window))
        elif mode == "anytime":
            delay = rng.uniform(0.0, t_start_est + args.max_after_start)
            deadline = att.t0 + delay
            while time.perf_counter() < deadline and att.proc.poll() is None:
                time.sleep(0.005)
        else:
            delay = rng.uniform(0.0, args.max_after_start)
            while not att.started.wait(0.05):
                if att.proc.poll() is not None:
                    break
            if att.t_started is not None:
                t_start_est = 0.7 * t_start_est + 0.3 * att.t_started
            deadline = time.perf_counter() + delay
            while time.perf_counter() < deadline and att.proc.poll() is None:
                time.sleep(0.005)
        if att.proc.poll() is not None:  # it ended on its own
            rc, out = att.finish(60)
            if rc == 0:
                finished_early = True
                print(f"run finished before kill {len(kills) + 1}; stopping the kills", flush=True)
                break
            kills.append({"kill": len(kills) + 1, "resume": resume, "exited": rc, "stderr": att.stderr[-3:],
                          "problems": [f"train exited {rc} on its own: {' | '.join(att.stderr[-2:])}"]})  # fmt: skip
            print(f"kill {len(kills)}: train exited {rc} by itself: {att.stderr[-2:]}", flush=True)
            continue
        at = att.kill()
        rep = check_run(run, env)
        new_temp = sorted(set(rep["temp_files"]) - seen_temp)  # left by this kill: it hit a write
        seen_temp |= set(rep["temp_files"])
        rep["write_phase"] = _write_phase(run, new_temp, state_mtime)
        rec = {"kill": len(kills) + 1, "resume": resume, "mode": mode, "at_s": round(at, 3), "temp_at_kill": bool(new_temp),
               "in_training": att.started.is_set(), "new_temp_files": new_temp, **rep}  # fmt: skip
        kills.append(rec)
        print(f"kill {rec['kill']:2d}: {mode:8s} t={at:6.2f}s resume={resume!s:5} stage={rep.get('stage')!s:18} "
              f"state={rep.get('state')} phase={rep.get('write_phase')} new temp={new_temp} problems={rep['problems']}", flush=True)  # fmt: skip
    # ---- resume to the end
    final: dict[str, Any] = {}
    if not finished_early:
        resume = (run / "train_state.safetensors").exists()
        cmd = [sys.executable, "-m", "vaecli", "train", *(["--resume", name, "-q", "--json"] if resume else _train_args(name, args))]
        att = Attempt(cmd, env)
        rc, out = att.finish(3600)
        final = {"exit": rc, "stderr_tail": att.stderr[-2:]}
        if rc == 0:
            final["summary"] = json.loads(out)
    final["temp_files_after_resume"] = _temp_files(run)
    final_check = check_run(run, env)
    # ---- the same run without interruptions
    att = Attempt([sys.executable, "-m", "vaecli", "train", *_train_args(ref_name, args)], env)
    rc_ref, out_ref = att.finish(3600)
    equal: dict[str, Any] = {"reference_exit": rc_ref}
    if rc_ref == 0 and final.get("exit") == 0:
        a, b = _weights(run), _weights(home / ref_name)
        diff = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        max_abs = max((float((a[k].double() - b[k].double()).abs().max()) for k in diff if k in b), default=0.0)
        from vaecli.runs.store import read_metrics

        ma, mb = read_metrics(run), read_metrics(home / ref_name)
        keys = ("epoch", "step", "train", "val", "active_units")
        equal.update({
            "tensors": len(a), "tensors_different": len(diff), "max_abs_difference": max_abs,
            "weights_bit_identical": not diff and set(a) == set(b),
            "metrics_identical": [{k: r.get(k) for k in keys} for r in ma] == [{k: r.get(k) for k in keys} for r in mb],
            "steps": [final["summary"].get("steps"), json.loads(out_ref).get("steps")],
        })  # fmt: skip
    corrupt = [k["kill"] for k in kills if k.get("problems")]
    result = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/crash_test.py", *sys.argv[1:]]),
        "machine": harness.machine_info(),
        "train_args": _train_args(name, args),
        "kills": len(kills),
        "kills_by_mode": {m: sum(1 for k in kills if k.get("mode") == m) for m in ("anytime", "training", "write")},
        "kills_in_training": sum(1 for k in kills if k.get("in_training")),
        "kills_during_checkpoint_write": sum(1 for k in kills if k.get("write_phase", "-") != "-"),
        "kills_by_write_phase": {
            p: sum(1 for k in kills if k.get("write_phase") == p) for p in sorted({k.get("write_phase", "-") for k in kills})
        },
        "kills_before_first_checkpoint": sum(1 for k in kills if not k.get("resume")),
        "resumes": sum(1 for k in kills if k.get("resume")),
        "corrupt_runs": len(corrupt),
        "corrupt_kills": corrupt,
        "survived": len(kills) - len(corrupt),
        "finished_early": finished_early,
        "final": final,
        "final_check_problems": final_check["problems"],
        "comparison_with_uninterrupted_run": equal,
        "seconds": round(time.perf_counter() - t_begin, 1),
        "details": kills,
    }
    if args.out:
        harness.write_json(args.out, result)
    short = {k: v for k, v in result.items() if k != "details"}
    print(json.dumps(short, indent=2))
    ok = not corrupt and not final_check["problems"] and equal.get("weights_bit_identical") and not final["temp_files_after_resume"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
