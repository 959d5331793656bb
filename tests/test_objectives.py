"""Cyclical annealing, capacity annealing, free bits and beta-TCVAE: schedules, loss terms, wiring."""

import math

import pytest
import torch
from typer.testing import CliRunner

from vaecli import checkpoint as ckpt
from vaecli.cli import app
from vaecli.config import TrainConfig
from vaecli.errors import ConfigError
from vaecli.losses import free_bits_kl, kl_divergence, kl_per_dim, objective_loss, total_correlation
from vaecli.schedules import beta_at, capacity_at, cyclical_beta_at


def test_cyclical_schedule_values():
    # 12 epochs, 3 cycles of 4 epochs: ramp over the first 2 epochs of each cycle, then beta
    f = lambda t: cyclical_beta_at(t, 2.0, 12, 3)  # noqa: E731
    assert [f(t) for t in (0, 0.5, 1, 2, 3, 3.99)] == pytest.approx([0, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert [f(t) for t in (4, 5, 8, 9, 11)] == pytest.approx([0, 1.0, 0, 1.0, 2.0])
    assert beta_at(5, 2.0, 0, cycles=3, total_epochs=12) == f(5)
    assert beta_at(5, 2.0, 10) == pytest.approx(1.0)  # plain annealing unchanged
    assert cyclical_beta_at(1.0, 1.0, 10, 1, ratio=0.25) == pytest.approx(0.4)


def test_capacity_schedule_values():
    assert [capacity_at(t, 25.0, 10) for t in (0, 2.5, 5, 10, 20)] == pytest.approx([0, 6.25, 12.5, 25, 25])
    assert capacity_at(3, 25.0, 0) == 25.0


def _posterior(n=256, d=6, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g) * scale
    logvar = torch.randn(n, d, generator=g) * 0.1 - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g)
    return z, mu, logvar


def test_free_bits_clamps_each_dimension_and_stops_its_gradient():
    mu = torch.tensor([[2.0, 0.01], [2.0, -0.01]], requires_grad=True)
    logvar = torch.zeros(2, 2, requires_grad=True)
    per = kl_per_dim(mu, logvar).mean(0)  # (2.0, 5e-5)
    fb = free_bits_kl(mu, logvar, 0.5)
    assert fb.item() == pytest.approx(per[0].item() + 0.5)
    fb.backward()
    assert mu.grad[0, 0] != 0 and mu.grad[:, 1].abs().max() == 0  # the dimension under lambda is free
    assert free_bits_kl(mu, logvar, 0.0).item() == pytest.approx(kl_divergence(mu, logvar).mean().item())


def test_total_correlation_near_zero_when_independent_large_when_dependent():
    # wide posteriors around independent means: q(z) factorises
    z, mu, logvar = _posterior(n=1024, d=4, seed=1, scale=0.5)
    tc_ind = total_correlation(z, mu, logvar).item()
    # the same marginals, but every dimension a copy of the first one: strongly dependent
    zc, muc, lvc = z[:, :1].repeat(1, 4), mu[:, :1].repeat(1, 4), logvar[:, :1].repeat(1, 4)
    tc_dep = total_correlation(zc, muc, lvc).item()
    assert math.isfinite(tc_ind) and -0.05 < tc_ind < 0.3
    assert tc_dep > tc_ind + 1.0


def test_objective_loss_terms():
    z, mu, logvar = _posterior()
    recon = torch.full((256,), 100.0)
    kl = kl_divergence(mu, logvar).mean()
    assert objective_loss(recon, mu, logvar, z, 2.0).item() == pytest.approx(100 + 2 * kl.item(), rel=1e-6)
    cap = objective_loss(recon, mu, logvar, z, 3.0, capacity=kl.item() + 1.5)
    assert cap.item() == pytest.approx(100 + 3 * 1.5, rel=1e-5)
    tc = total_correlation(z, mu, logvar)
    tcv = objective_loss(recon, mu, logvar, z, 1.0, tc_beta=6.0)
    assert tcv.item() == pytest.approx(100 + kl.item() + 5 * tc.item(), rel=1e-5)
    for v in (cap, tcv, objective_loss(recon, mu, logvar, z, 1.0, free_bits=0.25)):
        assert torch.isfinite(v)


def test_config_rejects_conflicting_or_negative_settings():
    for kw in (
        {"cyclical": 2, "anneal": 3},
        {"capacity": 5.0, "free_bits": 0.1},
        {"tc_beta": -1.0},
        {"free_bits": float("nan")},
        {"cyclical": -1},
        {"capacity_epochs": -2},
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**kw).validate()
    TrainConfig(cyclical=4, capacity=25.0, capacity_epochs=3).validate()
    assert TrainConfig.from_dict({"tc_beta": 6, "cyclical": 2}).tc_beta == 6.0


@pytest.mark.parametrize(
    "flags", [["--cyclical", "2"], ["--capacity", "5", "--capacity-epochs", "1"], ["--free-bits", "0.5"], ["--tc-beta", "6"]]
)
def test_each_objective_trains_from_the_cli(flags):
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            "fashion-mnist-mini",
            "--latent-dim",
            "4",
            "--batch-size",
            "250",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--max-steps",
            "3",
            "--name",
            "o",
            "--json",
            *flags,
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = ckpt.read_config(ckpt.resolve_run("o")).train
    key = flags[0][2:].replace("-", "_")
    assert getattr(cfg, key) == float(flags[1])
    import json

    out = json.loads(r.stdout)
    assert all(math.isfinite(v) for v in out["test"].values())


def test_cli_conflict_is_one_line():
    r = CliRunner().invoke(app, ["train", "--data", "fashion-mnist-mini", "--cyclical", "2", "--anneal", "2", "--max-steps", "1"])
    assert r.exit_code == 2 and "choose one" in r.stderr and "Traceback" not in r.output
