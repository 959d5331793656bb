"""MIG and the FactorVAE score on synthetic codes whose answer is known."""

import math

import pytest
import torch

from vaecli.eval.disentangle import discretize, entropy, factor_table, factorvae_score, mig, mutual_info

SIZES = (3, 6, 10, 8)


@pytest.fixture(scope="module")
def factors():
    grid = torch.cartesian_prod(*[torch.arange(n) for n in SIZES])  # every combination once
    return grid.repeat(2, 1)  # (2880, 4)


def _noise(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_entropy_and_mutual_information_known_values():
    a = torch.arange(400) % 4
    assert entropy(a) == pytest.approx(math.log(4))
    assert mutual_info(a, a) == pytest.approx(math.log(4))
    assert mutual_info(a, (a // 2)) == pytest.approx(math.log(2))  # a determines a // 2: I = H(a // 2)
    assert mutual_info(a, torch.arange(400) // 100) == pytest.approx(0.0, abs=1e-12)  # independent by design
    d = discretize(torch.tensor([[0.0], [0.5], [1.0]]), bins=4)
    assert d.flatten().tolist() == [0, 2, 3]


def test_perfect_code_scores_one(factors):
    n = factors.shape[0]
    # one dimension per factor (any monotone map), in a shuffled order, plus two noise dims
    perm = [2, 0, 3, 1]
    code = torch.zeros(n, 6)
    for k, j in enumerate(perm):
        code[:, j] = torch.exp(factors[:, k].float() / SIZES[k])
    code[:, 4:] = _noise(n, 2, 0)
    m = mig(code, factors)
    assert m.mig > 0.95
    assert m.best_dim == perm
    f = factorvae_score(code, factors, n_train=2000, n_eval=1000, generator=torch.Generator().manual_seed(1))
    assert f.score == 1.0 and f.train_accuracy == 1.0
    assert [f.dim_to_factor[j] for j in perm] == [0, 1, 2, 3]
    table = factor_table(["a", "b", "c", "d"], m, f)
    assert [r["best_dim"] for r in table] == perm
    assert [r["factorvae_dims"] for r in table] == [[2], [0], [3], [1]]
    assert all(r["best_mi"] > 0.95 and r["second_mi"] < 0.05 for r in table)


def test_random_code_scores_near_zero_and_chance(factors):
    n = factors.shape[0]
    code = _noise(n, 6, 2)
    m = mig(code, factors)
    assert 0 <= m.mig < 0.05
    f = factorvae_score(code, factors, n_train=4000, n_eval=4000, generator=torch.Generator().manual_seed(3))
    chance = 1 / len(SIZES)
    assert abs(f.score - chance) < 0.06


def test_entangled_code_scores_between(factors):
    """Two factors mixed into two dimensions (a 45-degree rotation): lower MIG than the aligned code."""
    v = factors.float() / torch.tensor(SIZES).float()
    aligned = torch.stack([v[:, 2], v[:, 3]], 1)
    mixed = torch.stack([v[:, 2] + v[:, 3], v[:, 2] - v[:, 3]], 1)
    f2 = factors[:, 2:]
    assert mig(mixed, f2).mig < 0.5 * mig(aligned, f2).mig
    # a dimension that captures two factors at once serves only one of them in MIG
    shared = torch.stack([v[:, 2] * 100 + v[:, 3], _noise(len(v), 1, 4)[:, 0]], 1)
    res = mig(shared, f2)
    assert res.per_factor[0] > 0.9 and res.per_factor[1] < 0.5


def test_collapsed_dimensions_are_ignored_by_factorvae(factors):
    n = factors.shape[0]
    code = torch.zeros(n, 3)
    code[:, 0] = factors[:, 0].float()
    code[:, 1] = 1e-4 * _noise(n, 1, 5)[:, 0]  # collapsed: would always have the smallest variance
    code[:, 2] = factors[:, 1].float()
    f = factorvae_score(code, factors[:, :2], n_train=500, n_eval=500)
    assert f.active_dims == [0, 2] and f.dim_to_factor[1] == -1 and f.score == 1.0
    assert factorvae_score(torch.zeros(n, 2), factors).score == 0.0


def test_bad_shapes_are_rejected(factors):
    with pytest.raises(ValueError):
        mig(torch.zeros(5, 2), factors)
