"""`vae sweep` and `vae compare`: plans, resumable subprocess runs, results and their files."""

from __future__ import annotations

import csv
import io
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from conftest import SRC, no_download, noisy_folder, ok, one_error_line, src_env, vae
from PIL import Image

from vaecli.cli import app
from vaecli.cli.sweep import train_flags
from vaecli.errors import ConfigError
from vaecli.eval.features import MOBILENET
from vaecli.experiments import sweep as sw
from vaecli.experiments.compare import aggregate, run_row, study_run

BASE = [
    "--data",
    "fashion-mnist-mini",
    "--widths",
    "8,16",
    "--hidden",
    "32",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--precision",
    "fp32",
]
TINY = [*BASE, "--latent-dim", "4"]


def png(path: Path) -> Image.Image:
    data = Path(path).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def flags() -> dict[str, sw.Flag]:
    return {f.name: f for f in train_flags()}


def plan_of(*tokens: str, name: str | None = "s") -> sw.Plan:
    return sw.build_plan(name, sw.parse_args(list(tokens), train_flags()))


def train_parses(args: list[str]) -> dict:
    """The parameters `vae train`'s own parser reads from ``args`` (a usage error raises)."""
    return typer.main.get_command(app).commands["train"].make_context("vae train", list(args)).params


# ----------------------------------------------------------------------------- the plan (no training)


def test_flags_come_from_vae_train_with_their_kinds():
    f = flags()
    assert (f["beta"].kind, f["latent_dim"].kind, f["seed"].kind, f["arch"].kind, f["binarize"].kind) == (
        "float",
        "int",
        "int",
        "str",
        "bool",
    )
    assert f["widths"].takes_list and not f["arch"].takes_list and f["latent_dim"].option == "--latent-dim"


def test_values_parse_as_the_flag_types():
    f = flags()
    assert sw.parse_values(f["beta"], "0.25,0.5,1") == [0.25, 0.5, 1.0]
    assert sw.parse_values(f["latent_dim"], "8, 16") == [8, 16]
    for flag, text, words in [("beta", "1,x", "'x' is not a number"), ("latent_dim", "8,16.5", "not a whole number"),
                              ("beta", "1,nan", "not a finite number"), ("beta", "1,2,1", "listed twice")]:  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            sw.parse_values(f[flag], text)
    assert [sw.value_text(v) for v in (0.25, 1.0, 8, 1e-5)] == ["0.25", "1", "8", "1e-05"]


def test_a_grid_of_two_flags_names_every_run():
    plan = plan_of("--beta", "1,4", "--latent-dim", "8,16", "--widths", "8,16", "--max-steps", "5", "--binarize", name="g")
    assert [r.name for r in plan.runs] == ["g-beta1-latent_dim8", "g-beta1-latent_dim16", "g-beta4-latent_dim8", "g-beta4-latent_dim16"]
    assert plan.runs[1].values == {"beta": 1.0, "latent_dim": 16} and plan.runs[1].label() == "beta=1 latent_dim=16"
    params = train_parses(plan.runs[2].args)
    assert (params["beta"], params["latent_dim"], params["widths"], params["binarize"], params["name"]) == (
        4.0,
        8,
        "8,16",
        True,
        plan.runs[2].name,
    )
    assert plan.budget() == {"max_steps": 5.0} and plan.factors == ["beta", "latent_dim"]


