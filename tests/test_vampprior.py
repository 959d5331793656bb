"""The VampPrior (vaecli.model.priors.VampPrior, --prior vamp): its density against torch's mixture, its
one-sample KL estimate against a large Monte-Carlo estimate, and a tiny run that trains, resumes
exactly, samples, and is scored by eval-kl (with --iw-samples) and traverse."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import last_weights, vae

from vaecli.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from vaecli.data import ImageData, load_data
from vaecli.eval.metrics import evaluate, iw_nll
from vaecli.model.posterior import Posterior
from vaecli.model.vae import VAE
from vaecli.runs import store as ckpt
from vaecli.train.run import resume_run, start_run

VAMP = {"arch": "mlp", "image_size": 28, "widths": (32,), "latent_dim": 4, "prior": "vamp", "pseudo_inputs": 6}


def _oracle(c: Posterior) -> torch.distributions.Distribution:
    """p(z) = 1/K sum_k N(z; mu_k, sigma_k^2) as torch's own mixture."""
    k = c.mu.shape[0]
    comp = torch.distributions.Independent(torch.distributions.Normal(c.mu, c.std), 1)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.full((k,), 1.0 / k)), comp)


def test_log_density_is_the_mixture_of_the_pseudo_input_posteriors() -> None:
    model = VAE(ModelConfig(**VAMP)).eval()
    with torch.no_grad():
        c = model.prior.components()
        z = torch.randn(7, 3, 4)
        assert torch.allclose(model.prior.log_prob(z), _oracle(c).log_prob(z), atol=1e-5)
        marg = model.prior.marginal_log_prob(z)
        for j in range(4):
            one = _oracle(Posterior(c.mu[:, j : j + 1], c.logvar[:, j : j + 1]))
            assert torch.allclose(marg[..., j], one.log_prob(z[..., j : j + 1]), atol=1e-5)


def test_the_kl_estimate_agrees_with_a_large_monte_carlo_estimate() -> None:
    torch.manual_seed(0)
    model = VAE(ModelConfig(**VAMP)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        q = model.encode(x)
        oracle = _oracle(model.prior.components())
        z = q.sample(torch.Generator().manual_seed(1), n=100_000)  # (n, 3, 4)
        mc = (q.log_prob(z) - oracle.log_prob(z)).mean(0)
        one_sample = torch.stack([model.prior.kl(q, q.sample(torch.Generator().manual_seed(s))) for s in range(2000)]).mean(0)
    assert torch.allclose(one_sample, mc, atol=0.05 + 0.02 * mc.abs().max().item())
    assert (mc > 0).all()


def test_objectives_that_need_a_factorised_prior_are_refused() -> None:
    from vaecli.config import check_given

    for flag in ({"free_bits": 0.5}, {"tc_beta": 4.0}):
        with pytest.raises(ConfigError, match="--prior vamp"):
            check_given({"prior": "vamp", **flag})


@pytest.fixture(scope="module")
def data() -> tuple[ImageData, ImageData]:
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return ImageData(train.images[:300]), ImageData(test.images[:100])


def _start(name: str, data, **train):  # type: ignore[no-untyped-def]
    model = {k: v for k, v in VAMP.items() if k != "image_size"}
    tc = TrainConfig(**{"epochs": 2, "batch_size": 50, "lr": 2e-3, "device": "cpu", "seed": 1, "save_every": 1e9, **train})
    return start_run(ModelConfig(**model), DataConfig(name="fashion-mnist-mini"), tc, name=name, data=data)


def test_a_tiny_vamp_run_trains_resumes_exactly_and_samples(data) -> None:  # type: ignore[no-untyped-def]
    straight = _start("vamp-a", data).fit()
    assert math.isfinite(straight.test["neg_elbo"]) and straight.test["kl"] > 0
    u0 = VAE(ModelConfig(**VAMP)).prior.u  # the pseudo-inputs moved from their start
    model, _, run = ckpt.load_model("vamp-a")
    assert model.prior.u.shape == u0.shape and not torch.allclose(model.prior.u, u0)
    _start("vamp-b", data, max_steps=4).fit()
    resume_run("vamp-b", {"max_steps": None}, data=data).fit()
    a, b = last_weights(run), last_weights(ckpt.resolve_run("vamp-b"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    r = vae("sample", "--run", "vamp-a", "-n", "9", "-o", str(run / "s.png"))
    assert r.exit_code == 0, r.output
    assert (run / "s.png").read_bytes().startswith(b"\x89PNG")
    z = model.prior.sample(500, generator=torch.Generator().manual_seed(0))
    c = model.prior.components()
    assert z.shape == (500, 4) and torch.allclose(z.mean(0), c.mu.mean(0), atol=0.3)  # draws from the mixture


def test_eval_kl_iw_and_traverse_of_a_vamp_run(data) -> None:  # type: ignore[no-untyped-def]
    _start("vamp-e", data).fit()
    r = vae("eval-kl", "--run", "vamp-e", "--iw-samples", "20", "--limit", "50", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["per_dim_kl"]) == 4 and out["iw_nll"] <= out["neg_elbo"] + 3 * out["iw_nll_stderr"]
    model, _, _ = ckpt.load_model("vamp-e")
    res = evaluate(model, ImageData(data[1].images[:50]))
    assert res.per_dim_marginal and math.isfinite(res.kl)
    iw = iw_nll(model, ImageData(data[1].images[:50]), k=20)
    assert math.isfinite(iw.iw_nll)
    t = vae("traverse", "--run", "vamp-e", "--steps", "5", "-o", "-")
    assert t.exit_code == 0 and t.stdout_bytes.startswith(b"\x89PNG")
    table = vae("eval-kl", "--run", "vamp-e", "--limit", "50")
    assert table.exit_code == 0 and "marginal" in table.stdout
