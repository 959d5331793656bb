"""Images from the latent space of a trained run: `vae sample`, `interpolate`, `traverse`.

Each command parses, calls the core (:mod:`vaecli.eval.inference`, :mod:`vaecli.render.images`) and writes
through :func:`.common.write_outputs`: every output is rendered in memory first and written
atomically, so a failing command leaves no partial file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app
from .common import check_outputs, files_in, image_files, seeded_generator, split_images, stderr_console, write_outputs
from .options import (
    Fps,
    GridOutput,
    GroupTemperature,
    ModelSource,
    OptInt,
    OptInts,
    OptStr,
    Padding,
    PriorChoice,
    Scale,
    Seed,
    Split,
    Temperature,
    model_options,
    parse_group_temperature,
)

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..model.vae import VAE


@app.command("sample")
@model_options
def sample_cmd(
    n: Annotated[int, typer.Option("-n", "--num", help="Number of samples.")] = 64,
    output: GridOutput = None,
    out_dir: Annotated[OptStr, typer.Option("--out-dir", help="Also write one PNG per sample (000000.png ...).")] = None,
    temperature: Temperature = 1.0,
    group_temperature: GroupTemperature = None,
    nrow: Annotated[OptInt, typer.Option("--nrow", help="Images per grid row (default ceil(sqrt(n))).")] = None,
    padding: Padding = 2,
    scale: Scale = 1,
    prior: PriorChoice = "auto",
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Decode z drawn from the prior: the run's fitted prior when it has one (`vae fit-prior`), else the
    one it trained with (N(0, temperature^2 I): the seed's generation from noise, or its VampPrior). A
    hierarchical model draws its groups below top-down from their learned priors (--group-temperature)."""
    from ..eval.inference import check_num_samples, check_temperature, sample
    from ..render.images import default_nrow, grid_png, image_png
    from .prior import check_prior_choice, pick_prior

    check_num_samples(n)
    check_temperature(temperature)
    check_prior_choice(prior)
    if output is None and out_dir is None:
        output = "sample.png"
    check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
    groups = parse_group_temperature(group_temperature)
    model, _, folder = model_source.load()
    images = sample(model, n, temperature, seeded_generator(seed), pick_prior(folder, prior, model).prior, groups)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        files.append((output, grid_png(images, nrow or default_nrow(n), padding, scale)))
    if out_dir is not None:
        files += files_in(out_dir, [f"{i:06d}.png" for i in range(n)], [image_png(img, scale) for img in images])
    write_outputs(files)


@app.command("interpolate")
@model_options
def interpolate_cmd(
    a: Annotated[OptStr, typer.Argument(help="First image file.")] = None,
    b: Annotated[OptStr, typer.Argument(help="Second image file.")] = None,
    index: Annotated[
        OptInts, typer.Option("--index", help="Instead of A B: two image indices of the run's --split (repeat twice).")
    ] = None,
    split: Split = "test",
    steps: Annotated[int, typer.Option("--steps", help="Interpolation points, both ends included.")] = 8,
    mode: Annotated[str, typer.Option("--mode", help="lerp (straight line) | slerp (great circle).")] = "lerp",
    output: GridOutput = None,
    gif: Annotated[OptStr, typer.Option("--gif", help="Also write an animated GIF of the interpolation.")] = None,
    fps: Fps = 8.0,
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
) -> None:
    """One row: original A, decoded posterior-mean interpolation (STEPS), original B (seed Figs. 6-7)."""
    import torch

    from ..errors import ConfigError
    from ..eval.inference import check_mode, check_steps, decode, encode, interpolate_latents
    from ..render.images import gif_bytes, gif_frames, grid_png

    if index and (a is not None or b is not None):
        raise ConfigError("give two images A B or two --index values, not both")
    if not index and (a is None or b is None):
        raise ConfigError("give two images A B (or --index i --index j)")
    if index and len(index) != 2:
        raise ConfigError(f"give --index exactly twice, got {len(index)}")
    if output is None and gif is None:
        output = "interpolate.png"
    check_mode(mode)
    check_steps(steps)
    check_outputs(output, gif=gif, padding=padding)
    model, cfg, _ = model_source.load()
    if index:
        x = split_images(cfg, split, list(index))
    else:
        assert a is not None and b is not None
        x = image_files([a, b], cfg)
    mu = encode(model, x).mean
    frames = decode(model, interpolate_latents(mu[0], mu[1], steps, mode))
    files: list[tuple[str, bytes]] = []
    if output is not None:
        row = torch.cat([x[:1], frames, x[1:2]])
        files.append((output, grid_png(row, row.shape[0], padding, scale)))
    if gif is not None:
        files.append((gif, gif_bytes(gif_frames(frames, scale), fps)))
    write_outputs(files)


