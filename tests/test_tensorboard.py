"""`vae train --tensorboard`: the event files read back with tensorboard's EventAccumulator hold every
number of metrics.jsonl under the same name at the row's step, the image grids and the hparams; a
resumed run appends to the same log; rank 0 only; a sweep's runs side by side."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import ok, start_tiny

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaecli.config import TrainConfig
from vaecli.runs import store as ckpt
from vaecli.train.hooks import Checkpointing, EvalSamples, TensorBoard, build_hooks, flat_numbers
from vaecli.train.run import resume_run

TINY = ["--data", "fashion-mnist-mini", "--arch", "conv", "--widths", "4,8", "--hidden", "16", "--latent-dim", "4",
        "--batch-size", "64", "--device", "cpu", "-q"]  # fmt: skip


def _events(folder: Path) -> EventAccumulator:
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _scalars(ea: EventAccumulator) -> dict[str, dict[int, float]]:
    """tag -> {step: value} (a repeated step keeps its last value) of the tags with values (not all purged)."""
    out = {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}
    return {tag: values for tag, values in out.items() if values}


def _expected(rows: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for tag, value in flat_numbers(row).items():
            out.setdefault(tag, {})[row["step"]] = value
    return out


def _assert_matches_metrics(run: Path, ea: EventAccumulator) -> None:
    """The scalars are metrics.jsonl's numbers (float32), and the test figures of summary.json."""
    got = _scalars(ea)
    summary = json.loads((run / ckpt.SUMMARY).read_text())
    test = got.pop("test/active_units")
    assert test == {summary["steps"]: summary["active_units"]}
    for k, v in summary["test"].items():
        assert got.pop(f"test/{k}") == {summary["steps"]: pytest.approx(v, rel=1e-6)}
    want = _expected(ckpt.read_metrics(run))
    assert set(got) == set(want)
    for tag in want:
        assert got[tag] == pytest.approx(want[tag], rel=1e-6), tag


def test_flat_numbers_joins_nested_keys_and_leaves_out_what_is_no_number():
    row = {"epoch": 2, "lr": 1e-3, "train": {"neg_elbo": 3.5, "x": {"y": 1}}, "partial": True, "note": "n", "val": None}
    assert flat_numbers(row) == {"epoch": 2, "lr": 1e-3, "train/neg_elbo": 3.5, "train/x/y": 1}


def test_the_hook_is_built_from_the_config_and_runs_last():
    hooks = build_hooks(TrainConfig(tensorboard="tb", log_images_every=3, eval_samples=True))
    assert [type(h) for h in hooks] == [Checkpointing, EvalSamples, TensorBoard]
    assert (hooks[-1].folder, hooks[-1].images_every) == ("tb", 3)


def test_the_event_files_hold_the_metrics_the_images_and_the_hparams(tmp_path):
    ok("train", *TINY, "--epochs", "3", "--max-steps", "65", "--tensorboard", "--log-images-every", "2", "--name", "tb")
    run = tmp_path / "runs" / "tb"
    cfg = json.loads((run / ckpt.CONFIG).read_text())["train"]
    assert (cfg["tensorboard"], cfg["log_images_every"]) == ("tb", 2)
    rows = ckpt.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["partial"]  # two epochs (28 steps each), a part of the third
    ea = _events(run / "tb")
    _assert_matches_metrics(run, ea)
    assert {"train/neg_elbo", "val/neg_elbo", "lr", "beta", "grad_norm/max", "test/neg_elbo"} <= set(ea.Tags()["scalars"])
    for tag, side in (("images/reconstructions", 2 + 8 * 30), ("images/samples", 2 + 8 * 30)):
        images = ea.Images(tag)
        assert [im.step for im in images] == [rows[1]["step"]]  # every 2nd epoch
        assert images[0].width == side
    assert ea.Images("images/reconstructions")[0].height == 2 + 2 * 30  # originals over reconstructions
    hp = ea.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/latent_dim"].number_value == 4 and start.hparams["model/widths"].string_value == "4,8"
    assert start.hparams["data/name"].string_value == "fashion-mnist-mini"


def test_a_resumed_run_appends_to_the_same_log(tmp_path, small_data):
    start_tiny("res", small_data, epochs=3, max_steps=4, tensorboard="tb", log_images_every=1).fit()  # stops inside epoch 2
    run = ckpt.runs_dir() / "res"
    first = _scalars(_events(run / "tb"))
    assert sorted(first["train/neg_elbo"]) == [3, 4]  # epoch 1, then the part of epoch 2
    resume_run("res", data=small_data).fit()
    ea = _events(run / "tb")
    _assert_matches_metrics(run, ea)  # the partial row and the first test figures are purged: the steps were trained again
    assert sorted(_scalars(ea)["train/neg_elbo"]) == [3, 6, 9]
    assert [im.step for im in ea.Images("images/samples")] == [3, 6, 9]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2  # one file per invocation, one log


def test_only_rank_0_writes(tmp_path, small_data, monkeypatch):
    from vaecli import distributed

    monkeypatch.setattr(distributed, "is_main", lambda: False)
    hook = TensorBoard("tb", 1)
    tr = start_tiny("rank1", small_data, epochs=1, tensorboard="tb")
    hook.on_fit_start(tr)
    assert hook.writer is None and not (tmp_path / "runs" / "rank1" / "tb").exists()


def test_a_given_folder_and_a_sweeps_runs_side_by_side(tmp_path):
    r = ok("sweep", *TINY[:-1], "--beta", "1,2", "--max-steps", "2", "--tensorboard-dir", tmp_path / "tb", "--name", "tbs", "--plan")
    for line in r.stdout.splitlines():  # each planned command, run here
        ok(*shlex.split(line)[1:], "-q")
    for run in ("tbs-beta1", "tbs-beta2"):
        ea = _events(tmp_path / "tb" / run)
        _assert_matches_metrics(tmp_path / "runs" / run, ea)
        assert not (tmp_path / "runs" / run / "tb").exists()


def test_logging_leaves_the_training_as_it_is(small_data):
    """The image grids run the model in eval mode with their own generator: the same run with and
    without --tensorboard ends with the same weights and numbers."""
    import torch

    runs = {}
    for name, tb in (("plain", None), ("logged", "tb")):
        tr = start_tiny(
            name,
            small_data,
            epochs=3,
            tensorboard=tb,
            log_images_every=1,
            model={"latent_dim": 4, "widths": (4, 8), "hidden": 16, "norm": "batch"},
        )
        tr.fit()
        rows = [{k: v for k, v in r.items() if k != "train_seconds"} for r in ckpt.read_metrics(tr.path)]
        runs[name] = (rows, tr.model.state_dict())
    assert runs["plain"][0] == runs["logged"][0]
    assert all(torch.equal(runs["plain"][1][k], runs["logged"][1][k]) for k in runs["plain"][1])
