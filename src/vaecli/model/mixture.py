"""The Gaussian mixture prior fitted after training: full covariances, fitted by EM (Dempster et al.
1977; Bishop 2006, §9.2.2) in float64 from a k-means++ start (Arthur & Vassilvitskii 2007), with a
small ridge on the covariances (see :mod:`vaecli.train.fit_prior` for fitting it to a run)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .posterior import LOG_2PI, Posterior
from .priors import Prior

RIDGE = 1e-6  # added to every covariance's diagonal (as scikit-learn's reg_covar)
EM_MAX_ITER = 100
EM_TOL = 1e-3  # nats per vector: EM stops when the mean log-likelihood rises by less


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
