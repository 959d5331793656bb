"""`vae train` through CliRunner: the JSON summary, resume and overwrite, the model's shape from the
flags, the defaults the recipe picks for the flags given, --binarize, each objective, bad flags."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import one_error_line, vae

from vaecli.runs import store as ckpt
from vaecli.train.recipe import BUDGET_EPOCHS, DEFAULT_EPOCHS, default_recipe

TINY_ARGS = ["--data", "fashion-mnist-mini", "--latent-dim", "4", "--batch-size", "64", "--device", "cpu", "--precision", "fp32"]


def _train_cfg(run: str) -> dict:
    """The train block of run ``run``'s config.json."""
    return json.loads((Path(os.environ["VAE_HOME"]) / run / "config.json").read_text())["train"]


def test_train_json_end_to_end(tmp_path):
    r = vae("train", *TINY_ARGS, "--max-steps", "6", "--name", "e2e", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= {"run", "path", "epochs", "steps", "seconds", "images_per_second", "train", "test", "active_units"}
    assert out["run"] == "e2e" and out["steps"] == 6 and out["images_per_second"] > 0
    assert set(out["test"]) == {"neg_elbo", "recon", "kl"} and out["test"]["kl"] >= 0
    assert (tmp_path / "runs" / "e2e" / "model.safetensors").is_file()

    info = json.loads(vae("info", "e2e", "--json").stdout)
    assert info["parameters"] > 0 and info["config"]["model"]["latent_dim"] == 4 and info["world_size"] == 1
    runs = json.loads(vae("runs", "--json").stdout)
    assert [x["name"] for x in runs] == ["e2e", "pretrained:fashion-mnist"]  # own runs, then the shipped ones
    assert runs[0]["test_neg_elbo"] == pytest.approx(out["test"]["neg_elbo"])
    assert "e2e" in vae("runs").stdout
    assert "parameters" in vae("info", "e2e").stdout

    # resume continues the step count; a second start with the same name is refused
    r2 = vae("train", "--resume", "e2e", "--max-steps", "3", "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout)["steps"] == 9
    assert "already exists" in one_error_line(vae("train", *TINY_ARGS, "--max-steps", "1", "--name", "e2e"))
    r3 = vae("train", *TINY_ARGS, "--max-steps", "1", "--name", "e2e", "--overwrite", "--json")
    assert r3.exit_code == 0 and json.loads(r3.stdout)["steps"] == 1


def test_seed_arch_info_reports_parameter_count():
    r = vae(
        "train",
        "--data",
        "fashion-mnist-mini",
        "--arch",
        "seed",
        "--max-steps",
        1,
        "--batch-size",
        8,
        "--name",
        "s",
        "-q",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(vae("info", "s", "--json").stdout)["parameters"] == 7_048_865


def test_widths_and_hidden_shape_the_model():
    r = vae("train", *TINY_ARGS, "--widths", "4,8", "--hidden", "16", "--max-steps", "1", "--name", "small", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(vae("info", "small", "--json").stdout)
    assert info["config"]["model"]["widths"] == [4, 8] and info["config"]["model"]["hidden"] == 16
    # encoder convs 1->4->8, 392->16, heads 16->4 (x2); decoder 4->16->392, convT 8->4->1 (k4: weights + biases)
    enc = (1 * 4 * 16 + 4) + (4 * 8 * 16 + 8) + (392 * 16 + 16) + 2 * (16 * 4 + 4)
    dec = (4 * 16 + 16) + (16 * 392 + 392) + (8 * 4 * 16 + 4) + (4 * 1 * 16 + 1)
    assert info["parameters"] == enc + dec


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "/definitely/missing/folder"], "neither a dataset"),
        (["--beta", "-1"], "--beta"),
        (["--beta", "nan"], "--beta"),
        (["--batch-size", "0"], "--batch-size"),
        (["--latent-dim", "0"], "--latent-dim"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "tpu"], "--device"),
        (["--arch", "transformer"], "arch"),
        (["--epochs", "0"], "--epochs"),
        (["--name", "../x"], "invalid run name"),
        (["--resume", "ghost"], "no run named"),
        (["--batch-size", "many"], "batch-size"),
        (["--widths", "16,x"], "--widths"),
        (["--widths", "0,32"], "--widths"),
        (["--widths", "8,8,8,8,8,8"], "--image-size"),
        (["--hidden", "0"], "hidden"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    base = ["train", "--data", "fashion-mnist-mini", "--max-steps", "1"]
    line = one_error_line(vae(*base, *args))
    assert needle in line


def test_absent_dataset_offline(tmp_path, monkeypatch):
    from torchvision import datasets

    def no_net(self):
        raise OSError("no network")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_net)
    line = one_error_line(vae("train", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "d"), "--max-steps", "1"))
    assert "train-images-idx3-ubyte" in line and "t10k-labels-idx1-ubyte" in line


