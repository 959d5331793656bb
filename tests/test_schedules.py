import pytest

from vaecli.schedules import beta_at, lr_at


def test_constant_beta_without_annealing():
    assert beta_at(0.0, 4.0, 0) == 4.0
    assert beta_at(17.3, 4.0, 0) == 4.0


def test_linear_annealing_values():
    # the seed's schedule: 0 -> beta over N epochs, then constant
    assert beta_at(0.0, 1.0, 30) == 0.0
    assert beta_at(15.0, 1.0, 30) == pytest.approx(0.5)
    assert beta_at(7.5, 4.0, 30) == pytest.approx(1.0)
    assert beta_at(30.0, 1.0, 30) == 1.0
    assert beta_at(100.0, 1.0, 30) == 1.0
    vals = [beta_at(e / 10, 1.0, 3) for e in range(40)]
    assert all(b2 >= b1 for b1, b2 in zip(vals, vals[1:]))


def test_lr_schedules():
    assert lr_at(0, 100, 1e-3) == 1e-3
    assert lr_at(0, 100, 1e-3, "cosine") == pytest.approx(1e-3)
    assert lr_at(100, 100, 1e-3, "cosine") == pytest.approx(1e-5)
    assert lr_at(50, 100, 1e-3, "cosine") == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(0, 100, 1e-3, warmup_steps=10) == pytest.approx(1e-4)
