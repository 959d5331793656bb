"""The training loop (vaecli.train.trainer): a run's files, learning, bit-exact resume, stops and
non-finite losses, partial epochs in metrics.jsonl, cross-device resume (faked on the CPU), no host
sync inside a step, float32 sums where MPS would run, channels-last with fused Adam, binarised batches."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MICRO, TINY, last_weights, start_tiny

from vaecli import device as dev
from vaecli.cli.runs import run_info
from vaecli.config import DataConfig, ModelConfig
from vaecli.data import ImageData, load_data
from vaecli.errors import ConfigError, TrainingError
from vaecli.eval.metrics import evaluate
from vaecli.model.vae import VAE
from vaecli.runs import store as ckpt
from vaecli.train import session
from vaecli.train import trainer as training
from vaecli.train.run import resume_run

# ----------------------------------------------------------------------------- a run


def test_training_writes_a_complete_run(small_data):
    res = start_tiny("full", small_data).fit()
    run = ckpt.resolve_run("full")
    for f in (ckpt.CONFIG, ckpt.MODEL, ckpt.STATE, ckpt.METRICS, ckpt.SUMMARY, ckpt.LOSS_PLOT):
        assert (run / f).is_file(), f
    rows = ckpt.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert res.epochs == 2 and res.steps == 6 and res.stopped == "done"
    for split in (res.train, res.test):
        assert all(torch.isfinite(torch.tensor(v)) for v in split.values())
        assert split["kl"] >= 0 and split["neg_elbo"] == pytest.approx(split["recon"] + split["kl"], rel=1e-6)
    assert (run / ckpt.LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    assert json.loads((run / ckpt.SUMMARY).read_text())["steps"] == 6


def test_loss_decreases_on_real_images(small_data):
    res = start_tiny("learn", small_data, epochs=6, batch_size=16, lr=3e-3).fit()
    rows = ckpt.read_metrics(ckpt.resolve_run("learn"))
    assert rows[-1]["train"]["neg_elbo"] < rows[0]["train"]["neg_elbo"]
    assert res.test["neg_elbo"] < 543.0  # 784 * log 2: better than predicting 0.5 everywhere


@pytest.mark.parametrize("arch", ["conv", "seed", "hvae"])
def test_resume_is_bit_exact(small_data, arch):
    model = (
        {"arch": "seed", "latent_dim": 4} if arch == "seed" else {**MICRO, "arch": "hvae", "groups": (2, 2)} if arch == "hvae" else MICRO
    )
    start_tiny(f"straight-{arch}", small_data, model=model, epochs=2).fit()
    # same run, stopped twice (mid-epoch and at an epoch boundary) and resumed: the last weights (the
    # resume point) are the straight run's; the best weights may differ, as a stop adds an evaluation
    first = start_tiny(f"pieces-{arch}", small_data, model=model, epochs=2, max_steps=2).fit()
    assert first.stopped == "max_steps" and first.steps == 2
    second = resume_run(f"pieces-{arch}", {"max_steps": 2}, data=small_data).fit()
    assert second.steps == 4
    third = resume_run(f"pieces-{arch}", {"max_steps": None}, data=small_data).fit()
    assert third.steps == 6 and third.stopped == "done"
    a, b = last_weights(ckpt.resolve_run(f"straight-{arch}")), last_weights(ckpt.resolve_run(f"pieces-{arch}"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    ma = ckpt.read_metrics(ckpt.resolve_run(f"straight-{arch}"))
    mb = ckpt.read_metrics(ckpt.resolve_run(f"pieces-{arch}"))
    assert [r["train"] for r in ma] == [r["train"] for r in mb]


def test_resume_can_extend_epochs(small_data):
    start_tiny("ext", small_data, epochs=1).fit()
    res = resume_run("ext", {"epochs": 2}, data=small_data).fit()
    assert res.epochs == 2 and len(ckpt.read_metrics(ckpt.resolve_run("ext"))) == 2
    with pytest.raises(ConfigError):
        resume_run("ext", {"beta": 3.0}, data=small_data)


def test_existing_name_refused(small_data):
    start_tiny("dup", small_data, max_steps=1).fit()
    with pytest.raises(ConfigError, match="already exists"):
        start_tiny("dup", small_data)


def test_stop_event_leaves_resumable_run(small_data):
    import threading

    stop = threading.Event()
    seen = []

    def cb(p):
        seen.append(p.kind)
        if p.kind == "step" and p.global_step >= 1:
            stop.set()

    res = start_tiny("stopme", small_data, epochs=3).fit(cb, stop)
    assert res.stopped == "interrupted" and seen[0] == "start" and seen[-1] == "end"
    assert resume_run("stopme", data=small_data).fit().stopped == "done"


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(small_data):
    bad = ImageData(small_data[0].images.clone())
    tr = start_tiny("nan", (bad, small_data[1]), epochs=2)
    tr.fit()  # a good run first
    good = ckpt.resolve_run("nan") / ckpt.MODEL
    before = good.read_bytes()
    tr2 = resume_run("nan", {"epochs": 3}, data=small_data)
    with torch.no_grad():
        tr2.model.fc_mu.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 3, step 1"):
        tr2.fit()
    assert good.read_bytes() == before


def test_skip_nonfinite_counts(small_data):
    tr = start_tiny("skip", small_data, epochs=1, skip_nonfinite=True)
    with torch.no_grad():
        tr.model.fc_mu.bias.fill_(float("inf"))
    tr.fit()
    assert json.loads((ckpt.resolve_run("skip") / ckpt.SUMMARY).read_text())["nonfinite_skipped"] == 3


# ----------------------------------------------------------------------------- partial epochs


def test_stop_inside_the_first_epoch_records_a_partial_row(small_data):
    res = start_tiny("part", small_data, max_steps=2, batch_size=16).fit()  # 6 steps per epoch
    assert res.stopped == "max_steps" and res.epochs == 0 and res.steps == 2
    assert res.images_per_second is None  # stopped before the warm-up steps: nothing measured
    run = ckpt.resolve_run("part")
    rows = ckpt.read_metrics(run)
    assert len(rows) == 1 and rows[0]["partial"] is True and rows[0]["steps"] == 2 and rows[0]["epoch"] == 1
    assert rows[0]["epochs_done"] == pytest.approx(2 / 6, abs=1e-4)
    assert math.isfinite(rows[0]["train"]["neg_elbo"]) and math.isfinite(rows[0]["val"]["neg_elbo"])
    summary = json.loads((run / ckpt.SUMMARY).read_text())
    assert summary["images_per_second"] is None and summary["epochs_done"] == pytest.approx(2 / 6, abs=1e-4)
    assert summary["runtime"]["memory_format"] == "channels_last"
    assert run_info(run)["epochs"] == 0
    # stopped again inside the same epoch: the partial row is replaced, not duplicated
    resume_run("part", {"max_steps": 1}, data=small_data).fit()
    rows = ckpt.read_metrics(run)
    assert len(rows) == 1 and rows[0]["steps"] == 3
    # the epoch completes: the partial row gives way to the full one, then epoch 2 mid-way
    resume_run("part", {"max_steps": 4}, data=small_data).fit()
    rows = ckpt.read_metrics(run)
    assert [(r["epoch"], r.get("partial", False)) for r in rows] == [(1, False), (2, True)] and rows[1]["steps"] == 1
    done = resume_run("part", {"max_steps": None}, data=small_data).fit()
    assert done.stopped == "done" and [r["epoch"] for r in ckpt.read_metrics(run)] == [1, 2]
    assert not any(r.get("partial") for r in ckpt.read_metrics(run))
    assert (run / ckpt.LOSS_PLOT).read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- cross-device resume


def _retag_noise(run, device_type: str, state_bytes: int) -> None:
    """Make the saved noise state look as if written on ``device_type`` (its size and tag)."""
    tensors, meta = ckpt.read_safetensors(run / ckpt.STATE)
    tensors["rng.noise"] = torch.zeros(state_bytes, dtype=torch.uint8)
    state = json.loads(meta["state"])
    state["noise_device"] = device_type
    meta["state"] = json.dumps(state)
    ckpt.write_safetensors(run / ckpt.STATE, tensors, meta)


def test_resume_from_a_cuda_checkpoint_on_the_cpu(small_data):
    start_tiny("xdev", small_data, max_steps=2).fit()
    run = ckpt.resolve_run("xdev")
    _retag_noise(run, "cuda", 16)  # a CUDA generator's state is 16 bytes; loading it on the CPU would raise
    tr = resume_run("xdev", {"max_steps": None}, data=small_data)
    assert tr.state.global_step == 2 and len(tr.notices) == 1
    assert "not bit-exact" in tr.notices[0] and "cuda" in tr.notices[0] and "step 2" in tr.notices[0]
    losses = []
    res = tr.fit(lambda p: losses.append(p.loss) if p.kind == "step" else None)
    assert res.stopped == "done" and res.steps == 6 and losses and all(math.isfinite(v) for v in losses)
    notes = [n["message"] for n in json.loads((run / ckpt.SUMMARY).read_text())["notices"] if n["kind"] == "note"]
    assert notes == tr.notices
    # the re-seeded noise is a function of (seed, step): two such resumes agree
    start_tiny("xdev2", small_data, max_steps=2).fit()
    _retag_noise(ckpt.resolve_run("xdev2"), "cuda", 16)
    resume_run("xdev2", {"max_steps": None}, data=small_data).fit()
    a, _, _ = ckpt.load_model("xdev")
    b, _, _ = ckpt.load_model("xdev2")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_same_device_resume_has_no_notice(small_data):
    start_tiny("same", small_data, max_steps=2).fit()
    assert resume_run("same", data=small_data).notices == []


# ----------------------------------------------------------------------------- host syncs


_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_no_host_sync_inside_a_step(small_data, monkeypatch):
    """A CPU stand-in for the CUDA sync-debug test: nothing reads a tensor's value inside _step."""
    tr = start_tiny("nosync", small_data, epochs=1)
    inside = [False]
    reads: list[str] = []
    for name in _SYNCS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if inside[0]:
                reads.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    step = training.Trainer._step

    def watched(self, *a, **k):
        inside[0] = True
        try:
            return step(self, *a, **k)
        finally:
            inside[0] = False

    monkeypatch.setattr(training.Trainer, "_step", watched)
    assert tr.fit().steps == 3
    assert reads == []


