"""Run configs: `vae train --config FILE.toml` (file < command line, keys with - or _, one line for an
unknown key or a bad value), the config.toml every run writes and its round trip, `vae train --from
RUN`, `vae sweep --config`; and the one line of --tensorboard without its package."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ok, one_error_line, vae

from vaecli.errors import ConfigError
from vaecli.runs import store as ckpt
from vaecli.runs.options import TOML, check_options, toml_text, tomllib

TINY = [
    "--data",
    "fashion-mnist-mini",
    "--arch",
    "conv",
    "--widths",
    "4,8",
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "-q",
]


def _config(name: str) -> dict:
    return json.loads((ckpt.runs_dir() / name / ckpt.CONFIG).read_text())


def _recipe(name: str) -> dict:
    """What must repeat: the model, data and training sections of a run's config.json."""
    cfg = _config(name)
    return {k: cfg[k] for k in ("model", "data", "train")}


def _toml(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the file under the flags


def test_the_file_gives_options_and_the_command_line_overrides_them(tmp_path):
    f = _toml(tmp_path, 'data = "fashion-mnist-mini"\narch = "conv"\nlatent-dim = 6\nbatch_size = 64\nbeta = 2\nwidths = [4, 8]\n'
                        'hidden = 16\ndevice = "cpu"\nmax-steps = 2\n')  # fmt: skip
    ok("train", "--config", f, "--latent-dim", "5", "--name", "over", "-q")
    cfg = _config("over")
    assert cfg["model"]["latent_dim"] == 5  # the command line over the file
    assert (cfg["model"]["widths"], cfg["model"]["hidden"], cfg["train"]["beta"], cfg["train"]["max_steps"]) == ([4, 8], 16, 2.0, 2)
    assert cfg["train"]["batch_size"] == 64 and cfg["data"]["name"] == "fashion-mnist-mini"


def test_keys_with_dashes_or_underscores_and_the_values_as_the_command_line_has_them():
    from typer.main import get_command

    from vaecli.cli import app
    from vaecli.cli.train import option_kinds

    kinds = option_kinds(get_command(app).commands["train"])
    values = {
        "latent-dim": 4,
        "batch_size": 8,
        "widths": [8, 16],
        "binarize": True,
        "lr": 1,
        "json": True,
        "skip-nonfinite": False,
        "tensorboard": True,
    }
    got = check_options(values, kinds, "f")
    assert got == {"latent_dim": 4, "batch_size": 8, "widths": "8,16", "binarize": True, "lr": 1.0, "as_json": True,
                   "skip_nonfinite": False, "tb_on": True}  # fmt: skip
    assert isinstance(got["lr"], float)
    assert check_options({"widths": "16,32"}, kinds, "f") == {"widths": "16,32"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("latent-dims = 4", "run.toml: unknown key 'latent-dims' (did you mean 'latent_dim'?)"),
        ("lattent_dim = 4", "did you mean 'latent_dim'?"),
        ("latent_dim = 'four'", "run.toml: latent_dim must be an integer, got 'four'"),
        ("latent_dim = 4.5", "latent_dim must be an integer, got 4.5"),
        ("beta = true", "beta must be a number, got True"),
        ("binarize = 1", "binarize must be true or false, got 1"),
        ("widths = [8, 'a']", "widths must be a list of integers"),
        ("arch = 3", "arch must be a string, got 3"),
        ("[model]\nlatent_dim = 4", "unknown key 'model'"),
        ("latent_dim = -4", "run.toml: --latent-dim must be >= 1, got -4"),
        ("widths = [8, 0]", "run.toml: --widths must be 1..4096 each"),
        ("free_bits = 1\ncapacity = 5", "run.toml: --capacity and --free-bits each change the KL term"),
        ("latent-dim = 4\nlatent_dim = 5", "latent_dim is given twice"),
        ("resume = 'x'", "resume cannot be set in a config file"),
        ("latent_dim = ", "run.toml: not valid TOML"),
    ],
)
def test_an_unknown_key_or_a_bad_value_is_one_line(tmp_path, text, words):
    assert words in one_error_line(vae("train", "--config", _toml(tmp_path, text), "--max-steps", "1"))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no run started


