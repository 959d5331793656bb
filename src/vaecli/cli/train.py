"""`vae train`."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import typer

from .app import app
from .common import DEVICE_HELP, fmt, load_reporter, print_json, stderr_console, stdout_console


@app.command("train")
def train_cmd(
    data: str = typer.Option(
        "fashion-mnist",
        "--data",
        help="fashion-mnist | mnist | fashion-mnist-mini | shapes (dSprites-like, known factors) | a folder of images.",
    ),
    data_dir: str = typer.Option(None, "--data-dir", help="Dataset root (default $VAE_DATA_DIR, else the user cache dir)."),
    image_size: int = typer.Option(
        None,
        "--image-size",
        help="Image side (folders: default their own, the most common shorter side, capped; shapes: 32 | 64, default 32).",
    ),
    channels: int = typer.Option(None, "--channels", help="1 or 3 (default: detected)."),
    fit: str = typer.Option(
        "crop", "--fit", help="Folders, non-square images: crop (the centre square) | pad (letterbox on the border colour) | stretch."
    ),
    max_image_size: int = typer.Option(None, "--max-image-size", help="Folders: cap on the detected image size (default 128)."),
    strict: bool = typer.Option(
        False, "--strict", help="Folders: a file that cannot be decoded is an error (default: skipped and listed)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Folders: decode every file again, without the decode cache."),
    binarize: bool = typer.Option(
        False, "--binarize", help="Binarise pixels: x ~ Bernoulli(pixel) afresh per batch; a fixed binarisation of the test set."
    ),
    beta: float = typer.Option(None, "--beta", help="Weight of the KL term (beta-VAE; default 1)."),
    anneal: int = typer.Option(None, "--anneal", help="Ramp beta linearly from 0 over N epochs (0 = off)."),
    cyclical: int = typer.Option(
        None,
        "--cyclical",
        help="Cyclical beta annealing: N cycles over the run, each ramping 0 -> beta over its first half (Fu et al. 2019; 0 = off).",
    ),
    capacity: float = typer.Option(
        None,
        "--capacity",
        help="Capacity annealing: minimise recon + beta * |KL - C|, C ramping 0 -> C_MAX nats (Burgess et al. 2018; 0 = off).",
    ),
    capacity_epochs: int = typer.Option(None, "--capacity-epochs", help="Epochs for C to reach --capacity (0 = the whole run)."),
    free_bits: float = typer.Option(
        None, "--free-bits", help="Free bits: nats per latent dimension not penalised (Kingma et al. 2016; 0 = off)."
    ),
    tc_beta: float = typer.Option(
        None, "--tc-beta", help="beta-TCVAE: weight of the total correlation, the rest of the KL keeps --beta (Chen et al. 2018; 0 = off)."
    ),
    epochs: int = typer.Option(
        None,
        "--epochs",
        help="Total epochs of the run (default 10, plus the length of an --anneal/--capacity-epochs ramp; with --time-budget: until the budget ends).",
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Images per step (default: by the data and model: 128, 64 for conv from 64 px; per rank under torchrun)."
    ),
    lr: float = typer.Option(
        None,
        "--lr",
        help="Adam learning rate (default: by the model: 2e-3 mlp, 5e-3 conv scaled down for layers wider than the 28 px net's; 1e-3 for --arch seed).",
    ),
    lr_schedule: str = typer.Option(
        None,
        "--lr-schedule",
        help="cosine (to 1% by the end of the run or of --time-budget, whichever is first; the default) | constant (default for --arch seed).",
    ),
    warmup_steps: int = typer.Option(
        None, "--warmup-steps", help="Linear learning-rate warm-up over N steps (default: by the model, 100 for conv)."
    ),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Gradient-norm clip (default 1.0; 0 = off)."),
    latent_dim: int = typer.Option(None, "--latent-dim", help="Latent dimensions (default 32)."),
    arch: str = typer.Option(
        None,
        "--arch",
        help="conv (strided convs; stages and widths follow the image size) | mlp (dense layers only, fast on a CPU) | conv-mlp (conv encoder, MLP decoder) | seed (the seed document's layers and recipe). Default: by the data (docs/performance.md).",
    ),
    widths: str = typer.Option(
        None,
        "--widths",
        help="conv, conv-mlp: channels of the strided conv stages (each halves the side); mlp: units of the encoder's hidden layers (the decoder mirrors them). Comma-separated; default by the data.",
    ),
    hidden: int = typer.Option(
        None, "--hidden", help="conv: units of the fully connected layer; conv-mlp: of the decoder's two hidden layers (default 512)."
    ),
    norm: str = typer.Option(None, "--norm", help="conv archs: normalisation after each conv stage, none | group | batch (default none)."),
    likelihood: str = typer.Option(None, "--likelihood", help="bernoulli (BCE, the default) | gaussian."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, shuffling, sampling, split)."),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP + " A resumed run keeps its device unless given."),
    precision: str = typer.Option(
        None,
        "--precision",
        help="auto (= fp32: bf16 measured 2.8 nats worse at equal steps) | fp32 | bf16 (autocast, fp32 master weights; fast only on CUDA and AVX-512-BF16/AMX CPUs).",
    ),
    name: str = typer.Option(None, "--name", help="Run name (default: generated)."),
    resume: str = typer.Option(None, "--resume", help="Continue the run NAME where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same --name."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after N steps (this invocation)."),
    time_budget: float = typer.Option(
        None,
        "--time-budget",
        help="Stop at the first step after SECONDS of training (this invocation; evaluation and checkpoints do not count).",
    ),
    save_every: float = typer.Option(None, "--save-every", help="Also checkpoint every SECONDS (default 300)."),
    skip_nonfinite: bool = typer.Option(False, "--skip-nonfinite", help="Skip batches with a non-finite loss instead of stopping."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout at the end (progress on stderr)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    eval_samples: bool = typer.Option(
        False, "--eval-samples", help="At the end, score samples as `vae eval-samples` does (stored in summary.json)."
    ),
) -> None:
    """Train a (beta-)VAE and store the run (weights, config, metrics, loss.png).

    Under torchrun (`torchrun --nproc-per-node N -m vaecli train ...`) it trains with
    DistributedDataParallel; --batch-size is per rank (see docs/distributed.md)."""
    from .. import distributed
    from ..config import DataConfig
    from ..errors import ConfigError
    from ..training import plan_run, resume_run, start_run

    distributed.init(device or "auto")  # under torchrun: join the process group (no-op otherwise)
    main = distributed.is_main()  # only rank 0 prints
    if resume:
        if name and name != resume:
            raise ConfigError("--name and --resume name different runs")
        kept = {"device": device, "save_every": save_every, "epochs": epochs, "precision": precision}  # the run's own unless given
        overrides: dict[str, Any] = {k: v for k, v in kept.items() if v is not None}
        overrides.update(max_steps=max_steps, time_budget=time_budget, skip_nonfinite=skip_nonfinite)  # per invocation
        trainer = resume_run(resume, overrides)
    else:
        given = {"arch": arch, "latent_dim": latent_dim, "likelihood": likelihood, "hidden": hidden, "norm": norm,
                 "widths": _parse_widths(widths) if widths is not None else None,
                 "beta": beta, "anneal": anneal, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "lr_schedule": lr_schedule, "warmup_steps": warmup_steps, "grad_clip": grad_clip, "seed": seed,
                 "device": device, "precision": precision, "max_steps": max_steps, "time_budget": time_budget,
                 "save_every": save_every, "skip_nonfinite": skip_nonfinite, "cyclical": cyclical, "capacity": capacity,
                 "capacity_epochs": capacity_epochs, "free_bits": free_bits, "tc_beta": tc_beta}  # fmt: skip
        data_cfg = DataConfig(name=data, root=data_dir, image_size=image_size, channels=channels, split_seed=seed, binarize=binarize,
                              fit=fit, max_image_size=max_image_size, strict=strict)  # fmt: skip
        with load_reporter(quiet or not main, use_cache=not no_cache) as load:
            model_cfg, data_cfg, train_cfg, loaded = plan_run(data_cfg, given, load)
        trainer = start_run(model_cfg, data_cfg, train_cfg, name=name, overwrite=overwrite, data=loaded)

    err = stderr_console()
    err.quiet = not main
    stop = threading.Event()

    first_sigint = [0.0]

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            # torchrun forwards the terminal's Ctrl-C to workers that already got it: not a second press
            if not (distributed.is_distributed() and time.monotonic() - first_sigint[0] < 2.0):
                raise KeyboardInterrupt
            return
        first_sigint[0] = time.monotonic()
        stop.set()
        err.print("[yellow]stopping after this step and saving (Ctrl-C again to abort)[/yellow]")

    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        result = _fit_with_progress(trainer, stop, quiet or not main, err)
    except Exception as exc:
        if distributed.is_comm_error(exc):  # a peer died or timed out: say so in one line
            raise distributed.explain(exc) from None
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    distributed.cleanup()
    from ..metrics import likelihood_label

    label = likelihood_label(trainer.cfg.model.likelihood, trainer.cfg.data.binarize)
    summary = result.to_dict()
    if eval_samples and main and result.stopped != "interrupted":
        from .eval_samples import eval_after_training

        summary["eval_samples"] = eval_after_training(result.path, str(trainer.device), as_json)
    if as_json and main:
        summary.pop("stopped", None)
        summary.pop("precision", None)
        summary.pop("device", None)
        summary["likelihood"] = label
        print_json(summary)
        _summary_table(result, err, label)
    elif main:  # DDP: the other ranks print nothing
        _summary_table(result, stdout_console(), label)
    if result.stopped == "interrupted":
        err.print(f"interrupted: the run is saved; continue with [bold]vae train --resume {result.run}[/bold]")
        raise typer.Exit(130)


def _parse_widths(text: str) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``; anything else is a usage error."""
    from ..errors import ConfigError

    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"--widths takes comma-separated channel counts like 16,32, got {text!r}") from None
    if not widths or any(w < 1 or w > 4096 for w in widths):
        raise ConfigError(f"--widths must be 1..4096 each, got {text!r}")
    return widths


