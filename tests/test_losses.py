import math

import pytest
import torch

from vaecli.losses import bernoulli_nll, elbo_terms, gaussian_nll, kl_divergence, kl_per_dim, reconstruction_nll


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=g)
    logvar = torch.randn(3, 5, generator=g) * 0.5
    closed = kl_divergence(mu, logvar)
    # E_q[log q(z) - log p(z)] with 200k samples per image
    n = 200_000
    std = torch.exp(0.5 * logvar)
    z = mu.unsqueeze(0) + std.unsqueeze(0) * torch.randn(n, 3, 5, generator=g)
    q = torch.distributions.Normal(mu, std)
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(closed, mc, atol=0.03 * closed.abs().max().item() + 0.02)
    assert (closed >= 0).all()


def test_kl_zero_at_prior_and_positive_elsewhere():
    assert torch.allclose(kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))
    assert (kl_per_dim(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, -1.0]])) > 0).all()
    # known value: mu=1, var=1 -> 0.5 nat
    assert kl_divergence(torch.ones(1, 1), torch.zeros(1, 1)).item() == pytest.approx(0.5)


def test_bce_known_values():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere -> log 2 per pixel
    x = torch.tensor([[[[0.0, 1.0], [0.25, 0.75]]]])
    assert bernoulli_nll(logits, x).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    # p = sigmoid(2), x = 1 -> -log sigmoid(2)
    v = bernoulli_nll(torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 1, 1)).item()
    assert v == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-6)


def test_gaussian_nll_matches_torch_distribution():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 3, 3, generator=g)
    x = torch.rand(2, 1, 3, 3, generator=g)
    ls = torch.tensor(-1.3)
    ref = -torch.distributions.Normal(torch.sigmoid(logits), ls.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_nll(logits, x, ls), ref, atol=1e-5)
    assert torch.allclose(reconstruction_nll(logits, x, "gaussian", ls), ref, atol=1e-5)
    with pytest.raises(ValueError):
        reconstruction_nll(logits, x, "gaussian")


def test_elbo_terms_combines_with_beta():
    t = elbo_terms(torch.tensor([10.0, 20.0]), torch.tensor([1.0, 3.0]), beta=4.0)
    assert t.recon.item() == 15.0 and t.kl.item() == 2.0
    assert t.loss.item() == 15.0 + 4.0 * 2.0
    assert t.neg_elbo.item() == 17.0
