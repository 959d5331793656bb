"""`vae fit-prior`, `--prior` of `vae sample` / `eval-samples`, `vae train --fit-prior` and the explorer's prior, through CliRunner."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vaecli.cli import app
from vaecli.runs.priors import PRIOR_JSON, PRIOR_TENSORS


def vae(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: object):  # type: ignore[no-untyped-def]
    r = vae(*args)
    assert r.exit_code == 0, f"exit {r.exit_code}: {r.stderr}{r.exception!r}"
    return r


def one_error_line(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    return lines[0]


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared tiny run, as run ``tiny`` of this test's runs folder."""
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, train_tiny) -> Path:  # type: ignore[no-untyped-def]
    """A tiny run trained long enough (10 epochs of fashion-mnist-mini) for its encoder to leave holes in N(0, I)."""
    return train_tiny(tmp_path_factory.mktemp("trained-home"), "trained", epochs=10)


def test_fit_prior_json_and_files(run: Path) -> None:
    r = ok("fit-prior", "--run", "tiny", "--components", 3, "--json")
    out = json.loads(r.stdout)
    assert out["run"] == "tiny" and out["kind"] == "gmm" and out["config"] == {"components": 3} and out["latent_dim"] == 8
    assert out["fitted_on"]["vectors"] == "draws" and out["chosen"]["by"] == "--components"
    assert set(out["scores"]) == {"unit", "val", "test"} and out["scores"]["unit"].startswith("nats per latent vector")
    assert out["seconds"] > 0 and len(out["tensors_sha256"]) == 64
    assert (run / PRIOR_TENSORS).is_file() and json.loads((run / PRIOR_JSON).read_text())["config"] == {"components": 3}
    assert "3 components: validation" in r.stderr  # the progress lines go to stderr
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_fit_prior_chooses_components_on_validation_and_prints_a_table(run: Path) -> None:
    r = ok("fit-prior", "--checkpoint", run, "--fit-on", "means")
    for text in ("held-out split", "log p(z), fitted prior", "log p(z), N(0, I)", "fitted to posterior means", "Stored in"):
        assert text in r.stdout
    info = json.loads((run / PRIOR_JSON).read_text())
    sel = [s["val_log_likelihood"] for s in info["selection"]]
    ks = [s["components"] for s in info["selection"]]
    assert ks == [1, 2, 5, 10, 20, 50, 100][: len(ks)]
    chosen = info["config"]["components"]
    assert sel[ks.index(chosen)] == max(sel) == info["scores"]["val"]["log_likelihood"]
    assert all(a < b for a, b in zip(sel[: ks.index(chosen)], sel[1 : ks.index(chosen) + 1]))  # rising up to the choice
    assert len(ks) == ks.index(chosen) + 2 or ks[-1] == chosen  # the search stops at the first candidate that does not improve


def test_fit_prior_flow(run: Path) -> None:
    out = json.loads(ok("fit-prior", "--run", "tiny", "--kind", "flow", "--json").stdout)
    assert out["kind"] == "flow" and out["config"] == {"layers": 8, "hidden": 128}
    assert out["chosen"]["epochs"] == 30 and 1 <= out["chosen"]["best_epoch"] <= 30 and len(out["selection"]) == 30
    assert out["scores"]["val"]["log_likelihood"] > out["scores"]["val"]["normal_log_likelihood"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "vae2"], "--kind must be gmm or flow, got 'vae2'"),
        (["--components", 0], "--components must be between 1 and 1000, got 0"),
        (["--kind", "flow", "--components", 3], "--components is for --kind gmm"),
        (["--fit-on", "both"], "--fit-on must be draws or means, got 'both'"),
    ],
)
def test_fit_prior_bad_options_are_one_line(run: Path, args: list[object], message: str) -> None:
    assert message in one_error_line(vae("fit-prior", "--run", "tiny", *args))
    assert not (run / PRIOR_JSON).exists()


def test_fit_prior_without_a_run_is_one_line() -> None:
    assert "no trained runs" in one_error_line(vae("fit-prior"))


def test_sample_uses_the_fitted_prior_by_default(run: Path, tmp_path: Path) -> None:
    before = tmp_path / "before.png"
    ok("sample", "--run", "tiny", "-n", 16, "-o", before)
    line = one_error_line(vae("sample", "--run", "tiny", "--prior", "fitted", "-o", tmp_path / "x.png"))
    assert "run 'tiny' has no fitted prior: fit one with `vae fit-prior --run tiny`" in line and not (tmp_path / "x.png").exists()
    ok("fit-prior", "--run", "tiny", "--components", 2)
    r = ok("sample", "--run", "tiny", "-n", 16, "-o", tmp_path / "fitted.png")
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "sampling from the run's fitted prior (gmm, 2 components, fitted to posterior draws)" in notes[0]
    ok("sample", "--run", "tiny", "-n", 16, "--prior", "normal", "-o", tmp_path / "normal.png")
    assert (tmp_path / "normal.png").read_bytes() == before.read_bytes()  # N(0, I) as before
    assert (tmp_path / "fitted.png").read_bytes() != before.read_bytes()
    ok("sample", "--run", "tiny", "-n", 16, "--prior", "fitted", "-t", 0.5, "-o", tmp_path / "cold.png")
    assert Image.open(io.BytesIO((tmp_path / "cold.png").read_bytes())).size == Image.open(before).size
    assert "--prior must be auto, fitted, normal" in one_error_line(vae("sample", "--run", "tiny", "--prior", "vamp"))


