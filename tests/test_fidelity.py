"""The math of `vae eval-samples` (vaecli.eval.fidelity) and its feature spaces (vaecli.eval.features)."""

from __future__ import annotations

import math
import sys
import urllib.error

import pytest
import torch
from conftest import fake_fidelity

from vaecli.config import DataConfig
from vaecli.data import load_data, to_float
from vaecli.errors import ConfigError, DataError
from vaecli.eval import features as feat
from vaecli.eval import fidelity as fid


def _rand_spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_one_dimensional_and_diagonal_closed_forms() -> None:
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    one = fid.frechet_distance_gaussians(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert one == pytest.approx(9.0 + 1.0, rel=1e-12)
    # diagonal (and jointly rotated, so commuting) covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    g = torch.Generator().manual_seed(0)
    d = 16
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 3, torch.rand(d, generator=g, dtype=torch.float64) * 3
    expect = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert fid.frechet_distance_gaussians(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expect, rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert fid.frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-9)


def test_frechet_matches_the_direct_formula_for_general_covariances() -> None:
    # tr((S1 S2)^1/2) = sum of sqrt of the (real, positive) eigenvalues of the non-symmetric S1 S2
    g = torch.Generator().manual_seed(1)
    for d in (2, 7, 40):
        s1, s2 = _rand_spd(d, g), _rand_spd(d, g)
        mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        ev = torch.linalg.eigvals(s1 @ s2)
        assert ev.imag.abs().max() < 1e-8
        direct = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * ev.real.clamp_min(0).sqrt().sum())
        assert fid.frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9, abs=1e-10)
        # symmetric in its two arguments
        assert fid.frechet_distance_gaussians(mu2, s2, mu1, s1) == pytest.approx(direct, rel=1e-9, abs=1e-10)


def test_frechet_of_a_set_with_itself_is_zero_even_when_singular() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 32, generator=g) * 3 + 1
    assert abs(fid.frechet_distance(x, x)) < 1e-8
    few = torch.randn(20, 64, generator=g)  # 20 points in 64-d: rank-19 covariance
    assert abs(fid.frechet_distance(few, few)) < 1e-8
    relu = torch.relu(torch.randn(300, 16, generator=g))
    relu[:, :4] = 0  # dead units: zero rows and columns of the covariance
    assert abs(fid.frechet_distance(relu, relu)) < 1e-8


def test_frechet_of_samples_estimates_the_distance_between_the_gaussians() -> None:
    g = torch.Generator().manual_seed(3)
    d, n = 4, 20_000
    s1, s2 = _rand_spd(d, g), _rand_spd(d, g)
    mu2 = torch.full((d,), 0.5, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T + mu2
    true = fid.frechet_distance_gaussians(torch.zeros(d), s1, mu2, s2)
    assert fid.frechet_distance(x, y) == pytest.approx(true, rel=0.05)


def test_frechet_with_fewer_points_than_dimensions_takes_the_gram_route() -> None:
    # N, M <= D: the nuclear norm of the cross-Gram matrix, checked against the D x D eigendecompositions
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(30, 200, generator=g, dtype=torch.float64), torch.randn(40, 200, generator=g, dtype=torch.float64) * 1.5 + 0.2
    via_cov = fid.frechet_distance_gaussians(*fid.mean_cov(x), *fid.mean_cov(y))
    # (the eigendecompositions of rank-29 and rank-39 200 x 200 covariances carry ~1e-8 of rounding in the
    # square roots of their zero eigenvalues; the Gram route has none)
    assert fid.frechet_distance(x, y) == pytest.approx(via_cov, rel=1e-6)
    assert abs(fid.frechet_distance(x, x)) < 1e-8


def test_mean_cov_is_unbiased_and_bad_shapes_are_refused() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, cov = fid.mean_cov(x)
    assert torch.allclose(mu, torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert torch.allclose(cov, torch.cov(x.T).double())
    with pytest.raises(ConfigError):
        fid.mean_cov(torch.zeros(1, 3))
    with pytest.raises(ConfigError):
        fid.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ConfigError):
        fid.frechet_distance(torch.full((5, 3), math.nan), torch.zeros(5, 3))


# ----------------------------------------------------------------------------- KID


def _k(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b / a.numel() + 1) ** 3)


