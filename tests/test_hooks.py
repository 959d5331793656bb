"""Training hooks (vaecli.train.hooks) and what a resume keeps: the hooks recorded in the run, the
options a resume may change and those it refuses, the schedule's clock, the moving average, and the
rollback to the starting state."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import MICRO, ok, one_error_line, start_tiny, vae

from vaecli.config import TrainConfig
from vaecli.runs import store as ckpt
from vaecli.runs.state import TrainState
from vaecli.train import session as sess
from vaecli.train.ema import EMA
from vaecli.train.hooks import Checkpointing, EarlyStopping, EvalSamples, ExponentialAverage, FitPrior, build_hooks
from vaecli.train.run import resume_run
from vaecli.train.schedules import lr_at

TINY = ["train", "--data", "fashion-mnist-mini", "--latent-dim", "4", "--widths", "4,8", "--hidden", "16", "--arch", "conv",
        "--batch-size", "64", "--device", "cpu", "-q"]  # fmt: skip


def _config(name: str) -> dict:
    return json.loads((ckpt.runs_dir() / name / ckpt.CONFIG).read_text())


def _summary(name: str) -> dict:
    return json.loads((ckpt.runs_dir() / name / ckpt.SUMMARY).read_text())


# ----------------------------------------------------------------------------- the hook list


def test_build_hooks_follows_the_config() -> None:
    assert [type(h) for h in build_hooks(TrainConfig())] == [Checkpointing]
    hooks = build_hooks(TrainConfig(ema=0.99, early_stop=3, fit_prior="gmm", eval_samples=True))
    assert [type(h) for h in hooks] == [ExponentialAverage, Checkpointing, EarlyStopping, FitPrior, EvalSamples]
    assert [h.name for h in hooks] == ["ema", "checkpoint", "early_stop", "fit_prior", "eval_samples"]
    with pytest.raises(Exception, match="--fit-prior must be gmm, flow or none"):
        build_hooks(TrainConfig(fit_prior="kde"))


def test_the_summary_names_the_hooks_and_early_stopping_is_one() -> None:
    tr = start_tiny("hooked", epochs=6, early_stop=1, ema=0.9)
    res = tr.fit()
    assert res.summary["hooks"] == ["ema", "checkpoint", "early_stop"]
    assert res.stopped in ("early_stop", "done") and tr.state.epoch <= 6


# ----------------------------------------------------------------------------- EMA (--ema)


def test_ema_moves_towards_the_weights_with_a_warmed_up_decay() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.shadow.parameters()]
    ema.update(0)  # decay min(0.999, 1/10) = 0.1: the shadow moves 90% of the way
    for b, s, w in zip(before, ema.shadow.parameters(), model.parameters()):
        assert torch.allclose(s, 0.1 * b + 0.9 * w, atol=1e-6)
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    assert len(ema.tensors()) == len(list(ema.shadow.parameters())) + len(list(ema.shadow.buffers()))


def test_ema_is_what_is_saved_and_resumes_exactly() -> None:
    ok(*TINY, "--max-steps", "12", "--ema", "0.9", "--name", "avg", "--epochs", "3")
    run = ckpt.runs_dir() / "avg"
    assert _config("avg")["train"]["ema"] == 0.9 and _summary("avg")["hooks"][0] == "ema"
    model, _, _ = ckpt.load_model(run)
    tensors = ckpt.read_safetensors(run / ckpt.STATE)[0]
    shadow = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    raw = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    assert shadow and set(shadow) == set(raw)
    assert any(not torch.equal(shadow[k], raw[k]) for k in shadow)  # the average is not the raw weights
    ok("train", "--resume", "avg", "--max-steps", "4", "-q")
    assert _config("avg")["train"]["ema"] == 0.9


def test_vamp_pseudo_inputs_of_the_average_start_from_the_trained_ones() -> None:
    """The moving average is made after the VampPrior's pseudo-inputs are set from training images."""
    tr = start_tiny("vampema", model={**MICRO, "prior": "vamp", "pseudo_inputs": 8}, ema=0.999)
    assert tr.ema is not None
    raw = dict(tr.model.named_parameters())
    for name, p in tr.ema.shadow.named_parameters():
        assert torch.equal(p, raw[name]), name


# ----------------------------------------------------------------------------- resume


def test_resume_keeps_skip_nonfinite_and_the_steps_after_training() -> None:
    ok(*TINY, "--max-steps", "3", "--epochs", "2", "--skip-nonfinite", "--fit-prior", "gmm", "--name", "keep")
    assert _config("keep")["train"]["skip_nonfinite"] is True and _config("keep")["train"]["fit_prior"] == "gmm"
    r = ok("train", "--resume", "keep", "-q")
    assert _config("keep")["train"]["skip_nonfinite"] is True  # not reset by a resume that does not name it
    s = _summary("keep")
    assert s["stopped"] == "done" and s["hooks"] == ["checkpoint", "fit_prior"]
    assert s["fit_prior"]["kind"] == "gmm" and (ckpt.runs_dir() / "keep" / ckpt.PRIOR_INFO).exists()
    assert "fitting a gmm prior" in r.output
    ok("train", "--resume", "keep", "--no-skip-nonfinite", "--epochs", "3", "-q")
    assert _config("keep")["train"]["skip_nonfinite"] is False


