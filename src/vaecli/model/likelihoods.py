"""The decoder's likelihoods p(x|z): what the decoder's output means, its negative log-likelihood
per image (nats, summed over pixels) and the image it shows (its mean).

* ``bernoulli``: the seed's BCE on pixels in [0, 1]. On continuous pixels this is not a normalised
  likelihood ("BCE nats"); on binarised pixels it is one (comparable with the binarised-MNIST
  literature, and reported in bits per dimension).
* ``gaussian``: N(x; sigmoid(out), sigma^2) with one learned sigma shared by all pixels: a density
  on continuous pixels, comparable with no discrete likelihood.
* ``logistic``: the discretised logistic mixture over the 256 levels of 8-bit pixels (Salimans et
  al. 2017, "PixelCNN++", sec. 2.1-2.2), as NVAE and VDVAE use: per pixel K components, each with a
  location and a scale per channel, and for colour the coupling of the channels (the green
  location moves with red, blue with red and green). A normalised likelihood of the 8-bit image,
  reported in bits per dimension.

Each is an ``nn.Module`` (the Gaussian holds its learned scale) built from the model config by
:func:`build_likelihood`; the model owns it (``VAE.likelihood``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig

LOG_2PI = math.log(2 * math.pi)
LN2 = math.log(2.0)
LEVELS = 256  # 8-bit pixels
_INV_SQRT2 = 1 / math.sqrt(2)
ERFC_ARG_MAX, PHI_ARG_MAX = 9.0, 13.0  # erfc(9) = 4e-37, phi(13) = 2e-37: near float32's smallest normal
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 7.0  # logistic scales, in units of [-1, 1] pixels (PixelCNN++ clamps at -7)


def bits_per_dim(nats: float, dims: int) -> float:
    """nats per image -> bits per dimension: ``nats / (dims * ln 2)`` (dims = channels x height x width)."""
    return nats / (dims * LN2)


class Likelihood(nn.Module):
    """p(x|z) given the decoder's output ``out`` (B, out_channels, H, W)."""

    name = ""

    def out_channels(self, channels: int) -> int:
        """Decoder output channels this likelihood needs for images of ``channels`` channels."""
        return channels

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels, nats, shape (B,); ``x`` floats in [0, 1]."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean, (B, C, H, W) in [0, 1]: what sample and reconstruct show."""
        raise NotImplementedError

    def is_discrete(self, binarized: bool = False) -> bool:
        """True when the NLL is a normalised likelihood of discrete pixels (bits/dim apply)."""
        return False

    def label(self, binarized: bool = False) -> str:
        """What the nats of this likelihood measure, in words (printed beside every number)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """-log p(x|z) = binary cross-entropy of x against sigmoid(out), summed over pixels."""

    name = "bernoulli"

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(out.float(), x.float(), reduction="none")
        return bce.flatten(1).sum(dim=1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())

    def is_discrete(self, binarized: bool = False) -> bool:
        return binarized

    def label(self, binarized: bool = False) -> str:
        if binarized:
            return "Bernoulli log-likelihood of binarised pixels (a normalised likelihood, nats)"
        return "BCE nats on continuous pixels, not a normalised likelihood"


class Gaussian(Likelihood):
    """-log N(x; sigmoid(out), exp(log_scale)^2) summed over pixels, one learned ``log_scale``."""

    name = "gaussian"

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.1)))

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_scale = self.log_scale.float()
        z = (x.float() - torch.sigmoid(out.float())) * torch.exp(-log_scale)
        return (0.5 * z.pow(2) + log_scale + 0.5 * LOG_2PI).flatten(1).sum(dim=1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out.float())

    def label(self, binarized: bool = False) -> str:
        return "Gaussian density of continuous pixels (nats; not comparable with discrete likelihoods)"


class DiscretizedLogistic(Likelihood):
    """A mixture of ``mixtures`` discretised logistics per pixel over the 256 levels (Salimans et al.
    2017, eqs. 2-3), with linear coupling of the colour channels (sec. 2.2).

    The decoder's output holds, per pixel and component k: a mixture logit, a location mu and a log
    scale per channel (in units of pixels mapped to [-1, 1]), and for colour three coupling
    coefficients (tanh): the green location is mu_g + a x_r, blue mu_b + b x_r + c x_g. A level v in
    0..255 (x = 2 v / 255 - 1) has probability F((x + 1/255 - m) / s) - F((x - 1/255 - m) / s), with
    F the logistic CDF; the end levels take the tails (F(...) for 0, 1 - F(...) for 255), so the 256
    probabilities sum to 1.
    """

    name = "logistic"

    def __init__(self, channels: int, mixtures: int, shared_scale: bool = False) -> None:
        super().__init__()
        # shared_scale: the decoder predicts only the locations; one learned log scale per channel is
        # shared by all pixels (as the Gaussian's sigma is), no mixture, no coupling
        if shared_scale and mixtures != 1:
            raise ValueError(f"a shared scale is one logistic per pixel: mixtures must be 1, got {mixtures}")
        self.channels, self.mixtures = channels, mixtures
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(0.2))) if shared_scale else None

    def out_channels(self, channels: int) -> int:
        c = channels
        return c if self.log_scale is not None else self.mixtures * (1 + 2 * c + c * (c - 1) // 2)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits (B, K, H, W), mu (B, C, K, H, W), log_s (B, C, K, H, W), coeffs (B, 3, K, H, W) or None)."""
        b, _, h, w = out.shape
        k, c = self.mixtures, self.channels
        out = out.float().contiguous()
        if self.log_scale is not None:
            log_s = self.log_scale.float().clamp(MIN_LOG_SCALE, MAX_LOG_SCALE).reshape(1, c, 1, 1, 1).expand(b, c, 1, h, w)
            return out.new_zeros(b, 1, h, w), out.reshape(b, c, 1, h, w), log_s, None
        logits = out[:, :k]
        mu = out[:, k : k + c * k].reshape(b, c, k, h, w)
        log_s = out[:, k + c * k : k + 2 * c * k].reshape(b, c, k, h, w).clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
        coeffs = torch.tanh(out[:, k + 2 * c * k :].reshape(b, 3, k, h, w)) if c == 3 else None
        return logits, mu, log_s, coeffs

    @staticmethod
    def _coupled(mu: torch.Tensor, coeffs: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """The locations of each channel given the channels before it (``x`` (B, C, 1, H, W) in [-1, 1])."""
        if coeffs is None:
            return mu
        r, g = x[:, 0], x[:, 1]
        return torch.stack((mu[:, 0], mu[:, 1] + coeffs[:, 0] * r, mu[:, 2] + coeffs[:, 1] * r + coeffs[:, 2] * g), dim=1)

    def log_prob_levels(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per pixel, (B, H, W), for ``x`` floats in [0, 1] on the 8-bit grid (v / 255).

        With the bin's ends a = (x + 1/255 - m) / s and b = (x - 1/255 - m) / s,
        sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)) exactly, so
        log p = logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a)): stable for any m and s, and
        the end levels are the same formula with a = +inf (level 255) or b = -inf (level 0)."""
        logits, mu, log_s, coeffs = self._split(out)
        xs = (x.float().contiguous() * 2 - 1).unsqueeze(2)  # (B, C, 1, H, W) in [-1, 1]
        inv_s = torch.exp(-log_s)
        centered = xs - self._coupled(mu, coeffs, xs)
        half = 1.0 / (LEVELS - 1)
        a = torch.where(xs > 0.999, torch.inf, inv_s * (centered + half))
        b = torch.where(xs < -0.999, -torch.inf, inv_s * (centered - half))
        log_p = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))  # (B, C, K, H, W)
        log_p = log_p.sum(1)  # the channels of a component multiply
        if self.mixtures == 1:
            return log_p[:, 0]
        return torch.logsumexp(log_p + F.log_softmax(logits, dim=1), dim=1)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob_levels(out, x).flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """Per pixel, the mixture's mean of the discretised (clamped to [-1, 1]) logistics; the
        coupling takes the means of the channels before it."""
        logits, mu, log_s, coeffs = self._split(out)
        pi = torch.softmax(logits, dim=1)  # (B, K, H, W)
        s = torch.exp(log_s)
        means: list[torch.Tensor] = []
        for ch in range(self.channels):
            m = mu[:, ch]
            if coeffs is not None and ch == 1:
                m = m + coeffs[:, 0] * means[0].unsqueeze(1)
            elif coeffs is not None and ch == 2:
                m = m + coeffs[:, 1] * means[0].unsqueeze(1) + coeffs[:, 2] * means[1].unsqueeze(1)
            clamped = _clamped_logistic_mean(m, s[:, ch])  # (B, K, H, W)
            means.append((pi * clamped).sum(1))
        return ((torch.stack(means, dim=1) + 1) / 2).clamp(0, 1)

    def is_discrete(self, binarized: bool = False) -> bool:
        return True

    def label(self, binarized: bool = False) -> str:
        k = "one scale per channel" if self.log_scale is not None else f"{self.mixtures} components" if self.mixtures > 1 else "1 component"
        return f"discretised logistic mixture over 256 levels ({k}; a normalised likelihood of 8-bit pixels, nats)"


def _clamped_logistic_mean(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E[clamp(X, -1, 1)] for X ~ Logistic(m, s): -1 + s (softplus((m + 1) / s) - softplus((m - 1) / s))."""
    return -1 + s * (F.softplus((m + 1) / s) - F.softplus((m - 1) / s))


