"""Fitted priors (vaecli.model.mixture, vaecli.model.flow, vaecli.train.fit_prior, vaecli.runs.priors): EM on known mixtures, the RealNVP flow, storing and reloading, the choice of prior."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from vaecli.errors import CheckpointError, ConfigError
from vaecli.model.flow import RealNVP, fit_flow
from vaecli.model.mixture import GaussianMixture, fit_gmm
from vaecli.model.posterior import Posterior
from vaecli.model.priors import StandardNormal, mean_log_prob
from vaecli.runs import store as ckpt
from vaecli.runs.priors import PRIOR_JSON, PRIOR_TENSORS, load_fitted, load_prior, save_prior
from vaecli.train.fit_prior import component_grid, fit_prior

TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
TRUE_MEANS = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 2.0], [0.0, -6.0, 4.0]], dtype=torch.float64)
TRUE_TRIL = torch.stack(
    [
        torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [0, 0.3, 0.5]]),
        torch.tensor([[0.6, 0, 0], [0, 1.2, 0], [-0.4, 0, 0.7]]),
        torch.tensor([[0.9, 0, 0], [0.2, 0.4, 0], [0.1, 0.1, 1.1]]),
    ]
).double()


def known_mixture() -> GaussianMixture:
    return GaussianMixture(TRUE_WEIGHTS, TRUE_MEANS, TRUE_TRIL)


def torch_mixture(m: GaussianMixture) -> torch.distributions.Distribution:
    d = torch.distributions
    return d.MixtureSameFamily(d.Categorical(probs=m.weights), d.MultivariateNormal(m.means, scale_tril=m.scale_tril))


def matched(fitted: GaussianMixture) -> list[int]:
    """For each true component, the fitted component with the nearest mean."""
    return [int(torch.cdist(TRUE_MEANS[i : i + 1], fitted.means).argmin()) for i in range(3)]


def test_em_recovers_a_known_mixture() -> None:
    x = known_mixture().sample(6000, 1.0, torch.Generator().manual_seed(1)).double()
    res = fit_gmm(x, 3, seed=0)
    assert res.converged and res.iterations < 100
    fit = res.mixture
    idx = matched(fit)
    assert sorted(idx) == [0, 1, 2]  # one fitted component per true one
    assert torch.allclose(fit.weights[idx], TRUE_WEIGHTS, atol=0.02)
    assert torch.allclose(fit.means[idx], TRUE_MEANS, atol=0.1)
    cov = fit.scale_tril @ fit.scale_tril.transpose(1, 2)
    true_cov = TRUE_TRIL @ TRUE_TRIL.transpose(1, 2)
    assert torch.allclose(cov[idx], true_cov, atol=0.15)
    # the fitted mixture scores its training data about as well as the truth does (the MLE: at least as well)
    truth_ll = float(torch_mixture(known_mixture()).log_prob(x).mean())
    assert truth_ll - 0.01 < res.train_log_likelihood < truth_ll + 0.05


def test_em_is_seeded_and_more_components_fit_the_training_data_better() -> None:
    x = known_mixture().sample(2000, 1.0, torch.Generator().manual_seed(2)).double()
    a, b = fit_gmm(x, 3, seed=4), fit_gmm(x, 3, seed=4)
    assert torch.equal(a.mixture.means, b.mixture.means) and torch.equal(a.mixture.scale_tril, b.mixture.scale_tril)
    one = fit_gmm(x, 1)
    assert one.iterations <= 3  # one component: the sample mean and covariance, at once
    assert torch.allclose(one.mixture.means[0], x.mean(0), atol=1e-9)
    assert one.train_log_likelihood < a.train_log_likelihood


def test_gmm_log_prob_is_the_mixture_density() -> None:
    m = known_mixture()
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4
    assert torch.allclose(m.log_prob(z), torch_mixture(m).log_prob(z), atol=1e-9, rtol=1e-9)
    assert m.log_prob(z.float()).dtype == torch.float32 and m.log_prob(z.reshape(5, 100, 3)).shape == (5, 100)


def test_gmm_sample_temperature_scales_the_covariances() -> None:
    m = known_mixture()
    assert m.free_parameters() == 2 + 9 + 18
    at_zero = m.sample(200, 0.0, torch.Generator().manual_seed(0))
    assert all(any(torch.allclose(row.double(), mu, atol=1e-6) for mu in TRUE_MEANS) for row in at_zero)  # T = 0: the means
    one = GaussianMixture(torch.ones(1), torch.zeros(1, 3), TRUE_TRIL[:1])
    z = one.sample(40_000, 0.5, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(torch.cov(z.T), 0.25 * TRUE_TRIL[0] @ TRUE_TRIL[0].T, atol=0.01)


def test_a_singular_cloud_still_fits() -> None:
    """Points on a plane (a dimension the encoder never uses): the ridge keeps every covariance positive definite."""
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 2] = 0.0
    res = fit_gmm(x, 4)
    assert torch.isfinite(res.mixture.scale_tril).all() and math.isfinite(res.train_log_likelihood)
    with pytest.raises(ConfigError, match="--components must be between 1 and the 500"):
        fit_gmm(x, 501)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))])
def test_samples_have_the_shape_and_device_of_the_latent(device: str) -> None:
    flow = RealNVP(3, layers=4, hidden=16)
    flow.set_whitening(known_mixture().sample(300, 1.0, torch.Generator().manual_seed(0)))
    for prior in (known_mixture().to(device), flow.to(device)):
        z = prior.sample(7, 1.0, torch.Generator().manual_seed(0))
        assert z.shape == (7, 3) and z.dtype == torch.float32 and z.device.type == device
        assert prior.log_prob(z).shape == (7,) and torch.isfinite(prior.log_prob(z)).all()


def test_flow_starts_as_the_whitening_gaussian_and_inverts() -> None:
    x = known_mixture().sample(3000, 1.0, torch.Generator().manual_seed(5))
    flow = RealNVP(3, layers=4, hidden=16)
    flow.set_whitening(x)
    gauss = torch.distributions.MultivariateNormal(x.double().mean(0), torch.cov(x.double().T))
    assert torch.allclose(flow.log_prob(x).double(), gauss.log_prob(x.double()), atol=1e-3)  # zero-initialised couplings
    torch.manual_seed(0)
    for p in flow.parameters():
        torch.nn.init.normal_(p, std=0.3)
    u = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    z = flow.sample(50, 1.0, torch.Generator().manual_seed(1))
    back, _ = flow._forward(z)
    assert torch.allclose(back, u, atol=1e-4)
    assert torch.allclose(flow.sample(5, 0.0), flow.sample(5, 0.0)) and flow.sample(5, 0.0).std(0).max() < 1e-6  # T = 0: one point


def test_flow_training_beats_one_gaussian_on_a_mixture() -> None:
    m = known_mixture()
    x, val = m.sample(3000, 1.0, torch.Generator().manual_seed(6)), m.sample(1000, 1.0, torch.Generator().manual_seed(7))
    res = fit_flow(x, val, seed=0, epochs=30, layers=6, hidden=64, batch_size=256, lr=3e-3)
    one = fit_gmm(x, 1).mixture
    assert len(res.val_curve) == 30 and res.val_curve[res.best_epoch - 1] == max(res.val_curve)
    assert mean_log_prob(res.flow, val) == pytest.approx(max(res.val_curve))  # the best epoch's weights are kept
    assert mean_log_prob(res.flow, val) > mean_log_prob(one, val) + 0.5
    assert mean_log_prob(res.flow, val) < float(torch_mixture(m).log_prob(val.double()).mean()) + 0.1  # not better than the truth
    q = Posterior(x, torch.full_like(x, -4.0))  # posterior draws afresh each epoch
    assert fit_flow(q, val, seed=0, epochs=2, layers=2, hidden=8).best_epoch in (1, 2)


def test_component_grid_caps_by_the_data() -> None:
    assert component_grid(55_000, 32) == [1, 2, 5, 10, 20, 50, 100]
    assert component_grid(400, 8) == [1, 2, 5, 10, 20, 50]
    assert component_grid(399, 8) == [1, 2, 5, 10, 20]
    assert component_grid(3, 8) == [1]


# ----------------------------------------------------------------------------- a run


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared tiny run."""
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.mark.parametrize("kind", ["gmm", "flow"])
def test_fit_store_and_reload_bit_identical(run_copy: Path, kind: str) -> None:
    model, cfg, _ = ckpt.load_model(run_copy)
    res = fit_prior(model, cfg.data, kind, components=3 if kind == "gmm" else None, seed=1)
    info = res.info
    assert info["kind"] == kind and info["latent_dim"] == 8 and info["fitted_on"]["vectors"] == "draws"
    assert info["fitted_on"]["images"] == 1800 and info["validation"] == {"source": "the run's validation split", "images": 200}
    sc = info["scores"]
    assert sc["test"]["images"] == 500 and all(
        math.isfinite(sc[s][k]) for s in ("val", "test") for k in ("log_likelihood", "normal_log_likelihood")
    )
    assert sc["val"]["log_likelihood"] > sc["val"]["normal_log_likelihood"]  # the fitted density beats N(0, I) where it was chosen
    save_prior(run_copy, res)
    stored = json.loads((run_copy / PRIOR_JSON).read_text())
    assert stored["tensors_sha256"] and stored["scores"] == json.loads(json.dumps(sc))
    assert stored["model_weights"] == {"file": "model.safetensors", "sha256": ckpt.weights_fingerprint(model)}
    prior, again = load_fitted(run_copy, 8)
    a, b = res.prior.state_dict(), prior.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(res.prior.sample(64, 1.0, g1), prior.sample(64, 1.0, g2))
    assert again["kind"] == kind


