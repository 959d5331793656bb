"""Runs on disk (vaecli.runs.store): bit-exact weights and training state round trips, pickles and
torch.save files refused without running them, tensors or config types that do not match, run names
and the latest run."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import MICRO

from vaecli.config import ModelConfig, RunConfig
from vaecli.errors import CheckpointError, ConfigError, RunNotFoundError
from vaecli.model.vae import VAE
from vaecli.runs import store as ckpt
from vaecli.runs.state import TrainState


def _make_run(tmp_path, name="r", **model_kwargs):
    cfg = RunConfig(name=name, model=ModelConfig(**{**MICRO, **model_kwargs}), created="2026")
    run = ckpt.create_run_dir(name)
    ckpt.write_config(run, cfg)
    model = VAE(cfg.model)
    ckpt.save_model(run, model, cfg.model.to_dict())
    return run, model


def test_model_round_trip_bit_exact(tmp_path):
    run, model = _make_run(tmp_path, arch="conv")
    loaded, cfg, path = ckpt.load_model("r")
    assert path == run and cfg.model.latent_dim == 4
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # also by folder path and by the weights file
    assert ckpt.resolve_run(run) == run
    assert ckpt.resolve_run(run / ckpt.MODEL) == run


def test_seed_arch_round_trip_keeps_batchnorm_buffers(tmp_path):
    cfg = RunConfig(name="s", model=ModelConfig(arch="seed", latent_dim=4))
    run = ckpt.create_run_dir("s")
    ckpt.write_config(run, cfg)
    m = VAE(cfg.model)
    m.train()
    m(torch.rand(4, 1, 28, 28))  # updates running stats
    ckpt.save_model(run, m, cfg.model.to_dict())
    loaded, _, _ = ckpt.load_model(run)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_train_state_round_trip(tmp_path):
    run, model = _make_run(tmp_path)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 28, 28)).params.sum().backward()
    opt.step()
    state = TrainState(epoch=3, step=7, global_step=37, best={"epoch": 2.0, "val": {"neg_elbo": 250.5}}, lr_scale=0.5)
    saved_rng = torch.get_rng_state()
    ckpt.save_train_state(run, opt, {"cpu": saved_rng}, state, model)
    opt2 = torch.optim.Adam(model.parameters(), lr=5.0)
    other = VAE(model.config)
    rng, loaded = ckpt.load_train_state(run, opt2, other)
    assert loaded == state and loaded.best_neg_elbo == 250.5 and loaded.lr_scale == 0.5
    assert torch.equal(rng["cpu"], saved_rng)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k]))


class _Boom:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_checkpoint_refused_without_executing(tmp_path):
    run, _ = _make_run(tmp_path)
    marker = tmp_path / "pwned"
    (run / ckpt.MODEL).write_bytes(pickle.dumps({"state": _Boom(str(marker))}))
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt.load_model(run)
    assert not marker.exists()
    # torch.save zip format is refused too
    torch.save({"w": torch.zeros(1)}, run / ckpt.MODEL)
    with pytest.raises(CheckpointError):
        ckpt.load_model(run)


def test_tensors_not_matching_config(tmp_path):
    run, _ = _make_run(tmp_path)
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    cfg["model"]["latent_dim"] = 5
    (run / ckpt.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.load_model(run)


def test_config_with_wrong_types(tmp_path):
    run, _ = _make_run(tmp_path)
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    cfg["train"]["batch_size"] = "big"
    (run / ckpt.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="batch_size"):
        ckpt.load_model(run)
    (run / ckpt.CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError):
        ckpt.read_config(run)


def test_unknown_run_and_latest(tmp_path):
    with pytest.raises(RunNotFoundError):
        ckpt.resolve_run("nope")
    with pytest.raises(RunNotFoundError):
        ckpt.latest_run()
    _make_run(tmp_path, name="a")
    _make_run(tmp_path, name="b")
    assert ckpt.latest_run().name in ("a", "b")
    with pytest.raises(ConfigError):
        ckpt.create_run_dir("a")
    with pytest.raises(ConfigError):
        ckpt.validate_run_name("../evil")


OLD_LAYOUT = Path(__file__).parent / "data" / "old_layout"  # .json, .safetensors: tests/data/make_old_layout.py


def _old_layout() -> dict:
    return json.loads(OLD_LAYOUT.with_suffix(".json").read_text())


@pytest.mark.parametrize("case", list(_old_layout()))
def test_models_saved_before_the_named_parts_load_and_compute_the_same(case):
    """Every arch (and vamp prior, blocks, norms, resize, the likelihoods) as saved by the layout of
    anonymous nn.Sequential lists: its tensor names map one to one onto the named parts, the
    parameters keep their order (the optimizer's state of a resumed run follows it), and the saved
    weights load through the run store and give the outputs the old code gave."""
    from safetensors.torch import load_file

    from vaecli.model.vae import upgrade_state_dict

    old = _old_layout()[case]
    cfg = ModelConfig.from_dict(old["config"])
    model = VAE(cfg)
    new_names = upgrade_state_dict(model, dict.fromkeys(old["keys"], torch.zeros(0)))
    assert list(new_names) == list(model.state_dict())  # same tensors, same order
    assert [tuple(s) for s in old["keys"].values()] == [tuple(v.shape) for v in model.state_dict().values()]
    assert list(upgrade_state_dict(model, dict.fromkeys(old["parameters"], torch.zeros(0)))) == [n for n, _ in model.named_parameters()]
    assert not any(k.split(".")[1].isdigit() for k in model.state_dict() if k.startswith(("encoder.", "decoder.")))
    if case == "seed":  # names and shapes only (1M parameters at 8 px)
        return
    saved = load_file(str(OLD_LAYOUT.with_suffix(".safetensors")))
    run = ckpt.create_run_dir(case)
    ckpt.write_config(run, RunConfig(name=case, model=cfg, created="2026"))
    weights = {k.removeprefix(f"{case}/model/"): v for k, v in saved.items() if k.startswith(f"{case}/model/")}
    ckpt.write_safetensors(run / ckpt.MODEL, weights, {"format": ckpt.MODEL_FORMAT, "model_config": json.dumps(cfg.to_dict())})
    loaded, _, _ = ckpt.load_model(case)
    with torch.no_grad():
        q = loaded.encode(saved[f"{case}/x"])
        params = loaded.decode_params(q.mu)
    for got, want in ((q.mu, "mu"), (q.logvar, "logvar"), (params, "params")):
        assert torch.allclose(got, saved[f"{case}/{want}"], atol=1e-6, rtol=1e-5), want
