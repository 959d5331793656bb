"""The decoder likelihoods (vaecli.model.likelihoods): Bernoulli, Gaussian and the discretised logistic
mixture over 256 levels, checked against formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch

from vaecli.config import ModelConfig
from vaecli.data import ImageData
from vaecli.errors import ConfigError
from vaecli.eval.metrics import evaluate
from vaecli.model.likelihoods import Bernoulli, DiscretizedGaussian, DiscretizedLogistic, Gaussian, bits_per_dim
from vaecli.model.vae import VAE

LEVELS = torch.arange(256, dtype=torch.float32) / 255  # every 8-bit level as a float in [0, 1]


def _params(channels: int, mixtures: int, h: int = 1, w: int = 1, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    like = DiscretizedLogistic(channels, mixtures)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, like.out_channels(channels), h, w, generator=g) * scale


def test_bce_known_values() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere -> log 2 per pixel
    x = torch.tensor([[[[0.0, 1.0], [0.25, 0.75]]]])
    assert Bernoulli().nll(logits, x).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    v = Bernoulli().nll(torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 1, 1)).item()
    assert v == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-6)  # x = 1, p = sigmoid(2)


def test_gaussian_nll_matches_torch_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    out, x = torch.randn(2, 1, 3, 3, generator=g), torch.rand(2, 1, 3, 3, generator=g)
    like = Gaussian()
    with torch.no_grad():
        like.log_scale.fill_(-1.3)
    ref = -torch.distributions.Normal(torch.sigmoid(out), math.exp(-1.3)).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(like.nll(out, x), ref, atol=1e-5)


@pytest.mark.parametrize("mixtures", [1, 3])
def test_gray_levels_sum_to_one_exhaustively(mixtures: int) -> None:
    like = DiscretizedLogistic(1, mixtures)
    for seed, scale in ((0, 1.0), (1, 4.0), (2, 0.1)):  # near-deltas, broad, and far-off locations
        params = _params(1, mixtures, seed=seed, scale=scale).expand(256, -1, -1, -1)
        p = like.log_prob_levels(params, LEVELS.reshape(256, 1, 1, 1)).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (p >= 0).all() and (p <= 1).all()


def test_colour_levels_sum_to_one_over_all_16_million_triples() -> None:
    """One pixel, two components with channel coupling: the sum over every (r, g, b) is 1."""
    like = DiscretizedLogistic(3, 2)
    params = _params(3, 2, seed=3)
    total = 0.0
    g, b = torch.meshgrid(LEVELS, LEVELS, indexing="ij")  # (256, 256)
    for r in LEVELS:
        x = torch.stack((torch.full_like(g, float(r)), g, b)).reshape(3, 1, 256 * 256).permute(1, 0, 2).unsqueeze(2)  # (1, 3, 1, 65536)
        out = params.expand(1, -1, 1, 256 * 256)
        total += like.log_prob_levels(out, x).exp().double().sum().item()
    assert total == pytest.approx(1.0, abs=1e-4)


def test_nll_is_finite_and_nonnegative_at_the_ends_with_finite_gradients() -> None:
    like = DiscretizedLogistic(3, 2)
    for extreme in (0.0, 1.0, 30.0, -30.0):  # locations far beyond the ends, scales at their clamps
        params = (_params(3, 2, h=2, w=2, seed=4) * 3 + extreme).requires_grad_()
        for level in (0.0, 1.0):  # 0 and 255
            nll = like.nll(params, torch.full((1, 3, 2, 2), level))
            assert torch.isfinite(nll).all() and (nll >= 0).all()
            (grad,) = torch.autograd.grad(nll.sum(), params)
            assert torch.isfinite(grad).all()


def test_mean_is_the_probability_weighted_level() -> None:
    """The displayed mean of a gray pixel is sum_v v p(v) over the 256 levels (up to the bin width)."""
    like = DiscretizedLogistic(1, 3)
    params = _params(1, 3, seed=5)
    p = like.log_prob_levels(params.expand(256, -1, -1, -1), LEVELS.reshape(256, 1, 1, 1)).exp()
    exact = (p * LEVELS.reshape(256, 1, 1)).sum()
    assert like.mean(params).item() == pytest.approx(exact.item(), abs=2 / 255)


def test_sharp_logistic_puts_its_mass_on_its_level() -> None:
    like = DiscretizedLogistic(1, 1)
    level = 77 / 255
    params = torch.tensor([0.0, level * 2 - 1, -7.0]).reshape(1, 3, 1, 1)  # logit, location, the smallest log-scale
    assert like.nll(params, torch.full((1, 1, 1, 1), level)).item() < 0.05
    assert like.mean(params).item() == pytest.approx(level, abs=1e-4)


class _Uniform(torch.nn.Module):
    """p(x|z) = 1/256 for every level of every pixel."""

    name = "uniform"

    def out_channels(self, channels: int) -> int:
        return channels

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), x[0].numel() * math.log(256.0))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.full_like(out, 0.5)

    def is_discrete(self, binarized: bool = False) -> bool:
        return True


def test_a_uniform_decoder_scores_8_bits_per_dimension() -> None:
    model = VAE(ModelConfig(arch="mlp", channels=3, image_size=8, widths=(16,), latent_dim=2, likelihood="logistic"))
    model.likelihood = _Uniform()
    with torch.no_grad():  # q(z|x) = N(0, I) = the prior: KL = 0
        for head in (model.fc_mu, model.fc_logvar):
            head.weight.zero_()
            head.bias.zero_()
    data = ImageData(images=torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8))
    res = evaluate(model, data)
    assert res.kl == pytest.approx(0.0, abs=1e-6) and res.bits_per_dim == pytest.approx(8.0, abs=1e-6)
    assert bits_per_dim(192 * math.log(256), 192) == pytest.approx(8.0)


def test_logistic_model_reports_bits_per_dim_and_shows_images_in_range() -> None:
    model = VAE(
        ModelConfig(arch="conv", channels=3, image_size=16, widths=(4, 8), hidden=16, latent_dim=3, likelihood="logistic", mixtures=2)
    )
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    res = evaluate(model, ImageData(images=x))
    assert res.bits_per_dim is not None and 0 < res.bits_per_dim < 20 and math.isfinite(res.neg_elbo)
    shown = model.decode(torch.randn(4, 3))
    assert shown.shape == (4, 3, 16, 16) and shown.min() >= 0 and shown.max() <= 1
    bernoulli = VAE(ModelConfig(arch="mlp", image_size=8, widths=(8,), latent_dim=2))
    assert evaluate(bernoulli, ImageData(images=torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))).bits_per_dim is None
    binary = ImageData(images=torch.randint(0, 2, (3, 1, 8, 8), dtype=torch.uint8) * 255)
    assert evaluate(bernoulli, binary).bits_per_dim is not None  # Bernoulli on binary pixels: a true likelihood


@pytest.mark.parametrize("log_scale", [-7.0, -3.0, 0.0, 3.0])
def test_discrete_gaussian_levels_sum_to_one_and_its_mean_is_their_mean(log_scale: float) -> None:
    like = DiscretizedGaussian(1)
    with torch.no_grad():
        like.log_scale.fill_(log_scale)
    for loc in (-8.0, -0.3, 0.5, 2.0, 9.0):  # locations 2 sigmoid(loc) - 1, near both ends too
        out = torch.full((256, 1, 1, 1), loc)
        with torch.no_grad():
            p = like.log_prob_levels(out, LEVELS.reshape(256, 1, 1, 1)).exp().double().flatten()
            mean = like.mean(out[:1]).item()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-4) and (p >= 0).all()
        assert mean == pytest.approx(float((p * LEVELS.double()).sum()), abs=2 / 255)


def test_discrete_gaussian_is_finite_at_the_ends_with_finite_gradients() -> None:
    like = DiscretizedGaussian(3)
    for scale in (0.1, 5.0, 40.0):
        out = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6)) * scale).requires_grad_()
        for level in (0.0, 1.0):
            nll = like.nll(out, torch.full((2, 3, 4, 4), level))
            assert torch.isfinite(nll).all() and (nll >= 0).all()
            grads = torch.autograd.grad(nll.sum(), (out, like.log_scale))
            assert all(torch.isfinite(g).all() for g in grads)
    assert like.is_discrete() and "256 levels" in like.label()


def _discrete_gaussian_by_cdfs(m: torch.Tensor, s: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper end) - Phi(lower end)) of each level's bin in float64, the end levels taking
    the tails: the formula the fast path must equal (no fallback: used where the mass is large)."""
    phi = torch.special.ndtr
    upper = torch.where(xs > 0.999, torch.ones_like(xs), phi((xs + 1 / 255 - m) / s))
    lower = torch.where(xs < -0.999, torch.zeros_like(xs), phi((xs - 1 / 255 - m) / s))
    return torch.log(upper - lower)


