"""The scores of a model (vaecli.eval.metrics): the importance-weighted NLL (Burda et al. 2016), checked
by the bound's properties and an exact marginal likelihood, not hard-coded values; the per-image
ELBO against evaluate; which likelihood a number is in."""

import math

import pytest
import torch

from vaecli.data import ImageData, to_float
from vaecli.eval import inference, metrics
from vaecli.eval.metrics import evaluate, is_binarized, iw_nll, log_importance_weights
from vaecli.model.likelihoods import Bernoulli, Gaussian
from vaecli.model.posterior import Posterior
from vaecli.model.priors import StandardNormal


@pytest.fixture(scope="module")
def model_and_data(tiny):  # type: ignore[no-untyped-def]
    model, _, test = tiny
    return model, ImageData(test.images[:200])


def test_k1_weights_are_the_elbo_in_expectation(model_and_data):
    """E_q[log w] = ELBO: the mean of 2000 one-sample log-weights matches recon + analytic KL."""
    model, data = model_and_data
    x = data.images[:4].float() / 255
    g = torch.Generator().manual_seed(1)
    n = 2000
    lw = log_importance_weights(model, x, n, generator=g)  # (4, n)
    with torch.no_grad():
        q = model.encode(x)
        mu, logvar = q.mu, q.logvar
        # -ELBO with the analytic KL; the reconstruction expectation over n fresh samples
        z = mu + torch.exp(0.5 * logvar) * torch.randn((n, *mu.shape), generator=g)
        xr = x.unsqueeze(0).expand(n, *x.shape).reshape(-1, *x.shape[1:])
        recon = model.likelihood.nll(model.decode_params(z.reshape(-1, mu.shape[1])), xr).double().reshape(n, -1).mean(0)
        neg_elbo = recon + q.kl().double()
    est = -lw.mean(1)
    se = lw.std(1) / math.sqrt(n)
    assert torch.all((est - neg_elbo).abs() < 5 * se + 0.05), (est, neg_elbo, se)


def test_iw_is_jensen_below_mean_of_single_sample_estimates(model_and_data):
    """With the same draws, -(logmeanexp log w) <= -(mean log w): holds for every image, exactly."""
    model, data = model_and_data
    x = data.images[:16].float() / 255
    lw = log_importance_weights(model, x, 50, generator=torch.Generator().manual_seed(2))
    iw = -(torch.logsumexp(lw, 1) - math.log(50))
    single = -lw.mean(1)
    assert torch.all(iw <= single + 1e-9)
    assert torch.all(torch.isfinite(iw))


def test_iw_nll_bounds_and_shrinks_with_k(model_and_data):
    model, data = model_and_data
    neg_elbo = evaluate(model, data, seed=3).neg_elbo
    r1 = iw_nll(model, data, k=1, batch_size=64, generator=torch.Generator().manual_seed(4))
    r8 = iw_nll(model, data, k=8, batch_size=64, generator=torch.Generator().manual_seed(5))
    r64 = iw_nll(model, data, k=64, batch_size=64, generator=torch.Generator().manual_seed(6))
    # k = 1 estimates the same quantity as the evaluated -ELBO (both one sample per image)
    assert abs(r1.iw_nll - neg_elbo) < 4 * r1.iw_nll_stderr
    # tighter bounds with more samples, and below -ELBO by more than the Monte-Carlo error
    assert r64.iw_nll <= r8.iw_nll <= r1.iw_nll
    assert r64.iw_nll < neg_elbo
    assert r64.images == 200 and r64.k == 64
    assert 0 < r64.iw_nll_stderr < r64.iw_nll
    assert r64.bits_per_dim is None  # BCE nats of continuous pixels are no likelihood of the 8-bit image: no bits/dim
    assert not r64.binarized and "not a normalised likelihood" in r64.label


