"""`vae eval-kl --iw-samples / --binarize / --limit`: importance-weighted NLL from the command line."""

import json

from typer.testing import CliRunner

from vaecli.cli import app

runner = CliRunner()


def test_eval_kl_iw_json_keys_and_bound(tiny_run):
    args = ["eval-kl", "--run", str(tiny_run), "--limit", "40", "--json", "--device", "cpu"]
    one = json.loads(runner.invoke(app, [*args, "--iw-samples", "1"]).stdout)
    many = runner.invoke(app, [*args, "--iw-samples", "30"])
    assert many.exit_code == 0, many.output
    out = json.loads(many.stdout)
    assert {"iw_nll", "iw_nll_stderr", "bits_per_dim", "iw_samples", "likelihood", "neg_elbo", "per_dim_kl"} <= set(out)
    assert out["images"] == 40 and out["iw_samples"] == 30 and out["iw_nll_stderr"] > 0
    assert out["iw_nll"] < one["iw_nll"] and out["iw_nll"] < out["neg_elbo"]
    assert "not a normalised likelihood" in out["likelihood"] and out["binarized"] is False
    plain = json.loads(runner.invoke(app, args).stdout)
    assert "iw_nll" not in plain and plain["images"] == 40
    b = json.loads(runner.invoke(app, [*args, "--iw-samples", "5", "--binarize"]).stdout)
    assert b["binarized"] is True and "not" not in b["likelihood"]
    text = runner.invoke(app, ["eval-kl", "--run", str(tiny_run), "--limit", "10", "--iw-samples", "2"])
    assert text.exit_code == 0 and "bits/dim" in text.stdout and "Burda" in text.stdout
    assert "not a normalised likelihood" in text.stdout


def test_eval_kl_iw_bad_input_is_one_line(tiny_run):
    for extra in (["--iw-samples", "-1"], ["--limit", "0"]):
        r = runner.invoke(app, ["eval-kl", "--run", str(tiny_run), *extra])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, (extra, r.output)
