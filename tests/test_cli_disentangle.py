"""`vae eval-disentangle` on a tiny shapes run (a small factor grid keeps it fast)."""

import json

import pytest
from conftest import one_error_line, vae

from vaecli.data import shapes


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(shapes, "FACTOR_SIZES", (3, 2, 2, 4, 4))


def test_eval_disentangle_json_and_table(small_shapes):
    r = vae(
        "train",
        "--data",
        "shapes",
        "--latent-dim",
        4,
        "--batch-size",
        64,
        "--device",
        "cpu",
        "--epochs",
        1,
        "--name",
        "sh",
        "-q",
        "--beta",
        4,
    )
    assert r.exit_code == 0, r.output
    r = vae("eval-disentangle", "--run", "sh", "--json", "--votes", 200)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["run"] == "sh" and out["images"] == 192 and out["latent_dim"] == 4
    assert 0 <= out["mig"] <= 1 and 0 <= out["factorvae_score"] <= 1
    assert [row["factor"] for row in out["table"]] == list(shapes.FACTORS)
    for row in out["table"]:
        assert 0 <= row["best_dim"] < 4 and row["best_mi"] >= row["second_mi"] >= 0
    r = vae("eval-disentangle", "--votes", 200)  # the latest run by default
    assert r.exit_code == 0, r.output
    assert "MIG" in r.stdout and "FactorVAE score" in r.stdout and "rotation" in r.stdout


def test_eval_disentangle_refuses_data_without_factors(tiny_run):
    assert "known factors" in one_error_line(vae("eval-disentangle", "--run", tiny_run))
    assert "--bins" in one_error_line(vae("eval-disentangle", "--run", tiny_run, "--bins", 1))