def test_mmd2_unbiased_matches_the_sums_written_out() -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.3
    m, n = len(x), len(y)
    kxx = sum(_k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(_k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(_k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert fid.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)


def test_kid_is_unbiased_for_equal_distributions_where_the_biased_estimate_is_not() -> None:
    g = torch.Generator().manual_seed(5)
    draws, m, d = 400, 20, 8
    unbiased, biased = [], []
    for _ in range(draws):
        x, y = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
        unbiased.append(fid.mmd2_unbiased(x, y))
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3), ((y @ y.T / d + 1) ** 3), ((x @ y.T / d + 1) ** 3)
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))  # the V-statistic, diagonals included
    u, b = torch.tensor(unbiased), torch.tensor(biased)
    se_u, se_b = float(u.std() / math.sqrt(draws)), float(b.std() / math.sqrt(draws))
    assert abs(float(u.mean())) < 3 * se_u  # mean ~ the true MMD^2 = 0
    assert float(b.mean()) > 10 * se_b  # the test has the power to see a bias
    assert (u < 0).any()  # an unbiased estimate of 0 goes below it


def test_kid_grows_with_a_shift_and_reports_its_spread() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(400, 8, generator=g)
    mean0, std0 = fid.kid(x, torch.randn(400, 8, generator=g), subsets=20, subset_size=100, generator=g)
    mean1, std1 = fid.kid(x, torch.randn(400, 8, generator=g) + 0.5, subsets=20, subset_size=100, generator=g)
    mean2, _ = fid.kid(x, torch.randn(400, 8, generator=g) + 1.0, subsets=20, subset_size=100, generator=g)
    assert abs(mean0) < 3 * std0 and std0 > 0 and std1 > 0
    assert mean1 > 5 * std1 and mean2 > mean1
    with pytest.raises(ConfigError):
        fid.kid(x, x, subsets=0)


# ----------------------------------------------------------------------------- precision and recall


def _pr_loops(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    def radii(s: torch.Tensor) -> list[float]:
        return [sorted(float((s[i] - s[j]).norm()) for j in range(len(s)) if j != i)[k - 1] for i in range(len(s))]

    rr, rf = radii(real), radii(fake)
    p = sum(any(float((f - r).norm()) <= rr[i] for i, r in enumerate(real)) for f in fake) / len(fake)
    r = sum(any(float((x - f).norm()) <= rf[j] for j, f in enumerate(fake)) for x in real) / len(real)
    return p, r


def test_precision_recall_match_the_definition_written_out() -> None:
    g = torch.Generator().manual_seed(7)
    real, fake = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.7 + 0.4
    for k in (1, 3, 5):
        assert fid.precision_recall(real, fake, k) == pytest.approx(_pr_loops(real, fake, k), abs=1e-12)


def test_the_k_of_precision_recall_by_feature_space_and_n() -> None:
    # the Fashion-MNIST net's 3 everywhere (below n); MobileNetV2's 10 from 350 images a side, n // 35 (>= 3) below
    assert [fid.pr_k(3, n) for n in (2, 3, 4, 10, 10_000)] == [1, 2, 3, 3, 3]
    assert [fid.pr_k(10, n) for n in (2, 3, 10, 25, 139, 140, 200, 349, 350, 379, 10_000)] == [1, 2, 3, 3, 3, 4, 5, 9, 10, 10, 10]


def test_precision_recall_of_a_subset_of_the_whole_set() -> None:
    g = torch.Generator().manual_seed(8)
    real = torch.randn(2000, 10, generator=g)
    half = real[torch.randperm(2000, generator=g)[:1000]]
    p, r = fid.precision_recall(real, half)
    assert p == 1.0  # every subset point is a real point
    assert 0.5 <= r < 1.0  # the subset's own points, and most of the rest
    p2, r2 = fid.precision_recall(half, real)  # the roles swapped: recall is now 1
    assert r2 == 1.0 and 0.5 <= p2 < 1.0
    # a collapsed generator (one small cluster): precise, no recall
    p3, r3 = fid.precision_recall(real, torch.randn(1000, 10, generator=g) * 0.05)
    assert p3 > 0.9 and r3 < 0.05
    # a generator off the data: neither
    assert fid.precision_recall(real, torch.randn(1000, 10, generator=g) + 20) == (0.0, 0.0)
    with pytest.raises(ConfigError):
        fid.precision_recall(real[:3], real[:3], k=3)


# ----------------------------------------------------------------------------- the shipped feature net on real images


@pytest.fixture(scope="module")
def mini() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"), download=False)
    assert test.labels is not None
    return to_float(train.images), to_float(test.images), test.labels


@pytest.fixture(scope="module")
def net() -> feat.FeatureExtractor:
    return feat.fmnist_net()


def test_shipped_feature_net_classifies_real_images(mini, net) -> None:  # type: ignore[no-untyped-def]
    model, meta = feat.load_fmnist_net()
    assert meta["name"] == feat.FMNIST_NET and float(meta["test_accuracy"]) > 0.88 and "train_feature_net.py" in meta["command"]
    _, test, labels = mini
    with torch.no_grad():
        acc = float((model(test).argmax(1) == labels).double().mean())
    assert acc > 0.85  # the 500 mini test images come from the Fashion-MNIST test split
    f = net(test[:7])
    assert f.shape == (7, 128) and f.dtype == torch.float32 and (f >= 0).all()
    assert feat.default_features(1, 28) == feat.FMNIST_NET and feat.default_features(3, 28) == feat.MOBILENET
    assert feat.default_features(1, 64) == feat.MOBILENET
    with pytest.raises(ConfigError):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ConfigError):
        feat.get_extractor("inception")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))