@pytest.mark.parametrize(
    "args, named",
    [
        (["--beta", "4"], "--beta"),
        (["--lr", "0.1", "--latent-dim", "3"], "--latent-dim, --lr"),
        (["--data", "mnist"], "--data"),
        (["--seed", "1"], "--seed"),
        (["--arch", "mlp"], "--arch"),
    ],
)
def test_resume_refuses_what_it_cannot_change(args: list[str], named: str) -> None:
    ok(*TINY, "--max-steps", "2", "--name", "fixed")
    before = (ckpt.runs_dir() / "fixed" / ckpt.CONFIG).read_bytes()
    line = one_error_line(vae("train", "--resume", "fixed", *args))
    assert named in line and "cannot change when resuming" in line
    assert (ckpt.runs_dir() / "fixed" / ckpt.CONFIG).read_bytes() == before


def test_resume_applies_and_records_what_it_can_change() -> None:
    ok(*TINY, "--max-steps", "2", "--epochs", "3", "--name", "move")
    ok("train", "--resume", "move", "--early-stop", "2", "--max-nonfinite", "5", "--save-every", "60", "--max-steps", "2", "-q")
    tc = _config("move")["train"]
    assert (tc["early_stop"], tc["max_nonfinite"], tc["save_every"], tc["max_steps"]) == (2, 5, 60.0, 2)
    assert _summary("move")["hooks"] == ["checkpoint", "early_stop"]


def test_the_schedule_runs_on_the_runs_clock_across_a_resume() -> None:
    """A resumed --time-budget run goes on down the cosine from where it was, not from its peak."""
    tc = TrainConfig(lr=1e-2, lr_schedule="cosine", time_budget=60.0, epochs=1000)
    state = TrainState(global_step=500, train_seconds=30.0)
    s = sess.Session(steps_per_epoch=10, batch_size=8, rank_images=80, total_steps=10_000, check_every=1, before=30.0)
    s.t0 = sess.clock()  # nothing trained in this invocation yet
    halfway = lr_at(500, 10_000, 1e-2, "cosine", 0, time_fraction=0.5)
    assert s.lr(state, tc) == pytest.approx(halfway, rel=1e-3)
    assert s.lr(state, tc) < 0.6e-2  # the peak is 1e-2
    assert s.flags(None, replace(tc, time_budget=30.0))[1]  # the run's budget is spent: stop


def test_a_resumed_budget_run_trains_what_is_left_or_what_is_given(small_data: object) -> None:
    tr = start_tiny("budget", small_data, time_budget=1000.0, epochs=1000, max_steps=3)
    tr.fit()
    done = tr.state.train_seconds
    again = resume_run("budget", {"time_budget": 5.0, "max_steps": 1}, data=small_data)
    assert again.cfg.train.time_budget == pytest.approx(done + 5.0)
    assert _config("budget")["train"]["time_budget"] == pytest.approx(done + 5.0)
    kept = resume_run("budget", {}, data=small_data)
    assert kept.cfg.train.time_budget == pytest.approx(done + 5.0) and kept.cfg.train.max_steps is None


# ----------------------------------------------------------------------------- recovery


def test_a_nonfinite_step_before_any_copy_rolls_back_to_the_start(monkeypatch: pytest.MonkeyPatch, small_data: object) -> None:
    from vaecli.train import trainer as training

    monkeypatch.setenv(training.NAN_STEPS_ENV, "1")
    tr = start_tiny("early", small_data, epochs=3, max_steps=6)
    start = [p.detach().clone() for p in tr.model.parameters()]
    res = tr.fit()
    assert res.stopped == "max_steps"
    rec = tr.state.recoveries
    assert len(rec) == 1 and rec[0]["rolled_back_to"] == 0 and rec[0]["step"] == 1
    assert tr.state.lr_scale == 0.5
    assert any(not torch.equal(a, b) for a, b in zip(start, tr.model.parameters()))  # it went on training
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert Path(res.path, ckpt.MODEL).exists()


# ----------------------------------------------------------------------------- the colour default's prior


def test_a_colour_run_fits_its_default_prior_and_sample_draws_from_it(tmp_path: Path) -> None:
    from conftest import noisy_folder

    folder = noisy_folder(tmp_path / "imgs", 60, size=(16, 16))
    ok("train", "--data", folder, "--max-steps", "3", "--name", "col", "--device", "cpu", "-q")
    tc = _config("col")["train"]
    assert tc["fit_prior"] == "gmm" and _summary("col")["hooks"][-1] == "fit_prior"  # by the rule for colour data
    assert _config("col")["model"]["arch"] == "hvae"  # the colour default: the prior is fitted to its top latent
    info = ckpt.runs_dir() / "col" / ckpt.PRIOR_INFO
    assert info.exists() and json.loads(info.read_text())["latent_dim"] == _config("col")["model"]["latent_dim"]
    r = ok("sample", "--run", "col", "-n", "4", "-o", tmp_path / "s.png")
    assert "sampling from the run's fitted prior" in r.stderr
    before = info.stat().st_mtime_ns
    ok("train", "--resume", "col", "--max-steps", "5", "-q")  # a resumed run fits it again, to the weights it ends with
    assert _summary("col")["hooks"][-1] == "fit_prior" and info.stat().st_mtime_ns > before
    assert "sampling from the run's fitted prior" in ok("sample", "--run", "col", "-n", "4", "-o", tmp_path / "s2.png").stderr
    ok("train", "--data", folder, "--max-steps", "3", "--name", "off", "--fit-prior", "none", "--device", "cpu", "-q")
    assert _config("off")["train"]["fit_prior"] == "none" and "fit_prior" not in _summary("off")["hooks"]
    assert not (ckpt.runs_dir() / "off" / ckpt.PRIOR_INFO).exists()
    assert "none" in one_error_line(vae("train", "--data", folder, "--fit-prior", "kde", "--max-steps", "1"))