@pytest.mark.parametrize("threads", [1, 2])  # one thread: in chunks of CHUNK images; more: in one piece
def test_discrete_gaussian_fast_path_equals_the_cdf_difference_and_its_gradient(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaecli.model.likelihoods import _DiscreteGaussianLogProb

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert _DiscreteGaussianLogProb.chunk(torch.zeros(20)) == (_DiscreteGaussianLogProb.CHUNK if threads == 1 else 20)
    g = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 256, (20, 3, 3, 3), generator=g).double()
    levels[0, :, 0, 0], levels[1, :, 0, 0] = 0, 255  # both ends, several chunks (20 images > CHUNK)
    xs = levels / 255 * 2 - 1
    log_s = torch.tensor([-2.0, -3.5, -5.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    m = (xs + torch.randn(xs.shape, generator=g, dtype=torch.float64).clamp(-2, 2) * log_s.exp()).clamp(-1, 1)  # masses above 1e-5
    m, log_s = m.requires_grad_(), log_s.requires_grad_()
    fast = _DiscreteGaussianLogProb.apply(m, log_s.exp(), xs)
    ref = _discrete_gaussian_by_cdfs(m, log_s.exp(), xs)
    assert fast.exp().min() > 1e-5 and torch.allclose(fast, ref, rtol=1e-9, atol=1e-9)
    g_fast = torch.autograd.grad(fast.sum(), (m, log_s))
    g_ref = torch.autograd.grad(_discrete_gaussian_by_cdfs(m, log_s.exp(), xs).sum(), (m, log_s))
    for a, b in zip(g_fast, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-7)
    # far from the mean (the fallback to the density at the bin's centre) the gradient is still exact
    far = (xs - 0.5).clamp(-0.99, 0.99).detach().requires_grad_()  # means inside [-1, 1], as 2 sigmoid - 1 gives
    ls = torch.full((1, 3, 1, 1), -4.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _DiscreteGaussianLogProb.apply(a, b.exp(), xs), (far, ls))


def test_shared_logistic_scale_is_one_component_per_pixel() -> None:
    """shared: the decoder gives the locations only (C channels), one learned log scale per channel;
    pixel: K x (logit, C locations, C log scales, coupling) per pixel. K > 1 with shared is refused
    (it was taken and one component used), and a config.json written then reads as what was used."""
    shared = DiscretizedLogistic(3, 1, shared_scale=True)
    assert shared.out_channels(3) == 3 and tuple(shared.log_scale.shape) == (3,)
    assert DiscretizedLogistic(3, 4).out_channels(3) == 4 * (1 + 6 + 3)
    with pytest.raises(ValueError, match="mixtures must be 1"):
        DiscretizedLogistic(3, 5, shared_scale=True)
    with pytest.raises(ConfigError, match="--mixtures 5 needs --logistic-scale pixel"):
        ModelConfig(likelihood="logistic", logistic_scale="shared", mixtures=5).validate()
    old = {**ModelConfig(likelihood="logistic", logistic_scale="shared").to_dict(), "mixtures": 5}
    assert ModelConfig.from_dict(old).mixtures == 1
    model = VAE(ModelConfig.from_dict(old))
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert math.isfinite(evaluate(model, ImageData(images=x)).neg_elbo)