@pytest.mark.parametrize(
    "flags", [["--cyclical", "2"], ["--capacity", "5", "--capacity-epochs", "1"], ["--free-bits", "0.5"], ["--tc-beta", "6"]]
)
def test_each_objective_trains_from_the_cli(flags):
    r = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--batch-size", 250, "--device", "cpu", "--epochs", 2,
            "--max-steps", 3, "--name", "o", "--json", *flags)  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = ckpt.read_config(ckpt.resolve_run("o")).train
    key = flags[0][2:].replace("-", "_")
    assert getattr(cfg, key) == float(flags[1])
    out = json.loads(r.stdout)
    assert all(math.isfinite(v) for v in out["test"].values())


def test_cli_conflict_is_one_line():
    r = vae("train", "--data", "fashion-mnist-mini", "--cyclical", 2, "--anneal", 2, "--max-steps", 1)
    assert "choose one" in one_error_line(r)


def test_cli_anneal_without_epochs_runs_the_whole_ramp() -> None:
    r = vae("train", "--data", "fashion-mnist-mini", "--beta", "4", "--anneal", "3", "--max-steps", "1", "--name", "a", "--latent-dim", "4")
    assert r.exit_code == 0, r.output
    cfg = json.loads((Path(os.environ["VAE_HOME"]) / "a" / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 + DEFAULT_EPOCHS
    assert "13 epochs" in " ".join(r.output.split())
    r = vae("train", "--data", "fashion-mnist-mini", "--beta", "4", "--anneal", "30", "--epochs", "2", "--max-steps", "1", "--name", "b")
    assert r.exit_code == 0, r.output
    assert "beta reaches only 0.267 of 4" in " ".join(r.output.split())


def test_cli_recipe_defaults_follow_the_arch() -> None:
    r = vae("train", "--data", "fashion-mnist-mini", "--arch", "seed", "--max-steps", "1", "--name", "s", "-q")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("s")
    assert (cfg["batch_size"], cfg["lr"], cfg["lr_schedule"], cfg["epochs"]) == (128, 1e-3, "constant", 10)
    assert cfg["precision"] == "auto"
    r = vae("train", "--data", "fashion-mnist-mini", "--max-steps", "1", "--name", "c", "-q", "--lr", "5e-4")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("c")
    conv = default_recipe(28, 1, "cpu")
    assert (cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (conv["batch_size"], 5e-4, conv["lr_schedule"])


def test_cli_time_budget_alone_runs_until_the_budget() -> None:
    r = vae("train", "--data", "fashion-mnist-mini", "--time-budget", "0.5", "--latent-dim", "8", "--name", "b", "-q", "--json")
    assert r.exit_code == 0, r.output
    cfg = _train_cfg("b")
    assert cfg["epochs"] == BUDGET_EPOCHS and cfg["time_budget"] == 0.5
    r = vae("train", "--data", "fashion-mnist-mini", "--time-budget", "0.5", "--epochs", "2", "--latent-dim", "8", "--name", "e", "-q")
    assert r.exit_code == 0, r.output
    assert _train_cfg("e")["epochs"] == 2


def test_cli_prints_a_dash_for_unmeasured_speed():
    from vaecli.cli.train import _ips

    assert _ips(None) == "-" and _ips(1234.4) == "1,234"


def test_cli_binarize_records_the_choice_and_names_the_likelihood():
    r = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--batch-size", 64, "--device", "cpu", "--max-steps", 2,
            "--binarize", "--name", "b", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert "normalised likelihood" in out["likelihood"] and "not" not in out["likelihood"]
    assert ckpt.read_config(ckpt.resolve_run("b")).data.binarize is True
    r2 = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--batch-size", 64, "--device", "cpu", "--max-steps", 1,
             "--name", "c", "--json")  # fmt: skip
    assert "not a normalised likelihood" in json.loads(r2.stdout)["likelihood"]


def _model_cfg(run: str) -> dict:
    """The model block of run ``run``'s config.json."""
    return json.loads((Path(os.environ["VAE_HOME"]) / run / "config.json").read_text())["model"]


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "--blocks is not read by --arch mlp (the default for 28 px gray images): give --arch conv, conv-mlp, spatial or hvae"),
        (["--arch", "mlp"], "--blocks is not read by --arch mlp: give --arch conv"),
        (["--arch", "seed"], "--blocks is not read by --arch seed (a fixed layer table)"),
    ],
)
def test_cli_blocks_where_the_arch_has_no_conv_stages_is_refused(args, needle):
    """--blocks with the mlp (the 28 px gray default) or the seed's table was accepted and ignored:
    the same 1,379,152-parameter mlp trained."""
    line = one_error_line(vae("train", *TINY_ARGS, "--blocks", "2", "--max-steps", "1", "--name", "b", *args))
    assert needle in line
    assert not (Path(os.environ["VAE_HOME"]) / "b").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--arch", "mlp", "--upsample", "resize"], "--upsample is not read by --arch mlp"),
        (["--upsample", "resize"], "--upsample is not read by --arch mlp (the default for 28 px gray images)"),
        (["--arch", "conv-mlp", "--upsample", "resize"], "--upsample is not read by --arch conv-mlp: give --arch conv, spatial or hvae"),
        (["--arch", "mlp", "--norm", "group"], "--norm is not read by --arch mlp"),
        (["--arch", "seed", "--norm", "batch"], "--norm is not read by --arch seed"),
        (["--arch", "mlp", "--hidden", "64"], "--hidden is not read by --arch mlp: give --arch conv, conv-mlp or hvae"),
        (["--arch", "spatial", "--hidden", "64"], "--hidden is not read by --arch spatial"),
        (["--arch", "seed", "--widths", "8,16"], "--widths is not read by --arch seed"),
        (["--arch", "hvae", "--norm", "group"], "--norm is not read by --arch hvae"),
        (["--arch", "spatial", "--groups", "4"], "--groups is not read by --arch spatial: give --arch hvae"),
        (
            ["--mixtures", "3"],
            "--mixtures is not read by --likelihood bernoulli (the default for 28 px gray images): give --likelihood logistic",
        ),
        (["--likelihood", "gaussian", "--logistic-scale", "shared"], "--logistic-scale is not read by --likelihood gaussian"),
        (["--pseudo-inputs", "10"], "--pseudo-inputs is not read by --prior normal (the default): give --prior vamp"),
    ],
)
def test_cli_a_flag_the_model_does_not_read_is_one_line(args, needle):
    assert needle in one_error_line(vae("train", *TINY_ARGS, "--max-steps", "1", *args))


