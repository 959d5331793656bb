"""Distributed training: sharding and helpers in-process, plus real 2-process gloo runs on the
CPU launched with torchrun (``python -m torch.distributed.run``), resumed across world sizes."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import last_weights, src_env, vae

from vaecli import distributed
from vaecli.errors import ConfigError, DeviceError

# ----------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("n", [2, 7, 10, 2000])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_is_distributed_sampler(n: int, world: int) -> None:
    """Our shard of epoch_permutation(n, seed, epoch) is exactly what DistributedSampler yields
    after set_epoch(epoch) with seed = seed * 1_000_003 (the generator seed epoch_permutation uses)."""
    from torch.utils.data import DistributedSampler

    from vaecli.runs.state import epoch_permutation

    seed = 5
    for epoch in (0, 3):
        perm = epoch_permutation(n, seed, epoch)
        for r in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=seed * 1_000_003)
            sampler.set_epoch(epoch)
            assert distributed.shard(perm, world, r).tolist() == list(sampler)


def test_shards_cover_the_epoch_evenly() -> None:
    perm = torch.randperm(1001, generator=torch.Generator().manual_seed(0))
    parts = [distributed.shard(perm, 4, r) for r in range(4)]
    assert {len(p) for p in parts} == {distributed.shard_size(1001, 4)} == {251}
    assert set(torch.cat(parts).tolist()) == set(range(1001))  # every image, 3 repeated as padding
    assert distributed.shard(perm, 1, 0) is perm


def test_single_process_helpers_are_identities() -> None:
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.all_finite(torch.tensor(1.0)) and not distributed.all_finite(torch.tensor(float("nan")))
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.on_main(lambda: 41 + 1) == 42
    assert distributed.local_main_first(lambda: "x") == "x"
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()


def test_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.env_ranks() == (1, 0, 0) and not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_ranks() == (4, 3, 1) and distributed.launched()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent"):
        distributed.env_ranks()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK must be an integer"):
        distributed.env_ranks()
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.env_ranks()


def test_timeout_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.timeout_seconds() == 12.5
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_seconds()


def test_device_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.device_for("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="mps"):
        distributed.device_for("mps")
    with pytest.raises(ConfigError, match="--device cuda"):
        distributed.device_for("cuda:0")
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        assert distributed.device_for("auto") == torch.device("cuda", 1)
    elif not torch.cuda.is_available():
        assert distributed.device_for("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="CUDA is not available"):
            distributed.device_for("cuda")


def test_any_flags_in_one_process():
    from vaecli import distributed

    assert distributed.any_flags([True, False]) == [True, False]
    assert distributed.any_flags([False], torch.tensor(True)) == [False, True]


# ----------------------------------------------------------------------------- torchrun, 2 ranks, gloo


def _torchrun(home: Path, logs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m vaecli train ARGS`` with
    each rank's stdout/stderr redirected to ``logs`` (so rank 1's silence can be checked)."""
    env = src_env(VAE_HOME=str(home), OMP_NUM_THREADS="1", VAE_DIST_TIMEOUT="120")
    env.pop("VAE_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "vaecli", "train", "--device", "cpu", *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + _rank_logs(logs)
    return proc


def _rank_logs(logs: Path) -> str:
    return "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in sorted(logs.rglob("*.log")))


def _rank_output(logs: Path, rank: int, stream: str) -> str:
    files = sorted(logs.rglob(f"{rank}/{stream}.log"))
    assert files, _rank_logs(logs)
    return files[-1].read_text()


def _digest(model: torch.nn.Module) -> str:
    """sha256 over (name, float32 bytes) of the parameters, computed here independently."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_ranks_in_sync(run: Path) -> None:
    """Both ranks reported the same parameter digest, equal to the digest of the last saved weights."""
    summary = json.loads((run / "summary.json").read_text())
    model = last_weights(run)
    per_rank = summary["param_sha256_per_rank"]
    assert len(per_rank) == 2
    assert per_rank[0] == per_rank[1] == _digest(model)


@pytest.fixture(scope="module")
def ddp_home(tmp_path_factory: pytest.TempPathFactory, train_tiny: Callable[..., Path]) -> Path:
    """Runs made once for the module (read-only for the tests): 'ddp' started under torchrun
    (5 steps; rank logs in ``logs/new``), and 'single' started in one process (3 steps) then
    resumed under torchrun (3 more)."""
    home = tmp_path_factory.mktemp("ddp-home") / "runs"
    logs = home.parent / "logs"
    _torchrun(home, logs / "new", "--data", "fashion-mnist-mini", "--max-steps", "5", "--batch-size", "64",
                     "--latent-dim", "8", "--name", "ddp", "--json", "--save-every", "1000")  # fmt: skip
    train_tiny(home, "single", epochs=2, max_steps=3)
    _torchrun(home, logs / "resume", "--resume", "single", "--max-steps", "3")
    return home


@pytest.mark.slow
def test_torchrun_new_run(ddp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_HOME", str(ddp_home))
    logs = ddp_home.parent / "logs" / "new"
    # rank 0 printed one JSON object; rank 1 printed nothing at all
    out = json.loads(_rank_output(logs, 0, "stdout").strip())
    assert out["run"] == "ddp" and out["steps"] == 5 and all(v is not None for v in out["test"].values())
    assert _rank_output(logs, 1, "stdout") == "" and _rank_output(logs, 1, "stderr") == ""
    res = vae("info", "ddp", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["world_size"] == 2 and info["effective_batch_size"] == 128 and info["steps"] == 5
    _check_ranks_in_sync(ddp_home / "ddp")


@pytest.mark.slow
def test_torchrun_run_samples_on_one_process(ddp_home: Path) -> None:
    from vaecli.eval import inference
    from vaecli.runs import store as checkpoint

    model, cfg, _ = checkpoint.load_model(ddp_home / "ddp")
    assert cfg.train.world_size == 2
    x = inference.sample(model, 6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 28, 28) and torch.isfinite(x).all() and 0 <= float(x.min()) <= float(x.max()) <= 1


@pytest.mark.slow
def test_single_run_resumes_under_torchrun(ddp_home: Path) -> None:
    from vaecli.runs import store as checkpoint
    from vaecli.runs.state import rank_steps_per_epoch as _rank_steps

    run = ddp_home / "single"
    cfg = checkpoint.read_config(run)
    summary = json.loads((run / "summary.json").read_text())
    # 3 single-process steps map to a place in the epoch with 2 ranks, then 3 DDP steps
    one, two = _rank_steps(1800, 64, 1), _rank_steps(1800, 64, 2)  # the 2,000 training images less 200 for validation
    assert (one, two) == (29, 15)
    assert summary["steps"] == 3 * two // one + 3
    assert cfg.train.world_size == 2 and summary["world_size"] == 2 and summary["effective_batch_size"] == 128
    _check_ranks_in_sync(run)


@pytest.mark.slow
def test_torchrun_run_resumes_on_one_process(ddp_home: Path, tmp_path: Path) -> None:
    from vaecli.runs import store as checkpoint
    from vaecli.runs.state import rank_steps_per_epoch as _rank_steps
    from vaecli.train.run import resume_run

    shutil.copytree(ddp_home / "ddp", tmp_path / "runs" / "ddp")  # VAE_HOME is tmp_path/runs (conftest)
    before = last_weights(tmp_path / "runs" / "ddp").state_dict()
    result = resume_run("ddp", {"max_steps": 2, "device": "cpu"}).fit()
    one, two = _rank_steps(1800, 64, 1), _rank_steps(1800, 64, 2)
    assert result.steps == 5 * one // two + 2 and result.stopped == "max_steps"
    assert all(math.isfinite(v) for v in (*result.test.values(), *result.train.values()))
    cfg = checkpoint.read_config(tmp_path / "runs" / "ddp")
    assert cfg.train.world_size == 1
    after = last_weights(tmp_path / "runs" / "ddp").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on


@pytest.mark.slow
def test_torchrun_trains_a_hierarchical_run_with_the_ranks_in_sync(tmp_path: Path) -> None:
    """--arch hvae under DDP: every group's parameters get gradients on both ranks (none unused), and
    the ranks end with the same weights."""
    home = tmp_path / "runs"
    _torchrun(home, tmp_path / "logs", "--data", "fashion-mnist-mini", "--arch", "hvae", "--widths", "4,8", "--hidden", "16",
              "--max-steps", "3", "--batch-size", "32", "--name", "hddp", "--json", "--save-every", "1000")  # fmt: skip
    _check_ranks_in_sync(home / "hddp")
