"""The memorisation check of `vae eval-samples` (vaecli.eval.fidelity.memorisation) on real Fashion-MNIST features."""

from __future__ import annotations

import pytest
import torch

from vaecli.config import DataConfig
from vaecli.data import load_data, to_float
from vaecli.errors import ConfigError
from vaecli.eval import fidelity as fid
from vaecli.eval.features import fmnist_net


@pytest.fixture(scope="module")
def feats() -> dict[str, torch.Tensor]:
    """Feature-net features of fashion-mnist-mini: its 2,000 training and 500 test images."""
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    net = fmnist_net()
    return {"train": net(to_float(train.images)), "test": net(to_float(test.images))}


def test_held_out_real_images_score_about_one(feats: dict[str, torch.Tensor]) -> None:
    test = feats["test"]
    m = fid.memorisation(feats["train"], test[250:], test[:250])  # "samples": new real images, held-out reference: others
    assert 0.9 < m.ratio < 1.1
    assert m.closer_than_p1 < 0.05 and m.train_images == 2000 and m.held_out_images == 250
    assert m.sample_median > 0 and m.held_out_median > 0


def test_copies_of_training_images_score_far_below_one(feats: dict[str, torch.Tensor]) -> None:
    train, test = feats["train"], feats["test"]
    exact = fid.memorisation(train, test, train[:300])
    assert exact.ratio == 0.0 and exact.closer_than_p1 == 1.0
    g = torch.Generator().manual_seed(0)
    spread = test.std(0).mean()
    near = train[:300] + 0.05 * spread * torch.randn(300, train.shape[1], generator=g)  # copies, slightly perturbed
    m = fid.memorisation(train, test, near)
    assert m.ratio < 0.3 and m.closer_than_p1 > 0.5
    half = fid.memorisation(train, test, torch.cat([train[:150], test[:150]]))  # half copies, half new
    assert 0.0 <= half.ratio < 0.9


def test_nearest_distances_against_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    x, ref = torch.randn(1500, 5, generator=g), torch.randn(300, 5, generator=g)
    expect = ((x[:, None, :].double() - ref[None].double()) ** 2).sum(-1).sqrt().min(1).values
    assert torch.allclose(fid.nearest_distances(x, ref), expect, atol=1e-9)
    with pytest.raises(ConfigError, match="non-empty reference of 5-d features"):
        fid.nearest_distances(x, torch.empty(0, 5))
    with pytest.raises(ConfigError, match="needs held-out images and samples"):
        fid.memorisation(ref, torch.empty(0, 5), x)