def _fit_with_progress(trainer: Any, stop: threading.Event, quiet: bool, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cfg = trainer.cfg
    console.print(
        f"run [bold]{trainer.path.name}[/bold]: {_model_brief(cfg.model)} on {cfg.data.name} "
        f"({cfg.data.train_size} train / {cfg.data.test_size} test, {cfg.model.image_size} px, {cfg.model.channels} ch), "
        f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.train.lr:g} {cfg.train.lr_schedule}, beta={cfg.train.beta}"
        f"{f' annealed over {cfg.train.anneal} epochs' if cfg.train.anneal else ''}{_objective(cfg)}, device {trainer.device}, {trainer.precision}"
        + (f", {ws} ranks x batch {cfg.train.batch_size}" if (ws := cfg.train.world_size) > 1 else "")
    )
    from ..config import ramp_warning
    from ..device import bf16_warning

    for warning in (bf16_warning(trainer.precision, trainer.device), ramp_warning(cfg.train)):
        if warning:
            console.print(f"[yellow]warning: {warning}[/yellow]")
    for notice in trainer.notices:
        console.print(f"[yellow]note: {notice}[/yellow]")
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} recon {task.fields[recon]} KL {task.fields[kl]} beta {task.fields[beta]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    task = None

    def on_progress(p: Any) -> None:
        nonlocal task
        fields = {"epoch": f"{p.epoch + 1}/{p.epochs}", "loss": fmt(p.loss, 1), "recon": fmt(p.recon, 1), "kl": fmt(p.kl, 2),
                  "beta": fmt(p.beta, 2), "ips": _ips(p.images_per_second)}  # fmt: skip
        if p.kind == "start":
            task = progress.add_task("train", total=p.steps_per_epoch, completed=p.step, **fields)
        elif p.kind == "step" and task is not None:
            progress.update(task, completed=p.step, **fields)
        elif p.kind == "epoch" and task is not None:
            m = p.metrics
            progress.console.print(
                f"epoch {m['epoch']:>3}/{p.epochs}  train -ELBO {m['train']['neg_elbo']:.2f} (recon {m['train']['recon']:.2f} "
                f"KL {m['train']['kl']:.2f})  test -ELBO {m['test']['neg_elbo']:.2f}  beta {m['beta']:.2f}  "
                f"active {m['active_units']}  {m['train_seconds']:.0f}s"
            )
            if p.epoch + 1 < p.epochs:
                progress.reset(task, total=p.steps_per_epoch, completed=0, **{**fields, "epoch": f"{p.epoch + 2}/{p.epochs}"})

    with progress:
        return trainer.fit(on_progress, stop)


def _ips(value: float | None) -> str:
    """Images per second for people: "-" where nothing was measured (before the warm-up steps)."""
    return "-" if value is None else f"{value:,.0f}"


def _model_brief(m: Any) -> str:
    """``conv 16,32 z=32`` / ``seed z=32``: the model in a few words."""
    return f"{m.arch}{' ' + ','.join(map(str, m.widths)) if m.arch != 'seed' else ''} z={m.latent_dim}"


def _objective(cfg: Any) -> str:
    """The non-default objective settings of a run, for the first progress line."""
    tc = cfg.train
    parts = [f" in {tc.cyclical} cycles" if tc.cyclical else ""]
    if tc.capacity:
        parts.append(f", capacity C -> {tc.capacity:g} nats over {tc.capacity_epochs or tc.epochs} epochs")
    if tc.free_bits:
        parts.append(f", free bits {tc.free_bits:g} nats/dim")
    if tc.tc_beta:
        parts.append(f", beta-TCVAE tc_beta={tc.tc_beta:g}")
    if cfg.data.binarize:
        parts.append(", binarised pixels")
    return "".join(parts)


def _summary_table(result: Any, console: Any, label: str) -> None:
    from rich.table import Table

    t = Table(title=f"run {result.run}: {result.epochs} epochs, {result.steps} steps ({result.stopped})")
    for col in ("split", "-ELBO", "recon", "KL"):
        t.add_column(col, justify="right" if col != "split" else "left")
    t.add_row("train (running avg)", fmt(result.train["neg_elbo"]), fmt(result.train["recon"]), fmt(result.train["kl"]))
    t.add_row("test", fmt(result.test["neg_elbo"]), fmt(result.test["recon"]), fmt(result.test["kl"]))
    console.print(t)
    console.print(
        f"nats/image ({label})  active units {result.active_units}  "
        f"time {result.seconds:.1f}s  {_ips(result.images_per_second)} img/s  {result.device} {result.precision}"
    )
    console.print(f"run saved in {result.path}")
