"""The run configuration (vaecli.config): the JSON round trip, wrong types refused, the checks of
each training setting and of settings that conflict."""

import pytest

from vaecli.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaecli.errors import ConfigError


def test_round_trip():
    cfg = RunConfig(
        name="x",
        model=ModelConfig(latent_dim=7, widths=(8, 16)),
        data=DataConfig(name="mnist"),
        train=TrainConfig(beta=4.0, anneal=30, max_steps=5),
        created="now",
        versions={"torch": "2"},
    )
    back = RunConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert back.model.widths == (8, 16)


@pytest.mark.parametrize(
    "patch",
    [
        {"model": {"latent_dim": "32"}},
        {"model": {"widths": "wide"}},
        {"train": {"beta": "a lot"}},
        {"train": {"max_steps": "ten"}},
        {"train": {"skip_nonfinite": 1}},
        {"data": {"name": 5}},
        {"model": []},
    ],
)
def test_wrong_types_rejected(patch):
    d = RunConfig(name="x").to_dict()
    for k, v in patch.items():
        if isinstance(v, dict):
            d[k].update(v)
        else:
            d[k] = v
    with pytest.raises(ConfigError):
        RunConfig.from_dict(d)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": -1.0},
        {"beta": float("nan")},
        {"batch_size": 0},
        {"lr": 0.0},
        {"epochs": 0},
        {"device": "tpu"},
        {"max_steps": 0},
        {"time_budget": -3.0},
    ],
)
def test_train_validation(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs).validate()


def test_config_rejects_conflicting_or_negative_settings():
    for kw in (
        {"cyclical": 2, "anneal": 3},
        {"capacity": 5.0, "free_bits": 0.1},
        {"tc_beta": -1.0},
        {"free_bits": float("nan")},
        {"cyclical": -1},
        {"capacity_epochs": -2},
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**kw).validate()
    TrainConfig(cyclical=4, capacity=25.0, capacity_epochs=3).validate()
    assert TrainConfig.from_dict({"tc_beta": 6, "cyclical": 2}).tc_beta == 6.0
