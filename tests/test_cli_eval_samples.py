"""`vae eval-samples` and `vae train --eval-samples` through CliRunner, on the tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import fake_fidelity, no_download, noisy_folder, one_error_line, vae

from vaecli.data import load_data, to_float
from vaecli.eval import fidelity
from vaecli.eval.features import MOBILENET, MOBILENET_PR_K, fmnist_net
from vaecli.eval.inference import sample
from vaecli.runs import store as ckpt

KEYS = {"run", "features", "n", "split", "temperature", "fd", "kid", "kid_std", "precision", "recall", "reconstructions"}
SCORES = {"fd", "kid", "kid_std", "precision", "recall"}


def ok_json(*args: object) -> dict:
    r = vae(*args, "--json")
    assert r.exit_code == 0, f"exit {r.exit_code}: {r.stderr}{r.exception!r}"
    return json.loads(r.stdout)


def test_json_scores_the_samples_against_the_split(ck: list[str], tiny_run: Path) -> None:
    out = ok_json("eval-samples", "-n", 200, "--seed", 3, *ck)
    assert set(out) >= KEYS and set(out["reconstructions"]) == SCORES
    assert out["run"] == "tiny" and out["features"] == "vaecli-fmnist-net-v1" and out["feature_dim"] == 128
    assert out["n"] == 200 and out["split"] == "test" and out["temperature"] == 1.0 and out["k"] == 3
    for r in (out, out["reconstructions"]):
        assert r["fd"] > 0 and r["kid_std"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1

    # the same numbers from the library by hand: the seeded subset of the split, then prior samples
    model, cfg, _ = ckpt.load_model(tiny_run)
    _, test, _ = load_data(cfg.data, download=False)
    g = torch.Generator().manual_seed(3)
    idx = torch.randperm(len(test), generator=g)[:200].sort().values
    net = fmnist_net()
    real_f, fake_f = net(to_float(test.images[idx])), net(sample(model, 200, 1.0, g))
    assert out["fd"] == pytest.approx(fidelity.frechet_distance(real_f, fake_f), rel=1e-6)
    assert (out["precision"], out["recall"]) == pytest.approx(fidelity.precision_recall(real_f, fake_f))

    assert ok_json("eval-samples", "-n", 200, "--seed", 3, *ck) == out  # deterministic for a seed
    hot = ok_json("eval-samples", "-n", 200, "--seed", 3, "-t", 3.0, *ck)
    assert hot["temperature"] == 3.0 and hot["fd"] != out["fd"] and hot["reconstructions"] == out["reconstructions"]


def test_n_above_the_split_is_clamped_with_a_note(ck: list[str]) -> None:
    r = vae("eval-samples", "-n", 10_000, "--split", "test", "--json", *ck)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 500  # fashion-mnist-mini's test split
    assert "note: -n 10,000 is more than the 500 images of the test split" in r.stderr


def test_table_names_the_feature_space(ck: list[str]) -> None:
    r = vae("eval-samples", "-n", 100, "--split", "train", *ck)
    assert r.exit_code == 0, r.output
    for text in ("vaecli-fmnist-net-v1", "train split", "samples (T = 1)", "reconstructions", "precision", "not comparable with Inception"):
        assert text in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", 0], "-n must be >= 10, got 0"),
        (["-n", -5], "-n must be >= 10"),
        (["--temperature", 0], "--temperature must be a finite number > 0, got 0.0"),
        (["--temperature", -1], "--temperature must be a finite number > 0"),
        (["--temperature", "nan"], "--temperature must be a finite number > 0"),
        (["--split", "valid"], "--split must be one of train, val, test, got 'valid'"),
        (["--features", "clip"], "--features must be auto"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(ck: list[str], args: list[object], message: str) -> None:
    assert message in one_error_line(vae("eval-samples", *args, *ck))


def test_missing_run_and_both_run_and_checkpoint(ck: list[str]) -> None:
    assert "vae: error:" in one_error_line(vae("eval-samples", "--run", "nope"))
    assert "not both" in one_error_line(vae("eval-samples", "--run", "tiny", *ck))


def test_inception_features_offline_exit_2(ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # the [fid] extra is not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    line = one_error_line(vae("eval-samples", "-n", 50, "--features", "inception-v3-pool3", *ck))
    assert line.startswith("vae: error:") and "pip install 'vaecli[fid]'" in line


def test_train_eval_samples_stores_the_scores(tmp_path: Path) -> None:
    r = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--widths", "8,16", "--hidden", 32, "--batch-size", 64,
            "--device", "cpu", "--max-steps", 3, "--name", "es", "--eval-samples", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["eval_samples"]) >= KEYS and out["eval_samples"]["n"] == 500 and out["eval_samples"]["run"] == "es"
    stored = ckpt.read_summary(tmp_path / "runs" / "es")
    assert stored["eval_samples"] == out["eval_samples"] and "test" in stored  # added to training's summary
    assert "vaecli-fmnist-net-v1" in r.stderr  # the table goes to stderr next to --json
    plain = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--max-steps", 1, "--name", "plain", "--json")
    assert plain.exit_code == 0 and "eval_samples" not in json.loads(plain.stdout)


def test_inception_features_through_the_cli(ck: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_fidelity(monkeypatch)

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    line = one_error_line(vae("eval-samples", "-n", 50, "--features", "inception-v3-pool3", *ck))
    assert "cannot load the Inception v3 weights" in line and "offline?" in line
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: {})  # "downloaded"
    out = ok_json("eval-samples", "-n", 50, "--features", "inception-v3-pool3", *ck)
    assert out["features"] == "inception-v3-pool3" and out["feature_dim"] == 2048 and out["n"] == 50


def test_inception_download_keeps_json_stdout_clean(ck: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub prints "Downloading: ..." on stdout; --json must still print only its JSON."""
    fake_fidelity(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, *a, **kw: torch.save({}, dst))
    out = ok_json("eval-samples", "-n", 50, "--features", "inception-v3-pool3", *ck)  # json.loads of the whole stdout
    assert out["features"] == "inception-v3-pool3" and (tmp_path / "torch" / "hub" / "checkpoints").is_dir()