def test_a_missing_file_and_refused_combinations(tmp_path):
    assert "no such file" in one_error_line(vae("train", "--config", tmp_path / "nope.toml"))
    f = _toml(tmp_path, "beta = 2")
    assert "give one" in one_error_line(vae("train", "--config", f, "--from", "x"))
    assert "--resume continues one" in one_error_line(vae("train", "--from", "x", "--resume", "x"))
    assert "--resume continues one" in one_error_line(vae("train", "--config", f, "--resume", "x"))
    assert "'x'" in one_error_line(vae("train", "--from", "x"))


def test_a_value_the_command_line_overrides_is_not_checked(tmp_path):
    f = _toml(tmp_path, "latent_dim = -4")
    ok("train", "--config", f, *TINY, "--latent-dim", "3", "--max-steps", "1", "--name", "fine")
    assert _config("fine")["model"]["latent_dim"] == 3


# ----------------------------------------------------------------------------- config.toml: every run's options, repeated


def test_config_toml_repeats_the_run_and_from_does_the_same_by_name(tmp_path):
    ok("train", *TINY, "--latent-dim", "3", "--beta", "0.5", "--anneal", "2", "--lr", "0.003", "--ema", "0.9", "--max-steps", "3",
       "--val-size", "100", "--seed", "7", "--binarize", "--name", "orig")  # fmt: skip
    toml = ckpt.runs_dir() / "orig" / TOML
    table = tomllib.loads(toml.read_text())
    assert table["latent_dim"] == 3 and table["widths"] == [4, 8] and table["binarize"] is True and table["val_size"] == 100
    assert "name" not in table and "fingerprint" not in table  # a repeat gets its own name; what the data holds is found again
    ok("train", "--config", toml, "--name", "again")
    want = _recipe("orig")
    assert _recipe("again") == want  # identical apart from the names and dates
    ok("train", "--from", "orig", "--name", "same")
    assert _recipe("same") == want
    ok("train", "--from", "orig", "--beta", "4", "--name", "other", "-q")
    other = _recipe("other")
    assert other["train"]["beta"] == 4.0 and {**other["train"], "beta": 0.5} == want["train"] and other["model"] == want["model"]
    assert _config("again")["name"] == "again"


def test_a_run_written_before_config_toml_is_repeated_from_its_config_json(tmp_path):
    ok("train", *TINY, "--latent-dim", "2", "--max-steps", "2", "--name", "old")
    (ckpt.runs_dir() / "old" / TOML).unlink()
    ok("train", "--from", "old", "--name", "new")
    assert _recipe("new") == _recipe("old")


def test_a_resume_keeps_config_toml_beside_config_json(tmp_path):
    ok("train", *TINY, "--latent-dim", "2", "--max-steps", "2", "--epochs", "2", "--name", "r")
    ok("train", "--resume", "r", "--epochs", "3", "--max-steps", "1")
    assert tomllib.loads((ckpt.runs_dir() / "r" / TOML).read_text())["epochs"] == 3 == _config("r")["train"]["epochs"]


def test_the_toml_writer_reads_back_with_tomllib():
    values = {
        "s": 'a "quoted" \\ back\tslash\nnew line \x01 \x7f é 😀',
        "path": "C:\\data\\imgs",
        "i": -3,
        "f": 1e-05,
        "g": 0.005,
        "big": 1e16,
        "whole": 4.0,
        "inf": math.inf,
        "t": True,
        "n": False,
        "ints": [16, 32],
        "empty": [],
    }
    assert tomllib.loads(toml_text(values)) == values
    with pytest.raises(TypeError):
        toml_text({"x": None})