def test_a_prior_fitted_with_checkpoint_is_compared_with_the_weights_sampled_from(run: Path, tmp_path: Path) -> None:
    import torch

    from vaecli.runs import store as ckpt

    model, cfg, _ = ckpt.load_model(run)
    with torch.no_grad():  # other weights of the same run, in a file of their own (as an earlier checkpoint)
        next(model.parameters()).mul_(1.5)
    (tmp_path / "other").mkdir()
    ckpt.save_model(tmp_path / "other", model, cfg.model.to_dict())
    other = run / "other.safetensors"
    shutil.move(tmp_path / "other" / ckpt.MODEL, other)

    def other_weights_note(*source: object) -> str:
        r = ok("sample", *source, "-n", 4, "-o", tmp_path / "s.png")
        return "".join(ln for ln in r.stderr.splitlines() if "fitted to other weights" in ln)

    ok("fit-prior", "--checkpoint", other, "--components", 2)
    assert other_weights_note("--checkpoint", other) == ""  # sampled from the weights it was fitted to: no note
    assert "(other.safetensors when it was fitted)" in other_weights_note("--run", "tiny")
    assert json.loads((run / PRIOR_JSON).read_text())["model_weights"]["file"] == "other.safetensors"
    ok("fit-prior", "--run", "tiny", "--components", 2)
    assert other_weights_note("--run", "tiny") == ""
    assert "(model.safetensors when it was fitted)" in other_weights_note("--checkpoint", other)


def test_a_prior_of_another_latent_size_is_refused(run: Path, tmp_path: Path) -> None:
    ok("fit-prior", "--run", "tiny", "--components", 2)
    ok("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--widths", "8,16", "--hidden", 32, "--max-steps", 2, "--device", "cpu",
       "--name", "z4")  # fmt: skip
    for f in (PRIOR_JSON, PRIOR_TENSORS):
        shutil.copy(run / f, tmp_path / "runs" / "z4" / f)
    line = one_error_line(vae("sample", "--run", "z4", "-o", tmp_path / "z4.png"))
    assert "is for 8 latent dimensions, the model has 4" in line and not (tmp_path / "z4.png").exists()
    ok("sample", "--run", "z4", "--prior", "normal", "-o", tmp_path / "z4.png")


def test_eval_samples_prior_and_memorisation(run: Path) -> None:
    ok("fit-prior", "--run", "tiny", "--components", 2)
    out = json.loads(ok("eval-samples", "--run", "tiny", "-n", 200, "--json").stdout)
    assert out["prior"]["kind"] == "gmm" and out["prior"]["label"] == "gmm, 2 components, fitted to posterior draws"
    mem = out["memorisation"]
    assert set(mem) >= {"ratio", "sample_median", "held_out_median", "closer_than_p1", "train_images", "held_out_images"}
    assert mem["train_images"] == 1800 and mem["held_out_images"] == 200 and mem["held_out_split"] == "test" and mem["ratio"] > 0
    normal = json.loads(ok("eval-samples", "--run", "tiny", "-n", 200, "--prior", "normal", "--json").stdout)
    assert normal["prior"] == {"kind": "normal", "label": "N(0, I)"} and normal["fd"] != out["fd"]
    assert normal["reconstructions"] == out["reconstructions"]
    on_train = json.loads(ok("eval-samples", "--run", "tiny", "-n", 100, "--split", "train", "--json").stdout)
    assert on_train["memorisation"]["held_out_split"] == "test" and on_train["memorisation"]["held_out_images"] == 500
    table = ok("eval-samples", "--run", "tiny", "-n", 100).stdout
    assert "mem. ratio" in table and "Memorisation ratio (mem. ratio): median distance" in table and "gmm, 2 components" in table


@pytest.mark.slow
def test_a_fitted_prior_scores_better_fd_than_the_standard_normal(trained: Path) -> None:
    ok("fit-prior", "--checkpoint", trained)
    fitted = json.loads(ok("eval-samples", "--checkpoint", trained, "-n", 500, "--json").stdout)
    normal = json.loads(ok("eval-samples", "--checkpoint", trained, "-n", 500, "--prior", "normal", "--json").stdout)
    assert fitted["prior"]["kind"] == "gmm" and normal["prior"]["kind"] == "normal"
    assert fitted["fd"] < 0.8 * normal["fd"], (fitted["fd"], normal["fd"])
    assert 0.8 < fitted["memorisation"]["ratio"] < 1.2


def test_train_fit_prior_then_eval_samples(tmp_path: Path) -> None:
    r = vae("train", "--data", "fashion-mnist-mini", "--latent-dim", 4, "--widths", "8,16", "--hidden", 32, "--batch-size", 64,
            "--device", "cpu", "--max-steps", 5, "--name", "fp", "--fit-prior", "gmm", "--eval-samples", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["fit_prior"]["kind"] == "gmm" and (tmp_path / "runs" / "fp" / PRIOR_JSON).is_file()
    assert out["eval_samples"]["prior"]["kind"] == "gmm"  # fitted first, then scored with it
    assert "--fit-prior must be gmm, flow or none, got 'x'" in one_error_line(
        vae("train", "--data", "fashion-mnist-mini", "--fit-prior", "x")
    )
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fp"]  # the refused command left no run


def test_explorer_prior_sample_uses_the_run_prior(run: Path) -> None:
    from vaecli.explore import Explorer

    plain = Explorer("tiny").prior(None, 1)
    assert plain["prior"] == "N(0, I)" and len(plain["z"]) == 8
    ok("fit-prior", "--run", "tiny", "--components", 2)
    logged: list[str] = []
    ex = Explorer("tiny", log=logged.append)
    a, b = ex.prior(None, 1), ex.prior(None, 1)
    assert a == b and a["prior"] == "gmm, 2 components, fitted to posterior draws" and a["z"] != plain["z"]
    assert len(logged) == 1 and "fitted prior" in logged[0]
