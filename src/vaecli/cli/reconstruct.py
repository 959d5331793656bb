"""Images through a trained run's encoder and decoder: `vae reconstruct`, `encode`, `decode`.

Each command parses, calls the core (:mod:`vaecli.eval.inference`, :mod:`vaecli.eval.metrics`,
:mod:`vaecli.render.images`, :mod:`vaecli.eval.latents`) and writes through :func:`.common.write_outputs`:
every output is rendered in memory first and written atomically, so a failing command leaves no
partial file behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import check_outputs, check_target, files_in, print_json, read_inputs, seeded_generator, write_outputs
from .options import AlsoGrid, GridOutput, InputN, Inputs, InputSplit, ModelSource, OptInt, OptStr, Padding, Scale, Seed, model_options


@app.command("reconstruct")
@model_options
def reconstruct_cmd(
    inputs: Inputs = None,
    split: InputSplit = None,
    n: InputN = 16,
    output: GridOutput = None,
    out_dir: Annotated[OptStr, typer.Option("--out-dir", help="Write each reconstruction under the input's relative path (.png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='One line per image: {"path", "neg_elbo", "recon", "kl"}.')] = False,
    nrow: Annotated[
        OptInt, typer.Option("--nrow", help="Images per grid row (default min(n, 8)); originals above reconstructions.")
    ] = None,
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Decode the posterior mean of each input (the likelihood's mean, never thresholded)."""
    import torch

    from ..errors import ConfigError
    from ..eval.inference import reconstruct
    from ..eval.metrics import elbo_per_image
    from ..render.images import image_png, pairs_png

    if output is None and out_dir is None and not as_json:
        output = "reconstruct.png"
    if as_json and output == "-":
        raise ConfigError("--json and -o - both write to stdout: give -o a file name")
    check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
    model, cfg, _ = model_source.load()
    x, paths, names = read_inputs(inputs, split, n, cfg)
    recon = reconstruct(model, x)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        files.append((output, pairs_png(x, recon, nrow or min(len(x), 8), padding, scale)))
    if out_dir is not None:
        files += files_in(out_dir, names, [image_png(img, scale) for img in recon])
    lines = []
    if as_json:
        from ..data import ImageData, binarize_fixed, to_float

        xs = to_float(binarize_fixed(ImageData(images=(x * 255).round().to(torch.uint8))).images) if cfg.data.binarize else x
        rec_nll, kl = elbo_per_image(model, xs, seeded_generator(seed))  # a --binarize run scores binary pixels
        for p, r, k in zip(paths, rec_nll.tolist(), kl.tolist()):
            lines.append({"path": p, "neg_elbo": r + k, "recon": r, "kl": k})
    write_outputs(files)
    for row in lines:
        print_json(row)


@app.command("encode")
@model_options
def encode_cmd(
    inputs: Inputs = None,
    split: InputSplit = None,
    n: InputN = 16,
    output: Annotated[OptStr, typer.Option("--output", "-o", help="Write the JSON lines to this file (default stdout).")] = None,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Posterior parameters of each image as JSON lines: {"path", "mu": [...], "logvar": [...]}."""
    from ..eval.inference import encode
    from ..eval.latents import format_lines
    from ..fileio import atomic_write_text

    check_target(output)
    model, cfg, _ = model_source.load()
    x, paths, _names = read_inputs(inputs, split, n, cfg)
    q = encode(model, x)
    text = format_lines(paths, q.mu, q.logvar)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(Path(output).expanduser(), text)


@app.command("decode")
@model_options
def decode_cmd(
    source: Annotated[str, typer.Argument(help="JSON lines from `vae encode` (or lists of floats); - = stdin.")] = "-",
    out_dir: Annotated[OptStr, typer.Option("--out-dir", help='Write one PNG per line (named after "path", else 000000.png ...).')] = None,
    output: AlsoGrid = None,
    nrow: Annotated[OptInt, typer.Option("--nrow", help="Images per grid row for -o (default ceil(sqrt(n))).")] = None,
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Decode latent vectors (the "mu" of each JSON line) to images."""
    from ..errors import ConfigError, DataError
    from ..eval.inference import decode
    from ..eval.latents import parse_lines
    from ..render.images import default_nrow, grid_png, image_png, output_name

    if out_dir is None and output is None:
        raise ConfigError("nothing to write: give --out-dir DIR and/or -o grid.png (or -o -)")
    check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
    model, cfg, _ = model_source.load()
    if source == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        try:
            text, where = Path(source).expanduser().read_text("utf-8"), source
        except FileNotFoundError:
            raise DataError(f"{source}: no such file") from None
        except UnicodeDecodeError:
            raise DataError(f"{source}: not a UTF-8 text file") from None
    z, paths = parse_lines(text, cfg.model.latent_dim, where)
    images = decode(model, z)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        files.append((output, grid_png(images, nrow or default_nrow(len(images)), padding, scale)))
    if out_dir is not None:
        names = [output_name(p, f"{i:06d}") if p is not None else f"{i:06d}.png" for i, p in enumerate(paths)]
        files += files_in(out_dir, names, [image_png(img, scale) for img in images])
    write_outputs(files)