# ----------------------------------------------------------------------------- vae sweep --config


def test_sweep_config_is_the_base_of_every_run(tmp_path):
    f = _toml(tmp_path, 'data = "fashion-mnist-mini"\narch = "conv"\nwidths = [4, 8]\nhidden = 16\nbeta = 3\nlatent-dim = 2\n'
                        'batch_size = 64\ndevice = "cpu"\nbinarize = false\nmax_steps = 50\n')  # fmt: skip
    r = ok("sweep", "--config", f, "--beta", "0.5,1", "--max-steps", "2", "--name", "fs", "--plan")
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    args = shlex.split(lines[0])[2:]
    assert args[args.index("--latent-dim") + 1] == "2" and args[args.index("--widths") + 1] == "4,8"
    assert args.count("--beta") == 1 and args[args.index("--beta") + 1] == "0.5"  # the swept flag over the file
    assert args.count("--max-steps") == 1 and args[args.index("--max-steps") + 1] == "2"  # a flag given over the file
    assert "--binarize" not in args
    ok("train", *args)
    cfg = _config("fs-beta0.5")
    assert (cfg["model"]["latent_dim"], cfg["train"]["beta"], cfg["train"]["max_steps"]) == (2, 0.5, 2)


def test_sweep_config_from_a_run_and_what_a_sweep_refuses(tmp_path):
    ok("train", *TINY, "--latent-dim", "2", "--max-steps", "2", "--name", "base")
    r = ok("sweep", "--config", ckpt.runs_dir() / "base" / TOML, "--seed", "1,2", "--max-steps", "2", "--name", "fromrun", "--plan")
    args = shlex.split(r.stdout.splitlines()[1])[2:]
    ok("train", *args)
    got, want = _recipe("fromrun-seed2"), _recipe("base")
    assert got["model"] == want["model"] and got["train"]["seed"] == 2 and {**got["train"], "seed": 0} == want["train"]
    bad = _toml(tmp_path, "eval_samples = true\n")
    assert "eval_samples is not for a sweep" in one_error_line(vae("sweep", "--config", bad, "--beta", "1,2", "--max-steps", "2"))
    named = _toml(tmp_path, 'name = "x"\n', "named.toml")
    assert "the sweep names its runs" in one_error_line(vae("sweep", "--config", named, "--beta", "1,2", "--max-steps", "2"))
    assert "unknown key" in one_error_line(
        vae("sweep", "--config", _toml(tmp_path, "bta = 1", "u.toml"), "--beta", "1,2", "--max-steps", "2")
    )


def test_sweep_tensorboard_dir_gives_each_run_a_folder_of_its_own(tmp_path):
    r = ok("sweep", "--beta", "1,2", "--max-steps", "2", "--tensorboard-dir", tmp_path / "tb", "--name", "tbs", "--plan")
    folders = [shlex.split(line)[shlex.split(line).index("--tensorboard-dir") + 1] for line in r.stdout.splitlines()]
    assert folders == [str(tmp_path / "tb" / "tbs-beta1"), str(tmp_path / "tb" / "tbs-beta2")]


# ----------------------------------------------------------------------------- --tensorboard without its package


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    from vaecli.config import TrainConfig
    from vaecli.train.hooks import build_hooks

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import torch.utils.tensorboard fails
    line = one_error_line(vae("train", *TINY, "--max-steps", "1", "--tensorboard", "--name", "no-tb"))
    assert "pip install 'vaecli[tensorboard]'" in line and "--tensorboard" in line
    assert not (tmp_path / "runs" / "no-tb").exists()  # checked before anything started
    with pytest.raises(ConfigError, match=r"vaecli\[tensorboard\]"):
        build_hooks(TrainConfig(tensorboard="tb"))  # a resumed run that logs: before it trains
    assert "give --tensorboard too" in one_error_line(vae("train", *TINY, "--log-images-every", "2"))
