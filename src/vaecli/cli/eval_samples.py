"""`vae eval-samples`: sample quality as numbers (Fréchet distance, KID, precision/recall) in a named feature space."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import app
from .common import check_positive, fmt, print_json, stderr_console, stdout_console
from .options import GroupTemperature, Json, ModelSource, PriorChoice, Seed, Split, Temperature, model_options, parse_group_temperature

N_DEFAULT = 10_000
N_MIN = 10  # a covariance and 3 nearest neighbours need a few points


def _check(n: int, temperature: float, split: str, features: str) -> None:
    """Refuse bad options before any work (one line, exit 2)."""
    from ..data import check_split
    from ..errors import ConfigError
    from ..eval.features import FEATURES

    check_positive("-n", n, N_MIN)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"--temperature must be a finite number > 0, got {temperature}")
    check_split(split)
    if features != "auto" and features not in FEATURES:
        raise ConfigError(f"--features must be auto, {' or '.join(FEATURES)}, got {features!r}")


def score_run(model: Any, cfg: Any, folder: Path, *, n: int = N_DEFAULT, split: str = "test", temperature: float = 1.0,
              seed: int = 0, features: str = "auto", prior: str = "auto",
              group_temperature: list[float] | None = None) -> dict[str, Any]:  # fmt: skip
    """The scores of one loaded run as the JSON object of `vae eval-samples --json`.

    The real side is the run's ``split`` on its original pixels (a ``--binarize`` run is compared with
    the grayscale images its decoder means estimate); ``n`` above the split's size is clamped, with a note.
    Samples come from ``prior`` (see :func:`vaecli.runs.priors.load_prior`). The memorisation check measures
    distances to the training split (the images the model was fitted on), against the compared images
    (against the test split when ``split`` is train)."""
    from ..eval.features import default_features
    from ..eval.fidelity import evaluate_run
    from .prior import check_prior_choice, pick_prior

    _check(n, temperature, split, features)
    check_prior_choice(prior)
    picked = pick_prior(folder, prior, model)
    name = default_features(cfg.model.channels, cfg.model.image_size) if features == "auto" else features
    with stderr_console().status(f"scoring up to {n:,} samples and reconstructions in {name} features"):
        res = evaluate_run(model, cfg, n, split, temperature, seed, name, prior=picked.prior, memorise=True,
                           group_temperature=group_temperature)  # fmt: skip
    if res["n"] < n:
        stderr_console().print(f"note: -n {n:,} is more than the {res['n']:,} images of the {split} split: using n = {res['n']:,}",
                               highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    return {"run": folder.name, "prior": picked.to_dict(), **res}


def print_table(res: dict[str, Any], console: Any = None) -> None:
    """The scores as a rich table (samples, then reconstructions as the reference)."""
    from rich.table import Table

    from ..eval.features import INCEPTION

    console = console or stdout_console()
    t = Table(
        title=f"run {res['run']}: {res['n']:,} images vs the {res['split']} split, {res['features']} features ({res['feature_dim']}-d)"
    )
    t.add_column("", justify="left", no_wrap=True)
    for col in ("FD (lower is better)", "KID ± std", "precision", "recall"):
        t.add_column(col, justify="right")
    t.add_column("mem. ratio", justify="right")
    mem = res.get("memorisation") if isinstance(res.get("memorisation"), dict) else None
    rows = [(f"samples (T = {res['temperature']:g})", res, fmt(mem["ratio"], 3) if mem else "-")]
    if isinstance(res.get("reconstructions"), dict):
        rows.append(("reconstructions", res["reconstructions"], ""))
    for label, r, m in rows:
        t.add_row(label, fmt(r["fd"], 3), f"{fmt(r['kid'], 5)} ± {fmt(r['kid_std'], 5)}", fmt(r["precision"], 3), fmt(r["recall"], 3), m)
    console.print(t)
    prior = (res.get("prior") or {}).get("label", "N(0, I)")
    spread = "N(0, T² I)" if prior == "N(0, I)" else f"the prior {prior} (T: docs/priors.md)"
    if mem:
        console.print(
            f"Memorisation ratio (mem. ratio): median distance from a sample to its nearest training image ({mem['sample_median']:.3f}) over the same for "
            f"the {mem['held_out_images']:,} {mem['held_out_split']} images ({mem['held_out_median']:.3f}), among {mem['train_images']:,} "
            f"training images: about 1 = no nearer the training set than new images; far below 1 = copies. "
            f"{mem['closer_than_p1']:.1%} of the samples are nearer than 99% of the {mem['held_out_split']} images.",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    console.print(
        f"Samples: decoder means of z from {spread}; reconstructions: the posterior means of the same real images decoded (a reference). "
        f"Fréchet distance (Heusel et al. 2017), KID = unbiased MMD² with a cubic kernel, mean ± std over {res['kid_subsets']} subsets of "
        f"{res['kid_subset_size']:,} (Bińkowski et al. 2018), precision/recall with k = {res['k']} (Kynkäänniemi et al. 2019). "
        f"Feature space {res['features']}: "
        + ("Inception v3 pool3, as FID papers use (their n, preprocessing and splits differ)." if res["features"] == INCEPTION
           else "not comparable with Inception FIDs."),
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


@app.command("eval-samples")
@model_options
def eval_samples_cmd(
    n: Annotated[
        int, typer.Option("-n", "--num", help="Samples drawn and real images compared (clamped to the split's size).")
    ] = N_DEFAULT,
    split: Split = "test",
    temperature: Temperature = 1.0,
    group_temperature: GroupTemperature = None,
    prior: PriorChoice = "auto",
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="auto (28x28 grayscale: vaecli-fmnist-net-v1, else mobilenet-v2-imagenet) | vaecli-fmnist-net-v1 | mobilenet-v2-imagenet "
            "(torchvision's ImageNet MobileNetV2; its weights download once into $TORCH_HOME) | inception-v3-pool3 (needs torch-fidelity: "
            "the 'fid' extra of vaecli).",
        ),
    ] = "auto",
    as_json: Json = False,
    seed: Seed = 0,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Sample quality as numbers: prior samples (decoder means) vs real images of a split, in a feature space:
    Fréchet distance, KID ± std, precision and recall (k nearest neighbours, per feature space), the memorisation
    check (nearest training images); the run's reconstructions as a reference."""
    from .prior import check_prior_choice

    _check(n, temperature, split, features)
    check_prior_choice(prior)
    model, cfg, folder = model_source.load()
    res = score_run(model, cfg, folder, n=n, split=split, temperature=temperature, seed=seed, features=features, prior=prior,
                    group_temperature=parse_group_temperature(group_temperature))  # fmt: skip
    if as_json:
        print_json(res)
    else:
        print_table(res)
