"""CUDA: training steps, resume on and across devices, CPU/CUDA agreement, no sync inside a step.
Skipped where CUDA is absent (scripts/gpu_check.sh runs it on a GPU machine)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, start_tiny

from vaecli.config import DataConfig, ModelConfig
from vaecli.data import ImageData, load_data, to_float
from vaecli.model.vae import VAE
from vaecli.runs import store as ckpt
from vaecli.train import trainer as training
from vaecli.train.run import resume_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def data():
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return ImageData(train.images[:512]), ImageData(test.images[:128])


def _start(name, data, **kw):
    return start_tiny(name, data, model=TINY, **{"batch_size": 64, "device": "cuda", "seed": 5, **kw})


def _weights(name: str) -> dict[str, torch.Tensor]:
    model, _, _ = ckpt.load_model(name)
    return {k: v.float() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_are_finite(data, precision):
    losses = []
    res = _start(f"cuda-{precision}", data, epochs=1, precision=precision).fit(
        lambda p: losses.append(p.loss) if p.kind == "step" else None
    )
    assert res.device.startswith("cuda") and res.precision == precision and res.steps == 8
    assert losses and all(math.isfinite(v) for v in losses) and math.isfinite(res.test["neg_elbo"])
    summary = ckpt.read_summary(ckpt.resolve_run(f"cuda-{precision}"))
    assert summary["runtime"]["cudnn_benchmark"] is True and summary["runtime"]["tf32_matmul"] is True
    assert torch.backends.cudnn.benchmark


def test_resume_on_cuda_matches_a_straight_run(data):
    _start("straight", data).fit()
    _start("pieces", data, max_steps=5).fit()
    res = resume_run("pieces", {"max_steps": None}, data=data).fit()
    assert res.steps == 16 and resume_run("pieces", data=data).notices == []
    a, b = _weights("straight"), _weights("pieces")
    for k in a:  # cuDNN's backward is not deterministic: close, not equal
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), k


@pytest.mark.parametrize(("first", "then"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_across_devices(data, first, then):
    _start(f"x-{first}", data, device=first, max_steps=3).fit()
    tr = resume_run(f"x-{first}", {"device": then, "max_steps": None}, data=data)
    assert tr.device.type == then and tr.global_step == 3
    assert len(tr.notices) == 1 and "not bit-exact" in tr.notices[0]
    losses = []
    res = tr.fit(lambda p: losses.append(p.loss) if p.kind == "step" else None)
    assert res.steps == 16 and all(math.isfinite(v) for v in losses) and math.isfinite(res.test["neg_elbo"])


def test_cuda_checkpoint_loads_on_the_cpu_with_equal_weights(data):
    tr = _start("to-cpu", data, epochs=1)
    tr.fit()
    on_gpu = {k: v.detach().cpu() for k, v in tr.model.state_dict().items()}
    model, _, _ = ckpt.load_model("to-cpu", device="cpu")
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, on_gpu[k]), k


def test_cpu_and_cuda_forward_agree(data):
    torch.manual_seed(0)
    model = VAE(ModelConfig(**TINY)).eval()
    x = to_float(data[1].images[:64])
    with torch.no_grad():
        q_c = model.encode(x)
        mu_c, lv_c = q_c.mu, q_c.logvar
        logits_c = model.decode_params(mu_c)
        gpu = model.to("cuda")
        q_g = gpu.encode(x.cuda())
        mu_g, lv_g = q_g.mu, q_g.logvar
        logits_g = gpu.decode_params(mu_g)
    # TF32 (on by the policy) keeps 10 mantissa bits in matmul inputs: agreement to about 1e-3
    assert torch.allclose(mu_c, mu_g.cpu(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(lv_c, lv_g.cpu(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(logits_c, logits_g.cpu(), rtol=1e-2, atol=5e-2)


def test_no_sync_inside_a_step(data, monkeypatch):
    tr = _start("nosync", data, epochs=1)
    step = training.Trainer._step

    def strict(self, *a, **k):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self, *a, **k)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(training.Trainer, "_step", strict)
    assert tr.fit().steps == 8


def test_tc_beta_large_batch_fits(data):
    res = _start("tc", data, epochs=1, batch_size=512, tc_beta=4.0).fit()
    assert math.isfinite(res.test["neg_elbo"])
