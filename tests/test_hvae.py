"""The hierarchical VAE (--arch hvae): its bound, its sampling, and every command on a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import MICRO, ok, one_error_line, pixels, vae

from vaecli.config import ModelConfig, TrainConfig
from vaecli.eval.inference import decode, reconstruct, sample
from vaecli.eval.metrics import evaluate, log_importance_weights, one_sample_elbo
from vaecli.model.hvae import HVAE, LatentGroup, gaussian_kl, gaussian_log_prob
from vaecli.model.vae import VAE
from vaecli.train.objective import Objective

HV = {"arch": "hvae", **MICRO, "groups": (2, 3)}  # groups of 2 maps at 7 px and 3 maps at 14 px (28 px images)
HVAE_CLI = ["train", "--data", "fashion-mnist-mini", "--arch", "hvae", "--widths", "4,8", "--hidden", "16", "--latent-dim", "4",
            "--groups", "2,3", "--blocks", "1", "--epochs", "1", "--max-steps", "3", "-q"]  # fmt: skip


def _model(seed: int = 0, **kw: object) -> HVAE:
    torch.manual_seed(seed)
    m = VAE(ModelConfig(**{**HV, **kw}))  # type: ignore[arg-type]
    assert isinstance(m, HVAE)
    with torch.no_grad():  # move the priors off N(0, I) so that the tests see conditional priors
        for _, g in m.decoder.latent_groups():
            g.prior[-1].weight.normal_(0, 0.3)
            g.prior[-1].bias.normal_(0, 0.3)
    return m.eval()


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_vae_of_an_hvae_config_is_the_hierarchical_model_with_its_groups() -> None:
    m = _model()
    assert m.num_groups() == 2 and m.group_shapes() == [(2, 7, 7), (3, 14, 14)]
    out = m(_images())
    assert out.params.shape == (6, 1, 28, 28) and out.groups is not None and len(out.groups) == 2
    assert all(g.kl.shape == (6,) and bool((g.kl >= 0).all()) for g in out.groups)
    assert out.groups[1].q_mean.shape == (6, 3, 14, 14)


def test_the_group_kl_matches_its_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(1)
    q_mu, p_mu = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    q_lv, p_lv = torch.randn(3, 2, 4, 4, generator=g) * 0.5, torch.randn(3, 2, 4, 4, generator=g) * 0.5
    exact = gaussian_kl(q_mu, q_lv, p_mu, p_lv).flatten(1).sum(1)
    z = q_mu + torch.exp(0.5 * q_lv) * torch.randn(20000, 3, 2, 4, 4, generator=g)
    est = (gaussian_log_prob(z.flatten(0, 1), q_mu.repeat(20000, 1, 1, 1), q_lv.repeat(20000, 1, 1, 1))
           - gaussian_log_prob(z.flatten(0, 1), p_mu.repeat(20000, 1, 1, 1), p_lv.repeat(20000, 1, 1, 1))).reshape(20000, 3).mean(0)  # fmt: skip
    assert bool((exact > 0).all())
    torch.testing.assert_close(est, exact, rtol=0.03, atol=0.1)


def test_the_elbo_is_reconstruction_plus_the_kl_of_every_group() -> None:
    m, x = _model(), _images()
    with torch.no_grad():
        out = m(x, generator=torch.Generator().manual_seed(0))
        terms = Objective(TrainConfig())(m, out, x, 1.0)
    assert out.groups is not None
    top = out.posterior.kl().mean()
    groups = [float(gp.kl.mean()) for gp in out.groups]
    assert float(terms.kl) == pytest.approx(float(top) + sum(groups), rel=1e-5)
    assert float(terms.neg_elbo) == pytest.approx(float(terms.recon + terms.kl), rel=1e-6)
    assert float(terms.recon) == pytest.approx(float(m.likelihood.nll(out.params, x).mean()), rel=1e-6)
    assert min(groups) > 0  # the conditional priors are not the posteriors


def test_the_importance_weights_average_to_the_elbo_and_bound_it() -> None:
    m, x = _model(), _images(3)
    lw = log_importance_weights(m, x, 4000, torch.Generator().manual_seed(0))  # (3, 4000)
    t = [one_sample_elbo(m, x, torch.Generator().manual_seed(s)) for s in range(200)]
    neg_elbo = torch.stack([(r.recon + r.kl).double() for r in t]).mean(0)
    torch.testing.assert_close(-lw.mean(1), neg_elbo, rtol=0.01, atol=2.0)  # E_q[log w] = ELBO
    iw = -(torch.logsumexp(lw, 1) - math.log(lw.shape[1]))
    assert bool((iw < neg_elbo).all())  # Burda et al.: the k-sample bound is tighter


def test_top_down_samples_are_deterministic_by_seed_and_temperature_zero_is_the_prior_means() -> None:
    m = _model()
    a = sample(m, 5, 1.0, torch.Generator().manual_seed(7))
    b = sample(m, 5, 1.0, torch.Generator().manual_seed(7))
    c = sample(m, 5, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    cold = [decode(m, z, temperature=0.0, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    warm = [decode(m, z, temperature=[1.0, 0.5], generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(cold[0], cold[1]) and not torch.equal(warm[0], warm[1])
    assert torch.equal(cold[0], decode(m, z))  # decode: the groups at their prior means
    # temperature 0 by hand: each group's z is its prior's mean given the state
    h = m.decoder.start(z)
    for i in range(2):
        h = m.decoder.blocks[i](h)
        grp = m.decoder.groups[i]
        assert isinstance(grp, LatentGroup)
        p_mu, _, res = grp._prior(h)
        h = m.decoder.ups[i](h + res + grp.proj(p_mu))
    torch.testing.assert_close(m.likelihood.mean(m.decoder.out(h)), cold[0])


def test_reconstructions_use_every_groups_posterior_mean() -> None:
    m, x = _model(), _images(4)
    r = reconstruct(m, x)
    assert r.shape == x.shape
    torch.testing.assert_close(r, m.likelihood.mean(m(x, sample=False).params))
    assert not torch.allclose(r, decode(m, m.encode(x).mean))  # not the top latent alone


def test_evaluate_reports_each_groups_kl_and_active_units() -> None:
    from vaecli.data import ImageData

    m = _model()
    data = ImageData(images=(_images(40) * 255).round().to(torch.uint8))
    res = evaluate(m, data)
    assert len(res.group_kl) == 2 and len(res.group_active_units) == 2
    assert res.kl == pytest.approx(sum(res.per_dim_kl) + sum(res.group_kl), rel=1e-6)
    assert 0 <= res.group_active_units[1] <= 3 * 14 * 14 and all(v > 0 for v in res.group_kl)
    # one image 40 times: E_q[z | x] does not vary, so no unit is active (the means are taken with the
    # groups above at their posterior means, not at the posterior draws of the ELBO's pass)
    with torch.no_grad():  # a model whose groups' means depend strongly on the groups above
        for p in m.decoder.parameters():
            p.mul_(3)
        m.fc_logvar.bias.fill_(0.0)
    same = evaluate(m, ImageData(images=data.images[:1].repeat(40, 1, 1, 1)))
    assert same.active_units == 0 and same.group_active_units == [0, 0]


@pytest.mark.parametrize("groups", [(), (0, 0), (2, 2, 2), (65,)])
def test_bad_groups_are_refused(groups: tuple[int, ...]) -> None:
    from vaecli.errors import ConfigError

    with pytest.raises(ConfigError, match="--groups"):
        ModelConfig(**{**HV, "groups": groups}).validate()  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny hvae run on fashion-mnist-mini (3 steps)."""
    home = tmp_path_factory.mktemp("hvae-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("VAE_HOME", str(home))
    try:
        ok(*HVAE_CLI, "--name", "h")
    finally:
        mp.undo()
    return home / "h"


def test_every_command_works_on_a_hierarchical_run(hvae_run: Path, tmp_path: Path) -> None:
    run = ["--checkpoint", str(hvae_run)]
    cfg = json.loads((hvae_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "hvae" and cfg["model"]["groups"] == [2, 3]
    for args, out in (
        (["sample", "-n", "6"], "s.png"),
        (["sample", "-n", "6", "--group-temperature", "0.5,0"], "s2.png"),
        (["reconstruct", "--split", "test", "-n", "4"], "r.png"),
        (["interpolate", "--index", "0", "--index", "1", "--steps", "4"], "i.png"),
        (["traverse", "--steps", "3"], "t.png"),
    ):
        ok(*args, *run, "-o", tmp_path / out)
        assert pixels(tmp_path / out).numel() > 0
    enc = ok("encode", *run, "--split", "test", "-n", "3").stdout
    assert len(json.loads(enc.splitlines()[0])["mu"]) == 4  # the top latent
    ok("decode", *run, "-o", tmp_path / "d.png", input=enc)
    assert pixels(tmp_path / "d.png").numel() > 0
    kl = json.loads(ok("eval-kl", *run, "--limit", "20", "--iw-samples", "3", "--json").stdout)
    assert [g["shape"] for g in kl["groups"]] == ["2x7x7", "3x14x14"]
    assert kl["kl"] == pytest.approx(sum(kl["per_dim_kl"]) + sum(g["kl"] for g in kl["groups"]), rel=1e-6)
    assert math.isfinite(kl["iw_nll"]) and kl["iw_nll"] > 0
    text = ok("eval-kl", *run, "--limit", "20").stdout
    assert "KL per group, top down" in text


def test_fit_prior_acts_on_the_top_latent_and_sample_draws_from_it(hvae_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(hvae_run, run)
    ok("fit-prior", "--checkpoint", run, "--kind", "gmm", "--components", "2")
    ok("sample", "--checkpoint", run, "-n", "4", "-o", tmp_path / "g.png")
    assert pixels(tmp_path / "g.png").numel() > 0


@pytest.mark.parametrize("value", ["-1", "nan", "a,b", "1,1,1"])
def test_a_bad_group_temperature_is_one_line(hvae_run: Path, tmp_path: Path, value: str) -> None:
    line = one_error_line(vae("sample", "--checkpoint", hvae_run, "--group-temperature", value, "-o", tmp_path / "x.png"))
    assert "--group-temperature" in line
    assert not (tmp_path / "x.png").exists()


def test_group_temperature_on_a_flat_run_and_groups_on_a_flat_arch_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    line = one_error_line(vae("sample", "--checkpoint", tiny_run, "--group-temperature", "0.5", "-o", tmp_path / "x.png"))
    assert "--group-temperature" in line and "hvae" in line
    line = one_error_line(vae("train", "--data", "fashion-mnist-mini", "--arch", "conv", "--groups", "4", "--max-steps", "1"))
    assert "--groups" in line and "hvae" in line
    assert "--groups" in one_error_line(vae(*HVAE_CLI[:-5], "--groups", "0,0", "--max-steps", "1"))


def test_a_copy_of_the_model_is_the_hierarchical_model_and_ema_trains_it(small_data: tuple[object, object]) -> None:
    import copy

    from conftest import start_tiny

    m = _model()
    c = copy.deepcopy(m)  # the EMA hook's copy: VAE.__new__ without a config
    assert isinstance(c, HVAE) and torch.equal(c.decode(torch.zeros(1, 4)), m.decode(torch.zeros(1, 4)))
    res = start_tiny("hema", small_data, model=HV, ema=0.9, max_steps=3).fit()
    assert res.steps == 3 and math.isfinite(res.test["neg_elbo"])


def test_top_first_weighs_the_groups_more_early_and_leaves_the_reported_elbo() -> None:
    from vaecli.train.objective import TOP_FIRST_WEIGHT

    m, x = _model(), _images()
    with torch.no_grad():
        out = m(x, generator=torch.Generator().manual_seed(0))
        assert out.groups is not None
        groups = float(torch.stack([g.kl for g in out.groups]).sum(0).mean())
        obj = Objective(TrainConfig(top_first=4))
        start, half, end = (obj(m, out, x, p) for p in (0.0, 2.0, 4.0))
    assert float(start.neg_elbo) == pytest.approx(float(end.neg_elbo)) == pytest.approx(float(end.loss), rel=1e-6)
    assert float(start.loss - end.loss) == pytest.approx((TOP_FIRST_WEIGHT - 1) * groups, rel=1e-4)
    assert float(half.loss - end.loss) == pytest.approx((TOP_FIRST_WEIGHT - 1) / 2 * groups, rel=1e-4)
    line = one_error_line(vae("train", "--data", "fashion-mnist-mini", "--top-first", "3", "--max-steps", "1"))
    assert "--top-first" in line and "hvae" in line


def test_a_nonfinite_step_of_a_hierarchical_run_is_rolled_back(small_data: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import start_tiny

    from vaecli.train import trainer

    monkeypatch.setattr(trainer, "SNAPSHOT_STEPS", 2)
    monkeypatch.setenv(trainer.NAN_STEPS_ENV, "4")
    res = start_tiny("hnan", small_data, model=HV, epochs=3).fit()
    (event,) = res.summary["recoveries"]
    assert res.stopped == "done" and event["step"] == 4 and event["rolled_back_to"] <= 4 and math.isfinite(res.test["neg_elbo"])


def test_under_bf16_autocast_the_groups_parameters_are_fp32() -> None:
    m, x = _model(), _images(2)
    g = m.decoder.groups[0]
    assert isinstance(g, LatentGroup)
    h = torch.randn(2, 8, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_mu, p_logvar, res = g._prior(h.bfloat16())
        out = m(x, generator=torch.Generator().manual_seed(0))
    assert p_mu.dtype == p_logvar.dtype == torch.float32 and res.dtype == torch.bfloat16
    assert out.groups is not None and all(gp.kl.dtype == torch.float32 and bool(torch.isfinite(gp.kl).all()) for gp in out.groups)
    assert out.params.dtype == torch.float32


def test_a_sweep_checks_the_groups_of_each_run_as_vae_train_does() -> None:
    """`vae sweep --arch hvae --groups 2,2 ...`: each run's comma-separated --groups parsed before the
    check (it was checked as the string "2,2" and refused)."""
    from types import SimpleNamespace

    from vaecli.cli.sweep import check_train_args
    from vaecli.errors import ConfigError

    ok_run = SimpleNamespace(name="r", args=["--arch", "hvae", "--groups", "2,2", "--beta", "2"])
    check_train_args(ok_run)  # no error
    with pytest.raises(ConfigError, match="--groups"):
        check_train_args(SimpleNamespace(name="r", args=["--arch", "hvae", "--groups", "0,0"]))
