"""`vae eval-kl`: the numbers of a split under a trained run, per latent dimension (KL, Var(mu),
active units) and in total (-ELBO, reconstruction, KL; with --iw-samples the importance-weighted
-log p(x) and bits/dim)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import app
from .common import check_positive, check_target, fmt, print_json
from .options import Json, ModelSource, OptBool, OptInt, OptStr, Seed, Split, model_options

if TYPE_CHECKING:
    from ..eval.metrics import EvalResult


@app.command("eval-kl")
@model_options
def eval_kl_cmd(
    split: Split = "test",
    as_json: Json = False,
    svg: Annotated[OptStr, typer.Option("--svg", help="Also save the table as an SVG image.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 500,
    iw_samples: Annotated[
        int, typer.Option("--iw-samples", help="Also estimate -log p(x) with K importance samples per image (Burda et al. 2016; 0 = off).")
    ] = 0,
    binarize: Annotated[
        OptBool,
        typer.Option(
            "--binarize/--no-binarize",
            help="Evaluate on a fixed binarisation of the split: a true likelihood (default: as the run was trained).",
        ),
    ] = None,
    limit: Annotated[OptInt, typer.Option("--limit", help="Only the first N images of the split.")] = None,
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Per-dimension KL, total KL, reconstruction, -ELBO and active units (Burda et al. 2016) over a split;
    with --iw-samples K also the importance-weighted -log p(x), its standard error and bits/dim."""
    from ..errors import ConfigError
    from ..eval.metrics import evaluate

    check_positive("--batch-size", batch_size)
    check_positive("--iw-samples", iw_samples, 0)
    check_positive("--limit", limit)
    check_target(svg, "--svg")
    if svg is not None and as_json:
        raise ConfigError("--svg saves the table: use it without --json")
    model, cfg, folder = model_source.load()
    data, use_binary = _eval_data(cfg, folder.name, split, limit, binarize)
    dev = next(model.parameters()).device
    res = evaluate(model, data, batch_size=batch_size, device=dev, seed=seed)
    out, lines = _report(res, model, folder.name, split, use_binary)
    if iw_samples:
        lines.append(_importance_weighted(out, model, data, iw_samples, min(batch_size, 100), dev, seed))
    if as_json:
        print_json(out)
        return
    _kl_table(res, folder.name, split, svg, lines)


def _eval_data(cfg: Any, run: str, split: str, limit: int | None, binarize: bool | None) -> tuple[Any, bool]:
    """The images of ``split`` (the first ``limit``), binarised as ``--binarize`` asks (default: as
    the run was trained), and whether they are binary."""
    from ..data import ImageData, binarize_fixed, load_split
    from ..errors import ConfigError

    data = load_split(cfg.data, split)
    if limit is not None:
        data = ImageData(data.images[:limit], None if data.labels is None else data.labels[:limit])
    if binarize is False and cfg.data.binarize:
        raise ConfigError(f"run {run!r} was trained on binarised pixels: drop --no-binarize")
    use_binary = cfg.data.binarize if binarize is None else binarize
    if use_binary:  # a fixed stochastic binarisation (the test split of a --binarize run already is one)
        data = binarize_fixed(data)
    return data, use_binary


def _report(res: EvalResult, model: Any, run: str, split: str, use_binary: bool) -> tuple[dict[str, Any], list[str]]:
    """The JSON output of the numbers and the lines printed below the table (units, what the KL per dimension is)."""
    label = model.likelihood.label(use_binary)
    out: dict[str, Any] = {
        "run": run,
        "split": split,
        "images": res.images,
        "neg_elbo": res.neg_elbo,
        "recon": res.recon,
        "kl": res.kl,
        "per_dim_kl": res.per_dim_kl,
        "per_dim_kl_to": "the prior's marginals" if res.per_dim_marginal else "the prior",
        "active_units": res.active_units,
        "bits_per_dim": res.bits_per_dim,
        "binarized": use_binary,
        "likelihood": label,
    }
    lines = [f"nats/image: {label}" + (f"; -ELBO = {fmt(res.bits_per_dim, 4)} bits/dim" if res.bits_per_dim is not None else "")]
    if res.group_kl:  # a hierarchical model: the table is the top latent's, its groups below
        out["groups"] = _groups(res, model)
        parts = [f"top latent {fmt(sum(res.per_dim_kl), 2)} nats ({res.active_units}/{len(res.per_dim_kl)} active)"]
        parts += [
            f"group {i + 1} ({g['shape']}) {fmt(g['kl'], 2)} nats ({g['active_units']}/{g['dims']} active)"
            for i, g in enumerate(out["groups"])
        ]
        lines.append("KL per group, top down: " + "; ".join(parts) + " (the table below is the top latent's)")
    if res.per_dim_marginal:
        lines.append(
            f"KL per dimension: to each marginal of the {model.prior.kind} prior, which does not factorise "
            "(the dimensions do not add up to the total KL, a one-sample estimate log q(z|x) - log p(z))"
        )
    return out, lines