def test_seeds_are_repeats_and_the_default_name_is_the_plans():
    plan = plan_of("--beta", "1,4", "--seed", "0,1,2", "--epochs", "2", name=None)
    assert plan.factors == ["beta"] and len(plan.runs) == 6 and plan.runs[0].name.endswith("-beta1-seed0")
    assert plan.name.startswith("sweep-beta-seed-")
    assert plan_of("--epochs", "2", "--seed", "0,1,2", "--beta", "1,4", name=None).name != plan.name  # another grid order: another plan
    assert plan_of("--beta", "1,4", "--seed", "0,1,2", "--epochs", "2", name=None).name == plan.name  # the same command: the same sweep
    rows = [{"values": {"beta": b, "seed": s}, "run": f"r{b}{s}", "units": "u", "rate": float(b + s), **dict.fromkeys(
        ("distortion", "neg_elbo", "bits_per_dim", "active_units", "fd", "kid", "precision", "recall", "mig", "factorvae_score",
         "images_per_second", "train_seconds"))} for b in (1, 4) for s in (0, 1, 2)]  # fmt: skip
    groups = aggregate(rows, ["beta"])
    assert [(g["label"], g["n"], g["mean"]["rate"], g["std"]["rate"]) for g in groups] == [("beta=1", 3, 2.0, 1.0), ("beta=4", 3, 5.0, 1.0)]
    assert groups[0]["mean"]["fd"] is None


