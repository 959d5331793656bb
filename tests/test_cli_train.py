import json
import math

import pytest
from typer.testing import CliRunner

from vaecli import checkpoint as ckpt
from vaecli.cli import app

runner = CliRunner()
TINY = ["--data", "fashion-mnist-mini", "--latent-dim", "4", "--batch-size", "64", "--device", "cpu", "--precision", "fp32"]


def invoke(*args):
    return runner.invoke(app, list(args))


def one_error_line(result, code=2):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_train_json_end_to_end(tmp_path):
    r = invoke("train", *TINY, "--max-steps", "6", "--name", "e2e", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= {"run", "path", "epochs", "steps", "seconds", "images_per_second", "train", "test", "active_units"}
    assert out["run"] == "e2e" and out["steps"] == 6 and out["images_per_second"] > 0
    assert set(out["test"]) == {"neg_elbo", "recon", "kl"} and out["test"]["kl"] >= 0
    assert (tmp_path / "runs" / "e2e" / "model.safetensors").is_file()

    info = json.loads(invoke("info", "e2e", "--json").stdout)
    assert info["parameters"] > 0 and info["config"]["model"]["latent_dim"] == 4 and info["world_size"] == 1
    runs = json.loads(invoke("runs", "--json").stdout)
    assert [x["name"] for x in runs] == ["e2e"] and runs[0]["test_neg_elbo"] == pytest.approx(out["test"]["neg_elbo"])
    assert "e2e" in invoke("runs").stdout
    assert "parameters" in invoke("info", "e2e").stdout

    # resume continues the step count; a second start with the same name is refused
    r2 = invoke("train", "--resume", "e2e", "--max-steps", "3", "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout)["steps"] == 9
    assert "already exists" in one_error_line(invoke("train", *TINY, "--max-steps", "1", "--name", "e2e"))
    r3 = invoke("train", *TINY, "--max-steps", "1", "--name", "e2e", "--overwrite", "--json")
    assert r3.exit_code == 0 and json.loads(r3.stdout)["steps"] == 1


def test_seed_arch_info_reports_parameter_count():
    r = invoke(
        "train",
        "--data",
        "fashion-mnist-mini",
        "--arch",
        "seed",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--name",
        "s",
        "-q",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(invoke("info", "s", "--json").stdout)["parameters"] == 7_048_865


def test_widths_and_hidden_shape_the_model():
    r = invoke("train", *TINY, "--widths", "4,8", "--hidden", "16", "--max-steps", "1", "--name", "small", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads(invoke("info", "small", "--json").stdout)
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
    line = one_error_line(invoke(*base, *args))
    assert needle in line


def test_absent_dataset_offline(tmp_path, monkeypatch):
    from torchvision import datasets

    def no_net(self):
        raise OSError("no network")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_net)
    line = one_error_line(invoke("train", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "d"), "--max-steps", "1"))
    assert "train-images-idx3-ubyte" in line and "t10k-labels-idx1-ubyte" in line


def test_info_unknown_run_and_debug_traceback(monkeypatch):
    assert "no run named" in one_error_line(invoke("info", "nope"))
    monkeypatch.setenv("VAE_DEBUG", "1")
    r = invoke("--debug", "info", "nope")
    assert r.exit_code != 0 and r.exception is not None


def test_help_and_version():
    r = invoke("--help")
    assert r.exit_code == 0 and "train" in r.stdout
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("vaecli ")


@pytest.mark.parametrize(
    "flags", [["--cyclical", "2"], ["--capacity", "5", "--capacity-epochs", "1"], ["--free-bits", "0.5"], ["--tc-beta", "6"]]
)
def test_each_objective_trains_from_the_cli(flags):
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            "fashion-mnist-mini",
            "--latent-dim",
            "4",
            "--batch-size",
            "250",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--max-steps",
            "3",
            "--name",
            "o",
            "--json",
            *flags,
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = ckpt.read_config(ckpt.resolve_run("o")).train
    key = flags[0][2:].replace("-", "_")
    assert getattr(cfg, key) == float(flags[1])
    import json

    out = json.loads(r.stdout)
    assert all(math.isfinite(v) for v in out["test"].values())


def test_cli_conflict_is_one_line():
    r = CliRunner().invoke(app, ["train", "--data", "fashion-mnist-mini", "--cyclical", "2", "--anneal", "2", "--max-steps", "1"])
    assert r.exit_code == 2 and "choose one" in r.stderr and "Traceback" not in r.output