def test_scores_order_real_blurred_shuffled_noise(mini, net) -> None:  # type: ignore[no-untyped-def]
    train, test, _ = mini
    g = torch.Generator().manual_seed(0)
    real_f = net(test)
    other = train[torch.randperm(len(train), generator=g)[: len(test)]]
    shuffled = test.flatten(1)[:, torch.randperm(28 * 28, generator=g)].reshape(test.shape)
    noise = torch.rand(test.shape, generator=g)
    sets = {"real": other, "blur 1": _blur(other, 1.0), "blur 2": _blur(other, 2.0), "shuffled": shuffled, "noise": noise}
    fs = {k: net(v) for k, v in sets.items()}
    fd = {k: fid.frechet_distance(real_f, f) for k, f in fs.items()}
    kid = {k: fid.kid(real_f, f, subsets=10, subset_size=250, generator=torch.Generator().manual_seed(0))[0] for k, f in fs.items()}
    pr = {k: fid.precision_recall(real_f, f) for k, f in fs.items()}
    order = list(sets)
    assert [fd[k] for k in order] == sorted(fd.values()), fd
    assert [kid[k] for k in order] == sorted(kid.values()), kid
    recall = [pr[k][1] for k in order]
    assert recall == sorted(recall, reverse=True), pr
    assert fd["blur 1"] > 2 * fd["real"] and kid["real"] < 0.01 < kid["blur 1"]
    assert pr["real"][0] > 0.8 and pr["real"][1] > 0.8 and pr["blur 1"][1] < 0.3 and pr["noise"][1] < 0.01
    # Precision alone is fooled by noise (docs/eval-samples.md): its features collapse into one small
    # cluster that the k-NN balls of a few outlying real images cover.
    assert pr["noise"][0] > 0.5


# ----------------------------------------------------------------------------- the Inception path, offline


def test_inception_without_the_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(DataError, match=r"pip install 'vaecli\[fid\]'"):
        feat.get_extractor(feat.INCEPTION)


def test_inception_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_fidelity(monkeypatch)

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DataError, match="download on first use.*URLError"):
        feat.get_extractor(feat.INCEPTION)


def test_inception_download_is_hash_checked_and_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_fidelity(monkeypatch)
    calls = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: calls.append((url, kw)) or {})
    ext = feat.get_extractor(feat.INCEPTION)
    assert calls and calls[0][1]["check_hash"] is True and calls[0][1]["weights_only"] is True
    out = ext(torch.rand(5, 1, 28, 28))  # grayscale goes in as RGB
    assert ext.name == feat.INCEPTION and out.shape == (5, 2048)