def test_nonfinite_is_caught_at_the_checkpoint_not_saved(small_data, monkeypatch):
    """With reports far apart the flag is first read before the checkpoint: it raises there and names the step."""
    monkeypatch.setattr(session, "REPORT_SECONDS", 1e9)
    tr = start_tiny("late", small_data, epochs=1)
    with torch.no_grad():
        tr.model.fc_mu.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        tr.fit()
    assert not (ckpt.resolve_run("late") / ckpt.MODEL).exists()


# ----------------------------------------------------------------------------- MPS: no float64


def test_float32_sums_where_mps_would_run(small_data, monkeypatch):
    """Fake the device: the CPU takes the accumulator dtype MPS gets; training and evaluation use
    float32 sums and agree with float64 closely."""
    model = VAE(ModelConfig(**MICRO))
    ref = evaluate(model, small_data[1])
    monkeypatch.setattr(dev, "accumulator_dtype", lambda device: torch.float32)
    monkeypatch.setattr(training, "accumulator_dtype", lambda device: torch.float32)
    got = evaluate(model, small_data[1])
    assert got.neg_elbo == pytest.approx(ref.neg_elbo, rel=1e-5) and got.active_units == ref.active_units
    tr = start_tiny("f32", small_data, epochs=1)
    assert tr.sums.acc.dtype == torch.float32
    res = tr.fit()
    assert math.isfinite(res.train["neg_elbo"]) and res.train["neg_elbo"] > 0


