"""--binarize: dynamic binarisation in training, a fixed binarisation of the test split."""

import json

import torch
from typer.testing import CliRunner

from vaecli import checkpoint as ckpt
from vaecli.cli import app
from vaecli.config import DataConfig, ModelConfig, TrainConfig
from vaecli.data import ImageData, binarize_fixed, load_data
from vaecli.training import start_run


def test_fixed_binarisation_is_binary_deterministic_and_unbiased():
    _, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    a, b = binarize_fixed(test), binarize_fixed(test)
    assert a.images.dtype == torch.uint8 and a.images.shape == test.images.shape
    assert set(a.images.unique().tolist()) <= {0, 255}
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, binarize_fixed(test, seed=1).images)
    # E[binary pixel] = pixel: the means agree to within sampling error (392k pixels)
    assert abs(a.images.float().mean() / 255 - test.images.float().mean() / 255) < 0.005
    # pixels at 0 stay 0 and pixels at 255 stay 255; binary images are unchanged
    assert (a.images[test.images == 0] == 0).all() and (a.images[test.images == 255] == 255).all()
    assert torch.equal(binarize_fixed(a, seed=5).images, a.images)


def test_load_data_binarises_only_the_test_split():
    train, test, cfg = load_data(DataConfig(name="fashion-mnist-mini", binarize=True))
    plain_train, plain_test, plain_cfg = load_data(DataConfig(name="fashion-mnist-mini"))
    assert set(test.images.unique().tolist()) == {0, 255}
    assert torch.equal(train.images, plain_train.images)
    assert cfg.binarize and cfg.fingerprint != plain_cfg.fingerprint


def test_training_sees_binary_batches():
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini", binarize=True))
    trainer = start_run(
        ModelConfig(latent_dim=4, widths=(4, 8), hidden=16),
        DataConfig(name="fashion-mnist-mini", binarize=True),
        TrainConfig(epochs=1, batch_size=32, max_steps=3, device="cpu"),
        name="bin",
        data=(ImageData(train.images[:96]), ImageData(test.images[:32])),
    )
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    trainer.fit()
    assert len(seen) == 3
    for x in seen:
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(seen[0], (train.images[:32].float() / 255 > 0.5).float())  # not a threshold


def test_cli_binarize_records_the_choice_and_names_the_likelihood():
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            "fashion-mnist-mini",
            "--latent-dim",
            "4",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--binarize",
            "--name",
            "b",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert "normalised likelihood" in out["likelihood"] and "not" not in out["likelihood"]
    assert ckpt.read_config(ckpt.resolve_run("b")).data.binarize is True
    r2 = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            "fashion-mnist-mini",
            "--latent-dim",
            "4",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--max-steps",
            "1",
            "--name",
            "c",
            "--json",
        ],
    )
    assert "not a normalised likelihood" in json.loads(r2.stdout)["likelihood"]
