"""Priors fitted after training to where the encoder puts images: a Gaussian mixture or a flow on z.

A VAE trained against N(0, I) does not fill N(0, I): its aggregate posterior q(z) = E_x q(z|x)
leaves regions that no image maps to, and prior samples from there decode to in-between figures.
Fitting a density to the encoded training images and sampling from it instead is the "ex-post
density estimation" of Ghosh et al. 2020 ("From Variational to Deterministic Autoencoders", §4:
a 10-component full-covariance Gaussian mixture on the codes). Two kinds, each a
:class:`~vaecli.priors.Prior`:

* ``gmm``: :class:`GaussianMixture`, full covariances, fitted by EM (Dempster et al. 1977; Bishop
  2006, §9.2.2) in float64 from a k-means++ start (Arthur & Vassilvitskii 2007), with a small ridge
  on the covariances; the number of components is chosen by held-out log-likelihood.
* ``flow``: :class:`RealNVP`, affine coupling layers (Dinh et al. 2017, "Density estimation using
  Real NVP", eqs. 7-9) after a fixed whitening by the data's mean and Cholesky factor, so that it
  starts as the one-component Gaussian and learns from there; trained with Adam, the weights of the
  best held-out log-likelihood kept.

What they are fitted to (``fit_on``): ``draws`` (one z ~ q(z|x) per training image, drawn afresh
every flow epoch: samples of the aggregate posterior itself, what the decoder was trained on) or
``means`` (the posterior means, narrower than q(z)). The validation split chooses (components,
best flow epoch); the test split only reports: log p(z) in nats per latent vector, beside the same
under N(0, I). A stored prior is ``prior.safetensors`` (tensors) + ``prior.json`` (kind, sizes,
what it was fitted on, the scores, the SHA-256 of both the tensors and the model weights it was
fitted to), written atomically, never pickled.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .errors import CheckpointError, ConfigError
from .posterior import LOG_2PI, Posterior, standard_normal_log_prob
from .priors import Prior, StandardNormal

PRIOR_TENSORS, PRIOR_JSON = ckpt.PRIOR, ckpt.PRIOR_INFO
PRIOR_FORMAT = "vaecli-prior-1"
KINDS = ("gmm", "flow")
FIT_ON = ("draws", "means")
DEFAULT_FIT_ON = "draws"  # measured: benchmarks/results/priors_fmnist.json, docs/priors.md
CHOICES = ("auto", "fitted", "normal")
COMPONENT_GRID = (1, 2, 5, 10, 20, 50, 100)  # candidates when --components is not given
MAX_COMPONENTS = 1000
RIDGE = 1e-6  # added to every covariance's diagonal (as scikit-learn's reg_covar)
EM_MAX_ITER = 100
EM_TOL = 1e-3  # nats per vector: EM stops when the mean log-likelihood rises by less
FLOW_LAYERS, FLOW_HIDDEN, FLOW_EPOCHS, FLOW_BATCH, FLOW_LR = 8, 128, 30, 1000, 2e-3
NORMAL_LABEL = "N(0, I)"

Report = Callable[[str, bool], None]  # (message, is_a_result_line): progress for the CLI


def _quiet(msg: str, final: bool = False) -> None:
    return None


# ----------------------------------------------------------------------------- Gaussian mixture


def _pairs(d: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle (i <= j) of a D x D matrix."""
    iu = torch.triu_indices(d, d, device=device)
    return iu[0], iu[1]


def _pair_products(x: torch.Tensor) -> torch.Tensor:
    """The products x_i x_j, i <= j, of each row, (N, D (D + 1) / 2), in the order of :func:`_pairs`
    (row by row: one slice product per row, much faster than a gather)."""
    return torch.cat([x[:, i : i + 1] * x[:, i:] for i in range(x.shape[1])], dim=1)


