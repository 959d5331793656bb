"""The training objective (vaecli.train.objective.Objective): each objective's loss against its formula
written out here (the oracles), the beta schedule and capacity ramp it owns, the total correlation."""

from __future__ import annotations

import math

import pytest
import torch

from vaecli.config import ModelConfig, TrainConfig
from vaecli.model.posterior import Posterior
from vaecli.model.vae import VAE, VAEOutput
from vaecli.train.objective import Objective, total_correlation

# ----------------------------------------------------------------------------- oracles (the papers' formulas)


def kl_oracle(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per dimension (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def tc_oracle(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Minibatch-weighted TC estimate (Chen et al. 2018, sec. 4.1), in one piece."""
    b = z.shape[0]
    lq = torch.distributions.Normal(mu[None], torch.exp(0.5 * logvar[None])).log_prob(z[:, None])  # (B, B, D)
    log_qz = torch.logsumexp(lq.sum(2), 1) - math.log(b)
    log_prod = (torch.logsumexp(lq, 1) - math.log(b)).sum(1)
    return (log_qz - log_prod).mean()


def _batch(b: int = 16, d: int = 6, seed: int = 0) -> tuple[VAE, VAEOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = VAE(ModelConfig(arch="mlp", image_size=8, widths=(16,), latent_dim=d))
    x = torch.rand(b, 1, 8, 8, generator=g)
    mu, logvar = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g)
    return model, VAEOutput(params=torch.randn(b, 1, 8, 8, generator=g), mu=mu, logvar=logvar, z=z), x


def _recon(out: VAEOutput, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(out.params, x, reduction="none").flatten(1).sum(1).mean()


@pytest.mark.parametrize(
    "train,oracle",
    [
        ({"beta": 2.0}, lambda r, kl, kd, o: r + 2.0 * kl),
        ({"beta": 3.0, "capacity": 25.0, "capacity_epochs": 10}, lambda r, kl, kd, o: r + 3.0 * (kl - 25.0 * 0.5).abs()),
        ({"beta": 2.0, "free_bits": 0.5}, lambda r, kl, kd, o: r + 2.0 * kd.mean(0).clamp_min(0.5).sum()),
        ({"beta": 2.0, "tc_beta": 6.0}, lambda r, kl, kd, o: r + 2.0 * kl + 4.0 * tc_oracle(o.z, o.mu, o.logvar)),
    ],
)
def test_each_objective_is_its_formula(train, oracle) -> None:  # type: ignore[no-untyped-def]
    model, out, x = _batch()
    terms = Objective(TrainConfig(**train))(model, out, x, epoch_progress=5.0)
    kd = kl_oracle(out.mu, out.logvar)
    r, kl = _recon(out, x), kd.sum(1).mean()
    assert torch.allclose(terms.recon, r) and torch.allclose(terms.kl, kl) and torch.allclose(terms.neg_elbo, r + kl)
    assert torch.allclose(terms.loss, oracle(r, kl, kd, out), rtol=1e-5)
    assert terms.beta == train["beta"]


def test_the_objective_owns_the_beta_schedule_and_the_capacity_ramp() -> None:
    ramp = Objective(TrainConfig(beta=4.0, anneal=10))
    assert [ramp.beta_at(e) for e in (0, 5, 10, 20)] == pytest.approx([0, 2, 4, 4])
    cyc = Objective(TrainConfig(beta=2.0, cyclical=3, epochs=12))
    assert [cyc.beta_at(e) for e in (0, 1, 2, 4)] == pytest.approx([0, 1, 2, 0])
    cap = Objective(TrainConfig(capacity=20.0, capacity_epochs=4, epochs=10))
    assert [cap.capacity_at(e) for e in (0, 2, 8)] == pytest.approx([0, 10, 20])
    assert Objective(TrainConfig()).capacity_at(3) is None
    model, out, x = _batch()
    assert Objective(TrainConfig(beta=4.0, anneal=10))(model, out, x, 0.0).beta == 0.0


def test_free_bits_stop_the_gradient_of_dimensions_under_lambda() -> None:
    model, out, x = _batch(b=2, d=2)
    mu = torch.tensor([[2.0, 0.01], [2.0, -0.01]], requires_grad=True)
    out = VAEOutput(params=out.params, mu=mu, logvar=torch.zeros(2, 2), z=torch.zeros(2, 2))
    Objective(TrainConfig(free_bits=0.5))(model, out, x, 0.0).loss.backward()
    assert mu.grad[0, 0] != 0 and mu.grad[:, 1].abs().max() == 0


def test_total_correlation_near_zero_when_independent_large_when_dependent() -> None:
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(1024, 4, generator=g) * 0.5
    logvar = torch.randn(1024, 4, generator=g) * 0.1 - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1024, 4, generator=g)
    tc_ind = total_correlation(z, Posterior(mu, logvar)).item()
    tc_dep = total_correlation(z[:, :1].repeat(1, 4), Posterior(mu[:, :1].repeat(1, 4), logvar[:, :1].repeat(1, 4))).item()
    assert -0.05 < tc_ind < 0.3 and tc_dep > tc_ind + 1.0
    assert total_correlation(z[:64], Posterior(mu[:64], logvar[:64])).item() == pytest.approx(
        tc_oracle(z[:64], mu[:64], logvar[:64]).item(), rel=1e-5
    )


def test_chunked_total_correlation_equals_one_piece() -> None:
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(64, 5, generator=g, requires_grad=True)
    logvar = (torch.randn(64, 5, generator=g) * 0.3).requires_grad_()
    z = (mu + torch.exp(0.5 * logvar) * torch.randn(64, 5, generator=g)).detach().requires_grad_()
    whole = total_correlation(z, Posterior(mu, logvar))
    grads = torch.autograd.grad(whole, (z, mu, logvar))
    chunked = total_correlation(z, Posterior(mu, logvar), chunk_elements=7 * 64 * 5)  # 7 rows a chunk, 10 chunks
    grads_c = torch.autograd.grad(chunked, (z, mu, logvar))
    assert torch.allclose(whole, chunked, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_c, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