def test_a_stored_prior_refuses_another_latent_size_and_other_tensors(run_copy: Path) -> None:
    model, cfg, _ = ckpt.load_model(run_copy)
    save_prior(run_copy, fit_prior(model, cfg.data, "gmm", components=2))
    with pytest.raises(CheckpointError, match="is for 8 latent dimensions, the model has 16"):
        load_fitted(run_copy, 16)
    data = bytearray((run_copy / PRIOR_TENSORS).read_bytes())
    data[-1] ^= 1
    (run_copy / PRIOR_TENSORS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is not the file prior.json describes"):
        load_fitted(run_copy, 8)
    (run_copy / PRIOR_JSON).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_fitted(run_copy, 8)


def test_load_prior_choices(run_copy: Path) -> None:
    model, cfg, _ = ckpt.load_model(run_copy)
    auto = load_prior(run_copy, None, model)
    assert isinstance(auto.prior, StandardNormal) and auto.note is None and auto.label == "N(0, I)"
    with pytest.raises(CheckpointError, match="has no fitted prior: fit one with `vae fit-prior --run tiny`"):
        load_prior(run_copy, "fitted", model)
    with pytest.raises(ConfigError, match="--prior must be auto, fitted, normal"):
        load_prior(run_copy, "vamp", model)
    save_prior(run_copy, fit_prior(model, cfg.data, "gmm", components=2))
    auto = load_prior(run_copy, "auto", model)
    assert isinstance(auto.prior, GaussianMixture) and auto.label == "gmm, 2 components, fitted to posterior draws"
    assert auto.note.startswith("sampling from the run's fitted prior (gmm, 2 components")
    assert load_prior(run_copy, "fitted", model).note is None
    assert isinstance(load_prior(run_copy, "normal", model).prior, StandardNormal)
    assert auto.to_dict()["kind"] == "gmm" and auto.to_dict()["config"] == {"components": 2}
    with torch.no_grad():  # the run's weights change after the fit (e.g. training resumed): said in the note
        next(model.parameters()).add_(1.0)
    ckpt.save_model(run_copy, model, cfg.model.to_dict())
    assert "fitted to other weights than these (model.safetensors when it was fitted)" in load_prior(run_copy, "fitted", model).note


def test_loading_a_prior_does_not_hash_the_weights_again(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import copy
    import hashlib

    model, cfg, _ = ckpt.load_model(run_copy)
    assert ckpt.weights_fingerprint(copy.deepcopy(model)) == ckpt.weights_fingerprint(model)  # hashed = stored with the file
    save_prior(run_copy, fit_prior(model, cfg.data, "gmm", components=2))
    prior_bytes, real_sha256 = (run_copy / PRIOR_TENSORS).stat().st_size, hashlib.sha256
    hashed: list[int] = []  # bytes given to SHA-256, one entry per hash

    class Counted:
        def __init__(self) -> None:
            self.h = real_sha256()
            hashed.append(0)

        def update(self, data: bytes) -> None:
            hashed[-1] += memoryview(data).nbytes
            self.h.update(data)

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counted)
    for _ in range(3):  # as `vae sample`, `eval-samples` and `vae compare` load them: the model, then its prior
        model, _, _ = ckpt.load_model(run_copy)
        hashed.clear()
        assert load_prior(run_copy, "fitted", model).note is None
        assert hashed == [prior_bytes]  # the small prior file only: the weights' fingerprint came with model.safetensors
    with torch.no_grad():  # weights changed in place after loading: hashed once, in memory, and the note says so
        next(model.parameters()).mul_(2.0)
    hashed.clear()
    assert "fitted to other weights" in load_prior(run_copy, "fitted", model).note
    assert "fitted to other weights" in load_prior(run_copy, "auto", model).note
    assert len(hashed) == 3 and hashed[0] == hashed[2] == prior_bytes
    ckpt.save_model(run_copy, model, cfg.model.to_dict())  # other weights saved in the run: their note, without hashing them
    again, _, _ = ckpt.load_model(run_copy)
    hashed.clear()
    assert "fitted to other weights" in load_prior(run_copy, "fitted", again).note and hashed == [prior_bytes]


def test_a_run_without_a_validation_split_carves_one(tmp_path: Path, train_tiny) -> None:  # type: ignore[no-untyped-def]
    from vaecli.config import DataConfig

    run = train_tiny(tmp_path / "home", "noval", data=DataConfig(name="fashion-mnist-mini", val_size=0), epochs=1, max_steps=5)
    model, cfg, _ = ckpt.load_model(run)
    info = fit_prior(model, cfg.data, "gmm", components=2).info
    assert info["validation"]["images"] == 200 and "carved out of the encoded training split" in info["validation"]["source"]
    assert info["fitted_on"]["images"] == 1800


def test_temp_files_of_a_killed_prior_write_are_cleaned(run_copy: Path) -> None:
    for name in (f".{PRIOR_JSON}.x1.tmp", f".{PRIOR_TENSORS}.x2.tmp"):
        (run_copy / name).write_text("partial")
    assert sorted(ckpt.remove_temp_files(run_copy)) == [f".{PRIOR_JSON}.x1.tmp", f".{PRIOR_TENSORS}.x2.tmp"]