def test_the_plan_is_recorded_and_a_changed_one_refused(tmp_path):
    plan = plan_of("--beta", "1,4", "--max-steps", "5")
    assert sw.record_plan(plan) == "new"
    assert sw.record_plan(plan_of("--max-steps", "5", "--beta", "1,4")) == "same"  # flags in another order: the same plan
    with pytest.raises(ConfigError, match=r"another plan \(--beta 1,4 -> 1,2; --max-steps 5 -> 6\)"):
        sw.record_plan(plan_of("--beta", "1,2", "--max-steps", "6"))
    assert sw.record_plan(plan_of("--beta", "1,2", "--max-steps", "6"), overwrite=True) == "replaced"
    assert [r["name"] for r in json.loads((tmp_path / "runs/sweeps/s/plan.json").read_text())["runs"]] == ["s-beta1", "s-beta2"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--beta", "1,x", "--max-steps", "2"], "--beta 1,x: 'x' is not a number"),
        (["--foo", "1,2", "--max-steps", "2"], "unknown option --foo: not a vae train flag"),
        (["--arch", "conv,mlp", "--max-steps", "2"], "only numeric vae train flags can be swept"),
        (["--beta", "1,2"], "a sweep needs the same budget for every run"),
        (["--beta", "1,2", "--epochs", "1,2"], "the budget is the same for every run"),
        (["--max-steps", "2"], "nothing to sweep"),
        (["--beta", "-1,2", "--max-steps", "2"], "--beta must be >= 0, got -1.0"),
        (["--beta", "1,2", "--latent-dim", "x", "--max-steps", "2"], "--latent-dim x: 'x' is not a whole number"),
        (["--beta", "1,2", "--max-steps", "2", "--resume", "r"], "a sweep resumes its own runs"),
        (["--beta", "1,2", "--max-steps", "2", "stray"], "unexpected argument 'stray'"),
        (["--collect", "nothing"], "no sweep named 'nothing'"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args, words, tmp_path):
    assert words in one_error_line(vae("sweep", *args))
    assert not (tmp_path / "runs" / "sweeps").exists() or args[0] == "--collect"  # nothing recorded


# ----------------------------------------------------------------------------- runs made by hand, a grid, --plan, --collect


def test_plan_commands_run_by_hand_then_collect_a_grid(tmp_path):
    r = vae("sweep", "--beta", "0.5,8", "--latent-dim", "2,4", *BASE, "--max-steps", "8", "--name", "hand", "--plan")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(ln.startswith("vae train ") for ln in lines)
    names = []
    for line in lines:  # each line is valid shell and a valid `vae train` command; run it here "elsewhere"
        args = shlex.split(line)[2:]
        names.append(train_parses(args)["name"])
        done = vae("train", *args, "-q")
        assert done.exit_code == 0, done.output
    assert names == ["hand-beta0.5-latent_dim2", "hand-beta0.5-latent_dim4", "hand-beta8-latent_dim2", "hand-beta8-latent_dim4"]
    c = vae("sweep", "--collect", "hand", "--no-score", "--json")
    assert c.exit_code == 0, c.output
    out = json.loads(c.stdout)
    assert [row["run"] for row in out["runs"]] == names and [row["values"] for row in out["runs"]][1] == {"beta": 0.5, "latent_dim": 4}
    assert all(row["steps"] == 8 and row["units"] == "BCE nats/image" for row in out["runs"])
    folder = tmp_path / "runs" / "sweeps" / "hand"
    assert png(folder / "rd.png").size == (900, 600) and png(folder / "samples.png").height > 4 * 28
    rows = list(csv.DictReader(io.StringIO((folder / "sweep.csv").read_text())))
    assert [(row["beta"], row["latent_dim"]) for row in rows] == [("0.5", "2"), ("0.5", "4"), ("8.0", "2"), ("8.0", "4")]
    assert "beta" in c.stderr and "latent_dim" in c.stderr  # the table (on stderr beside --json)
    assert "already exists" in one_error_line(vae("train", *shlex.split(lines[0])[2:]))  # a finished run is not trained twice


def test_collect_lists_runs_not_trained_yet(tmp_path):
    r = vae("sweep", "--beta", "1,2", *TINY, "--max-steps", "4", "--name", "half", "--plan")
    assert r.exit_code == 0, r.output
    assert vae("train", *shlex.split(r.stdout.splitlines()[0])[2:], "-q").exit_code == 0
    c = vae("sweep", "--collect", "half", "--no-score", "--json")
    assert c.exit_code == 0, c.output
    out = json.loads(c.stdout)
    assert [row["run"] for row in out["runs"]] == ["half-beta1"]
    assert any("not finished: half-beta2 (not trained)" in n for n in out["notes"])


# ----------------------------------------------------------------------------- a real sweep (subprocesses)


@pytest.mark.slow
def test_a_three_value_sweep(tmp_path):
    args = ["sweep", "--beta", "0.1,1,20", *TINY, "--max-steps", "40", "--name", "b3", "-n", "100", "--jobs", "3"]
    r = vae(*args, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    runs = out["runs"]
    assert [row["run"] for row in runs] == ["b3-beta0.1", "b3-beta1", "b3-beta20"] and all(row["steps"] == 40 for row in runs)
    rates = [row["rate"] for row in runs]
    assert rates[0] > rates[1] > rates[2] >= 0, rates  # more weight on the KL, less rate
    assert all(
        row["units"] == "BCE nats/image" and row["neg_elbo"] == pytest.approx(row["rate"] + row["distortion"], rel=1e-6) for row in runs
    )
    assert all(row["fd"] is not None and 0 <= row["precision"] <= 1 for row in runs)  # 28x28 gray: scored in the shipped feature space
    folder = tmp_path / "runs" / "sweeps" / "b3"
    assert png(folder / "rd.png").size == (900, 600)
    samples = png(folder / "samples.png")
    assert samples.height == 3 * (56 + 2) + 2  # one row of 8 samples per run (28 px x 2)
    assert png(folder / "traverse.png").height > samples.height
    rows = list(csv.DictReader(io.StringIO((folder / "sweep.csv").read_text())))
    assert len(rows) == 3 and rows[0]["beta"] == "0.1" and float(rows[2]["rate"]) == pytest.approx(rates[2])
    assert json.loads((folder / "sweep.json").read_text())["runs"][1]["rate"] == pytest.approx(rates[1])
    progress = json.loads((folder / "progress.json").read_text())
    assert {k: [i["action"] for i in v] for k, v in progress.items()} == {n: ["start"] for n in ("b3-beta0.1", "b3-beta1", "b3-beta20")}

    again = vae(*args)  # the same command: every run is finished, none is trained again
    assert again.exit_code == 0, again.output
    assert "3 finished, 0 to resume, 0 to start" in again.stderr and "started" not in again.stderr
    assert json.loads((folder / "progress.json").read_text()) == progress
    assert "beta" in again.stdout and "rate" in again.stdout and "BCE nats/image" in again.stdout
    assert "another plan (--beta 0.1,1,20 -> 0.1,1)" in one_error_line(
        vae("sweep", "--beta", "0.1,1", *TINY, "--max-steps", "40", "--name", "b3")
    )

    cmp = vae("compare", "b3-beta0.1", "b3-beta20", "--out-dir", str(tmp_path / "cmp"), "--no-score", "--json")
    assert cmp.exit_code == 0, cmp.output
    assert [row["rate"] for row in json.loads(cmp.stdout)["runs"]] == [rates[0], rates[2]] and not json.loads(cmp.stdout)["notes"]


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_trains_no_run_twice(tmp_path):
    """A real SIGINT to the sweep process while its runs train: every run saves; the same command
    again resumes them with the rest of their budget, and each run ends at exactly its budget."""
    env, steps = src_env(), 100  # 29 steps an epoch: the first checkpoint, then time to be interrupted
    cmd = [sys.executable, "-m", "vaecli", "sweep", "--beta", "0.1,4", *TINY, "--max-steps", str(steps), "--name", "k", "--no-score",
           "--jobs", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "sweeps" / "k" / "logs" / "k-beta0.1.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and "epoch   1/" in log.read_text()):  # an epoch done: a run under way
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: every run is saved" in err
    first = sw.run_status("k-beta0.1")
    assert first.state == "interrupted" and 0 < first.steps < steps

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    progress = json.loads((tmp_path / "runs" / "sweeps" / "k" / "progress.json").read_text())
    for run in ("k-beta0.1", "k-beta4"):
        summary = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
        assert (summary["steps"], summary["stopped"]) == (steps, "max_steps")
        calls = progress[run]
        assert sum(c["steps_after"] - c["steps_before"] for c in calls) == steps  # no step trained twice
        assert all(b["steps_before"] == a["steps_after"] for a, b in zip(calls, calls[1:]))  # each invocation continues the last
    assert [c["action"] for c in progress["k-beta0.1"]] == ["start", "resume"]
    assert sw.run_status("k-beta0.1").state == "done"


# ----------------------------------------------------------------------------- vae compare


def test_compare_says_when_likelihoods_differ(tmp_path):
    for name, lik in (("bern", "bernoulli"), ("gauss", "gaussian")):
        assert vae("train", *TINY, "--likelihood", lik, "--max-steps", "4", "--name", name, "-q").exit_code == 0
    r = vae("compare", "bern", "gauss", "--out-dir", str(tmp_path / "c"), "--no-score", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [row["units"] for row in out["runs"]] == ["BCE nats/image", "Gaussian nats/image"]
    assert any("not comparable: other likelihood units" in n for n in out["notes"])
    assert "not comparable: other likelihood units" in r.stderr
    assert png(tmp_path / "c" / "rd.png").size == (900, 600) and png(tmp_path / "c" / "samples.png").height == 2 * 58 + 2
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "c" / "compare.csv").read_text())))) == 2
    assert "needs two or more runs" in one_error_line(vae("compare", "bern"))
    assert "no run named 'nope'" in one_error_line(vae("compare", "bern", "nope"))


