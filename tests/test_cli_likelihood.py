"""`vae eval-nll`: importance-weighted NLL from the command line."""

import json

from typer.testing import CliRunner

from vaecli.cli import app

runner = CliRunner()


def test_eval_nll_json_keys_and_bound(tiny_run):
    args = ["eval-nll", "--run", str(tiny_run), "--limit", "40", "--json", "--device", "cpu"]
    one = json.loads(runner.invoke(app, [*args, "-k", "1"]).stdout)
    many = runner.invoke(app, [*args, "-k", "30"])
    assert many.exit_code == 0, many.output
    out = json.loads(many.stdout)
    assert {"iw_nll", "iw_nll_stderr", "bits_per_dim", "iw_samples", "likelihood"} <= set(out)
    assert out["images"] == 40 and out["iw_samples"] == 30 and out["iw_nll_stderr"] > 0
    assert out["iw_nll"] < one["iw_nll"]
    assert "not a normalised likelihood" in out["likelihood"] and out["binarized"] is False
    b = json.loads(runner.invoke(app, [*args, "-k", "5", "--binarize"]).stdout)
    assert b["binarized"] is True and "not" not in b["likelihood"]
    text = runner.invoke(app, ["eval-nll", "--run", str(tiny_run), "--limit", "10", "-k", "2"])
    assert text.exit_code == 0 and "bits/dim" in text.stdout and "Burda" in text.stdout


def test_eval_nll_bad_input_is_one_line(tiny_run):
    for extra in (["-k", "0"], ["--split", "val"], ["--limit", "0"]):
        r = runner.invoke(app, ["eval-nll", "--run", str(tiny_run), *extra])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, (extra, r.output)
