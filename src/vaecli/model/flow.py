"""The RealNVP flow prior fitted after training: affine coupling layers (Dinh et al. 2017, "Density
estimation using Real NVP", eqs. 7-9) after a fixed whitening by the data's mean and Cholesky factor,
so that it starts as the one-component Gaussian and learns from there; trained with Adam, the weights of
the best held-out log-likelihood kept."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .mixture import RIDGE
from .posterior import Posterior, standard_normal_log_prob
from .priors import Prior, mean_log_prob

FLOW_LAYERS, FLOW_HIDDEN, FLOW_EPOCHS, FLOW_BATCH, FLOW_LR = 8, 128, 30, 1000, 2e-3

Report = Callable[[str, bool], None]  # (message, is_a_result_line): progress for the CLI


def _quiet(msg: str, final: bool = False) -> None:
    return None


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
    fixed vectors (N, D), or a :class:`~vaecli.model.posterior.Posterior` from which every epoch draws one
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