# ----------------------------------------------------------------------------- colour: mobilenet-v2-imagenet, offline


def test_colour_run_scores_offline_in_mobilenet_features(tiny_colour_run: Path, mobilenet_weights: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    asked = no_download(monkeypatch)  # offline: the weights come from TORCH_HOME
    ck = ["--checkpoint", str(tiny_colour_run)]
    out = ok_json("eval-samples", *ck)
    assert asked == []
    assert out["features"] == MOBILENET and out["feature_dim"] == 1280 and MOBILENET_PR_K == 10
    assert out["n"] == 10 and out["split"] == "test" and out["k"] == 3  # the folder's 10 test images: too few for k = 10
    for r in (out, out["reconstructions"]):
        assert r["fd"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert out["memorisation"]["train_images"] == 81 and out["memorisation"]["ratio"] > 0  # 90 less the validation split
    r = vae("eval-samples", *ck)
    assert r.exit_code == 0, r.output
    assert MOBILENET in r.stdout and "1280-d" in r.stdout and "k = 3" in r.stdout


def test_mobilenet_weights_download_once_then_offline(tiny_colour_run: Path, mobilenet_weights: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ck = ["--checkpoint", str(tiny_colour_run), "-n", 10]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / mobilenet_weights.name
    line = one_error_line(vae("eval-samples", *ck, "--json"))  # offline, nothing cached
    assert line.startswith("vae: error: the MobileNetV2 weights") and str(cached) in line and "TORCH_HOME=" in line
    asked = no_download(monkeypatch, copy_from=mobilenet_weights)  # online: "downloaded" into TORCH_HOME
    first = ok_json("eval-samples", *ck)  # the whole stdout is the JSON: torch.hub's "Downloading" line held back
    assert len(asked) == 1 and cached.read_bytes() == mobilenet_weights.read_bytes()
    no_download(monkeypatch)  # offline again: the cached file is used
    assert ok_json("eval-samples", *ck) == first


def test_train_eval_samples_on_a_colour_folder(tmp_path: Path, mobilenet_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_download(monkeypatch)
    folder = noisy_folder(tmp_path / "imgs", 60, size=(16, 16))
    r = vae("train", "--data", folder, "--latent-dim", 4, "--widths", "8,16", "--hidden", 32, "--batch-size", 32, "--device", "cpu",
            "--max-steps", 2, "--name", "c", "--eval-samples", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["eval_samples"]
    assert out["features"] == MOBILENET and out["n"] == 6 and out["k"] == 3 and out["fd"] > 0
    assert ckpt.read_summary(tmp_path / "runs" / "c")["eval_samples"] == out
