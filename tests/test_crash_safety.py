"""Crash safety of training: a run killed right after any write of a checkpoint (SIGKILL's stand-in)
resumes to the same weights and metrics as an uninterrupted run; a run cut before its first weights
file is still resumable and `vae info` says so."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ok, start_tiny, vae

from vaecli.runs import store as ckpt
from vaecli.train import trainer as training
from vaecli.train.run import resume_run


class _Killed(BaseException):
    """Stands in for SIGKILL: raised right after a write, nothing of the trainer runs after it."""


def _start(name: str, data):  # type: ignore[no-untyped-def]
    return start_tiny(name, data, save_every=1e-9)  # a checkpoint after every step


# (module, function, which call dies): the writes of a run, in order (a state before every step, at an
# epoch end the metrics, loss.png, the best weights, then the state): each kind, mid-epoch and at both ends
DEATHS = [
    ("ckpt", "save_train_state", 1), ("ckpt", "save_train_state", 2), ("ckpt", "write_metrics", 1), ("training", "_plot", 1),
    ("ckpt", "save_model", 1), ("ckpt", "save_train_state", 4), ("ckpt", "save_train_state", 5), ("ckpt", "write_metrics", 2),
    ("ckpt", "save_model", 2), ("ckpt", "save_train_state", 8),
]  # fmt: skip


METRIC_KEYS = ("epoch", "step", "train", "val", "active_units")


@pytest.fixture(scope="module")
def straight(small_data, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The uninterrupted run: (weights, metrics rows)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VAE_HOME", str(tmp_path_factory.mktemp("straight-home")))
    try:
        _start("straight", small_data).fit()
        model, _, run = ckpt.load_model("straight")
        return model.state_dict(), [{k: r[k] for k in METRIC_KEYS} for r in ckpt.read_metrics(run)]
    finally:
        mp.undo()


@pytest.mark.parametrize("module,func,nth", DEATHS, ids=lambda x: str(x))
def test_death_right_after_each_checkpoint_write_resumes_exactly(
    small_data, straight, monkeypatch: pytest.MonkeyPatch, module: str, func: str, nth: int
) -> None:  # type: ignore[no-untyped-def]
    target = ckpt if module == "ckpt" else training
    real = getattr(target, func)
    calls = []

    def dying(*a, **k):  # type: ignore[no-untyped-def]
        real(*a, **k)
        calls.append(1)
        if len(calls) == nth:
            raise _Killed

    monkeypatch.setattr(target, func, dying)
    with pytest.raises(_Killed):
        _start("killed", small_data).fit()
    monkeypatch.setattr(target, func, real)
    run = ckpt.resolve_run("killed")
    (run / ".model.safetensors.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # what a SIGKILL mid-write leaves
    assert vae("info", "killed", "--json").exit_code == 0
    res = resume_run("killed", data=small_data).fit()
    assert res.stopped == "done" and res.steps == 6
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    weights, rows = straight
    b, _, _ = ckpt.load_model("killed")
    assert list(weights) == list(b.state_dict())
    for k, v in b.state_dict().items():
        assert torch.equal(weights[k], v), k
    assert [{k: r[k] for k in METRIC_KEYS} for r in ckpt.read_metrics(run)] == rows
    assert [r["epoch"] for r in rows] == [1, 2]


def test_first_checkpoint_cut_between_state_and_weights_still_resumes(small_data, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Killed after the very first training state but before any model.safetensors: the run is
    resumable (the state carries the weights), `vae info` works and says it holds no weights yet."""
    real = ckpt.save_model

    def never(*a, **k):  # type: ignore[no-untyped-def]
        raise _Killed

    monkeypatch.setattr(ckpt, "save_model", never)
    with pytest.raises(_Killed):
        _start("early", small_data).fit()
    monkeypatch.setattr(ckpt, "save_model", real)
    run = ckpt.resolve_run("early")
    assert (run / ckpt.STATE).exists() and not (run / ckpt.MODEL).exists()
    info = json.loads(ok("info", "early", "--json").stdout)
    assert info["trained"] is False and info["resumable"] is True
    assert resume_run("early", data=small_data).fit().stopped == "done"
