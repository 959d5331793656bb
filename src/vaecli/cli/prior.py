"""`vae fit-prior`: fit a prior to where the encoder puts the training images (vaecli.train.fit_prior, vaecli.runs.priors), and
the one-line choice of prior that sampling commands share (``--prior``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import app
from .common import fmt, print_json, stderr_console, stdout_console
from .options import Json, ModelSource, Seed, model_options


def pick_prior(folder: Path, choice: str, model: Any) -> Any:
    """The :class:`vaecli.runs.priors.PriorChoice` for ``--prior``; its note (if any) goes to stderr as one line."""
    from ..runs.priors import load_prior

    picked = load_prior(folder, choice, model)
    if picked.note:
        stderr_console().print(f"note: {picked.note}", highlight=False, markup=False, soft_wrap=True)
    return picked


def check_prior_choice(choice: str) -> None:
    """Refuse a bad ``--prior`` before any work."""
    from ..errors import ConfigError
    from ..runs.priors import CHOICES

    if choice not in CHOICES:
        raise ConfigError(f"--prior must be {', '.join(CHOICES)}, got {choice!r}")


def fit_and_store(
    model: Any, cfg: Any, folder: Path, weights: Path, kind: str, components: int | None, fit_on: str | None, seed: int
) -> Any:
    """Fit (with a spinner and result lines on stderr) and store the prior in the run folder; returns the FitResult."""
    from ..runs import store as ckpt
    from ..runs.priors import save_prior
    from ..train.fit_prior import fit_prior

    ckpt.check_writable(folder, "a fitted prior")  # before any work
    err = stderr_console()
    with err.status(f"fitting a {kind} prior to run {folder.name}") as status:

        def report(msg: str, final: bool) -> None:
            if final:
                err.print(msg, highlight=False, markup=False)
            else:
                status.update(msg)

        result = fit_prior(model, cfg.data, kind, components, fit_on, seed, report)
        status.update("storing the prior")
        save_prior(folder, result, weights)
    return result


def print_fit(folder: Path, info: dict[str, Any], console: Any = None) -> None:
    """What was fitted, on what, and its held-out log-likelihood beside N(0, I)'s."""
    from rich.table import Table

    from ..runs.priors import PRIOR_JSON, describe

    console = console or stdout_console()
    fo, val, sc = info["fitted_on"], info["validation"], info["scores"]
    t = Table(title=f"run {folder.name}: {describe(info)}")
    t.add_column("held-out split", justify="left")
    t.add_column("images", justify="right")
    t.add_column("log p(z), fitted prior", justify="right")
    t.add_column("log p(z), N(0, I)", justify="right")
    for name in ("val", "test"):
        s = sc[name]
        t.add_row(name, f"{s['images']:,}", fmt(s["log_likelihood"], 3), fmt(s["normal_log_likelihood"], 3))
    console.print(t)
    console.print(
        f"Fitted to {fo['description']} of the {fo['images']:,} training images; chosen by {info['chosen']['by']} on "
        f"{val['source']}; the test split only reports. Units: {sc['unit']} (higher is better). "
        f"{info['seconds']:.1f} s. Stored in {folder / PRIOR_JSON}; `vae sample` now draws from it (--prior normal for N(0, I)).",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


def _weights(model_source: ModelSource, folder: Path) -> Path:
    from ..runs import store as ckpt

    if model_source.checkpoint is not None and Path(model_source.checkpoint).expanduser().is_file():
        return Path(model_source.checkpoint).expanduser()
    return folder / ckpt.MODEL


@app.command("fit-prior")
@model_options
def fit_prior_cmd(
    kind: str = typer.Option("gmm", "--kind", help="gmm (full-covariance Gaussian mixture, EM) | flow (RealNVP, Adam)."),
    components: Optional[int] = typer.Option(  # noqa: UP045 - Typer reads it at run time on Python 3.10
        None,
        "--components",
        help="gmm: number of components (default: chosen by validation log-likelihood among 1, 2, 5, 10, 20, 50, 100).",
    ),
    fit_on: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--fit-on",
        help="draws (one z ~ q(z|x) per training image: the aggregate posterior; default, measured better) | means (posterior means).",
    ),
    as_json: Json = False,
    seed: Seed = 0,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Fit a prior to the run's encoded training images and store it in the run (prior.safetensors +
    prior.json): `vae sample`, `eval-samples` and `explore` then draw from it. The validation split
    chooses, the test split reports log p(z) beside N(0, I)'s (docs/priors.md)."""
    from ..train.fit_prior import check_fit_options

    check_fit_options(kind, components, fit_on)
    model, cfg, folder = model_source.load()
    result = fit_and_store(model, cfg, folder, _weights(model_source, folder), kind, components, fit_on, seed)
    if as_json:
        print_json({"run": folder.name, **result.info})
    else:
        print_fit(folder, result.info)
