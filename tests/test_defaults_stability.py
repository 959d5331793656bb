"""No default configuration diverges: the learning-rate rule (config.default_lr, scaled by the
model's widest layer) and the warm-up keep every size and channel count finite (at 28 px gray the
default is the mlp; colour defaults use the Gaussian decoder).

Small generated colour images (blobs on a white ground, like emoji) stand in for a folder; the
batch is small to keep the file fast. The divergence this guards against is per weight (Adam moves
each by about lr per step, whatever the batch), so a small batch shows it as well as 128 does:
``--widths 32,64,128`` at 64 px colour with 5e-3 and no warm-up diverges within a few steps here too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vaecli.config import DataConfig
from vaecli.errors import VaeError
from vaecli.recipe import build_configs, default_recipe


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
    from vaecli.training import plan_run, start_run

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
    _, train = build_configs({"widths": (32, 64, 128)}, 64, 3)
    assert train.lr < 5e-3 and train.warmup_steps > 0  # the rule sized the lr for this model
    losses = _train(colour64, 64, 3, 200, widths=(32, 64, 128), batch_size=8)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_the_old_fixed_lr_diverges_on_that_model(colour64: Path) -> None:
    """The control: without the rule (5e-3, no warm-up) the same model stops on a non-finite loss
    (early, before any finite state is kept to roll back to: a recipe problem, not a bad step)."""
    with pytest.raises(VaeError, match="non-finite"):
        _train(colour64, 64, 3, 40, widths=(32, 64, 128), batch_size=8, lr=5e-3, warmup_steps=0)


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
    from vaecli.recipe import REFERENCE_FAN_IN, default_lr, max_fan_in

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
