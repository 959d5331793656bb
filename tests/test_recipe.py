"""The one rule for defaults (config.default_recipe / build_configs): keyed on the data and device,
user values always win, epochs long enough for a ramp, sizes rounded to what the arch accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vaecli.config import TrainConfig
from vaecli.errors import ConfigError
from vaecli.recipe import (
    BUDGET_EPOCHS,
    DEFAULT_EPOCHS,
    accepted_image_size,
    build_configs,
    conv_stages,
    default_epochs,
    default_recipe,
    ramp_warning,
)


@pytest.mark.parametrize(("size", "stages"), [(8, 1), (16, 1), (28, 2), (32, 2), (48, 3), (64, 3), (96, 4), (128, 4), (256, 5)])
def test_conv_stages_end_at_a_small_feature_map(size: int, stages: int) -> None:
    assert conv_stages(size) == stages
    assert 4 <= size / 2**stages <= 8 or size < 16


@pytest.mark.parametrize("size", [28, 31, 64, 100, 130, 200, 512])
def test_accepted_size_is_accepted_by_the_default_model(size: int) -> None:
    r = accepted_image_size(size)
    assert r <= size and r % 2 ** conv_stages(r) == 0
    model, _ = build_configs({}, r, 3)
    model.validate()
    assert accepted_image_size(size, "conv", (8, 8, 8, 8)) % 16 == 0
    assert accepted_image_size(size, "seed") % 4 == 0


def test_recipe_follows_the_data_and_keeps_the_28px_default() -> None:
    gray = default_recipe(28, 1)  # small gray images: the mlp (measured better per CPU-second)
    assert gray["arch"] == "mlp" and gray["widths"] == (512, 512) and gray["lr"] == 2e-3 and gray["batch_size"] == 128
    conv = default_recipe(28, 1, arch="conv")  # the measured 28 px conv recipe is kept for --arch conv
    assert conv["widths"] == (16, 32) and conv["lr"] == 5e-3 and conv["batch_size"] == 128
    colour = default_recipe(64, 3)
    assert colour["arch"] == "conv" and colour["widths"] == (16, 32, 64) and colour["lr"] < conv["lr"]
    assert max(default_recipe(512, 3)["widths"]) <= 256
    seed = default_recipe(28, 1, arch="seed")
    assert (seed["lr"], seed["lr_schedule"], seed["batch_size"]) == (1e-3, "constant", 128)


def test_given_values_win_over_the_rule() -> None:
    model, train = build_configs({"widths": (8, 8), "lr": 1e-4, "batch_size": 7, "beta": None}, 64, 3)
    assert model.widths == (8, 8) and train.lr == 1e-4 and train.batch_size == 7 and train.beta == 1.0
    assert (model.image_size, model.channels) == (64, 3)
    with pytest.raises(ConfigError):
        build_configs({"lr": -1.0}, 28, 1)
    with pytest.raises(ConfigError):
        build_configs({"no_such_option": 1}, 28, 1)


def test_epochs_cover_the_ramp_and_warn_when_told_shorter() -> None:
    assert default_epochs(None) == DEFAULT_EPOCHS
    assert default_epochs(120.0, anneal=30) == BUDGET_EPOCHS
    assert default_epochs(None, anneal=30) == 30 + DEFAULT_EPOCHS
    assert default_epochs(None, capacity_epochs=25) == 25 + DEFAULT_EPOCHS
    assert default_epochs(None, cyclical=8) == 16
    _, train = build_configs({"beta": 4.0, "anneal": 30}, 28, 1)
    assert train.epochs == 40 and ramp_warning(train) is None
    warning = ramp_warning(TrainConfig(beta=4.0, anneal=30, epochs=10))
    assert warning is not None and "1.33 of 4" in warning


def _cli(*args: str):
    from typer.testing import CliRunner

    from vaecli.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_anneal_without_epochs_runs_the_whole_ramp() -> None:
    r = _cli(
        "train", "--data", "fashion-mnist-mini", "--beta", "4", "--anneal", "3", "--max-steps", "1", "--name", "a", "--latent-dim", "4"
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((Path(os.environ["VAE_HOME"]) / "a" / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 + DEFAULT_EPOCHS
    assert "13 epochs" in " ".join(r.output.split())
    r = _cli("train", "--data", "fashion-mnist-mini", "--beta", "4", "--anneal", "30", "--epochs", "2", "--max-steps", "1", "--name", "b")
    assert r.exit_code == 0, r.output
    assert "beta reaches only 0.267 of 4" in " ".join(r.output.split())
