"""The Posterior object: reparameterised samples, closed-form KL, log-density."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MICRO

from vaecli.config import ModelConfig
from vaecli.model.posterior import Posterior, standard_normal_log_prob
from vaecli.model.vae import VAE


def _q(b: int = 5, d: int = 3, seed: int = 0) -> Posterior:
    g = torch.Generator().manual_seed(seed)
    return Posterior(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.5)


def test_sample_uses_the_generator_and_the_reparameterisation() -> None:
    q = _q()
    a, b = q.sample(torch.Generator().manual_seed(3)), q.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == q.mu.shape
    eps = torch.randn(q.mu.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, q.mu + q.std * eps)
    tight = Posterior(q.mu + 2, torch.full_like(q.mu, -50.0))
    assert tight.sample().sub(q.mu + 2).abs().max() < 1e-6
    assert q.sample(n=7).shape == (7, *q.mu.shape)


def test_log_prob_matches_torch_normal() -> None:
    q = _q()
    z = q.sample(torch.Generator().manual_seed(1), n=4)
    ref = torch.distributions.Normal(q.mu, q.std).log_prob(z).sum(-1)
    assert torch.allclose(q.log_prob(z), ref, atol=1e-5)
    std_ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(standard_normal_log_prob(z), std_ref, atol=1e-5)


def test_kl_is_nonnegative_zero_at_the_prior_and_matches_monte_carlo() -> None:
    q = _q(b=4, d=3, seed=2)
    assert (q.kl_per_dim() >= 0).all()
    assert torch.allclose(Posterior(torch.zeros(2, 3), torch.zeros(2, 3)).kl(), torch.zeros(2))
    z = q.sample(torch.Generator().manual_seed(0), n=200_000)
    mc = (q.log_prob(z) - standard_normal_log_prob(z)).mean(0)  # E_q[log q - log p]
    assert torch.allclose(mc, q.kl(), rtol=0.02, atol=0.02)
    assert Posterior(torch.ones(1, 1), torch.zeros(1, 1)).kl().item() == pytest.approx(0.5)
    assert Posterior(torch.zeros(1, 1), torch.full((1, 1), math.log(4.0))).kl().item() == pytest.approx(0.5 * (4 - 1 - math.log(4)))


def test_model_encode_is_the_posterior_forward_uses() -> None:
    torch.manual_seed(0)
    m = VAE(ModelConfig(**MICRO)).eval()
    x = torch.rand(3, 1, 28, 28)
    q = m.encode(x)
    assert isinstance(q, Posterior) and q.mu.dtype == q.logvar.dtype == torch.float32
    out = m(x, sample=False)
    assert torch.equal(out.mu, q.mean) and torch.equal(out.z, q.mean)
    assert torch.equal(out.posterior.kl(), q.kl())