class DiscretizedGaussian(Likelihood):
    """The discretised Gaussian over the 256 levels of 8-bit pixels: a level v (x = 2 v / 255 - 1 in
    [-1, 1]) has the mass of N(m, s^2) over its bin [x - 1/255, x + 1/255], the end levels take the
    tails, so the 256 probabilities sum to 1 (as DDPM's decoder, Ho et al. 2020, sec. 3.3). The
    decoder predicts the locations m = 2 sigmoid(out) - 1; one learned scale s per channel is shared
    by all pixels. Its NLL grows with the squared error, as the continuous Gaussian's: the squared-error
    decoder that a discrete likelihood of the image can be (the logistic's grows like the absolute
    error for large errors)."""

    name = "discrete-gaussian"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(0.2)))

    def _loc_scale(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s = self.log_scale.float().clamp(MIN_LOG_SCALE, MAX_LOG_SCALE).reshape(1, -1, 1, 1)
        return torch.sigmoid(out.float()) * 2 - 1, torch.exp(log_s)

    def log_prob_levels(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per pixel and channel, (B, C, H, W), for ``x`` on the 8-bit grid (v / 255):
        log(Phi(a) - Phi(b)) with a, b the bin's ends in units of s (:class:`_DiscreteGaussianLogProb`,
        with its gradient written out: 4x faster than autograd through the same formula)."""
        m, s = self._loc_scale(out)
        return _DiscreteGaussianLogProb.apply(m, s, x.float() * 2 - 1)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob_levels(out, x).flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[clamp(X, -1, 1)] of each pixel's N(m, s^2), mapped to [0, 1]:
        -Phi(al) + (1 - Phi(be)) + m (Phi(be) - Phi(al)) + s (phi(al) - phi(be)), al, be = (-1 - m) / s, (1 - m) / s."""
        m, s = self._loc_scale(out)
        al, be = (-1 - m) / s, (1 - m) / s
        cdf_a, cdf_b = torch.special.ndtr(al), torch.special.ndtr(be)
        pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
        mean = -cdf_a + (1 - cdf_b) + m * (cdf_b - cdf_a) + s * (pdf(al) - pdf(be))
        return ((mean + 1) / 2).clamp(0, 1)

    def is_discrete(self, binarized: bool = False) -> bool:
        return True

    def label(self, binarized: bool = False) -> str:
        return "discretised Gaussian over 256 levels (one scale per channel; a normalised likelihood of 8-bit pixels, nats)"


class _DiscreteGaussianLogProb(torch.autograd.Function):
    """log of N(m, s^2)'s mass over the bin of each level xs in [-1, 1] (half-width 1/255, the end
    levels taking the tails; Ho et al. 2020, sec. 3.3), with its gradient in m and s written out;
    for means m in [-1, 1] (the decoder's 2 sigmoid - 1).

    In units of s the bin is centred at c = (xs - m) / s with half-width h = (1/255) / s. The bin's
    mass is the same on either side of the mean, so it is taken where both tails are small:
    P = Q(|c| - h) - Q(|c| + h), Q(t) = 1 - Phi(t) = erfc(t / sqrt 2) / 2, the second term dropped for
    the end levels (level 255 has c >= 0 and takes the upper tail, level 0 has c <= 0 and the lower).
    With phi-, phi+ the normal density at |c| -+ h:
    d log P / dm = sign(c) (phi- - phi+) / (s P),  d log P / ds = ((|c| - h) phi- - (|c| + h) phi+) / (s P).
    A bin whose mass is below 1e-5 takes the density at its centre times its width instead (as
    PixelCNN++ does: the difference of two tiny tails is all rounding there): log P = -c^2/2 - log s +
    log(2/255) - log(2 pi)/2. On one CPU thread the work runs in chunks of :data:`CHUNK` images, each
    pass in cache (80 against 87 ms a step of the 64 px colour default); with more threads, or on a GPU,
    in one piece (on 2 threads chunks of 8 cost 92 against 64 ms: every small op wakes the other thread)."""

    CHUNK = 8

    @staticmethod
    def chunk(t: torch.Tensor) -> int:
        """Images per pass: :data:`CHUNK` on one CPU thread, else all of them."""
        return _DiscreteGaussianLogProb.CHUNK if t.device.type == "cpu" and torch.get_num_threads() == 1 else max(1, t.shape[0])

    @staticmethod
    def centred(m: torch.Tensor, s: torch.Tensor, xs: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Per chunk of images: its slice, the bins' centres c = (xs - m) / s and |c|."""
        n = _DiscreteGaussianLogProb.chunk(m)
        for i in range(0, m.shape[0], n):
            sl = slice(i, i + n)
            c = (xs[sl] - m[sl]).div_(s)
            yield sl, c, c.abs()

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, m: torch.Tensor, s: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        h = (1.0 / (LEVELS - 1)) / s
        log_width = torch.log(2 * h) - 0.5 * LOG_2PI
        logp, mass = torch.empty_like(m), torch.empty_like(m)
        for sl, c, ac in _DiscreteGaussianLogProb.centred(m, s, xs):
            # erfc's arguments clamped at 9 (erfc(9) = 4e-37, near float32's smallest normal): beyond,
            # torch's erfc takes a slow path, and what is cut off is far below any mass that counts
            p = torch.erfc((ac - h).mul_(_INV_SQRT2).clamp_(-ERFC_ARG_MAX, ERFC_ARG_MAX))
            q = torch.erfc((ac + h).mul_(_INV_SQRT2).clamp_(max=ERFC_ARG_MAX)).masked_fill_(xs[sl].abs() > 0.999, 0.0)
            pm = torch.sub(p, q, out=mass[sl]).mul_(0.5)
            centre = (c * c).mul_(-0.5).add_(log_width)
            torch.where(pm > 1e-5, pm.clamp_min(1e-30).log_(), centre, out=logp[sl])
        ctx.save_for_backward(m, s, xs, mass)
        return logp

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        m, s, xs, mass = ctx.saved_tensors  # type: ignore[attr-defined]
        h = (1.0 / (LEVELS - 1)) / s
        grad_m, grad_s = torch.empty_like(m), torch.zeros_like(m)
        for sl, c, ac in _DiscreteGaussianLogProb.centred(m, s, xs):
            lo, hi = (ac - h).clamp_(-PHI_ARG_MAX, PHI_ARG_MAX), (ac + h).clamp_(max=PHI_ARG_MAX)
            phi_lo = torch.exp(lo * lo * -0.5)  # the normal density times sqrt(2 pi), folded into inv below
            phi_hi = torch.exp(hi * hi * -0.5).masked_fill_(xs[sl].abs() > 0.999, 0.0)
            # sign(c), with the end levels' side at c = 0 (a mean on level 0 or 255): level 0 lies below
            sgn = torch.where(c < 0, -1.0, 1.0).masked_fill_(xs[sl] < -0.999, -1.0)
            ok = mass[sl] > 1e-5
            gs = g[sl] / s
            inv = torch.where(ok, gs / (mass[sl].clamp_min(1e-30) * math.sqrt(2 * math.pi)), 0.0)
            gc = gs.masked_fill_(ok, 0.0)  # the centre's density: d/dm = c / s, d/ds = (c^2 - 1) / s
            torch.mul(phi_lo - phi_hi, inv, out=grad_m[sl]).mul_(sgn).add_(gc * c)
            torch.mul(lo.mul_(phi_lo).sub_(hi.mul_(phi_hi)), inv, out=grad_s[sl]).add_(gc * (c * c - 1))
        return grad_m, grad_s.sum_to_size(s.shape), None


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    """The likelihood module of a model config."""
    if cfg.likelihood == "bernoulli":
        return Bernoulli()
    if cfg.likelihood == "gaussian":
        return Gaussian()
    if cfg.likelihood == "logistic":
        return DiscretizedLogistic(cfg.channels, cfg.mixtures, shared_scale=cfg.logistic_scale == "shared")
    if cfg.likelihood == "discrete-gaussian":
        return DiscretizedGaussian(cfg.channels)
    raise ValueError(f"unknown likelihood {cfg.likelihood!r}")
