"""Devices and precision (vaecli.device): memory layout and Adam's implementation by device, the
precision rule and its bf16 warnings, float32 accumulators on MPS, CUDA device indices."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from vaecli import device as dev
from vaecli.config import ModelConfig, TrainConfig
from vaecli.device import adam_kwargs, memory_format_for
from vaecli.errors import DeviceError
from vaecli.model.vae import VAE
from vaecli.train.recipe import resolve_precision


def test_memory_format_and_adam_choice() -> None:
    cpu = torch.device("cpu")
    assert memory_format_for(VAE(ModelConfig(**TINY)), cpu) == torch.channels_last
    assert memory_format_for(torch.nn.Linear(3, 2), cpu) == torch.contiguous_format
    assert adam_kwargs(cpu) == {"fused": True}
    assert adam_kwargs(torch.device("mps")) == {"foreach": True}


def test_precision_auto_follows_the_measurements_and_emulated_bf16_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaecli.train.recipe import build_configs

    cpu = torch.device("cpu")
    colour, _ = build_configs({"arch": "spatial"}, 64, 3)  # the spatial colour net: bf16 won at equal wall time on native bf16
    gray, _ = build_configs({}, 28, 1)  # the mlp: fp32 won
    hier, _ = build_configs({}, 64, 3)  # the colour default (hvae): bf16 won at equal wall time on native bf16 too
    flat, _ = build_configs({"arch": "conv"}, 64, 3)  # the flat colour net: not measured in bf16, fp32
    assert colour.arch == "spatial" and gray.arch == "mlp" and hier.arch == "hvae" and flat.arch == "conv"
    for native in (False, True):
        monkeypatch.setattr(dev, "cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto", cpu) == "fp32"
        assert resolve_precision("auto", cpu, gray) == "fp32" and resolve_precision("auto", cpu, flat) == "fp32"
        assert resolve_precision("auto", cpu, colour) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", cpu, hier) == ("bf16" if native else "fp32")
        assert resolve_precision("fp32", cpu, colour) == "fp32"
        assert resolve_precision("bf16", cpu) == "bf16"
        warning = dev.bf16_warning("bf16", cpu)
        if native:
            assert warning is None
        else:
            assert warning is not None and "emulated" in warning
    assert dev.bf16_warning("fp32", cpu) is None
    assert resolve_precision("fp32", cpu) == "fp32"
    assert TrainConfig().precision == "auto"


def test_accumulators_are_float32_on_mps():
    assert dev.accumulator_dtype("mps") == torch.float32
    assert dev.accumulator_dtype(torch.device("cpu")) == torch.float64 and dev.accumulator_dtype("cuda") == torch.float64


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
