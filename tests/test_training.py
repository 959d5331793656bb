import json

import pytest
import torch

from vaecli import checkpoint as ckpt
from vaecli.config import DataConfig, ModelConfig, TrainConfig
from vaecli.data import ImageData, load_data
from vaecli.errors import ConfigError, TrainingError
from vaecli.training import epoch_permutation, resume_run, start_run, steps_per_epoch

TINY = dict(latent_dim=4, widths=(4, 8), hidden=16)


@pytest.fixture(scope="module")
def small_data():
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return ImageData(train.images[:96]), ImageData(test.images[:32])


def _start(name, data, arch="conv", **train_kwargs):
    kw = dict(epochs=2, batch_size=32, device="cpu", seed=7)
    kw.update(train_kwargs)
    model = ModelConfig(arch=arch, **({} if arch == "seed" else TINY), **({"latent_dim": 4} if arch == "seed" else {}))
    return start_run(model, DataConfig(name="fashion-mnist-mini"), TrainConfig(**kw), name=name, data=data)


def test_training_writes_a_complete_run(small_data):
    res = _start("full", small_data).fit()
    run = ckpt.resolve_run("full")
    for f in (ckpt.CONFIG, ckpt.MODEL, ckpt.STATE, ckpt.METRICS, ckpt.SUMMARY, ckpt.LOSS_PLOT):
        assert (run / f).is_file(), f
    rows = ckpt.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert res.epochs == 2 and res.steps == 6 and res.stopped == "done"
    for split in (res.train, res.test):
        assert all(torch.isfinite(torch.tensor(v)) for v in split.values())
        assert split["kl"] >= 0 and split["neg_elbo"] == pytest.approx(split["recon"] + split["kl"], rel=1e-6)
    assert (run / ckpt.LOSS_PLOT).read_bytes().startswith(b"\x89PNG")
    assert json.loads((run / ckpt.SUMMARY).read_text())["steps"] == 6


def test_loss_decreases_on_real_images(small_data):
    res = _start("learn", small_data, epochs=6, batch_size=16, lr=3e-3).fit()
    rows = ckpt.read_metrics(ckpt.resolve_run("learn"))
    assert rows[-1]["train"]["neg_elbo"] < rows[0]["train"]["neg_elbo"]
    assert res.test["neg_elbo"] < 543.0  # 784 * log 2: better than predicting 0.5 everywhere


@pytest.mark.parametrize("arch", ["conv", "seed"])
def test_resume_is_bit_exact(small_data, arch):
    _start(f"straight-{arch}", small_data, arch=arch, epochs=2).fit()
    # same run, stopped twice (mid-epoch and at an epoch boundary) and resumed
    first = _start(f"pieces-{arch}", small_data, arch=arch, epochs=2, max_steps=2).fit()
    assert first.stopped == "max_steps" and first.steps == 2
    second = resume_run(f"pieces-{arch}", {"max_steps": 2}, data=small_data).fit()
    assert second.steps == 4
    third = resume_run(f"pieces-{arch}", {"max_steps": None}, data=small_data).fit()
    assert third.steps == 6 and third.stopped == "done"
    a, _, _ = ckpt.load_model(f"straight-{arch}")
    b, _, _ = ckpt.load_model(f"pieces-{arch}")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    ma = ckpt.read_metrics(ckpt.resolve_run(f"straight-{arch}"))
    mb = ckpt.read_metrics(ckpt.resolve_run(f"pieces-{arch}"))
    assert [r["train"] for r in ma] == [r["train"] for r in mb]


def test_resume_can_extend_epochs(small_data):
    _start("ext", small_data, epochs=1).fit()
    res = resume_run("ext", {"epochs": 2}, data=small_data).fit()
    assert res.epochs == 2 and len(ckpt.read_metrics(ckpt.resolve_run("ext"))) == 2
    with pytest.raises(ConfigError):
        resume_run("ext", {"beta": 3.0}, data=small_data)


def test_existing_name_refused(small_data):
    _start("dup", small_data, max_steps=1).fit()
    with pytest.raises(ConfigError, match="already exists"):
        _start("dup", small_data)


def test_stop_event_leaves_resumable_run(small_data):
    import threading

    stop = threading.Event()
    seen = []

    def cb(p):
        seen.append(p.kind)
        if p.kind == "step" and p.global_step >= 1:
            stop.set()

    res = _start("stopme", small_data, epochs=3).fit(cb, stop)
    assert res.stopped == "interrupted" and seen[0] == "start" and seen[-1] == "end"
    assert resume_run("stopme", data=small_data).fit().stopped == "done"


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(small_data):
    bad = ImageData(small_data[0].images.clone())
    tr = _start("nan", (bad, small_data[1]), epochs=2)
    tr.fit()  # a good run first
    good = ckpt.resolve_run("nan") / ckpt.MODEL
    before = good.read_bytes()
    tr2 = resume_run("nan", {"epochs": 3}, data=small_data)
    with torch.no_grad():
        tr2.model.fc_mu.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 3, step 1"):
        tr2.fit()
    assert good.read_bytes() == before


def test_skip_nonfinite_counts(small_data):
    tr = _start("skip", small_data, epochs=1, skip_nonfinite=True)
    with torch.no_grad():
        tr.model.fc_mu.bias.fill_(float("inf"))
    tr.fit()
    assert json.loads((ckpt.resolve_run("skip") / ckpt.SUMMARY).read_text())["nonfinite_skipped"] == 3


def test_epoch_permutation_and_steps():
    assert torch.equal(epoch_permutation(10, 1, 2), epoch_permutation(10, 1, 2))
    assert not torch.equal(epoch_permutation(50, 1, 2), epoch_permutation(50, 1, 3))
    assert steps_per_epoch(100, 32) == 4 and steps_per_epoch(97, 32) == 3 and steps_per_epoch(98, 32) == 4