def test_cli_conv_blocks_build_residual_blocks():
    r = vae("train", *TINY_ARGS, "--arch", "conv", "--widths", "4,8", "--hidden", "16", "--blocks", "2", "--max-steps", "2",
            "--name", "b", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _model_cfg("b")["blocks"] == 2 and math.isfinite(json.loads(r.stdout)["test"]["neg_elbo"])
    from vaecli.model.vae import ResBlock

    model, _, _ = ckpt.load_model("b")
    assert [type(m) for m in model.encoder.body].count(ResBlock) == [type(m) for m in model.decoder.body].count(ResBlock) == 4


@pytest.mark.parametrize("upsample,layer", [("transposed", "ConvTranspose2d"), ("resize", "Conv2d")])
def test_cli_upsample_trains_either_way(upsample, layer):
    r = vae("train", *TINY_ARGS, "--arch", "conv", "--widths", "4,8", "--hidden", "16", "--upsample", upsample, "--max-steps", "3",
            "--name", "u", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert all(math.isfinite(v) for v in json.loads(r.stdout)["test"].values())
    model, _, _ = ckpt.load_model("u")
    assert type(model.decoder.head).__name__ == layer and _model_cfg("u")["upsample"] == upsample


def test_cli_logistic_scale_shared_is_one_component_and_says_so():
    """--logistic-scale shared is one logistic per pixel with a learned scale per channel: config.json
    said --mixtures 5 while the model used one component; now --mixtures K > 1 with it is refused."""
    line = one_error_line(
        vae("train", *TINY_ARGS, "--likelihood", "logistic", "--logistic-scale", "shared", "--mixtures", "5", "--max-steps", "1")
    )
    assert "--mixtures is not read by --logistic-scale shared" in line and "give --logistic-scale pixel" in line
    r = vae("train", *TINY_ARGS, "--likelihood", "logistic", "--logistic-scale", "shared", "--max-steps", "3", "--name", "s", "--json")
    assert r.exit_code == 0, r.output
    assert all(math.isfinite(v) for v in json.loads(r.stdout)["test"].values())
    assert (_model_cfg("s")["mixtures"], _model_cfg("s")["logistic_scale"]) == (1, "shared")
    model, _, _ = ckpt.load_model("s")
    assert model.likelihood.mixtures == 1 and tuple(model.likelihood.log_scale.shape) == (1,)
    r = vae("train", *TINY_ARGS, "--likelihood", "logistic", "--mixtures", "3", "--max-steps", "3", "--name", "p", "--json")
    assert r.exit_code == 0, r.output
    assert all(math.isfinite(v) for v in json.loads(r.stdout)["test"].values())
    model, _, _ = ckpt.load_model("p")
    assert _model_cfg("p")["mixtures"] == model.likelihood.mixtures == 3 and model.likelihood.log_scale is None