def test_iw_nll_is_reproducible_and_batch_independent(model_and_data):
    model, data = model_and_data
    a = iw_nll(model, ImageData(data.images[:20]), k=5, batch_size=20, generator=torch.Generator().manual_seed(9))
    b = iw_nll(model, ImageData(data.images[:20]), k=5, batch_size=20, generator=torch.Generator().manual_seed(9))
    assert a.iw_nll == b.iw_nll
    assert model.training is False


def test_labels_say_which_likelihood():
    assert "normalised likelihood" in Bernoulli().label(True)
    assert "not" in Bernoulli().label(False)
    assert "Gaussian" in Gaussian().label(False)
    assert is_binarized(ImageData(torch.tensor([[[[0, 255]]]], dtype=torch.uint8)))
    assert not is_binarized(ImageData(torch.tensor([[[[0, 128]]]], dtype=torch.uint8)))


def test_k_must_be_positive(model_and_data):
    model, data = model_and_data
    with pytest.raises(ValueError):
        iw_nll(model, data, k=0)


class _OnePixelModel(torch.nn.Module):
    """1-D latent, one Bernoulli pixel: p(x=1|z) = sigmoid(3z - 1); q(z|x) = N(0.5, 1.5) for any x (wider than the posterior: bounded weights).

    log p(x) = log E_{N(0,1)}[p(x|z)] is a 1-D integral, computed by quadrature below.
    """

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(likelihood="bernoulli", latent_dim=1)
        self.w = torch.nn.Parameter(torch.tensor(3.0))
        self.likelihood, self.prior = Bernoulli(), StandardNormal(1)

    def encode(self, x):
        b = x.shape[0]
        return Posterior(torch.full((b, 1), 0.5), torch.full((b, 1), math.log(1.5)))

    def decode_params(self, z):
        return (self.w * z - 1.0).reshape(-1, 1, 1, 1)


def _quadrature():
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    prior = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    q = torch.exp(-0.5 * (z - 0.5) ** 2 / 1.5) / math.sqrt(2 * math.pi * 1.5)
    p1 = torch.sigmoid(3 * z - 1)
    out = {}
    for x, px_z in ((1, p1), (0, 1 - p1)):
        log_px = math.log(float(torch.trapezoid(prior * px_z, z)))
        elbo = float(torch.trapezoid(q * (torch.log(px_z) + torch.log(prior) - torch.log(q)), z))
        out[x] = (-log_px, -elbo)
    return out


def test_iw_nll_converges_to_the_exact_marginal_likelihood():
    exact = _quadrature()
    model = _OnePixelModel()
    for x in (1, 0):
        data = ImageData(torch.full((400, 1, 1, 1), 255 * x, dtype=torch.uint8))
        big = iw_nll(model, data, k=500, batch_size=400, generator=torch.Generator().manual_seed(x))
        one = iw_nll(model, data, k=1, batch_size=400, generator=torch.Generator().manual_seed(10 + x))
        nll, neg_elbo = exact[x]
        assert neg_elbo > nll + 0.05  # the posterior is wrong on purpose: a visible ELBO gap
        assert abs(big.iw_nll - nll) < 4 * big.iw_nll_stderr + 2e-3, (big, nll)
        assert abs(one.iw_nll - neg_elbo) < 4 * one.iw_nll_stderr, (one, neg_elbo)
        assert big.iw_nll < neg_elbo
        assert big.binarized and big.bits_per_dim == pytest.approx(big.iw_nll / math.log(2))


def test_elbo_per_image_matches_evaluate(tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, test = tiny
    x = to_float(test.images)
    recon, kl = metrics.elbo_per_image(model, x, torch.Generator().manual_seed(0))
    assert recon.shape == kl.shape == (len(test),)
    assert torch.isfinite(recon).all() and (kl >= 0).all()
    assert torch.allclose(kl, inference.encode(model, x).kl(), rtol=1e-5)
    res = evaluate(model, test)
    assert float(kl.double().mean()) == pytest.approx(res.kl, rel=1e-5)
    # one posterior sample each: the mean reconstruction term is close to evaluate's
    assert float(recon.double().mean()) == pytest.approx(res.recon, rel=0.02)
