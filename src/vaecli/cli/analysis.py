"""Studying a trained run: `vae sample`, `reconstruct`, `interpolate`, `traverse`, `eval-kl`, `encode`, `decode`.

Each command parses, calls the core (:mod:`vaecli.inference`, :mod:`vaecli.metrics`,
:mod:`vaecli.images`, :mod:`vaecli.latents`) and writes. Every output is rendered in memory
first and written atomically, so a failing command leaves no partial file behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from .app import app
from .common import fmt, print_json, stderr_console
from .options import (
    AlsoGrid,
    Fps,
    GridOutput,
    InputN,
    InputSplit,
    Json,
    ModelSource,
    Padding,
    PriorChoice,
    Scale,
    Seed,
    Split,
    model_options,
)

# ----------------------------------------------------------------------------- helpers


def _generator(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def _split_data(cfg: Any, split: str) -> Any:
    """One split of the run's dataset, train, val or test (loaded from what is on disk; nothing is downloaded)."""
    from ..data import load_split

    return load_split(cfg.data, split)


def _split_images(cfg: Any, split: str, indices: list[int]) -> Any:
    from ..data import to_float
    from ..errors import ConfigError

    data = _split_data(cfg, split)
    for i in indices:
        if not 0 <= i < len(data):
            raise ConfigError(f"--index {i} is out of range: the {split} split has images 0..{len(data) - 1}")
    return to_float(data.images[indices])


def _check_target(path: str | None, what: str = "-o") -> None:
    from ..errors import ConfigError

    if path is None or path == "-":
        return
    if not path.strip():
        raise ConfigError(f"{what} must not be empty")
    if Path(path).expanduser().is_dir():
        raise ConfigError(f"{what} {path} is a folder (give a file name)")


def _check_out_dir(path: str | None) -> None:
    from ..errors import ConfigError

    if path is not None and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise ConfigError(f"--out-dir {path} exists and is not a folder")


def _check_outputs(
    output: str | None, *, out_dir: str | None = None, gif: str | None = None, nrow: int | None = None, padding: int = 0
) -> None:
    """Refuse bad output options before any work: grid layout numbers, -o, --gif and --out-dir targets."""
    from .common import check_positive

    check_positive("--nrow", nrow)
    check_positive("--padding", padding, 0)
    _check_target(output)
    _check_target(gif, "--gif")
    _check_out_dir(out_dir)


def _stdout_binary(data: bytes) -> None:
    from ..errors import ConfigError

    if sys.stdout.isatty():
        raise ConfigError("refusing to write PNG bytes to a terminal: redirect stdout or give -o FILE")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _write_all(files: list[tuple[str, bytes]]) -> None:
    """Write rendered outputs: '-' goes to stdout, files atomically (temp + fsync + rename)."""
    from ..fileio import atomic_write_bytes

    written = []
    for target, data in files:
        if target == "-":
            _stdout_binary(data)
        else:
            written.append(atomic_write_bytes(Path(target).expanduser(), data))
    if written:
        shown = ", ".join(str(w) for w in written[:3])
        more = f" and {len(written) - 3} more" if len(written) > 3 else ""
        stderr_console().print(f"wrote {shown}{more}", highlight=False, markup=False, soft_wrap=True)


def _dir_files(out_dir: str, names: list[Any], pngs: list[bytes]) -> list[tuple[str, bytes]]:
    from ..images import check_unique

    check_unique(names)
    return [(str(Path(out_dir).expanduser() / n), b) for n, b in zip(names, pngs)]


def _inputs(inputs: list[str] | None, split: str | None, n: int, cfg: Any) -> tuple[Any, list[str], list[Any]]:
    """Float images (N, C, H, W), display paths and output names from INPUTS or --split/-n."""
    from ..data import to_float
    from ..errors import ConfigError
    from ..images import collect_inputs, load_inputs, output_name
    from .common import check_positive

    if split is not None:
        if inputs:
            raise ConfigError("give INPUTS or --split, not both")
        check_positive("-n", n)
        data = _split_data(cfg, split)
        if len(data) == 0:
            raise ConfigError(f"the {split} split is empty")
        k = min(n, len(data))
        paths = [f"{split}/{i:05d}" for i in range(k)]
        return to_float(data.images[:k]), paths, [output_name(p, "image") for p in paths]
    if not inputs:
        raise ConfigError("no inputs: give image files, folders, - (paths on stdin) or --split test")
    items = collect_inputs(inputs)
    images = load_inputs(items, cfg.model.channels, cfg.model.image_size, cfg.data.fit)
    return to_float(images), [str(it.path) for it in items], [it.rel for it in items]