# ----------------------------------------------------------------------------- memory layout and data


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}


def test_conv_models_train_channels_last_with_fused_adam() -> None:
    trainer = start_tiny("cl", model=TINY, epochs=1, batch_size=64, max_steps=3)
    assert trainer.memory_format == torch.channels_last
    conv = trainer.model.encoder.body[2].weight  # 8 -> 16 channels (a 1-channel input is both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert trainer.optimizer.defaults.get("fused") is True
    result = trainer.fit()
    assert result.steps == 3 and math.isfinite(result.test["neg_elbo"])
    # moments follow the parameter's layout
    st = trainer.optimizer.state[conv]
    assert st["exp_avg"].stride() == conv.stride()


def test_resume_is_exact_with_channels_last_and_fused_adam() -> None:
    # 16 steps per epoch: the resumed part crosses an epoch end (evaluation, checkpoint)
    straight = start_tiny("a", model=TINY, batch_size=125, max_steps=20)
    straight.fit()
    part = start_tiny("b", model=TINY, batch_size=125, max_steps=12)
    part.fit()
    resumed = resume_run("b", {"max_steps": 8})
    conv = resumed.model.encoder.body[2].weight
    assert resumed.optimizer.state[conv]["exp_avg"].stride() == conv.stride()
    resumed.fit()
    assert resumed.state.global_step == straight.state.global_step == 20
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_sees_binary_batches():
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini", binarize=True))
    data = (ImageData(train.images[:96]), ImageData(test.images[:32]))
    trainer = start_tiny("bin", data, data_cfg=DataConfig(name="fashion-mnist-mini", binarize=True), epochs=1, max_steps=3)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    trainer.fit()
    assert len(seen) == 3
    for x in seen:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(seen[0], (train.images[:32].float() / 255 > 0.5).float())  # not a threshold