def _per_dim_kl(model: VAE, cfg: RunConfig, folder: Path, seed: int) -> list[float]:
    """Per-dimension KL on the test split: from summary.json when training stored it, else computed."""
    from ..data import load_split
    from ..eval.metrics import latent_stats
    from ..runs import store as ckpt

    kl, _, _ = latent_stats(model, ckpt.read_summary(folder), lambda: load_split(cfg.data, "test"), seed=seed)
    return kl or []


@app.command("traverse")
@model_options
def traverse_cmd(
    dim: Annotated[OptInts, typer.Option("--dim", help="Latent dimension to sweep (repeatable; default: all, ordered by KL).")] = None,
    top: Annotated[OptInt, typer.Option("--top", help="Without --dim: the N dimensions of highest KL only (default: all).")] = None,
    value_range: Annotated[float, typer.Option("--range", help="Sweep each dimension from -RANGE to +RANGE prior sigmas.")] = 3.0,
    steps: Annotated[int, typer.Option("--steps", help="Values per sweep (columns).")] = 11,
    image: Annotated[OptStr, typer.Option("--image", help="Base point: the posterior mean of this image (default z = 0).")] = None,
    index: Annotated[OptInt, typer.Option("--index", help="Base point: the posterior mean of image INDEX of --split.")] = None,
    split: Split = "test",
    output: GridOutput = None,
    gif: Annotated[OptStr, typer.Option("--gif", help="Also write a GIF animating the sweep (all rows at once).")] = None,
    fps: Fps = 8.0,
    labels: Annotated[bool, typer.Option("--labels/--no-labels", help="Label rows with dimension and KL, columns with values.")] = True,
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Latent traversals: one row per dimension, swept from -RANGE to +RANGE (disentanglement analysis)."""
    import torch

    from ..errors import ConfigError, DataError
    from ..eval.inference import check_dims, decode, dims_by_kl, encode, traversal_values, traverse_latents
    from ..render.images import gif_bytes, traversal_frames, traversal_png

    if image is not None and index is not None:
        raise ConfigError("give --image or --index, not both")
    if top is not None and (top < 1 or dim):
        raise ConfigError("--top takes a whole number >= 1, and goes without --dim" if not dim else "give --dim or --top, not both")
    if output is None and gif is None:
        output = "traverse.png"
    values = traversal_values(value_range, steps)  # checks --range and --steps before any work
    check_outputs(output, gif=gif, padding=padding)
    model, cfg, folder = model_source.load()
    d = cfg.model.latent_dim
    dims = list(dict.fromkeys(dim or []))
    check_dims(dims, d)
    try:
        kl: list[float] | None = _per_dim_kl(model, cfg, folder, seed)
    except DataError:
        if not dims:
            raise
        kl = None  # explicit --dim: rows need no ordering, labels go without KL
    if not dims:
        assert kl is not None
        dims = dims_by_kl(kl)[:top]
    if image is not None:
        base = encode(model, image_files([image], cfg)).mean[0]
    elif index is not None:
        base = encode(model, split_images(cfg, split, [index])).mean[0]
    else:
        base = torch.zeros(d)
    images = decode(model, traverse_latents(base, dims, value_range, steps, model.prior.marginal_std()))
    row_labels = [f"z{j}" + (f"  KL {kl[j]:.2f}" if kl is not None else "") for j in dims]
    stderr_console().print("rows (top to bottom): " + ", ".join(row_labels), highlight=False, soft_wrap=True)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        files.append((output, traversal_png(images, values.tolist(), padding, scale, row_labels if labels else None)))
    if gif is not None:
        files.append((gif, gif_bytes(traversal_frames(images, steps, padding, scale), fps)))
    write_outputs(files)