def test_default_jobs_split_the_cores(monkeypatch):
    monkeypatch.setattr(sw.slots, "cpu_cores", lambda: 4)
    monkeypatch.setattr(sw.slots, "gpu_count", lambda device: 0)
    assert sw.default_jobs(plan_of("--beta", "1,2,4", "--max-steps", "5"), 3) == 3  # equal work: one run per core
    assert sw.default_jobs(plan_of("--beta", "1,2,4,8,16,32", "--epochs", "1"), 6) == 4
    assert sw.default_jobs(plan_of("--beta", "1,2,4", "--time-budget", "60"), 3) == 1  # each run keeps the machine for its seconds
    assert sw.slot_env(2, "cpu") == [{"OMP_NUM_THREADS": "2"}] * 2 and sw.slot_env(1, "cpu") == [{}]
    monkeypatch.setattr(sw.slots, "gpu_count", lambda device: 2)
    assert sw.default_jobs(plan_of("--beta", "1,2,4", "--time-budget", "60"), 3) == 2
    assert [e["CUDA_VISIBLE_DEVICES"] for e in sw.slot_env(3, None)] == ["0", "1", "0"]


def test_runs_that_fail_are_reported_with_their_error(tmp_path):
    r = vae("sweep", "--beta", "1,2", "--data", str(tmp_path / "no-such-folder"), "--max-steps", "2", "--name", "bad", "--jobs", "2")
    assert r.exit_code == 1, r.output
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 2 and all("neither a dataset" in ln for ln in failed), r.stderr
    assert "no run finished" in r.stderr and "Traceback" not in r.output
    progress = json.loads((tmp_path / "runs" / "sweeps" / "bad" / "progress.json").read_text())
    assert [c["exit_code"] for c in progress["bad-beta1"]] == [2]