@dataclass
class _Quadratic:
    """A mixture's log-densities as one linear map of (x, x_i x_j): log N(x; mu_k, S_k) =
    c_k + x . b_k - (1/2) x^T P_k x with P_k = S_k^-1, b_k = P_k mu_k, c_k = -(D log 2pi + mu_k^T P_k mu_k)/2
    - log|L_k|, so that every point against every component is two matrix products (compute-bound,
    unlike the (N, K, D) residuals)."""

    quad: torch.Tensor  # (P, K): -(1/2) P_k[i, j] x (2 where i < j)
    lin: torch.Tensor  # (D, K): b_k
    const: torch.Tensor  # (K,): c_k + log w_k

    @classmethod
    def of(cls, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor) -> _Quadratic:
        k, d = means.shape
        eye = torch.eye(d, dtype=scale_tril.dtype, device=scale_tril.device).expand(k, d, d)
        w = torch.linalg.solve_triangular(scale_tril, eye, upper=False)  # L^-1
        prec = w.transpose(1, 2) @ w
        iu = _pairs(d, means.device)
        factor = torch.where(iu[0] == iu[1], 1.0, 2.0).to(prec.dtype)
        quad = (-0.5 * prec[:, iu[0], iu[1]] * factor).T
        lin = torch.einsum("kij,kj->ki", prec, means)
        half_logdet = torch.log(torch.diagonal(scale_tril, dim1=1, dim2=2)).sum(-1)
        const = -0.5 * (d * LOG_2PI + (lin * means).sum(-1)) - half_logdet + torch.log(weights)
        return cls(quad.contiguous(), lin.T.contiguous(), const)

    def log_joint(self, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x_n; mu_k, S_k), (N, K), from x (N, D) and its pair products (N, P)."""
        return pairs @ self.quad + x @ self.lin + self.const


def _rows(k: int, d: int) -> int:
    """Rows per chunk so that the pair products and the (N, K) blocks stay near 32 MB in float64."""
    return max(256, 4_000_000 // (d * (d + 1) // 2 + k))


class GaussianMixture(Prior):
    """p(z) = sum_k w_k N(z; mu_k, Sigma_k), full covariances (held as Cholesky factors L_k, float64).

    ``sample(temperature=T)`` draws mu_k + T L_k eps: each component's covariance scaled by T^2,
    the means and weights kept (T = 0: the component means)."""

    kind = "gmm"
    weights: torch.Tensor  # buffers (K,), (K, D), (K, D, D)
    means: torch.Tensor
    scale_tril: torch.Tensor

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, scale_tril: torch.Tensor) -> None:
        k, d = means.shape
        if weights.shape != (k,) or scale_tril.shape != (k, d, d):
            raise ConfigError(f"a Gaussian mixture needs weights (K,), means (K, D), scale_tril (K, D, D); got "
                              f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(scale_tril.shape)}")  # fmt: skip
        super().__init__(d)
        self.register_buffer("weights", weights.to(torch.float64))
        self.register_buffer("means", means.to(torch.float64))
        self.register_buffer("scale_tril", scale_tril.to(torch.float64))

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def config(self) -> dict[str, Any]:
        """What rebuilds the module before its tensors are loaded."""
        return {"components": self.components}

    def free_parameters(self) -> int:
        """K - 1 weights, K D means, K D (D + 1) / 2 covariance entries."""
        k, d = self.components, self.latent_dim
        return k - 1 + k * d + k * d * (d + 1) // 2

    def log_prob(self, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        """log p(z) (...,): the log-sum-exp over components, computed in float64, returned in z's float dtype."""
        shape = z.shape[:-1]
        x = z.reshape(-1, self.latent_dim).to(self.means.device, torch.float64)
        q = _Quadratic.of(self.weights, self.means, self.scale_tril)
        rows = _rows(self.components, self.latent_dim)
        parts = [torch.logsumexp(q.log_joint(xc, _pair_products(xc)), dim=1) for xc in x.split(rows)]
        lp = torch.cat(parts) if parts else x.new_empty(0)
        return lp.reshape(shape).to(z.dtype if z.is_floating_point() else torch.float32)

    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws (n, D) float32 on the prior's device (the noise comes from ``generator`` on its own device)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        comp = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator).to(self.means.device)
        eps = torch.randn(n, self.latent_dim, generator=generator, device=gdev, dtype=torch.float64).to(self.means.device)
        z = torch.empty(n, self.latent_dim, dtype=torch.float64, device=self.means.device)
        for j in comp.unique().tolist():
            idx = comp == j
            z[idx] = self.means[j] + temperature * eps[idx] @ self.scale_tril[j].T
        return z.float()


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to the squared distance to the nearest centre chosen so far; (k, D)."""
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = (x - centres[0]).square().sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = torch.multinomial(d2 / total, 1, generator=g) if total > 0 else torch.randint(n, (1,), generator=g)
        centres.append(x[i].squeeze(0))
        d2 = torch.minimum(d2, (x - centres[-1]).square().sum(1))
    return torch.stack(centres)


def _params(
    nk: torch.Tensor, sum_x: torch.Tensor, sum_pairs: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M-step (Bishop 2006, eqs. 9.24-9.26) from the sufficient statistics N_k = sum_n r_nk,
    sum_n r_nk x_n and sum_n r_nk x_n x_n^T (upper triangle): weights, means and the Cholesky factors
    of the covariances plus ``ridge`` I (10x more ridge, up to 8 times, where one is not positive definite)."""
    k, d = sum_x.shape
    nk = nk + 10 * torch.finfo(nk.dtype).eps
    means = sum_x / nk[:, None]
    iu = _pairs(d, sum_x.device)
    second = torch.zeros(k, d, d, dtype=sum_x.dtype, device=sum_x.device)
    second[:, iu[0], iu[1]] = sum_pairs / nk[:, None]
    second[:, iu[1], iu[0]] = sum_pairs / nk[:, None]
    cov = second - means[:, :, None] * means[:, None, :]
    eye = torch.eye(d, dtype=sum_x.dtype, device=sum_x.device)
    extra = ridge
    for _ in range(8):
        scale_tril, info = torch.linalg.cholesky_ex(cov + extra * eye)
        if not bool((info > 0).any()):
            break
        extra *= 10
    return nk / nk.sum(), means, scale_tril