def _groups(res: EvalResult, model: Any) -> list[dict[str, Any]]:
    """A hierarchical model's groups below the top latent, deepest first: shape, KL (nats/image), active units."""
    shapes = model.group_shapes()
    return [
        {"shape": "x".join(map(str, shape)), "dims": shape[0] * shape[1] * shape[2], "kl": kl, "active_units": active}
        for shape, kl, active in zip(shapes, res.group_kl, res.group_active_units)
    ]


def _importance_weighted(out: dict[str, Any], model: Any, data: Any, k: int, batch_size: int, dev: Any, seed: int) -> str:
    """``--iw-samples K``: the importance-weighted -log p(x) into ``out``; returns its line."""
    import torch

    from ..eval.metrics import iw_nll

    gen = torch.Generator(device=dev).manual_seed(seed)
    iw = iw_nll(model, data, k=k, batch_size=batch_size, device=dev, generator=gen)
    out.update({"iw_samples": iw.k, "iw_nll": iw.iw_nll, "iw_nll_stderr": iw.iw_nll_stderr, "iw_bits_per_dim": iw.bits_per_dim})
    bpd = f", {fmt(iw.bits_per_dim, 4)} bits/dim" if iw.bits_per_dim is not None else " (no bits/dim: not a likelihood of discrete pixels)"
    return (
        f"importance-weighted -log p(x) <= {fmt(iw.iw_nll)} ± {fmt(iw.iw_nll_stderr)} nats/image "
        f"(k = {iw.k}, Burda et al. 2016; ± standard error over images){bpd}"
    )


_PARTIAL = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]


def _kl_table(res: EvalResult, name: str, split: str, svg: str | None = None, extra: list[str] | None = None) -> None:
    from rich.table import Table

    from ..eval.inference import dims_by_kl
    from ..eval.metrics import ACTIVE_THRESHOLD, active_mask

    kl = res.per_dim_kl
    top = max(kl, default=0.0) or 1.0
    width = 24
    t = Table(title=f"run {name}: KL per latent dimension, {split} split ({res.images:,} images)")
    for col in ("dim", "KL", "", "share", "Var(mu)", "active"):
        t.add_column(col, justify="left" if col == "" else "center" if col == "active" else "right")
    total = res.kl if res.kl > 0 else 1.0
    active = active_mask(res.mu_variance)
    for j in dims_by_kl(kl):
        var = res.mu_variance[j] if j < len(res.mu_variance) else float("nan")
        on = j < len(active) and active[j]
        eighths = round(max(kl[j], 0.0) / top * width * 8)
        bar = "█" * (eighths // 8) + _PARTIAL[eighths % 8]
        share = "" if res.per_dim_marginal else f"{kl[j] / total:.1%}"
        t.add_row(str(j), fmt(kl[j], 3), f"[{'cyan' if on else 'grey50'}]{bar}[/]", share, fmt(var, 3), "yes" if on else "-")
    from rich.console import Console

    console = Console(record=svg is not None)
    console.print(t)
    console.print(
        f"-ELBO {fmt(res.neg_elbo)} = recon {fmt(res.recon)} + KL {fmt(res.kl)} nats/image; "
        f"active units {res.active_units}/{len(kl)} (Burda et al. 2016: Cov_x(E_q[z_j]) > {ACTIVE_THRESHOLD:g})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for line in extra or []:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if svg is not None:
        from ..fileio import atomic_write_text

        atomic_write_text(Path(svg).expanduser(), console.export_svg(title=f"vae eval-kl --run {name}"))