def test_no_run_may_take_the_sweeps_folder(tmp_path):
    assert vae("sweep", "--beta", "1,2", "--max-steps", "2", "--name", "keep", "--plan").exit_code == 0
    assert "run name 'sweeps' is reserved" in one_error_line(vae("train", *TINY, "--max-steps", "1", "--name", "sweeps"))
    assert (tmp_path / "runs" / "sweeps" / "keep" / "plan.json").is_file()


def test_runs_import_this_vaecli(tmp_path):
    """Each run's PYTHONPATH starts with the folder that holds this vaecli (a checkout's src/), so a
    sweep from a checkout trains with that checkout's code, not another installed copy."""
    plan = plan_of("--beta", "1,2", "--max-steps", "1")
    sw.record_plan(plan)
    probe = "import os, sys; sys.stderr.write(os.environ['PYTHONPATH'].split(os.pathsep)[0] + '\\n'); sys.exit(3)"
    executor = sw.Executor(plan, 1, [{}], python=(sys.executable, "-c", probe))
    assert executor.run([(plan.runs[0], sw.RunStatus("absent"))]) == {"s-beta1": "failed"}
    assert executor.details["s-beta1"] == str(SRC)
    assert (tmp_path / "runs" / "sweeps" / "s" / "logs" / "s-beta1.log").read_text().splitlines()[-1] == str(SRC)


def test_a_run_replaced_by_hand_is_retrained_with_overwrite(tmp_path):
    """The plan unchanged, one of its runs retrained by hand with another beta: the sweep refuses it
    (one line), and with --overwrite retrains that run as planned, leaving the other one as it is."""
    sweep = ["sweep", "--beta", "1,2", *TINY, "--max-steps", "2", "--name", "rp", "--no-score", "--json"]
    for line in ok(*sweep, "--plan").stdout.splitlines():
        ok("train", *shlex.split(line)[2:], "-q")
    ok("train", *TINY, "--max-steps", "2", "--beta", "4", "--name", "rp-beta1", "--overwrite", "-q")
    words = "run 'rp-beta1' exists but was trained with beta = 4, not 1: give --overwrite"
    assert words in one_error_line(vae(*sweep))
    r = ok(*sweep, "--overwrite")
    assert [(row["run"], row["beta"], row["steps"]) for row in json.loads(r.stdout)["runs"]] == [("rp-beta1", 1.0, 2), ("rp-beta2", 2.0, 2)]
    assert "rp-beta1: trained with beta = 4, not 1: removed, to be trained as planned" in r.stderr
    progress = json.loads((tmp_path / "runs" / "sweeps" / "rp" / "progress.json").read_text())
    assert {k: [c["action"] for c in v] for k, v in progress.items()} == {"rp-beta1": ["start"]}  # rp-beta2 kept


