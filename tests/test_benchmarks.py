"""The benchmark harness and its modes in a tiny form: they import, run and write what they say
(values and shapes only: speed is never asserted here, it goes into benchmarks/results/)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import harness  # noqa: E402

MACHINE_KEYS = {"cpu_model", "cores", "cpu_capability", "cpu_has_bf16", "torch", "torch_threads", "loadavg", "running_processes"}


def test_every_benchmark_module_imports() -> None:
    names = sorted(p.stem for p in BENCH.glob("*.py"))
    assert {"harness", "reference", "bench_throughput", "bench_overhead", "bench_recovery"} <= set(names)
    for name in names:
        mod = importlib.import_module(name)
        modes = getattr(mod, "MODES", {})
        assert all(callable(f) for f in modes.values()), name


def test_machine_block() -> None:
    from vaecli.device import cpu_has_bf16

    info = harness.machine_info(note="shared")
    assert MACHINE_KEYS <= set(info)
    assert info["cpu_has_bf16"] is cpu_has_bf16()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1 and info["note"] == "shared"
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    json.dumps(info)  # plain JSON


def test_write_json_adds_the_machine_block_atomically(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "r.json"
    harness.write_json(out, {"x": 1})
    data = json.loads(out.read_text())
    assert data["x"] == 1 and MACHINE_KEYS <= set(data["machine"])
    harness.write_json(out, {"machine": {"cpu_model": "given"}, "x": 2})
    assert json.loads(out.read_text())["machine"] == {"cpu_model": "given"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"]  # no temp file left
    assert harness.read_json(tmp_path / "none.json") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{"a": 1}', {"a": 1}), ('note\n{"a": {"b": 2}}\n', {"a": {"b": 2}}), ('{"a": 1}\ntrailing {', {"a": 1}), ("no json", None)],
)
def test_last_json(text: str, expected: dict | None) -> None:
    assert harness.last_json(text) == expected


def test_run_measured_reports_exit_code_output_and_memory() -> None:
    r = harness.run_measured(
        [sys.executable, "-c", "import sys, time; b = b'x' * (64 << 20); time.sleep(0.3); print('{\"ok\": 1}'); sys.exit(3)"]
    )
    assert r["rc"] == 3 and not r["timed_out"]
    assert harness.last_json(r["stdout"]) == {"ok": 1}
    assert r["peak_rss_mib"] >= 64  # the child's own peak, not this process's
    assert set(r["load_before"]) == {"loadavg", "running_processes"}
    stopped = harness.run_measured([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert stopped["timed_out"] and stopped["rc"] != 0


def test_mini_as_torchvision_is_the_shipped_mini_set(tmp_path: Path) -> None:
    import torch
    from torchvision.datasets import FashionMNIST

    from vaecli.data import load_mini

    root = harness.mini_as_torchvision(tmp_path)
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    assert (len(train), len(test)) == (2000, 500)
    assert torch.equal(train.data, load_mini("train").images[:, 0])
    assert torch.equal(test.targets, load_mini("test").labels)


@pytest.mark.slow
def test_recovery_mode_counts_the_copies_and_restores_vaecli(tmp_path: Path) -> None:
    from vaecli.train import health, recipe
    from vaecli.train import trainer as training

    take = health.Snapshot.take
    out = tmp_path / "recovery.json"
    argv = ["--data", "fashion-mnist-mini", "--colour", "synthetic", "--rounds", "1", "--fmnist-steps", "6", "--colour-steps", "3",
            "--intervals", "2", "--out", str(out)]  # fmt: skip
    bench = importlib.import_module("bench_recovery")
    assert harness.main(bench.__doc__, bench.MODES, "recovery", bench.add_arguments, argv) == 0
    res = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(res["machine"]) and res["data"] == "fashion-mnist-mini"
    rec = res["recovery"]
    assert rec["snapshot_steps_in_vaecli"] == training.SNAPSHOT_STEPS == 100  # put back after the run
    assert health.Snapshot.take is take
    # 5 warm-up + 6 steps (3 for colour) from step 0: copies at global steps 2, 4, 6, 8, 10 (the first after 2 steps); timed from step 5
    for key, timed in (("fmnist", 3), ("colour64", 1)):
        m = rec[key]
        assert set(m["variants"]) == {"without", "every_2"}
        assert m["variants"]["without"]["copies_in_timed_steps"] == 0
        assert m["variants"]["every_2"]["copies_in_timed_steps"] == timed
        assert m["variants"]["every_2"]["median_images_per_second"] > 0
        assert m["copy_mib"] > 0 and m["copy_ms_median"] > 0
    assert rec["fmnist"]["model"]["arch"] == "mlp" and rec["fmnist"]["batch_size"] == 128
    colour = recipe.default_recipe(64, 3)
    assert rec["colour64"]["model"]["arch"] == colour["arch"] and rec["colour64"]["model"]["likelihood"] == colour["likelihood"]


@pytest.mark.slow
def test_overhead_mode_runs_the_plain_recipe_and_the_trainer(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    bench = importlib.import_module("bench_overhead")
    argv = ["--data", "fashion-mnist-mini", "--rounds", "1", "--steps", "1", "--out", str(out)]
    assert harness.main(bench.__doc__, bench.MODES, "overhead", bench.add_arguments, argv) == 0
    res = json.loads(out.read_text())["overhead"]
    for k in ("bare", "trainer_steps", "trainer_fit"):
        assert res[f"{k}_images_per_second"] > 0 and len(res["per_round"][k]) == 1
    assert res["model"]["arch"] == "mlp"


@pytest.mark.slow
def test_versions_mode_measures_both_trees_and_removes_its_worktree(tmp_path: Path) -> None:
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=harness.ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: bench_versions needs one")
    out = tmp_path / "versions.json"
    bench = importlib.import_module("bench_versions")
    argv = ["--data", "fashion-mnist-mini", "--ref", "HEAD", "--rounds", "1", "--startup-repeat", "1", "--steps", "6", "--out", str(out)]
    before = subprocess.run(["git", "worktree", "list"], cwd=harness.ROOT, capture_output=True, text=True).stdout
    assert harness.main(bench.__doc__, bench.MODES, "versions", bench.add_arguments, argv) == 0
    res = json.loads(out.read_text())["versions"]
    assert len(res["before"]) == 40 and res["before"] == res["after"]  # HEAD against itself
    for key in ("startup_s", "fmnist_default"):
        assert res["summary"][key]["before"] > 0 and res["summary"][key]["after"] > 0
        assert len(res["raw"][key]["before"]) == len(res["raw"][key]["after"])
    assert subprocess.run(["git", "worktree", "list"], cwd=harness.ROOT, capture_output=True, text=True).stdout == before


def test_bce_of_run_scores_a_bernoulli_run_like_its_summary(tiny_run: Path) -> None:
    from vaecli.runs.store import read_summary

    bench_defaults = importlib.import_module("bench_defaults")
    scored = bench_defaults.bce_of_run(str(tiny_run))
    assert scored["bce_neg_elbo"] == pytest.approx(scored["bce_recon"] + scored["kl"])
    test = read_summary(tiny_run)["test"]
    assert scored["kl"] == pytest.approx(test["kl"], rel=0.05)
    assert scored["bce_neg_elbo"] == pytest.approx(test["neg_elbo"], rel=0.03)


def test_cpu_budget_stops_at_its_budget(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH / "cpu_budget.py"), "train", "--data", "fashion-mnist-mini", "--latent-dim", "8", "--widths", "64",
           "--arch", "mlp", "--epochs", "1000", "--time-budget", "0.5", "--json", "-q", "--name", "cpu"]  # fmt: skip
    p = subprocess.run(cmd, env=harness.vae_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-500:]
    summary = json.loads(p.stdout)
    assert summary["stopped"] == "time_budget" and summary["steps"] > 0
