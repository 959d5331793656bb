"""The schedules (vaecli.train.schedules): beta annealing, cyclical beta, the capacity ramp, the learning
rate (constant, cosine, warm-up) and the cosine that follows the time budget."""

import pytest

from vaecli.train.schedules import beta_at, capacity_at, cyclical_beta_at, lr_at


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


def test_cosine_follows_time_or_steps_whichever_ends_first() -> None:
    base = 2e-3
    # no budget: step-based cosine, from base to 1% of base
    assert lr_at(0, 100, base, "cosine") == pytest.approx(base)
    assert lr_at(100, 100, base, "cosine") == pytest.approx(0.01 * base)
    # half the budget gone after 10% of the steps: lr is the cosine's midpoint
    assert lr_at(10, 100, base, "cosine", time_fraction=0.5) == pytest.approx(base * (0.01 + 0.99 * 0.5))
    # budget spent: floor; past the end: still the floor
    assert lr_at(1, 10**9, base, "cosine", time_fraction=1.0) == pytest.approx(0.01 * base)
    assert lr_at(1, 10**9, base, "cosine", time_fraction=3.0) == pytest.approx(0.01 * base)
    # steps run out before the budget: steps win
    assert lr_at(100, 100, base, "cosine", time_fraction=0.1) == pytest.approx(0.01 * base)
    # monotone in time
    lrs = [lr_at(5, 10**6, base, "cosine", time_fraction=f / 20) for f in range(21)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # constant ignores both; warm-up still ramps first
    assert lr_at(50, 100, base, "constant", time_fraction=0.9) == base
    assert lr_at(0, 100, base, "cosine", warmup_steps=4, time_fraction=0.9) == pytest.approx(base / 4)