def test_scores_are_drawn_again_after_a_prior_is_fitted(tmp_path, train_tiny, monkeypatch):
    """The score cache names the prior the samples came from: `vae fit-prior` on a scored run makes
    the next sweep score it again (from the new prior, as samples.png draws), then reuse that."""
    from vaecli.experiments import compare
    from vaecli.experiments.compare import run_row, study_run

    folder = train_tiny(tmp_path / "runs", "pr", epochs=1, max_steps=20)
    cache = tmp_path / "scores"
    cache.mkdir()
    first, _, _ = study_run(run_row(folder), score=True, n=100, device="cpu", cache=cache, pictures=False)
    ok("fit-prior", "--run", "pr", "--components", 2)
    fitted, _, _ = study_run(run_row(folder), score=True, n=100, device="cpu", cache=cache, pictures=False)
    assert fitted["fd"] != first["fd"]  # scored again, from the fitted prior
    sha = json.loads((folder / "prior.json").read_text())["tensors_sha256"]
    assert json.loads((cache / "pr.json").read_text())["key"]["prior"] == sha
    monkeypatch.setattr(compare, "_scores", lambda *a, **k: pytest.fail("the cached scores were not reused"))
    again, _, _ = study_run(run_row(folder), score=True, n=100, device="cpu", cache=cache, pictures=False)
    assert again["fd"] == fitted["fd"]


def test_seed_repeats_share_one_data_split(tmp_path):
    """`--seed` swept varies the model's seed, not the data split: every repeat gets the first seed as
    its --split-seed, so the repeats are scored on the same test images (a folder's 90/10 split)."""
    from vaecli.data import load_split
    from vaecli.runs import store as ckpt

    data = noisy_folder(tmp_path / "imgs", 40)
    args = ["--data", data, "--arch", "mlp", "--widths", "16", "--latent-dim", "2", "--batch-size", "8", "--device", "cpu",
            "--precision", "fp32", "--max-steps", "2"]  # fmt: skip
    for line in ok("sweep", "--seed", "3,4", *args, "--name", "rep", "--plan").stdout.splitlines():
        ok("train", *shlex.split(line)[2:], "-q")
    cfgs = [ckpt.read_config(tmp_path / "runs" / f"rep-seed{s}") for s in (3, 4)]
    assert [(c.train.seed, c.data.split_seed) for c in cfgs] == [(3, 3), (4, 3)]
    assert cfgs[0].data.fingerprint == cfgs[1].data.fingerprint
    tests = [load_split(c.data, "test").paths for c in cfgs]
    assert tests[0] == tests[1] and len(tests[0]) == 4
    out = json.loads(ok("sweep", "--collect", "rep", "--no-score", "--json").stdout)
    assert not any("another test split" in note for note in out["notes"]), out["notes"]


def test_split_seed_given_to_a_sweep_or_swept():
    fixed = plan_of("--seed", "0,1", "--split-seed", "7", "--max-steps", "2")
    assert [train_parses(r.args)["split_seed"] for r in fixed.runs] == [7, 7]
    assert plan_of("--beta", "1,2", "--max-steps", "2").runs[0].args.count("--split-seed") == 0  # no seeds swept: as vae train
    grid = plan_of("--seed", "0,1", "--split-seed", "0,5", "--max-steps", "2")  # a factor: repeats within each split
    assert grid.factors == ["split_seed"] and [r.name for r in grid.runs][:2] == ["s-seed0-split_seed0", "s-seed0-split_seed5"]


def test_scores_of_a_colour_run_in_mobilenet_features_or_a_note_offline(tiny_colour_run, mobilenet_weights, tmp_path, monkeypatch):
    row, cache = run_row(tiny_colour_run), tmp_path / "cache"
    cache.mkdir()
    no_download(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # offline, nothing cached: a note, no scores
    scores, notes, _ = study_run(row, score=True, n=10, cache=cache, pictures=False)
    assert scores.get("fd") is None and [n for n in notes if n.startswith("no sample scores: the MobileNetV2 weights")], notes
    assert not list(cache.iterdir())  # not cached: scored once the weights are there
    monkeypatch.setenv("TORCH_HOME", str(mobilenet_weights.parents[2]))
    scores, notes, _ = study_run(row, score=True, n=10, cache=cache, pictures=False)
    assert scores["features"] == MOBILENET and scores["fd"] > 0 and scores["samples_scored"] == 10 and not notes
    assert (cache / f"{row['run']}.json").is_file()
