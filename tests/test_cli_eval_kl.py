"""`vae eval-kl` (vaecli.cli.eval_kl) through CliRunner on the tiny run: the JSON keys and sums, the
table and its SVG; the importance-weighted NLL of --iw-samples, --binarize and --limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ok, one_error_line, vae


def test_eval_kl_json_sums_and_keys(ck: list[str], tiny) -> None:  # type: ignore[no-untyped-def]
    _, cfg, test = tiny
    out = json.loads(ok("eval-kl", "--json", *ck).stdout)
    assert list(out) == [
        "run",
        "split",
        "images",
        "neg_elbo",
        "recon",
        "kl",
        "per_dim_kl",
        "per_dim_kl_to",
        "active_units",
        "bits_per_dim",
        "binarized",
        "likelihood",
    ]
    assert out["bits_per_dim"] is None and out["per_dim_kl_to"] == "the prior"  # BCE nats: no bits/dim
    assert out["run"] == "tiny" and out["split"] == "test" and out["images"] == len(test)
    assert len(out["per_dim_kl"]) == cfg.model.latent_dim
    assert all(v >= 0 for v in out["per_dim_kl"])
    assert sum(out["per_dim_kl"]) == pytest.approx(out["kl"], rel=1e-9)
    assert out["neg_elbo"] == pytest.approx(out["recon"] + out["kl"], rel=1e-9)
    assert 0 <= out["active_units"] <= cfg.model.latent_dim


def test_eval_kl_table_and_svg(tmp_path: Path, ck: list[str]) -> None:
    r = ok("eval-kl", "--split", "train", "--svg", tmp_path / "kl.svg", *ck)
    assert "KL per latent dimension, train split" in r.stdout
    assert "█" in r.stdout and "active units" in r.stdout
    svg = (tmp_path / "kl.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "KL per latent dimension" in svg.replace("&#160;", " ")


# ----------------------------------------------------------------------------- importance-weighted NLL


def test_eval_kl_iw_json_keys_and_bound(tiny_run):
    args = ["eval-kl", "--run", str(tiny_run), "--limit", "40", "--json", "--device", "cpu"]
    one = json.loads(vae(*args, "--iw-samples", 1).stdout)
    many = vae(*args, "--iw-samples", 30)
    assert many.exit_code == 0, many.output
    out = json.loads(many.stdout)
    assert {"iw_nll", "iw_nll_stderr", "iw_bits_per_dim", "bits_per_dim", "iw_samples", "likelihood", "neg_elbo", "per_dim_kl"} <= set(out)
    assert out["images"] == 40 and out["iw_samples"] == 30 and out["iw_nll_stderr"] > 0
    assert out["iw_nll"] < one["iw_nll"] and out["iw_nll"] < out["neg_elbo"]
    assert "not a normalised likelihood" in out["likelihood"] and out["binarized"] is False
    plain = json.loads(vae(*args).stdout)
    assert "iw_nll" not in plain and plain["images"] == 40
    b = json.loads(vae(*args, "--iw-samples", 5, "--binarize").stdout)
    assert b["binarized"] is True and "not" not in b["likelihood"]
    text = vae("eval-kl", "--run", tiny_run, "--limit", 10, "--iw-samples", 2)
    assert text.exit_code == 0 and "bits/dim" in text.stdout and "Burda" in text.stdout
    assert "not a normalised likelihood" in text.stdout


def test_eval_kl_iw_bad_input_is_one_line(tiny_run):
    for extra in (["--iw-samples", "-1"], ["--limit", "0"]):
        one_error_line(vae("eval-kl", "--run", tiny_run, *extra))