def _statistics(chunks: list[tuple[torch.Tensor, torch.Tensor]], resp_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                k: int) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """One pass over the (x, pair products) chunks: ``resp_of(x, pairs)`` gives (responsibilities,
    log p(x)); returns (mean log p(x), N_k, sum r x, sum r x x^T as its upper triangle)."""
    x0, p0 = chunks[0]
    nk = x0.new_zeros(k)
    sum_x = x0.new_zeros(k, x0.shape[1])
    sum_pairs = x0.new_zeros(k, p0.shape[1])
    ll, n = 0.0, 0
    for xc, pc in chunks:
        r, lp = resp_of(xc, pc)
        nk += r.sum(0)
        sum_x += r.T @ xc
        sum_pairs += r.T @ pc
        ll += float(lp.sum())
        n += xc.shape[0]
    return ll / n, nk, sum_x, sum_pairs


@dataclass
class EMResult:
    """A fitted mixture and how EM went: iterations, convergence, mean training log-likelihood (nats per vector)."""

    mixture: GaussianMixture
    iterations: int
    converged: bool
    train_log_likelihood: float


def fit_gmm(x: torch.Tensor, components: int, seed: int = 0, max_iter: int = EM_MAX_ITER, tol: float = EM_TOL,
            ridge: float = RIDGE) -> EMResult:  # fmt: skip
    """Fit a full-covariance Gaussian mixture to ``x`` (N, D) by EM in float64.

    Start: k-means++ centres, 10 Lloyd iterations, then the M-step of the hard assignment. Each EM
    iteration: responsibilities r_nk = w_k N(x_n | k) / sum_j w_j N(x_n | j) (E-step, Bishop 2006
    eq. 9.23), then the M-step of :func:`_params`; stops when the mean log-likelihood rises by less than ``tol``."""
    x = x.detach().to(torch.float64)
    n, d = x.shape
    if not 1 <= components <= n:
        raise ConfigError(f"--components must be between 1 and the {n:,} vectors fitted, got {components}")
    if not torch.isfinite(x).all():
        raise ConfigError("the latent vectors to fit are not all finite")
    g = torch.Generator().manual_seed(seed)
    centres = _kmeans_pp(x, components, g)
    for _ in range(10):  # Lloyd's k-means
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=components).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)

    chunks = [(xc, _pair_products(xc)) for xc in x.split(_rows(components, d))]  # computed once: x does not change

    def hard(xc: torch.Tensor, pc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.nn.functional.one_hot(torch.cdist(xc, centres).argmin(1), components).to(x.dtype)
        return r, xc.new_zeros(xc.shape[0])

    _, *stats = _statistics(chunks, hard, components)
    weights, means, scale_tril = _params(stats[0], stats[1], stats[2], ridge)
    prev, converged, iterations = -math.inf, False, 0
    while iterations < max_iter:
        iterations += 1
        q = _Quadratic.of(weights, means, scale_tril)

        def soft(xc: torch.Tensor, pc: torch.Tensor, q: _Quadratic = q) -> tuple[torch.Tensor, torch.Tensor]:
            log_joint = q.log_joint(xc, pc)
            lse = torch.logsumexp(log_joint, dim=1)
            return torch.exp(log_joint - lse[:, None]), lse

        ll, *stats = _statistics(chunks, soft, components)  # E-step at the current parameters, then the M-step
        weights, means, scale_tril = _params(stats[0], stats[1], stats[2], ridge)
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    mix = GaussianMixture(weights, means, scale_tril)
    return EMResult(mix, iterations, converged, float(mix.log_prob(x).mean()))


# ----------------------------------------------------------------------------- RealNVP flow


class _Coupling(nn.Module):
    """One affine coupling layer (Dinh et al. 2017, eq. 9): the dimensions where ``mask`` is 1 pass
    unchanged and set a scale and shift of the others, u = x_a + (1 - m) (x e^s(x_a) + t(x_a));
    log|det| = sum s. The log-scale is bounded by tanh; the last layer starts at zero (identity)."""

    mask: torch.Tensor

    def __init__(self, dim: int, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _st(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(xa).chunk(2, dim=-1)
        keep = 1 - self.mask
        return torch.tanh(s) * keep, t * keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa = x * self.mask
        s, t = self._st(xa)
        return xa + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(-1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        ua = u * self.mask
        s, t = self._st(ua)
        return ua + (1 - self.mask) * ((u - t) * torch.exp(-s))


def _masks(dim: int, layers: int) -> list[torch.Tensor]:
    """Alternating masks: even/odd dimensions, then first/second half, each with its complement."""
    idx = torch.arange(dim)
    patterns = [(idx % 2 == 0), (idx < dim // 2)] if dim > 1 else [torch.ones(1, dtype=torch.bool)]
    out = []
    for i in range(layers):
        m = patterns[(i // 2) % len(patterns)]
        out.append((m if i % 2 == 0 else ~m).float())
    return out


class RealNVP(Prior):
    """A RealNVP density on z: u = f(z) with f = couplings after the fixed whitening
    w = L^-1 (z - m) (m, L L^T: the mean and covariance of the fitted vectors), u ~ N(0, I);
    log p(z) = log N(f(z); 0, I) + log|det df/dz| (Dinh et al. 2017, eq. 3).

    ``sample(temperature=T)`` decodes base noise u ~ N(0, T^2 I) (Kingma & Dhariwal 2018's
    "temperature"; T = 0: f^-1(0))."""

    kind = "flow"
    shift: torch.Tensor  # buffers: the whitening's mean (D,) and Cholesky factor (D, D)
    scale_tril: torch.Tensor

    def __init__(self, latent_dim: int, layers: int = FLOW_LAYERS, hidden: int = FLOW_HIDDEN) -> None:
        super().__init__(latent_dim)
        self.layers, self.hidden = layers, hidden
        self.register_buffer("shift", torch.zeros(latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim))
        self.couplings = nn.ModuleList(_Coupling(latent_dim, m, hidden) for m in _masks(latent_dim, layers))

    def config(self) -> dict[str, Any]:
        """What rebuilds the module before its tensors are loaded."""
        return {"layers": self.layers, "hidden": self.hidden}

    def free_parameters(self) -> int:
        """The couplings' weights (the whitening is fixed, not learned)."""
        return sum(p.numel() for p in self.parameters())

    def set_whitening(self, x: torch.Tensor, ridge: float = RIDGE) -> None:
        """Fix the first step to the mean and Cholesky factor of ``x`` (N, D) (plus ``ridge`` I)."""
        x = x.to(torch.float64)
        m = x.mean(0)
        cov = torch.cov(x.T).reshape(self.latent_dim, self.latent_dim) + ridge * torch.eye(self.latent_dim, dtype=torch.float64)
        self.shift.copy_(m.float())
        self.scale_tril.copy_(torch.linalg.cholesky(cov).float())

    def _forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.linalg.solve_triangular(self.scale_tril, (z - self.shift).T, upper=False).T
        logdet = -torch.log(torch.diagonal(self.scale_tril)).sum().expand(z.shape[0])
        for c in self.couplings:
            u, ld = c(u)
            logdet = logdet + ld
        return u, logdet

    def log_prob(self, z: torch.Tensor, components: Posterior | None = None) -> torch.Tensor:
        """log p(z) (...,), float32 on the flow's device."""
        shape = z.shape[:-1]
        u, logdet = self._forward(z.reshape(-1, self.latent_dim).to(self.shift.device, torch.float32))
        return (standard_normal_log_prob(u) + logdet).reshape(shape)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws (n, D) float32 on the flow's device (noise from ``generator`` on its own device)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        u = (torch.randn(n, self.latent_dim, generator=generator, device=gdev) * temperature).to(self.shift.device)
        for c in reversed(list(self.couplings)):
            assert isinstance(c, _Coupling)
            u = c.inverse(u)
        return u @ self.scale_tril.T + self.shift


@torch.no_grad()
def mean_log_prob(prior: Prior, z: torch.Tensor, batch: int = 10_000) -> float:
    """Mean log p(z) over vectors (N, D): nats per latent vector (float64 sum)."""
    if z.shape[0] == 0:
        return math.nan
    total = sum(float(prior.log_prob(z[i : i + batch]).double().sum()) for i in range(0, z.shape[0], batch))
    return total / z.shape[0]


@dataclass
class FlowResult:
    """A trained flow, its best epoch by validation log-likelihood and the curve (nats per vector)."""

    flow: RealNVP
    best_epoch: int
    val_curve: list[float]
    train_curve: list[float]


def fit_flow(train: Posterior | torch.Tensor, val: torch.Tensor, seed: int = 0, epochs: int = FLOW_EPOCHS, layers: int = FLOW_LAYERS,
             hidden: int = FLOW_HIDDEN, batch_size: int = FLOW_BATCH, lr: float = FLOW_LR,
             report: Report = _quiet) -> FlowResult:  # fmt: skip
    """Train a :class:`RealNVP` by maximum likelihood with Adam (cosine learning rate) on ``train``:
    fixed vectors (N, D), or a :class:`~vaecli.posterior.Posterior` from which every epoch draws one
    fresh z per image. After each epoch the mean log-likelihood of ``val`` (N_val, D) is measured; the
    weights of the best epoch are kept."""
    torch.manual_seed(seed)  # the couplings' initial weights
    g = torch.Generator().manual_seed(seed)
    first = train.sample(g) if isinstance(train, Posterior) else train
    dim = first.shape[1]
    flow = RealNVP(dim, layers, hidden)
    flow.set_whitening(first)
    n = first.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch, eta_min=lr * 0.01)
    best_state, best_val, best_epoch = None, -math.inf, 0
    val_curve: list[float] = []
    train_curve: list[float] = []
    for epoch in range(1, epochs + 1):
        data = first if epoch == 1 else (train.sample(g) if isinstance(train, Posterior) else train)
        perm = torch.randperm(n, generator=g)
        flow.train()
        total = 0.0
        for i in range(0, n, batch_size):
            loss = -flow.log_prob(data[perm[i : i + batch_size]]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * min(batch_size, n - i)
        flow.eval()
        v = mean_log_prob(flow, val)
        train_curve.append(-total / n)
        val_curve.append(v)
        if math.isfinite(v) and v > best_val:
            best_val, best_epoch = v, epoch
            best_state = {k: t.detach().clone() for k, t in flow.state_dict().items()}
        report(f"flow epoch {epoch}/{epochs}: train {-total / n:.3f}, validation {v:.3f} nats per vector", False)
    if best_state is not None:
        flow.load_state_dict(best_state)
    return FlowResult(flow.eval(), best_epoch, val_curve, train_curve)


# ----------------------------------------------------------------------------- fitting a run


def component_grid(n: int, dim: int) -> list[int]:
    """The candidate component counts for ``n`` vectors of ``dim`` dimensions: :data:`COMPONENT_GRID`,
    up to one component per D vectors (fewer points than dimensions cannot span a covariance; the
    validation split judges the rest)."""
    cap = max(1, n // dim)
    return [k for k in COMPONENT_GRID if k <= cap] or [1]


@dataclass
class Encoded:
    """The posteriors of one split's images: q(z|x) as a Posterior, and the image count."""

    posterior: Posterior
    images: int

    def vectors(self, fit_on: str, generator: torch.Generator) -> torch.Tensor:
        """The posterior means, or one draw z ~ q(z|x) per image."""
        return self.posterior.mean if fit_on == "means" else self.posterior.sample(generator)


def encode_splits(model: Any, data_cfg: Any) -> dict[str, Encoded]:
    """Encode the run's train, val and test splits as the model sees them (a ``--binarize`` run:
    the fixed binarisation its test split gets, for the training and validation images too)."""
    from .data import binarize_fixed, load_splits, to_float
    from .inference import encode

    splits = load_splits(data_cfg)
    out = {}
    for name, data in splits.items():
        if data_cfg.binarize and name != "test":  # load_splits binarises the test split already
            data = binarize_fixed(data)
        out[name] = Encoded(Posterior(*encode(model, to_float(data.images))), len(data))
    return out


def check_fit_options(kind: str, components: int | None = None, fit_on: str | None = None, flag: str = "--kind") -> None:
    """Refuse bad fit options (one line) before any work; ``flag`` names the option that gave ``kind``."""
    if kind not in KINDS:
        raise ConfigError(f"{flag} must be {' or '.join(KINDS)}, got {kind!r}")
    if fit_on is not None and fit_on not in FIT_ON:
        raise ConfigError(f"--fit-on must be {' or '.join(FIT_ON)}, got {fit_on!r}")
    if components is not None:
        if kind != "gmm":
            raise ConfigError("--components is for --kind gmm")
        if not 1 <= components <= MAX_COMPONENTS:
            raise ConfigError(f"--components must be between 1 and {MAX_COMPONENTS}, got {components}")


@dataclass
class FitResult:
    """A fitted prior and its description (the content of ``prior.json``)."""

    prior: Prior
    info: dict[str, Any]


def fit_prior(model: Any, data_cfg: Any, kind: str = "gmm", components: int | None = None, fit_on: str | None = None,
              seed: int = 0, report: Report = _quiet) -> FitResult:  # fmt: skip
    """Fit a prior of ``kind`` to the encoded training split of a run (model + its DataConfig).

    Validation (the run's val split; without one, 10% carved from the encoded training split, said
    in ``info["validation"]``) chooses the components (``gmm``, unless ``components``) or the best
    epoch (``flow``); the encoded test split is scored once, under the prior and under N(0, I)."""
    from .recipe import validation_size

    check_fit_options(kind, components, fit_on)
    fit_on = fit_on or DEFAULT_FIT_ON
    start, cpu_start = time.perf_counter(), time.process_time()
    model.eval()
    report("encoding the train, val and test splits", False)
    enc = encode_splits(model, data_cfg)
    g = torch.Generator().manual_seed(seed)
    train, val = enc["train"], enc["val"]
    if val.images == 0:  # carve the validation vectors out of the encoded training split
        n = train.images
        n_val = max(1, validation_size(n))
        if n - n_val < 2:
            raise ConfigError(f"fitting a prior needs at least 3 training images, the run has {n}")
        perm = torch.randperm(n, generator=g)
        q = train.posterior
        val = Encoded(Posterior(q.mu[perm[:n_val]], q.logvar[perm[:n_val]]), n_val)
        train = Encoded(Posterior(q.mu[perm[n_val:]], q.logvar[perm[n_val:]]), n - n_val)
        val_source = f"{n_val:,} images carved out of the encoded training split (the run has no validation split)"
    else:
        val_source = "the run's validation split"
    x_val = val.vectors(fit_on, g)
    x_test = enc["test"].vectors(fit_on, g)
    dim = x_val.shape[1]
    info: dict[str, Any] = {"format": PRIOR_FORMAT, "kind": kind, "latent_dim": dim}
    selection: list[dict[str, Any]] = []
    if kind == "gmm":
        x_train = train.vectors(fit_on, g)
        grid = [components] if components is not None else component_grid(x_train.shape[0], dim)
        best: tuple[float, EMResult] | None = None
        for k in grid:
            report(f"EM with {k} component{'s' if k > 1 else ''}", False)
            res = fit_gmm(x_train, k, seed)
            v = mean_log_prob(res.mixture, x_val)
            selection.append({"components": k, "iterations": res.iterations, "converged": res.converged,
                              "train_log_likelihood": res.train_log_likelihood, "val_log_likelihood": v})  # fmt: skip
            report(f"{k:>4} components: validation {v:.3f} nats per vector ({res.iterations} EM iterations)", True)
            if best is not None and not v > best[0]:
                break  # the first candidate that does not beat the best so far ends the search
            best = (v, res)
        assert best is not None
        prior: Prior = best[1].mixture
        val_ll, chosen = best[0], {"components": best[1].mixture.components, "iterations": best[1].iterations}
        how = "--components" if components is not None else "validation log-likelihood (candidates in turn until one does not improve it)"
    else:
        flow_res = fit_flow(train.posterior if fit_on == "draws" else train.vectors(fit_on, g), x_val, seed, report=report)
        prior = flow_res.flow
        val_ll = flow_res.val_curve[flow_res.best_epoch - 1]
        chosen = {"best_epoch": flow_res.best_epoch, "epochs": len(flow_res.val_curve)}
        selection = [{"epoch": i + 1, "train_log_likelihood": t, "val_log_likelihood": v}
                     for i, (t, v) in enumerate(zip(flow_res.train_curve, flow_res.val_curve))]  # fmt: skip
        how = "the epoch of the highest validation log-likelihood"
    normal = StandardNormal(dim)
    vectors = "one posterior draw z ~ q(z|x) per image" + (", drawn afresh every epoch" if kind == "flow" else "")
    info.update(
        config=prior.config(),  # type: ignore[operator]
        parameters=prior.free_parameters(),  # type: ignore[operator]
        chosen={**chosen, "by": how},
        fitted_on={
            "split": "train",
            "images": train.images,
            "vectors": fit_on,
            "description": vectors if fit_on == "draws" else "the posterior means",
        },
        validation={"source": val_source, "images": val.images},
        selection=selection,
        scores={
            "unit": "nats per latent vector (mean log p(z))",
            "val": {"images": val.images, "log_likelihood": val_ll, "normal_log_likelihood": mean_log_prob(normal, x_val)},
            "test": {
                "images": enc["test"].images,
                "log_likelihood": mean_log_prob(prior, x_test),
                "normal_log_likelihood": mean_log_prob(normal, x_test),
            },
        },
        seed=seed,
        seconds=round(time.perf_counter() - start, 3),
        cpu_seconds=round(time.process_time() - cpu_start, 3),  # all threads; an upper bound of the wall time on idle cores
        threads=torch.get_num_threads(),
    )
    return FitResult(prior, info)


# ----------------------------------------------------------------------------- on disk


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def has_prior(run: Path) -> bool:
    """Whether the run folder holds a fitted prior."""
    return (Path(run) / PRIOR_JSON).exists()


def save_prior(run: Path, result: FitResult, weights: Path | None = None) -> Path:
    """Store ``result`` in the run folder: ``prior.safetensors`` first, then ``prior.json`` (which names
    the tensors' SHA-256, so that a half-replaced pair is detected); both written atomically.
    ``weights``: the model.safetensors it was fitted to (its SHA-256 goes into the JSON)."""
    from .fileio import atomic_write_json

    run = Path(run)
    tensors = {k: v for k, v in result.prior.state_dict().items()}
    ckpt.write_safetensors(run / PRIOR_TENSORS, tensors, {"format": PRIOR_FORMAT, "kind": result.prior.kind})
    weights = weights if weights is not None else run / ckpt.MODEL
    info = {**result.info, "created": ckpt.utc_now(), "tensors_sha256": _sha256(run / PRIOR_TENSORS),
            "model_sha256": _sha256(weights) if weights.exists() else None}  # fmt: skip
    atomic_write_json(run / PRIOR_JSON, info)
    result.info = info
    return run / PRIOR_JSON


def read_prior_info(run: Path) -> dict[str, Any]:
    """``prior.json`` of a run (CheckpointError when missing or damaged)."""
    path = Path(run) / PRIOR_JSON
    missing = CheckpointError(f"run {Path(run).name!r} has no fitted prior: fit one with `vae fit-prior --run {Path(run).name}`")
    info = ckpt.read_json_file(path, missing)
    if not isinstance(info, dict) or info.get("format") != PRIOR_FORMAT or info.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: not a vaecli prior (format {PRIOR_FORMAT})")
    return info


def load_fitted(run: Path, latent_dim: int) -> tuple[Prior, dict[str, Any]]:
    """The stored prior of a run and its ``prior.json``; refuses a prior of another latent size than
    ``latent_dim`` and tensors that are not the ones ``prior.json`` names."""
    run = Path(run)
    info = read_prior_info(run)
    if info.get("latent_dim") != latent_dim:
        raise CheckpointError(f"the fitted prior in {run} is for {info.get('latent_dim')} latent dimensions, the model has {latent_dim}: "
                              f"refit it with `vae fit-prior`")  # fmt: skip
    path = run / PRIOR_TENSORS
    if not path.exists():
        raise CheckpointError(f"{path} is missing: refit the prior with `vae fit-prior`")
    if _sha256(path) != info.get("tensors_sha256"):
        raise CheckpointError(f"{path} is not the file {PRIOR_JSON} describes: refit the prior with `vae fit-prior`")
    tensors, meta = ckpt.read_safetensors(path)
    if meta.get("format") != PRIOR_FORMAT:
        raise CheckpointError(f"{path}: not a vaecli prior")
    cfg: dict[str, Any] = info["config"] if isinstance(info.get("config"), dict) else {}
    try:
        if info["kind"] == "gmm":
            prior: Prior = GaussianMixture(tensors["weights"], tensors["means"], tensors["scale_tril"])
        else:
            prior = RealNVP(latent_dim, int(cfg["layers"]), int(cfg["hidden"]))
            ckpt.load_checked(prior, tensors, path)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: damaged prior ({exc.__class__.__name__}: {exc})") from None
    return prior.eval(), info


def describe(info: dict[str, Any]) -> str:
    """A prior in a few words: ``gmm, 10 components, fitted to posterior draws``."""
    size = f"{info['config']['components']} components" if info["kind"] == "gmm" else f"{info['config']['layers']} coupling layers"
    return f"{info['kind']}, {size}, fitted to posterior {info['fitted_on']['vectors']}"


@dataclass
class PriorChoice:
    """The prior a command samples from: the Prior, its label, its ``prior.json`` (None for N(0, I)),
    and a note for stderr (None when there is nothing to say)."""

    prior: Prior
    label: str
    info: dict[str, Any] | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What JSON outputs say about the prior."""
        if self.info is None:
            return {"kind": "normal", "label": self.label}
        keep = ("kind", "config", "fitted_on", "chosen", "created")
        return {"label": self.label, **{k: self.info.get(k) for k in keep}}


def load_prior(run: Path, choice: str | None, model: Any) -> PriorChoice:
    """The prior to sample ``model`` (of run folder ``run``) from: ``fitted`` (the stored one; an error
    when there is none), ``normal`` (N(0, I)) or ``auto``/None (the fitted one when the run has one,
    with a note, else the model's own prior)."""
    choice = choice or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"--prior must be {', '.join(CHOICES)}, got {choice!r}")
    d = int(model.config.latent_dim)
    if choice == "normal" or (choice == "auto" and not has_prior(run)):
        own = getattr(model, "prior", None) if choice == "auto" else None
        if isinstance(own, Prior) and own.kind != "normal":
            return PriorChoice(own, f"the model's {own.kind} prior")
        return PriorChoice(StandardNormal(d), NORMAL_LABEL)
    prior, info = load_fitted(run, d)
    dev = next(model.parameters()).device
    prior = prior.to(dev)
    label = describe(info)
    notes = []
    if choice == "auto":
        notes.append(f"sampling from the run's fitted prior ({label}); --prior normal for N(0, I)")
    model_file = Path(run) / ckpt.MODEL
    if info.get("model_sha256") and model_file.exists() and _sha256(model_file) != info["model_sha256"]:
        notes.append("the fitted prior was fitted to other weights of this run: refit it with `vae fit-prior`")
    return PriorChoice(prior, label, info, "; ".join(notes) or None)
