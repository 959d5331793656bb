"""Training health (vaecli.train.health, vaecli.eval.explain): numbers that explain themselves, alarms while
training (posterior collapse, overfitting, a learning rate too high) and the rollback from a
non-finite step (a NaN injected through the VAE_TEST_NAN_STEPS hook), in one process and under a
2-process gloo run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vaecli.cli import app
from vaecli.config import DataConfig, ModelConfig, TrainConfig
from vaecli.data import ImageData, load_data, split_validation
from vaecli.errors import TrainingError
from vaecli.eval.metrics import evaluate
from vaecli.runs import store as ckpt
from vaecli.train import trainer as training
from vaecli.train.health import GradWatch, Snapshot, collapse_alarm, overfit_alarm
from vaecli.train.run import resume_run, start_run
from vaecli.train.schedules import lr_at

SRC = Path(__file__).resolve().parents[1] / "src"
MLP = {"arch": "mlp", "widths": (64,), "latent_dim": 8}


@pytest.fixture(scope="module")
def mini() -> tuple[ImageData, ImageData]:
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return train, ImageData(test.images[:200])


def _run(name: str, data, model: dict | None = None, val_size: int | None = None, **train):  # type: ignore[no-untyped-def]
    tc = TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 2e-3, "device": "cpu", "seed": 0, "save_every": 1e9, **train})
    return start_run(ModelConfig(**(model or MLP)), DataConfig(name="fashion-mnist-mini", val_size=val_size), tc, name=name, data=data)


# a Gaussian decoder's one learned scale shrinks to fit 40 training images: the validation -ELBO turns and rises
OVERFIT = {"model": {"arch": "mlp", "widths": (256,), "latent_dim": 16, "likelihood": "gaussian"}, "val_size": 20,
           "batch_size": 10, "lr_schedule": "constant"}  # fmt: skip


def _kinds(run: Path) -> list[str]:
    return [n["kind"] for n in json.loads((run / ckpt.SUMMARY).read_text())["notices"]]


# ----------------------------------------------------------------------------- explained numbers


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_info_json_explains_the_numbers_of_the_run(mini, likelihood: str) -> None:  # type: ignore[no-untyped-def]
    _run(f"x-{likelihood}", mini, {**MLP, "likelihood": likelihood}, epochs=2, beta=2.0).fit()
    r = CliRunner().invoke(app, ["info", f"x-{likelihood}", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    ex, summary = info["explained"], info["summary"]
    assert ex["neg_elbo"]["value"] == pytest.approx(summary["test"]["neg_elbo"])
    assert ex["rate"]["value"] == pytest.approx(summary["test"]["kl"]) and ex["rate"]["unit"] == "nats/image"
    assert ex["distortion"]["value"] == pytest.approx(summary["test"]["recon"])
    assert ex["neg_elbo"]["value"] == pytest.approx(ex["rate"]["value"] + ex["distortion"]["value"])
    assert ex["normalised_beta"]["value"] == pytest.approx(2.0 * 8 / 784)
    assert ex["active_units"]["value"] == summary["active_units"] and ex["active_units"]["unit"] == "of 8"
    last = ckpt.read_metrics(ckpt.resolve_run(f"x-{likelihood}"))[-1]
    assert ex["gap"]["value"] == pytest.approx(last["val"]["neg_elbo"] - summary["train"]["neg_elbo"])
    assert ex["best_epoch"]["value"] == summary["best"]["epoch"]
    if likelihood == "bernoulli":
        assert ex["neg_elbo"]["unit"] == "BCE nats/image" and "bits_per_dim" not in ex
        floor = summary["test_bce_floor"]
        assert 0 < floor < summary["test"]["recon"] and f"{floor:.2f}" in ex["neg_elbo"]["reference"]
    else:
        assert ex["neg_elbo"]["unit"] == "nats/image" and summary["discrete"] is True
        assert (
            ex["bits_per_dim"]["value"] == pytest.approx(summary["test"]["bits_per_dim"])
            and "8 = a uniform" in ex["bits_per_dim"]["reference"]
        )
        assert ex["bits_per_dim"]["value"] == pytest.approx(summary["test"]["neg_elbo"] / (784 * math.log(2)))


# ----------------------------------------------------------------------------- alarms


def test_a_healthy_run_raises_no_alarm(mini) -> None:  # type: ignore[no-untyped-def]
    res = _run("healthy", mini, epochs=3).fit()
    assert _kinds(Path(res.path)) == [] and res.summary["recoveries"] == []


def test_a_beta_so_large_collapses_the_posterior_and_says_so(mini) -> None:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    res = _run("collapse", mini, epochs=3, beta=200.0).fit(lambda p: lines.append(p.message) if p.kind == "notice" else None)
    assert _kinds(Path(res.path)) == ["collapse"]
    assert len(lines) == 1 and "posterior collapse" in lines[0] and "--free-bits" in lines[0]
    assert res.active_units <= 1 or res.test["kl"] < 0.5


@pytest.mark.slow
def test_a_tiny_split_trained_long_overfits_and_the_best_weights_are_kept(mini) -> None:  # type: ignore[no-untyped-def]
    train, test = mini
    small = (ImageData(train.images[:60]), test)  # 40 to train on, 20 to validate
    res = _run("overfit", small, epochs=60, **OVERFIT).fit()
    run = Path(res.path)
    notice = [n for n in json.loads((run / ckpt.SUMMARY).read_text())["notices"] if n["kind"] == "overfit"]
    assert notice and "validation -ELBO rose" in notice[0]["message"] and "best weights" in notice[0]["message"]
    best, last = res.summary["best"], res.summary["last"]
    assert best["epoch"] < last["epoch"] and best["val"]["neg_elbo"] < last["val"]["neg_elbo"]
    # model.safetensors holds the best epoch's weights: its validation -ELBO is the recorded best one
    model, cfg, _ = ckpt.load_model(run)
    _, val = split_validation(small[0], cfg.data.val_size, cfg.data.split_seed)  # the carving every command uses
    assert evaluate(model, val, seed=0).neg_elbo == pytest.approx(best["val"]["neg_elbo"], rel=1e-6)


@pytest.mark.slow
def test_early_stop_ends_the_run_after_n_evaluations_without_improvement(mini) -> None:  # type: ignore[no-untyped-def]
    train, test = mini
    small = (ImageData(train.images[:60]), test)
    res = _run("early", small, epochs=300, early_stop=3, **OVERFIT).fit()
    assert res.stopped == "early_stop" and res.epochs < 200
    rows = ckpt.read_metrics(Path(res.path))
    best = min(r["val"]["neg_elbo"] for r in rows)
    assert [r["val"]["neg_elbo"] for r in rows[-4:]][0] == best  # three evaluations after the best one
    r = CliRunner().invoke(app, ["train", "--resume", "early", "--device", "cpu", "-q"])  # nothing left to do: 1 epoch more at most
    assert r.exit_code == 0, r.output


def test_a_learning_rate_far_too_high_is_flagged_by_its_gradient_norm(mini) -> None:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    res = _run("hot", mini, epochs=2, lr=0.05).fit(lambda p: lines.append(p.message) if p.kind == "notice" else None)
    kinds = _kinds(Path(res.path))
    assert "lr" in kinds
    assert any("learning rate too high?" in line and "running median" in line for line in lines)
    rows = ckpt.read_metrics(Path(res.path))
    assert all({"mean", "max"} <= set(r["grad_norm"]) for r in rows)


def test_alarm_rules_on_crafted_rows() -> None:
    def row(epoch: int, val: float, train: float, kl: float = 10.0, active: int = 8) -> dict:
        return {"epoch": epoch, "val": {"neg_elbo": val, "kl": kl}, "train": {"neg_elbo": train, "kl": kl}, "active_units": active}

    rising = [row(1, 100, 110), row(2, 101, 100), row(3, 102, 90), row(4, 103, 80)]
    assert overfit_alarm(rising, 1.0, True) is not None and "epoch 1" in overfit_alarm(rising, 1.0, True)
    assert overfit_alarm(rising[:3], 1.0, True) is None  # only two rises
    assert overfit_alarm([row(1, 100, 110), row(2, 101, 100), row(3, 102, 105), row(4, 103, 80)], 1.0, True) is None  # train rose too
    noisy = [row(1, 100, 120), row(2, 101, 115), row(3, 102, 110), row(4, 103, 105)]  # held-out still below train
    assert overfit_alarm(noisy, 1.0, True) is None
    flat = [row(1, 100, 100, kl=0.1, active=0), row(2, 100, 100, kl=0.1, active=0)]
    assert collapse_alarm(flat, 0, 8) is not None
    assert collapse_alarm(flat, 5, 8) is None  # inside the beta ramp: not yet
    assert collapse_alarm([row(1, 100, 100, kl=0.1, active=0), row(2, 100, 100)], 0, 8) is None  # one evaluation only


def test_grad_watch_spike_and_epoch_stats() -> None:
    g = GradWatch(torch.device("cpu"))
    for _ in range(30):
        g.add(torch.tensor(1.0))
    assert g.spike() is None
    g.add(torch.tensor(500.0))
    top, median = g.spike()  # type: ignore[misc]
    assert top == 500.0 and median == 1.0
    assert g.spike() is None  # the max is reset after each check
    stats = g.epoch_stats()
    assert stats["max"] == 500.0 and stats["mean"] == pytest.approx((30 + 500) / 31)


# ----------------------------------------------------------------------------- recovery from a non-finite step


def test_snapshot_round_trip_and_refuses_non_finite() -> None:
    a, b = torch.ones(3), torch.zeros(2)
    s = Snapshot()
    assert s.take([a, b], 7) and s.step == 7
    a.fill_(5.0)
    s.restore([a, b])
    assert a.tolist() == [1.0, 1.0, 1.0]
    assert not Snapshot().take([torch.tensor([float("nan")])], 3)


def test_an_injected_nan_is_rolled_back_with_the_lr_halved(mini, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(training, "SNAPSHOT_STEPS", 10)
    monkeypatch.setenv(training.NAN_STEPS_ENV, "25")
    lines: list[str] = []
    res = _run("nan1", mini, epochs=2).fit(lambda p: lines.append(p.message) if p.kind == "notice" else None)
    assert res.stopped == "done" and math.isfinite(res.test["neg_elbo"])
    (event,) = res.summary["recoveries"]
    assert event["step"] == 25 and 10 <= event["rolled_back_to"] < 25 and event["lr_after"] == pytest.approx(event["lr_before"] / 2)
    assert any(f"rolled back to step {event['rolled_back_to']}" in line for line in lines)
    model, _, run = ckpt.load_model("nan1")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert "recovery" in _kinds(run)
    # resuming continues with the reduced learning rate
    tr = resume_run("nan1", {"epochs": 3}, data=mini)
    assert tr.state.lr_scale == 0.5
    rows = []
    tr.fit(lambda p: rows.append(p.lr) if p.kind == "step" else None)
    plain = lr_at(tr.state.global_step - 1, tr._session().total_steps, tr.cfg.train.lr, "cosine", 0)
    assert rows[-1] == pytest.approx(plain / 2, rel=0.2)


def test_the_third_non_finite_step_stops_the_run_with_the_last_good_checkpoint(mini, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(training, "SNAPSHOT_STEPS", 5)
    monkeypatch.setenv(training.NAN_STEPS_ENV, "12,24,36")
    tr = _run("nan3", mini, epochs=3, save_every=1e-9)
    with pytest.raises(
        TrainingError, match="non-finite loss at epoch 2, step 8: stopped, the last good checkpoint is kept"
    ):  # 29 steps an epoch
        tr.fit()
    run = ckpt.resolve_run("nan3")
    again = resume_run("nan3", {"epochs": 3}, data=mini)  # the last good checkpoint loads, finite, with its two recoveries
    assert len(again.state.recoveries) == 2 and again.state.lr_scale == 0.25
    assert all(torch.isfinite(p).all() for p in again.model.parameters())
    assert (run / ckpt.MODEL).exists()


def test_recovery_off_stops_at_the_first(mini, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(training, "SNAPSHOT_STEPS", 5)
    monkeypatch.setenv(training.NAN_STEPS_ENV, "12")
    with pytest.raises(TrainingError, match="non-finite"):
        _run("nan-off", mini, epochs=1, max_nonfinite=1).fit()


@pytest.mark.slow
def test_ranks_roll_back_together_under_gloo(tmp_path: Path) -> None:
    """Two ranks, a NaN injected at step 130 on both (after the first kept state, at step 100): one recovery,
    the ranks end with the same weights."""
    home = tmp_path / "runs"
    env = dict(os.environ, VAE_HOME=str(home), PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", VAE_DIST_TIMEOUT="120", VAE_TEST_NAN_STEPS="130")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vaecli", "train",
           "--device", "cpu", "--data", "fashion-mnist-mini", "--arch", "mlp", "--widths", "32", "--latent-dim", "4",
           "--batch-size", "8", "--max-steps", "160", "--name", "ddpnan", "--json", "-q"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((home / "ddpnan" / ckpt.SUMMARY).read_text())
    (event,) = summary["recoveries"]
    assert event["step"] == 130 and 100 <= event["rolled_back_to"] < 130
    digests = summary["param_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary["steps"] == 160 and all(math.isfinite(v) for v in summary["test"].values())
