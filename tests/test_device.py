"""The training speed levers keep behaviour: exact resume with channels_last + fused Adam,
precision resolution, the time-aware cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from vaecli.config import DataConfig, ModelConfig, TrainConfig
from vaecli.device import adam_kwargs, memory_format_for, resolve_precision
from vaecli.model import VAE
from vaecli.schedules import lr_at
from vaecli.training import resume_run, start_run

TINY = dict(latent_dim=8, widths=(8, 16), hidden=64)


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}


def test_conv_models_train_channels_last_with_fused_adam() -> None:
    trainer = start_run(ModelConfig(**TINY), DataConfig(name="fashion-mnist-mini"),
                        TrainConfig(epochs=1, batch_size=64, max_steps=3, device="cpu"), name="cl")  # fmt: skip
    assert trainer.memory_format == torch.channels_last
    conv = trainer.model.encoder[2].weight  # 8 -> 16 channels (a 1-channel input is both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert trainer.optimizer.defaults.get("fused") is True
    result = trainer.fit()
    assert result.steps == 3 and math.isfinite(result.test["neg_elbo"])
    # moments follow the parameter's layout
    st = trainer.optimizer.state[conv]
    assert st["exp_avg"].stride() == conv.stride()


def test_resume_is_exact_with_channels_last_and_fused_adam() -> None:
    data, cfg = DataConfig(name="fashion-mnist-mini"), ModelConfig(**TINY)
    # 16 steps per epoch: the resumed part crosses an epoch end (evaluation, checkpoint)
    straight = start_run(cfg, data, TrainConfig(epochs=2, batch_size=125, max_steps=20, device="cpu", seed=3), name="a")
    straight.fit()
    part = start_run(cfg, data, TrainConfig(epochs=2, batch_size=125, max_steps=12, device="cpu", seed=3), name="b")
    part.fit()
    resumed = resume_run("b", {"max_steps": 8})
    conv = resumed.model.encoder[2].weight
    assert resumed.optimizer.state[conv]["exp_avg"].stride() == conv.stride()
    resumed.fit()
    assert resumed.state.global_step == straight.state.global_step == 20
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_memory_format_and_adam_choice() -> None:
    cpu = torch.device("cpu")
    assert memory_format_for(VAE(ModelConfig(**TINY)), cpu) == torch.channels_last
    assert memory_format_for(torch.nn.Linear(3, 2), cpu) == torch.contiguous_format
    assert adam_kwargs(cpu) == {"fused": True}
    assert adam_kwargs(torch.device("mps")) == {"foreach": True}


def test_precision_auto_is_fp32_and_emulated_bf16_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import vaecli.device as dev

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(dev, "cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto", cpu) == "fp32"  # bf16 is opt-in: 2.8 nats worse at equal steps
        assert resolve_precision("bf16", cpu) == "bf16"
        warning = dev.bf16_warning("bf16", cpu)
        if native:
            assert warning is None
        else:
            assert warning is not None and "emulated" in warning
    assert dev.bf16_warning("fp32", cpu) is None
    assert resolve_precision("fp32", cpu) == "fp32"
    assert TrainConfig().precision == "auto"


def test_cosine_follows_time_or_steps_whichever_ends_first() -> None:
    base = 2e-3
    # no budget: step-based cosine, from base to 1% of base
    assert lr_at(0, 100, base, "cosine") == pytest.approx(base)
    assert lr_at(100, 100, base, "cosine") == pytest.approx(0.01 * base)
    # half the budget gone after 10% of the steps: lr is the cosine's midpoint
    assert lr_at(10, 100, base, "cosine", time_fraction=0.5) == pytest.approx(base * (0.01 + 0.99 * 0.5))
    # budget spent: floor; past the end: still the floor
    assert lr_at(1, 10**9, base, "cosine", time_fraction=1.0) == pytest.approx(0.01 * base)
    assert lr_at(1, 10**9, base, "cosine", time_fraction=3.0) == pytest.approx(0.01 * base)
    # steps run out before the budget: steps win
    assert lr_at(100, 100, base, "cosine", time_fraction=0.1) == pytest.approx(0.01 * base)
    # monotone in time
    lrs = [lr_at(5, 10**6, base, "cosine", time_fraction=f / 20) for f in range(21)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # constant ignores both; warm-up still ramps first
    assert lr_at(50, 100, base, "constant", time_fraction=0.9) == base
    assert lr_at(0, 100, base, "cosine", warmup_steps=4, time_fraction=0.9) == pytest.approx(base / 4)


def _cli(*args: str):
    from typer.testing import CliRunner

    from vaecli.cli import app

    return CliRunner().invoke(app, list(args))


def _train_cfg(run: str) -> dict:
    import json
    import os
    from pathlib import Path

    return json.loads((Path(os.environ["VAE_HOME"]) / run / "config.json").read_text())["train"]


def test_cli_recipe_defaults_follow_the_arch() -> None:
    from vaecli.recipe import default_recipe

    r = _cli("train", "--data", "fashion-mnist-mini", "--arch", "seed", "--max-steps", "1", "--name", "s", "-q")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("s")
    assert (cfg["batch_size"], cfg["lr"], cfg["lr_schedule"], cfg["epochs"]) == (128, 1e-3, "constant", 10)
    assert cfg["precision"] == "auto"
    r = _cli("train", "--data", "fashion-mnist-mini", "--max-steps", "1", "--name", "c", "-q", "--lr", "5e-4")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("c")
    conv = default_recipe(28, 1, "cpu")
    assert (cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (conv["batch_size"], 5e-4, conv["lr_schedule"])


def test_cli_time_budget_alone_runs_until_the_budget() -> None:
    from vaecli.recipe import BUDGET_EPOCHS

    r = _cli("train", "--data", "fashion-mnist-mini", "--time-budget", "0.5", "--latent-dim", "8", "--name", "b", "-q", "--json")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("b")
    assert cfg["epochs"] == BUDGET_EPOCHS and cfg["time_budget"] == 0.5
    r = _cli("train", "--data", "fashion-mnist-mini", "--time-budget", "0.5", "--epochs", "2", "--latent-dim", "8", "--name", "e", "-q")
    assert r.exit_code == 0, r.output
    assert _train_cfg("e")["epochs"] == 2