def _gif_frames(images: Any, scale: int) -> list[Any]:
    from ..images import to_pil, upscale

    return [to_pil(img) for img in upscale(images, scale)]


# ----------------------------------------------------------------------------- sample


@app.command("sample")
@model_options
def sample_cmd(
    n: int = typer.Option(64, "-n", "--num", help="Number of samples."),
    output: GridOutput = None,
    out_dir: str = typer.Option(None, "--out-dir", help="Also write one PNG per sample (000000.png ...)."),
    temperature: float = typer.Option(
        1.0,
        "--temperature",
        "-t",
        help="Spread of the prior (1 = the prior itself): N(0, T² I); gmm: covariances x T²; flow: base noise x T.",
    ),
    nrow: int = typer.Option(None, "--nrow", help="Images per grid row (default ceil(sqrt(n)))."),
    padding: Padding = 2,
    scale: Scale = 1,
    prior: PriorChoice = "auto",
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Decode z drawn from the prior: the run's fitted prior when it has one (`vae fit-prior`), else
    N(0, temperature^2 I), the seed's generation from noise."""
    from ..images import default_nrow, grid_png, image_png
    from ..inference import decode, sample_latents
    from .common import check_positive
    from .prior import check_prior_choice, pick_prior

    check_positive("-n", n)
    check_prior_choice(prior)
    if output is None and out_dir is None:
        output = "sample.png"
    _check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
    model, cfg, folder = model_source.load()
    z = sample_latents(pick_prior(folder, prior, model).prior, n, temperature, _generator(seed))
    images = decode(model, z)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        files.append((output, grid_png(images, nrow or default_nrow(n), padding, scale)))
    if out_dir is not None:
        files += _dir_files(out_dir, [f"{i:06d}.png" for i in range(n)], [image_png(img, scale) for img in images])
    _write_all(files)


# ----------------------------------------------------------------------------- reconstruct


@app.command("reconstruct")
@model_options
def reconstruct_cmd(
    inputs: list[str] = typer.Argument(None, help="Image files, folders (recursive), or - (paths on stdin)."),
    split: InputSplit = None,
    n: InputN = 16,
    output: GridOutput = None,
    out_dir: str = typer.Option(None, "--out-dir", help="Write each reconstruction under the input's relative path (.png)."),
    as_json: bool = typer.Option(False, "--json", help='One line per image: {"path", "neg_elbo", "recon", "kl"}.'),
    nrow: int = typer.Option(None, "--nrow", help="Images per grid row (default min(n, 8)); originals above reconstructions."),
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Decode the posterior mean of each input (the likelihood's mean, never thresholded)."""
    import torch

    from ..errors import ConfigError
    from ..images import grid_png, image_png
    from ..inference import reconstruct
    from ..metrics import elbo_per_image

    if output is None and out_dir is None and not as_json:
        output = "reconstruct.png"
    if as_json and output == "-":
        raise ConfigError("--json and -o - both write to stdout: give -o a file name")
    _check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
    model, cfg, _ = model_source.load()
    x, paths, names = _inputs(inputs, split, n, cfg)
    recon = reconstruct(model, x)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        k = nrow or min(len(x), 8)
        tiles = []
        for i in range(0, len(x), k):
            orig, rec = x[i : i + k], recon[i : i + k]
            if orig.shape[0] < k:  # keep originals and reconstructions aligned in the last row pair
                pad = torch.zeros((k - orig.shape[0], *orig.shape[1:]))
                orig, rec = torch.cat([orig, pad]), torch.cat([rec, pad])
            tiles += [orig, rec]
        files.append((output, grid_png(torch.cat(tiles), k, padding, scale)))
    if out_dir is not None:
        files += _dir_files(out_dir, names, [image_png(img, scale) for img in recon])
    lines = []
    if as_json:
        from ..data import ImageData, binarize_fixed, to_float

        xs = to_float(binarize_fixed(ImageData(images=(x * 255).round().to(torch.uint8))).images) if cfg.data.binarize else x
        rec_nll, kl = elbo_per_image(model, xs, _generator(seed))  # a --binarize run scores binary pixels
        for p, r, k in zip(paths, rec_nll.tolist(), kl.tolist()):
            lines.append({"path": p, "neg_elbo": r + k, "recon": r, "kl": k})
    _write_all(files)
    for row in lines:
        print_json(row)


# ----------------------------------------------------------------------------- interpolate


@app.command("interpolate")
@model_options
def interpolate_cmd(
    a: str = typer.Argument(None, help="First image file."),
    b: str = typer.Argument(None, help="Second image file."),
    index: list[int] = typer.Option(None, "--index", help="Instead of A B: two image indices of the run's --split (repeat twice)."),
    split: Split = "test",
    steps: int = typer.Option(8, "--steps", help="Interpolation points, both ends included."),
    mode: str = typer.Option("lerp", "--mode", help="lerp (straight line) | slerp (great circle)."),
    output: GridOutput = None,
    gif: str = typer.Option(None, "--gif", help="Also write an animated GIF of the interpolation."),
    fps: Fps = 8.0,
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
) -> None:
    """One row: original A, decoded posterior-mean interpolation (STEPS), original B (seed Figs. 6-7)."""
    import torch

    from ..data import to_float
    from ..errors import ConfigError
    from ..images import InputImage, gif_bytes, grid_png, load_inputs
    from ..inference import decode, encode, interpolate_latents
    from .common import check_positive

    if index and (a is not None or b is not None):
        raise ConfigError("give two images A B or two --index values, not both")
    if not index and (a is None or b is None):
        raise ConfigError("give two images A B (or --index i --index j)")
    if index and len(index) != 2:
        raise ConfigError(f"give --index exactly twice, got {len(index)}")
    if output is None and gif is None:
        output = "interpolate.png"
    if mode not in ("lerp", "slerp"):
        raise ConfigError(f"--mode must be lerp or slerp, got {mode!r}")
    check_positive("--steps", steps, 2)
    _check_outputs(output, gif=gif, padding=padding)
    model, cfg, _ = model_source.load()
    if index:
        x = _split_images(cfg, split, list(index))
    else:
        items = [InputImage(Path(p).expanduser(), Path(p)) for p in (a, b)]
        x = to_float(load_inputs(items, cfg.model.channels, cfg.model.image_size, cfg.data.fit))
    mu, _ = encode(model, x)
    z = interpolate_latents(mu[0], mu[1], steps, mode)
    frames = decode(model, z)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        row = torch.cat([x[:1], frames, x[1:2]])
        files.append((output, grid_png(row, row.shape[0], padding, scale)))
    if gif is not None:
        files.append((gif, gif_bytes(_gif_frames(frames, max(scale, 4)), fps)))
    _write_all(files)


# ----------------------------------------------------------------------------- traverse


def _per_dim_kl(model: Any, cfg: Any, folder: Path, seed: int) -> list[float]:
    """Per-dimension KL on the test split: from summary.json when training stored it, else computed."""
    from .. import checkpoint as ckpt
    from ..metrics import latent_stats

    kl, _, _ = latent_stats(model, ckpt.read_summary(folder), lambda: _split_data(cfg, "test"), seed=seed)
    return kl or []


@app.command("traverse")
@model_options
def traverse_cmd(
    dim: list[int] = typer.Option(None, "--dim", help="Latent dimension to sweep (repeatable; default: all, ordered by KL)."),
    value_range: float = typer.Option(3.0, "--range", help="Sweep each dimension from -RANGE to +RANGE prior sigmas."),
    steps: int = typer.Option(11, "--steps", help="Values per sweep (columns)."),
    image: str = typer.Option(None, "--image", help="Base point: the posterior mean of this image (default z = 0)."),
    index: int = typer.Option(None, "--index", help="Base point: the posterior mean of image INDEX of --split."),
    split: Split = "test",
    output: GridOutput = None,
    gif: str = typer.Option(None, "--gif", help="Also write a GIF animating the sweep (all rows at once)."),
    fps: Fps = 8.0,
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Label rows with dimension and KL, columns with values."),
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Latent traversals: one row per dimension, swept from -RANGE to +RANGE (disentanglement analysis)."""
    import torch

    from ..data import to_float
    from ..errors import ConfigError, DataError
    from ..images import InputImage, gif_bytes, grid, label_grid, load_inputs, png_bytes
    from ..inference import decode, dims_by_kl, encode, traverse_latents
    from .common import check_positive

    if image is not None and index is not None:
        raise ConfigError("give --image or --index, not both")
    if output is None and gif is None:
        output = "traverse.png"
    check_positive("--steps", steps, 2)
    _check_outputs(output, gif=gif, padding=padding)
    model, cfg, folder = model_source.load()
    d = cfg.model.latent_dim
    dims = list(dict.fromkeys(dim or []))
    for j in dims:
        if not 0 <= j < d:
            raise ConfigError(f"--dim {j} is out of range: the model has latent dims 0..{d - 1}")
    traverse_latents(torch.zeros(d), dims, value_range, steps)  # validates --range / --steps before any work
    try:
        kl: list[float] | None = _per_dim_kl(model, cfg, folder, seed)
    except DataError:
        if not dims:
            raise
        kl = None  # explicit --dim: rows need no ordering, labels go without KL
    if not dims:
        assert kl is not None
        dims = dims_by_kl(kl)
    if image is not None:
        x = to_float(
            load_inputs([InputImage(Path(image).expanduser(), Path(image))], cfg.model.channels, cfg.model.image_size, cfg.data.fit)
        )
        base = encode(model, x)[0][0]
    elif index is not None:
        base = encode(model, _split_images(cfg, split, [index]))[0][0]
    else:
        base = torch.zeros(d)
    z = traverse_latents(base, dims, value_range, steps)
    images = decode(model, z)
    row_labels = [f"z{j}" + (f"  KL {kl[j]:.2f}" if kl is not None else "") for j in dims]
    stderr_console().print("rows (top to bottom): " + ", ".join(row_labels), highlight=False, soft_wrap=True)
    files: list[tuple[str, bytes]] = []
    if output is not None:
        img = grid(images, steps, padding, scale)
        if labels:
            values = torch.linspace(-value_range, value_range, steps).tolist()
            shown = set(range(steps)) if steps <= 7 else {0, steps // 2, steps - 1}
            cols = [("0" if abs(v) < 1e-6 else f"{v:+.1f}") if i in shown else "" for i, v in enumerate(values)]
            img = label_grid(img, row_labels, cfg.model.image_size * scale, padding, cols)
        files.append((output, png_bytes(img)))
    if gif is not None:
        k = len(dims)
        per_step = images.reshape(k, steps, *images.shape[1:]).transpose(0, 1)  # (steps, dims, C, H, W)
        ncol = max(1, min(k, 8))
        frames = [grid(per_step[t], ncol, padding, max(scale, 2)) for t in range(steps)]
        files.append((gif, gif_bytes(frames, fps)))
    _write_all(files)


# ----------------------------------------------------------------------------- eval-kl


@app.command("eval-kl")
@model_options
def eval_kl_cmd(
    split: Split = "test",
    as_json: Json = False,
    svg: str = typer.Option(None, "--svg", help="Also save the table as an SVG image."),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per forward pass."),
    iw_samples: int = typer.Option(
        0, "--iw-samples", help="Also estimate -log p(x) with K importance samples per image (Burda et al. 2016; 0 = off)."
    ),
    binarize: bool = typer.Option(
        None,
        "--binarize/--no-binarize",
        help="Evaluate on a fixed binarisation of the split: a true likelihood (default: as the run was trained).",
    ),
    limit: int = typer.Option(None, "--limit", help="Only the first N images of the split."),
    model_source: ModelSource = ModelSource(),
    seed: Seed = 0,
) -> None:
    """Per-dimension KL, total KL, reconstruction, -ELBO and active units (Burda et al. 2016) over a split;
    with --iw-samples K also the importance-weighted -log p(x), its standard error and bits/dim."""
    from ..data import ImageData, binarize_fixed
    from ..errors import ConfigError
    from ..metrics import evaluate, iw_nll
    from .common import check_positive

    check_positive("--batch-size", batch_size)
    check_positive("--iw-samples", iw_samples, 0)
    check_positive("--limit", limit)
    _check_target(svg, "--svg")
    if svg is not None and as_json:
        raise ConfigError("--svg saves the table: use it without --json")
    model, cfg, folder = model_source.load()
    data = _split_data(cfg, split)
    if limit is not None:
        data = ImageData(data.images[:limit], None if data.labels is None else data.labels[:limit])
    if binarize is False and cfg.data.binarize:
        raise ConfigError(f"run {folder.name!r} was trained on binarised pixels: drop --no-binarize")
    use_binary = cfg.data.binarize if binarize is None else binarize
    if use_binary:  # a fixed stochastic binarisation (the test split of a --binarize run already is one)
        data = binarize_fixed(data)
    dev = next(model.parameters()).device
    res = evaluate(model, data, batch_size=batch_size, device=dev, seed=seed)
    label = model.likelihood.label(use_binary)
    out: dict[str, Any] = {"run": folder.name, "split": split, "images": res.images, "neg_elbo": res.neg_elbo, "recon": res.recon,
                           "kl": res.kl, "per_dim_kl": res.per_dim_kl, "active_units": res.active_units,
                           "binarized": use_binary, "likelihood": label}  # fmt: skip
    lines = [f"nats/image: {label}"]
    if iw_samples:
        import torch

        gen = torch.Generator(device=dev).manual_seed(seed)
        iw = iw_nll(model, data, k=iw_samples, batch_size=min(batch_size, 100), device=dev, generator=gen)
        out.update({"iw_samples": iw.k, "iw_nll": iw.iw_nll, "iw_nll_stderr": iw.iw_nll_stderr, "bits_per_dim": iw.bits_per_dim})
        lines.append(f"importance-weighted -log p(x) <= {fmt(iw.iw_nll)} ± {fmt(iw.iw_nll_stderr)} nats/image "
                     f"(k = {iw.k}, Burda et al. 2016; ± standard error over images), {fmt(iw.bits_per_dim, 4)} bits/dim")  # fmt: skip
    if as_json:
        print_json(out)
        return
    _kl_table(res, folder.name, split, svg, lines)


_PARTIAL = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]


def _kl_table(res: Any, name: str, split: str, svg: str | None = None, extra: list[str] | None = None) -> None:
    from rich.table import Table

    from ..inference import dims_by_kl
    from ..metrics import ACTIVE_THRESHOLD

    kl = res.per_dim_kl
    top = max(kl, default=0.0) or 1.0
    width = 24
    t = Table(title=f"run {name}: KL per latent dimension, {split} split ({res.images:,} images)")
    for col, just in (("dim", "right"), ("KL", "right"), ("", "left"), ("share", "right"), ("Var(mu)", "right"), ("active", "center")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    total = res.kl if res.kl > 0 else 1.0
    for j in dims_by_kl(kl):
        var = res.mu_variance[j] if j < len(res.mu_variance) else float("nan")
        eighths = round(max(kl[j], 0.0) / top * width * 8)
        bar = "█" * (eighths // 8) + _PARTIAL[eighths % 8]
        active = var > ACTIVE_THRESHOLD
        t.add_row(str(j), fmt(kl[j], 3), f"[{'cyan' if active else 'grey50'}]{bar}[/]", f"{kl[j] / total:.1%}",
                  fmt(var, 3), "yes" if active else "-")  # fmt: skip
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


# ----------------------------------------------------------------------------- encode / decode


@app.command("encode")
@model_options
def encode_cmd(
    inputs: list[str] = typer.Argument(None, help="Image files, folders (recursive), or - (paths on stdin)."),
    split: InputSplit = None,
    n: InputN = 16,
    output: str = typer.Option(None, "--output", "-o", help="Write the JSON lines to this file (default stdout)."),
    model_source: ModelSource = ModelSource(),
) -> None:
    """Posterior parameters of each image as JSON lines: {"path", "mu": [...], "logvar": [...]}."""
    from ..fileio import atomic_write_text
    from ..inference import encode
    from ..latents import format_lines

    _check_target(output)
    model, cfg, _ = model_source.load()
    x, paths, _names = _inputs(inputs, split, n, cfg)
    mu, logvar = encode(model, x)
    text = format_lines(paths, mu, logvar)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(Path(output).expanduser(), text)


@app.command("decode")
@model_options
def decode_cmd(
    source: str = typer.Argument("-", help="JSON lines from `vae encode` (or lists of floats); - = stdin."),
    out_dir: str = typer.Option(None, "--out-dir", help='Write one PNG per line (named after "path", else 000000.png ...).'),
    output: AlsoGrid = None,
    nrow: int = typer.Option(None, "--nrow", help="Images per grid row for -o (default ceil(sqrt(n)))."),
    padding: Padding = 2,
    scale: Scale = 1,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Decode latent vectors (the "mu" of each JSON line) to images."""
    from ..errors import ConfigError, DataError
    from ..images import default_nrow, grid_png, image_png, output_name
    from ..inference import decode
    from ..latents import parse_lines

    if out_dir is None and output is None:
        raise ConfigError("nothing to write: give --out-dir DIR and/or -o grid.png (or -o -)")
    _check_outputs(output, out_dir=out_dir, nrow=nrow, padding=padding)
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
        files += _dir_files(out_dir, names, [image_png(img, scale) for img in images])
    _write_all(files)
