"""The training step's device-independent parts (issues 13, 14, 16): partial epochs in
metrics.jsonl, cross-device resume (faked on the CPU), no host sync inside a step, float32 sums
on MPS, the chunked total correlation, the CUDA recipe and device checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaecli import checkpoint as ckpt
from vaecli import device as dev
from vaecli import training
from vaecli.config import DataConfig, ModelConfig, TrainConfig
from vaecli.data import ImageData, load_data
from vaecli.errors import DeviceError
from vaecli.metrics import evaluate
from vaecli.model import VAE
from vaecli.recipe import build_configs, default_recipe
from vaecli.training import resume_run, start_run

TINY = dict(latent_dim=4, widths=(4, 8), hidden=16)


@pytest.fixture(scope="module")
def small_data():
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return ImageData(train.images[:96]), ImageData(test.images[:32])


def _start(name, data, **kw):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 32, "device": "cpu", "seed": 3, **kw})
    return start_run(ModelConfig(**TINY), DataConfig(name="fashion-mnist-mini"), cfg, name=name, data=data)


# ----------------------------------------------------------------------------- partial epochs


def test_stop_inside_the_first_epoch_records_a_partial_row(small_data):
    res = _start("part", small_data, max_steps=2, batch_size=16).fit()  # 6 steps per epoch
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
    assert ckpt.run_info(run)["epochs"] == 0
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


def test_cli_prints_a_dash_for_unmeasured_speed(small_data):
    from vaecli.cli.train import _ips

    assert _ips(None) == "-" and _ips(1234.4) == "1,234"


# ----------------------------------------------------------------------------- cross-device resume


def _retag_noise(run, device_type: str, state_bytes: int) -> None:
    """Make the saved noise state look as if written on ``device_type`` (its size and tag)."""
    tensors, meta = ckpt._safe_load(run / ckpt.STATE)
    tensors["rng.noise"] = torch.zeros(state_bytes, dtype=torch.uint8)
    state = json.loads(meta["state"])
    state["noise_device"] = device_type
    meta["state"] = json.dumps(state)
    ckpt._safe_save(run / ckpt.STATE, tensors, meta)


def test_resume_from_a_cuda_checkpoint_on_the_cpu(small_data):
    _start("xdev", small_data, max_steps=2).fit()
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
    _start("xdev2", small_data, max_steps=2).fit()
    _retag_noise(ckpt.resolve_run("xdev2"), "cuda", 16)
    resume_run("xdev2", {"max_steps": None}, data=small_data).fit()
    a, _, _ = ckpt.load_model("xdev")
    b, _, _ = ckpt.load_model("xdev2")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_same_device_resume_has_no_notice(small_data):
    _start("same", small_data, max_steps=2).fit()
    assert resume_run("same", data=small_data).notices == []


# ----------------------------------------------------------------------------- host syncs


_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_no_host_sync_inside_a_step(small_data, monkeypatch):
    """A CPU stand-in for the CUDA sync-debug test: nothing reads a tensor's value inside _step."""
    tr = _start("nosync", small_data, epochs=1)
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
    monkeypatch.setattr(training, "REPORT_SECONDS", 1e9)
    tr = _start("late", small_data, epochs=1)
    with torch.no_grad():
        tr.model.fc_mu.weight.fill_(float("nan"))
    with pytest.raises(training.TrainingError, match="epoch 1, step 1"):
        tr.fit()
    assert not (ckpt.resolve_run("late") / ckpt.MODEL).exists()


# ----------------------------------------------------------------------------- MPS: no float64


def test_accumulators_are_float32_on_mps():
    assert dev.accumulator_dtype("mps") == torch.float32
    assert dev.accumulator_dtype(torch.device("cpu")) == torch.float64 and dev.accumulator_dtype("cuda") == torch.float64


def test_float32_sums_where_mps_would_run(small_data, monkeypatch):
    """Fake the device: the CPU takes the accumulator dtype MPS gets; training and evaluation use
    float32 sums and agree with float64 closely."""
    model = VAE(ModelConfig(**TINY))
    ref = evaluate(model, small_data[1])
    monkeypatch.setattr(dev, "accumulator_dtype", lambda device: torch.float32)
    monkeypatch.setattr(training, "accumulator_dtype", lambda device: torch.float32)
    got = evaluate(model, small_data[1])
    assert got.neg_elbo == pytest.approx(ref.neg_elbo, rel=1e-5) and got.active_units == ref.active_units
    tr = _start("f32", small_data, epochs=1)
    assert tr.sums.acc.dtype == torch.float32
    res = tr.fit()
    assert math.isfinite(res.train["neg_elbo"]) and res.train["neg_elbo"] > 0


# ----------------------------------------------------------------------------- devices and the CUDA recipe


def test_cuda_index_beyond_the_count_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"has 2 CUDA devices \(cuda:0..cuda:1\)"):
        dev.resolve_device("cuda:2")
    with pytest.raises(DeviceError):
        dev.resolve_device("cuda:x")


def test_bf16_warning_on_a_gpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    msg = dev.bf16_warning("bf16", torch.device("cuda"))
    assert msg and "Tesla T4" in msg and "no native bf16" in msg
    assert dev.bf16_warning("fp32", torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert dev.bf16_warning("bf16", torch.device("cuda")) is None


def test_cuda_recipe_is_the_provisional_large_batch():
    cuda, cpu = default_recipe(28, 1, "cuda"), default_recipe(28, 1, "cpu")
    assert cuda["batch_size"] == 1024 and cpu["batch_size"] == 128
    assert cuda["lr"] == pytest.approx(min(1e-2, cpu["lr"] * (1024 / cpu["batch_size"]) ** 0.5))  # sqrt(batch ratio), capped
    assert cuda["warmup_steps"] == 100 and cuda["widths"] == cpu["widths"] and cuda["arch"] == cpu["arch"]
    assert default_recipe(28, 1, "cuda", arch="seed")["batch_size"] == 128  # --arch seed keeps the seed's recipe
    _, tc = build_configs({"batch_size": 256}, 28, 1, "cuda")
    assert tc.batch_size == 256 and tc.lr == pytest.approx(cuda["lr"])  # what the user gives wins, the rest stays
    assert dev.configure_cuda(torch.device("cpu")) == {}


def test_any_flags_in_one_process():
    from vaecli import distributed

    assert distributed.any_flags([True, False]) == [True, False]
    assert distributed.any_flags([False], torch.tensor(True)) == [False, True]
