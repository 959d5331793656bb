"""`vae eval-nll`: the importance-weighted estimate of -log p(x) (Burda et al. 2016) over a split."""

from __future__ import annotations

import typer

from .app import app
from .common import DEVICE_HELP, check_positive, fmt, print_json, stdout_console


@app.command("eval-nll")
def eval_nll_cmd(
    run: str = typer.Option(None, "--run", help="Run name or folder (default: the most recently trained run)."),
    iw_samples: int = typer.Option(1000, "--iw-samples", "-k", help="Importance samples per image (k = 1: the one-sample -ELBO)."),
    split: str = typer.Option("test", "--split", help="Split of the run's dataset: test or train."),
    binarize: bool = typer.Option(None, "--binarize/--no-binarize", help="Evaluate on a fixed binarisation of the split (default: as the run was trained)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N images of the split."),
    batch_size: int = typer.Option(100, "--batch-size", help="Images per batch (each decoded k times, in chunks)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the importance samples."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help='One JSON object: "iw_nll", "iw_nll_stderr", "bits_per_dim", ...'),
) -> None:
    """Importance-weighted -log p(x) with k samples (Burda et al. 2016), its standard error and bits/dim.

    Says which likelihood the number is: a Bernoulli decoder on continuous pixels gives BCE
    nats, not a normalised likelihood; on binarised pixels (--binarize) it is a true
    log-likelihood, comparable with the binarised-MNIST literature.
    """
    import torch

    from .. import checkpoint as ckpt
    from ..data import ImageData, binarize_fixed, load_data
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..metrics import iw_nll

    check_positive("--iw-samples", iw_samples)
    check_positive("--batch-size", batch_size)
    check_positive("--limit", limit)
    if split not in ("test", "train"):
        raise ConfigError(f"--split must be test or train, got {split!r}")
    dev = resolve_device(device)
    model, cfg, folder = ckpt.load_model(run, dev)
    train, test, _ = load_data(cfg.data, download=False)
    data = test if split == "test" else train
    if limit is not None:
        data = ImageData(data.images[:limit], None if data.labels is None else data.labels[:limit])
    use_binary = cfg.data.binarize if binarize is None else binarize
    if use_binary:
        data = binarize_fixed(data)  # the test split of a --binarize run is already binary: unchanged
    elif cfg.data.binarize:
        raise ConfigError(f"run {folder.name!r} was trained on binarised pixels: its test split is binary (drop --no-binarize)")
    res = iw_nll(model, data, k=iw_samples, batch_size=batch_size, device=dev, generator=torch.Generator(device=dev).manual_seed(seed))
    out = {"run": folder.name, "split": split, "images": res.images, "iw_samples": res.k, "iw_nll": res.iw_nll,
           "iw_nll_stderr": res.iw_nll_stderr, "bits_per_dim": res.bits_per_dim, "binarized": res.binarized,
           "likelihood": res.label}  # fmt: skip
    if as_json:
        print_json(out)
        return
    stdout_console().print(
        f"run {folder.name}, {split} split ({res.images:,} images), k = {res.k} importance samples (Burda et al. 2016)\n"
        f"-log p(x) <= {fmt(res.iw_nll)} ± {fmt(res.iw_nll_stderr)} nats/image (standard error over images), "
        f"{fmt(res.bits_per_dim, 4)} bits/dim\n{res.label}",
        highlight=False,
        markup=False,
    )
