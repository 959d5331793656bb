"""The one rule for defaults (vaecli.train.recipe: default_recipe / build_configs): keyed on the data and
device, user values always win, epochs long enough for a ramp, sizes rounded to what the arch
accepts; and no default configuration diverges."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vaecli import device as dev
from vaecli.config import DataConfig, TrainConfig
from vaecli.errors import ConfigError, VaeError
from vaecli.train.recipe import (
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
    colour = default_recipe(64, 3)  # colour: the hierarchical net, a discrete likelihood, a fitted GMM on its top latent to sample
    assert colour["arch"] == "hvae" and colour["widths"] == (16, 32, 64) and colour["latent_dim"] == 64 and colour["groups"] == (8,)
    assert colour["likelihood"] == "discrete-gaussian" and colour["fit_prior"] == "gmm" and colour["lr"] < conv["lr"]
    assert colour == default_recipe(64, 3, arch="hvae")  # the default is --arch hvae's recipe, nothing else
    flat = default_recipe(64, 3, arch="conv")  # the flat colour net (the default before hvae): latent 64, residual blocks, a GMM
    assert flat["latent_dim"] == 64 and flat["blocks"] == 1 and flat["fit_prior"] == "gmm" and "top_first" not in flat
    spatial = default_recipe(64, 3, arch="spatial")  # reconstruction first: conv stages with a spatial latent of 8 maps
    assert spatial["latent_dim"] == 8 * 8 * 8 and spatial["lr"] == conv["lr"] and "blocks" not in spatial
    assert "fit_prior" not in gray and "fit_prior" not in default_recipe(64, 1)
    assert default_recipe(64, 1)["arch"] == "conv" and default_recipe(64, 1)["likelihood"] == "bernoulli"
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


def test_cuda_recipe_is_a_large_batch_with_a_scaled_lr():
    cuda, cpu = default_recipe(28, 1, "cuda"), default_recipe(28, 1, "cpu")
    assert cuda["batch_size"] == 1024 and cpu["batch_size"] == 128
    assert cuda["lr"] == pytest.approx(min(1e-2, cpu["lr"] * (1024 / cpu["batch_size"]) ** 0.5))  # sqrt(batch ratio), capped
    assert cuda["warmup_steps"] == 100 and cuda["widths"] == cpu["widths"] and cuda["arch"] == cpu["arch"]
    assert default_recipe(28, 1, "cuda", arch="seed")["batch_size"] == 128  # --arch seed keeps the seed's recipe
    _, tc = build_configs({"batch_size": 256}, 28, 1, "cuda")
    assert tc.batch_size == 256 and tc.lr == pytest.approx(cuda["lr"])  # what the user gives wins, the rest stays
    assert dev.configure_cuda(torch.device("cpu")) == {}


# ----------------------------------------------------------------------------- no default diverges
# The learning-rate rule (recipe.default_lr, scaled by the model's widest layer) and the warm-up keep
# every size and channel count finite (at 28 px gray the default is the mlp; colour defaults use the
# Gaussian decoder). Small generated colour images (blobs on a white ground, like emoji) stand in for
# a folder; the batch is small to keep the file fast. The divergence this guards against is per
# weight (Adam moves each by about lr per step, whatever the batch), so a small batch shows it as well
# as 128 does: ``--widths 32,64,128`` at 64 px colour with 5e-3 and no warm-up diverges within a few
# steps here too.


def _folder(root: Path, size: int, channels: int, n: int = 40) -> Path:
    """``n`` PNGs of coloured discs and squares on white, ``size`` px."""
    from PIL import Image, ImageDraw

    folder = root / f"imgs{size}_{channels}"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(size * 10 + channels)
    for i in range(n):
        im = Image.new("RGB", (size, size), (255, 255, 255))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = (torch.randint(0, size * 3 // 4, (2,), generator=g)).tolist()
            r = int(torch.randint(size // 8, size // 3, (1,), generator=g))
            colour = tuple(torch.randint(0, 256, (3,), generator=g).tolist())
            (d.ellipse if i % 2 else d.rectangle)([x0, y0, x0 + r, y0 + r], fill=colour)
        (im if channels == 3 else im.convert("L")).save(folder / f"{i:03d}.png")
    return folder


def _train(folder: Path, size: int, channels: int, steps: int, **given: object) -> list[float]:
    """Train at the defaults (plus ``given``) for ``steps`` steps; returns the reported losses
    (a non-finite one stops training with a TrainingError)."""
    from vaecli.train.run import plan_run, start_run

    opts = {
        "device": "cpu",
        "precision": "fp32",
        "max_steps": steps,
        "epochs": 1000,
        "save_every": 1e9,
        **given,
    }
    model_cfg, data_cfg, train_cfg, data = plan_run(DataConfig(name=str(folder), image_size=size, channels=channels), opts)
    trainer = start_run(model_cfg, data_cfg, train_cfg, name=f"s{size}c{channels}", data=data)
    losses: list[float] = []
    result = trainer.fit(lambda p: losses.append(p.loss) if p.kind == "step" else None)
    assert result.steps == steps and math.isfinite(result.train["neg_elbo"]) and math.isfinite(result.test["neg_elbo"])
    return losses


@pytest.fixture(scope="module")
def colour64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("c64"), 64, 3, n=600)  # 540 train: 200 steps of 8 in 3 epochs


def test_wide_conv_at_64px_colour_trains_200_steps_at_the_default_lr(
    colour64: Path,
) -> None:
    _, train = build_configs({"arch": "conv", "widths": (32, 64, 128)}, 64, 3)
    assert train.lr < 5e-3 and train.warmup_steps > 0  # the rule sized the lr for this model
    losses = _train(colour64, 64, 3, 200, arch="conv", widths=(32, 64, 128), batch_size=8)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_a_fixed_lr_without_warmup_diverges_on_that_model(colour64: Path) -> None:
    """The control: without the rule (5e-3, no warm-up) the same model meets a non-finite loss (with
    --max-nonfinite 1 it stops there instead of rolling back to the start with the lr halved)."""
    with pytest.raises(VaeError, match="non-finite"):
        _train(colour64, 64, 3, 40, arch="conv", widths=(32, 64, 128), batch_size=8, lr=5e-3, warmup_steps=0, max_nonfinite=1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64, 128])
def test_every_default_trains_finite(tmp_path: Path, size: int, channels: int) -> None:
    recipe = default_recipe(size, channels)
    if recipe["arch"] == "conv":
        assert len(recipe["widths"]) <= 4 and max(recipe["widths"]) <= 256
    steps = 24 if size < 128 else 12
    losses = _train(
        _folder(tmp_path, size, channels, n=steps * 4 // 3 + 4),
        size,
        channels,
        steps,
        batch_size=4,
    )
    assert all(math.isfinite(v) for v in losses)


def test_the_lr_rule_scales_with_the_widest_layer() -> None:
    from vaecli.train.recipe import REFERENCE_FAN_IN, default_lr, max_fan_in

    assert max_fan_in("conv", 28, 1, (16, 32), 512, 32) == REFERENCE_FAN_IN
    assert default_lr(5e-3, REFERENCE_FAN_IN) == 5e-3  # the measured 28 px conv recipe is unchanged
    assert default_lr(5e-3, 4 * REFERENCE_FAN_IN) == pytest.approx(2.5e-3)
    assert default_lr(2e-3, 100) == 2e-3  # never above the arch's own rate
    assert max_fan_in("mlp", 64, 3, (512, 512), 512, 32) == 64 * 64 * 3
    lrs = [build_configs({}, s, c)[1].lr for s, c in ((32, 3), (64, 3), (128, 3))]
    assert lrs == sorted(lrs, reverse=True) and all(lr <= 5e-3 for lr in lrs)


def test_given_widths_size_the_default_lr_and_a_given_lr_wins() -> None:
    _, small = build_configs({"widths": (8, 16, 32)}, 64, 3)
    _, wide = build_configs({"widths": (64, 128, 256)}, 64, 3)
    assert wide.lr < small.lr
    _, given = build_configs({"widths": (64, 128, 256), "lr": 5e-3, "warmup_steps": 0}, 64, 3)
    assert (given.lr, given.warmup_steps) == (5e-3, 0)


def test_spatial_latent_sizes_are_checked_against_the_real_image_size() -> None:
    model, _ = build_configs({"arch": "spatial", "latent_dim": 49}, 28, 1)  # 7 x 7 maps at 28 px: one map
    assert model.latent_dim == 49
    with pytest.raises(ConfigError, match="multiple of 49"):
        build_configs({"arch": "spatial", "latent_dim": 50}, 28, 1)
    with pytest.raises(ConfigError, match="--image-size"):  # more stages than the image has pixels: a message, not 0 // 0
        build_configs({"arch": "spatial", "widths": (16, 32, 64, 128, 256)}, 28, 1)


def test_the_hierarchical_recipe_by_channels() -> None:
    from vaecli.train.recipe import COLOUR_LATENT, HVAE_COLOUR_GROUPS, HVAE_GROUPS, HVAE_TOP_FIRST, default_recipe

    colour = default_recipe(64, 3, arch="hvae")
    assert colour["latent_dim"] == COLOUR_LATENT and colour["groups"] == HVAE_COLOUR_GROUPS and colour["top_first"] == HVAE_TOP_FIRST
    assert colour["likelihood"] == "discrete-gaussian" and colour["fit_prior"] == "gmm" and colour["widths"] == (16, 32, 64)
    gray = default_recipe(28, 1, arch="hvae")
    assert gray["latent_dim"] == 32 and gray["groups"] == HVAE_GROUPS and "top_first" not in gray and "fit_prior" not in gray
    assert gray["likelihood"] == "bernoulli" and gray["widths"] == (16, 32)
    assert default_recipe(16, 1, arch="hvae")["groups"] == HVAE_GROUPS[:1]  # one stage at 16 px: one group


def test_a_conv_field_the_default_arch_does_not_read_means_the_flat_conv_net() -> None:
    # gray 28 px: the default mlp reads neither --hidden nor --norm, and --widths there means conv stages
    for given in ({"hidden": 64}, {"norm": "group"}, {"widths": (8, 16)}):
        assert default_recipe(28, 1, given=given)["arch"] == "conv", given
    # colour: the default hvae reads --hidden and --widths (it stays hvae) but has no norm layers (--norm: the flat net)
    assert default_recipe(64, 3, given={"hidden": 64})["arch"] == "hvae"
    assert default_recipe(64, 3, given={"widths": (8, 16, 32)})["arch"] == "hvae"
    flat = default_recipe(64, 3, given={"norm": "group"})
    assert flat["arch"] == "conv" and flat["latent_dim"] == 64 and "groups" not in flat
    model, _ = build_configs({"norm": "group"}, 64, 3)
    assert model.arch == "conv" and model.norm == "group"
    with pytest.raises(ConfigError, match="--norm"):  # named with the arch: refused, a flag it would not read
        build_configs({"arch": "hvae", "norm": "group"}, 64, 3)
