"""`vae train`."""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Annotated, Any, Optional

import typer

from .app import app
from .common import DEVICE_HELP, fmt, load_reporter, print_json, stderr_console, stdout_console
from .options import Json

RULE = "default: by the data, see docs/train.md"

# Optional[...] stays: Typer reads these annotations at run time on Python 3.10.
OptInt = Optional[int]  # noqa: UP045
OptFloat = Optional[float]  # noqa: UP045
OptStr = Optional[str]  # noqa: UP045


def _opt(flag: str, help: str, *names: str) -> Any:
    return typer.Option(flag, *names, help=help)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: Annotated[str, _opt("--data", "fashion-mnist | mnist | fashion-mnist-mini | shapes (known factors) | a folder of images.")] = "fashion-mnist",
    data_dir: Annotated[OptStr, _opt("--data-dir", "Dataset root (default $VAE_DATA_DIR, else the user cache dir).")] = None,
    image_size: Annotated[OptInt, _opt("--image-size", "Image side (folders: their own, the most common shorter side, capped; shapes: 32 | 64).")] = None,
    channels: Annotated[OptInt, _opt("--channels", "1 or 3 (default: detected).")] = None,
    fit: Annotated[str, _opt("--fit", "Folders, non-square images: crop (the centre square) | pad (letterbox on the border colour) | stretch.")] = "crop",
    max_image_size: Annotated[OptInt, _opt("--max-image-size", "Folders: cap on the detected image size (default 128).")] = None,
    strict: Annotated[bool, _opt("--strict", "Folders: a file that cannot be decoded is an error (default: skipped and listed).")] = False,
    no_cache: Annotated[bool, _opt("--no-cache", "Folders: decode every file again, without the decode cache.")] = False,
    binarize: Annotated[bool, _opt("--binarize", "Binarise pixels: x ~ Bernoulli(pixel) afresh per batch; a fixed binarisation of the test set.")] = False,
    val_size: Annotated[OptInt, _opt("--val-size", "Images carved out of the training split to choose the best weights and stop early (0 = none; " + RULE + ").")] = None,
    beta: Annotated[OptFloat, _opt("--beta", "Weight of the KL term (beta-VAE; default 1).")] = None,
    anneal: Annotated[OptInt, _opt("--anneal", "Ramp beta linearly from 0 over N epochs (0 = off).")] = None,
    cyclical: Annotated[OptInt, _opt("--cyclical", "Cyclical beta annealing: N cycles over the run, each ramping 0 -> beta over its first half (Fu et al. 2019; 0 = off).")] = None,
    capacity: Annotated[OptFloat, _opt("--capacity", "Capacity annealing: minimise recon + beta * |KL - C|, C ramping 0 -> C_MAX nats (Burgess et al. 2018; 0 = off).")] = None,
    capacity_epochs: Annotated[OptInt, _opt("--capacity-epochs", "Epochs for C to reach --capacity (0 = the whole run).")] = None,
    free_bits: Annotated[OptFloat, _opt("--free-bits", "Free bits: nats per latent dimension not penalised (Kingma et al. 2016; 0 = off).")] = None,
    tc_beta: Annotated[OptFloat, _opt("--tc-beta", "beta-TCVAE: weight of the total correlation, the rest of the KL keeps --beta (Chen et al. 2018; 0 = off).")] = None,
    top_first: Annotated[OptInt, _opt("--top-first", "hvae: the latent groups' KL weighs 8x at the start and falls linearly to 1x over N epochs, so that the top latent learns the global structure first (0 = off; " + RULE + ").")] = None,
    epochs: Annotated[OptInt, _opt("--epochs", "Total epochs of the run (default: 10 plus any --anneal/--capacity-epochs ramp; with --time-budget: until the budget ends).")] = None,
    early_stop: Annotated[OptInt, _opt("--early-stop", "End the run after N evaluations without a better validation -ELBO (0 = off).")] = None,
    batch_size: Annotated[OptInt, _opt("--batch-size", "Images per step (per rank under torchrun; " + RULE + ").")] = None,
    lr: Annotated[OptFloat, _opt("--lr", "Adam learning rate (" + RULE + ").")] = None,
    lr_schedule: Annotated[OptStr, _opt("--lr-schedule", "cosine (to 1% by the end of the run or of --time-budget) | constant (" + RULE + ").")] = None,
    warmup_steps: Annotated[OptInt, _opt("--warmup-steps", "Linear learning-rate warm-up over N steps (" + RULE + ").")] = None,
    grad_clip: Annotated[OptFloat, _opt("--grad-clip", "Gradient-norm clip (default 1.0; 0 = off).")] = None,
    ema: Annotated[OptFloat, _opt("--ema", "Evaluate, save and sample a moving average of the weights with this decay, e.g. 0.999 (0 = off; " + RULE + ").")] = None,
    latent_dim: Annotated[OptInt, _opt("--latent-dim", "Latent dimensions (hvae: of its top latent); --arch spatial: a multiple of the latent side squared (" + RULE + ": 32 for gray, 64 for colour, --arch spatial 8 maps of the latent side: 512 at 64 px).")] = None,
    arch: Annotated[OptStr, _opt("--arch", "conv (strided convs; stages follow the image size) | hvae (hierarchical: a top latent vector and spatial latent groups below it with learned conditional priors, docs/hierarchical.md) | spatial (conv stages with a latent of maps, 1x1 conv heads) | mlp (dense layers, fast on a CPU) | conv-mlp | seed (the seed document's layer table and recipe, docs/train.md). " + RULE.capitalize() + ".")] = None,
    widths: Annotated[OptStr, _opt("--widths", "conv, conv-mlp, spatial, hvae: channels of the strided conv stages (each halves the side); mlp: units of the encoder's hidden layers (the decoder mirrors them). Comma-separated; " + RULE + ".")] = None,
    hidden: Annotated[OptInt, _opt("--hidden", "conv, hvae: units of the fully connected layer (hvae: to and from its top latent); conv-mlp: of the decoder's two hidden layers.")] = None,
    norm: Annotated[OptStr, _opt("--norm", "conv, conv-mlp, spatial: normalisation after each conv stage, none | group | batch (hvae has none).")] = None,
    likelihood: Annotated[OptStr, _opt("--likelihood", "bernoulli (BCE nats) | gaussian (a density, Gaussian nats) | discrete-gaussian (a Gaussian over 256 levels, one scale per channel: bits/dim) | logistic (discretised logistic mixture over 256 levels: bits/dim). " + RULE.capitalize() + ".")] = None,
    mixtures: Annotated[OptInt, _opt("--mixtures", "--likelihood logistic: mixture components per pixel (" + RULE + ").")] = None,
    logistic_scale: Annotated[OptStr, _opt("--logistic-scale", "--likelihood logistic: pixel (a scale per pixel and channel, predicted) | shared (one learned scale per channel) (" + RULE + ").")] = None,
    upsample: Annotated[OptStr, _opt("--upsample", "conv archs, the decoder's stages: transposed (k4 s2 transposed convs) | resize (nearest x2 then a 3x3 conv: no checkerboard) (" + RULE + ").")] = None,
    blocks: Annotated[OptInt, _opt("--blocks", "conv archs: residual blocks after each conv stage, encoder and decoder (" + RULE + ").")] = None,
    groups: Annotated[OptStr, _opt("--groups", "hvae (hierarchical): channels of the spatial latent groups, one per conv stage, deepest first (0: none there). Comma-separated; " + RULE + ".")] = None,
    prior: Annotated[OptStr, _opt("--prior", "normal (N(0, I)) | vamp (the VampPrior: a mixture of the posteriors of learned pseudo-inputs, Tomczak & Welling 2018).")] = None,
    pseudo_inputs: Annotated[OptInt, _opt("--pseudo-inputs", "--prior vamp: the number K of pseudo-inputs (default 500).")] = None,
    seed: Annotated[int, _opt("--seed", "Random seed (weights, shuffling, sampling; the data splits unless --split-seed).")] = 0,
    split_seed: Annotated[OptInt, _opt("--split-seed", "Seed of the data splits: train/test of folders and shapes, the validation split of every dataset (default: --seed).")] = None,
    device: Annotated[OptStr, _opt("--device", DEVICE_HELP + " A resumed run keeps its device unless given.")] = None,
    precision: Annotated[OptStr, _opt("--precision", "auto (bf16 where it measured better at equal wall time, else fp32; docs/performance.md) | fp32 | bf16.")] = None,
    name: Annotated[OptStr, _opt("--name", "Run name (default: generated).")] = None,
    resume: Annotated[OptStr, _opt("--resume", "Continue the run NAME from its last weights.")] = None,
    overwrite: Annotated[bool, _opt("--overwrite", "Replace an existing run of the same --name.")] = False,
    max_steps: Annotated[OptInt, _opt("--max-steps", "Stop after N steps (this invocation).")] = None,
    time_budget: Annotated[OptFloat, _opt("--time-budget", "Stop at the first step after SECONDS of training in this invocation (evaluation and checkpoints do not count; a resumed run: what is left of its own budget unless given).")] = None,
    save_every: Annotated[OptFloat, _opt("--save-every", "Also checkpoint every SECONDS (default 300).")] = None,
    skip_nonfinite: Annotated[Optional[bool], _opt("--skip-nonfinite/--no-skip-nonfinite", "Skip batches with a non-finite loss (default: roll back to the last finite state and halve the lr; a resumed run keeps its own).")] = None,  # noqa: UP045
    max_nonfinite: Annotated[OptInt, _opt("--max-nonfinite", "The run stops at its Nth non-finite step; each earlier one is rolled back (default 3; 1 = stop at the first).")] = None,
    as_json: Json = False,
    quiet: Annotated[bool, _opt("--quiet", "No progress bar.", "-q")] = False,
    eval_samples: Annotated[bool, _opt("--eval-samples", "At the end, score samples as `vae eval-samples` does (stored in summary.json; recorded: a resumed run does it too).")] = False,
    fit_prior: Annotated[OptStr, _opt("--fit-prior", "At the end, fit a prior to the encoded training images as `vae fit-prior --kind KIND` does: gmm | flow (stored in the run; before --eval-samples; recorded: a resumed run does it too).")] = None,
    config: Annotated[OptStr, _opt("--config", "Take the options from a TOML file (every option of vae train as a key, e.g. latent_dim = 16; a run's own config.toml repeats it); flags given here override it.")] = None,
    from_run: Annotated[OptStr, _opt("--from", "Start a new run with the options of run RUN (its config.toml); flags given here override them.")] = None,
    tb_on: Annotated[bool, _opt("--tensorboard", "Log to TensorBoard (pip install 'vaecli[tensorboard]'): the metrics of every epoch, image grids, hparams; in the run folder's tb/ unless --tensorboard-dir.")] = False,
    tb_dir: Annotated[OptStr, _opt("--tensorboard-dir", "--tensorboard into this folder instead of the run folder's tb/ (implies --tensorboard).")] = None,
    log_images_every: Annotated[OptInt, _opt("--log-images-every", "--tensorboard: a reconstruction grid and a sample grid every N epochs (default 1; 0 = none).")] = None,
) -> None:  # fmt: skip
    """Train a (beta-)VAE and store the run (weights, config, metrics, loss.png).

    Under torchrun (`torchrun --nproc-per-node N -m vaecli train ...`) it trains with
    DistributedDataParallel; --batch-size is per rank (see docs/distributed.md)."""
    from .. import distributed

    options = dict(locals())
    given = _given_options(ctx, options)
    if config is not None or from_run is not None:
        options, given = _with_base_options(ctx, options, given)
    _check_options(options)
    o = options
    distributed.init(o["device"] or "auto")  # under torchrun: join the process group (no-op otherwise)
    main = distributed.is_main()  # only rank 0 prints
    quiet = o["quiet"]
    trainer = _resume(resume, given, ctx) if resume else _start(options, given, quiet or not main)
    err = stderr_console()
    err.quiet = not main
    result = _fit_until_stopped(trainer, quiet or not main, err)
    distributed.cleanup()
    if main:  # DDP: the other ranks print nothing
        _report(trainer, result, o["as_json"], err)
    if result.stopped == "interrupted":
        err.print(f"interrupted: the run is saved; continue with [bold]vae train --resume {result.run}[/bold]")
        raise typer.Exit(130)


# What `vae train --resume` may change (applied and recorded in config.json); every other option is
# the run's own and refused. max_steps is per invocation; --time-budget is the training time of this
# invocation (the run's own budget, what is left of it, when not given).
RESUME_CLI_ONLY = frozenset({"resume", "name", "data_dir", "no_cache", "quiet", "as_json"})  # how this invocation runs, not the run


def _resume_options() -> frozenset[str]:
    """The options `vae train --resume` accepts: what the library lets a resume change, and how this invocation runs."""
    from ..train.run import RESUME_OVERRIDES

    return (RESUME_OVERRIDES - {"world_size"}) | RESUME_CLI_ONLY


def _given_options(ctx: typer.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave on the command line (not their defaults), by parameter name."""

    def given(name: str) -> bool:  # click's ParameterSource, by name (typer may vendor click)
        return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")

    return {k: v for k, v in options.items() if k != "ctx" and given(k)}


def option_kinds(command: Any) -> dict[str, tuple[str, str]]:
    """Every option of `vae train` (``command``: the click command typer builds) by config-file key,
    its long option name with ``_`` for ``-`` (``latent_dim``, ``json``, ``from``): (parameter name,
    kind: bool, int, float, str, or list for the comma-separated ``--widths``)."""
    import typing

    hints = typing.get_type_hints(train_cmd)
    kinds = {}
    for p in command.params:
        base = next((a for a in typing.get_args(hints[p.name]) if a is not type(None)), hints[p.name])
        kind = {bool: "bool", int: "int", float: "float"}.get(base, "list" if "comma-separated" in (p.help or "").lower() else "str")
        long = next(o for o in p.opts if o.startswith("--"))
        kinds[long[2:].replace("-", "_")] = (p.name, kind)
    return kinds


def base_options(kinds: dict[str, tuple[str, str]], config: str | None, from_run: str | None) -> dict[str, Any]:
    """The options of ``--config FILE`` or ``--from RUN`` by parameter name, checked (the run's are
    its config.json's, as its config.toml holds them)."""
    from ..runs import store as ckpt
    from ..runs.options import check_options, read_toml, run_options

    if config is not None:
        return check_options(read_toml(config), kinds, config)
    run = ckpt.resolve_run(str(from_run))
    return check_options(run_options(ckpt.read_config(run)), kinds, f"run {run.name}")


def _with_base_options(ctx: typer.Context, options: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--config FILE`` / ``--from RUN`` under the flags given: (every option, those given in all)."""
    from ..errors import ConfigError

    if options["config"] is not None and options["from_run"] is not None:
        raise ConfigError("--config and --from both give the run's options: give one")
    if options["resume"] is not None:
        raise ConfigError(
            f"{'--config' if options['config'] is not None else '--from'} starts a new run; --resume continues one with its own options"
        )
    where = options["config"] or f"run {options['from_run']}"
    base = base_options(option_kinds(ctx.command), options["config"], options["from_run"])
    base = {k: v for k, v in base.items() if k not in given}
    _check_fields(base, where)
    return {**options, **base}, {**given, **base}


def _check_fields(values: dict[str, Any], where: str) -> None:
    """The model and training values among ``values`` checked as the command line's are, the error
    prefixed with where they come from."""
    from ..config import MODEL_FIELDS, TRAIN_FIELDS, check_given
    from ..errors import ConfigError

    fields = {k: v for k, v in values.items() if k in MODEL_FIELDS | TRAIN_FIELDS}
    try:
        fields.update(parse_lists(fields))
        check_given(fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_options(o: dict[str, Any]) -> None:
    """Checks of single options before anything loads: --fit-prior's kind, the tensorboard package."""
    from ..errors import ConfigError

    if o["fit_prior"] is not None:
        from ..train.fit_prior import check_fit_options

        check_fit_options(o["fit_prior"], flag="--fit-prior")
    if o["tb_on"] or o["tb_dir"] is not None:
        from ..train.hooks import check_tensorboard

        check_tensorboard()
    elif o["log_images_every"] is not None and o["resume"] is None:
        raise ConfigError("--log-images-every sets the image grids of --tensorboard: give --tensorboard too")


def _resume(resume: str, given: dict[str, Any], ctx: typer.Context) -> Any:
    """The trainer of run ``resume``, reopened with the options that may change on a resume; any
    other option given is one line and exit 2 (it would be silently ignored)."""
    from ..errors import ConfigError
    from ..runs import store as ckpt
    from ..train.run import resume_run

    ckpt.resolve_run(resume)  # a run that does not exist is said first
    if given.get("name") not in (None, resume):
        raise ConfigError("--name and --resume name different runs")
    flag = {param: f"--{key.replace('_', '-')}" for key, (param, _) in option_kinds(ctx.command).items()}
    fixed = sorted(flag[k] for k in set(given) - _resume_options())
    if fixed:
        raise ConfigError(f"{', '.join(fixed)} cannot change when resuming run {resume!r} (it keeps its own); "
                          f"start a new run with --name, or give only budget, early-stop, device and after-training options")  # fmt: skip
    return resume_run(resume, {k: v for k, v in given.items() if k not in RESUME_CLI_ONLY})


def _start(options: dict[str, Any], given: dict[str, Any], quiet: bool) -> Any:
    """A new run: the data loaded, every option not given filled by the rule for defaults."""
    from ..config import MODEL_FIELDS, TRAIN_FIELDS, DataConfig
    from ..train.run import plan_run, start_run

    o = options
    fields = {k: v for k, v in o.items() if k in MODEL_FIELDS | TRAIN_FIELDS}
    fields.update(parse_lists(fields))
    fields["skip_nonfinite"] = bool(o["skip_nonfinite"])
    fields["tensorboard"] = _tensorboard_folder(o["tb_on"], o["tb_dir"])
    data_cfg = DataConfig(name=o["data"], root=o["data_dir"], image_size=o["image_size"], channels=o["channels"], split_seed=o["seed"] if o["split_seed"] is None else o["split_seed"],
                          binarize=o["binarize"], fit=o["fit"], max_image_size=o["max_image_size"], strict=o["strict"],
                          val_size=o["val_size"])  # fmt: skip
    with load_reporter(quiet, use_cache=not o["no_cache"]) as load:
        model_cfg, data_cfg, train_cfg, loaded = plan_run(data_cfg, fields, load)
    return start_run(model_cfg, data_cfg, train_cfg, name=o["name"], overwrite=o["overwrite"], data=loaded)


def _tensorboard_folder(on: bool, folder: str | None) -> str | None:
    """TrainConfig.tensorboard of ``--tensorboard [--tensorboard-dir FOLDER]``: the run folder's tb/
    (relative: the run's own) or the folder given, made absolute (a resume may run elsewhere)."""
    from pathlib import Path

    from ..train.hooks import TENSORBOARD_DIR

    if folder is not None:
        return str(Path(folder).expanduser().absolute()) if folder else ""  # "": refused by the config check
    return TENSORBOARD_DIR if on else None


def _report(trainer: Any, result: Any, as_json: bool, err: Any) -> None:
    """The end of `vae train` on rank 0: the summary table (stderr with --json, then the JSON) and
    the results of the steps after training."""
    from .eval_samples import print_table
    from .prior import print_fit

    summary = result.summary
    console = err if as_json else stdout_console()
    if "fit_prior" in summary:
        print_fit(trainer.path, summary["fit_prior"], console)
    if "eval_samples" in summary:
        print_table(summary["eval_samples"], console)
    if as_json:
        keys = ("best", "last", "likelihood", "discrete", "notices", "recoveries", "hooks", "fit_prior", "eval_samples")
        print_json({**result.to_dict(), **{k: summary[k] for k in keys if k in summary}})
    _summary_table(trainer.cfg, result, console)


def _fit_until_stopped(trainer: Any, quiet: bool, err: Any) -> Any:
    """Train with a progress bar; the first Ctrl-C stops after the step and saves, a second aborts."""
    from .. import distributed

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
        return _fit_with_progress(trainer, stop, quiet, err)
    except Exception as exc:
        if distributed.is_comm_error(exc):  # a peer died or timed out: say so in one line
            raise distributed.explain(exc) from None
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


LIST_OPTIONS = {"widths": 1, "groups": 0}  # the comma-separated options of vae train and the least value of each


def parse_lists(fields: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The comma-separated options among ``fields`` (``"16,32"``) parsed (``(16, 32)``); None ones left out."""
    return {k: parse_widths(fields[k], f"--{k.replace('_', '-')}", low) for k, low in LIST_OPTIONS.items() if fields.get(k) is not None}


def parse_widths(text: str, flag: str = "--widths", low: int = 1) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``, each ``low``..4096; anything else is a usage error naming ``flag``."""
    from ..errors import ConfigError

    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated channel counts like 16,32, got {text!r}") from None
    if not widths or any(w < low or w > 4096 for w in widths):
        raise ConfigError(f"{flag} must be {low}..4096 each, got {text!r}")
    return widths


def _first_line(trainer: Any) -> str:
    cfg = trainer.cfg
    d, tc = cfg.data, cfg.train
    held = f"{len(trainer.train_data)} train / {len(trainer.val_data)} val / {d.test_size} test"
    return (
        f"run [bold]{trainer.path.name}[/bold]: {_model_brief(cfg.model)} on {d.name} ({held}, {cfg.model.image_size} px, "
        f"{cfg.model.channels} ch), {tc.epochs} epochs, batch {tc.batch_size}, lr {tc.lr:g} {tc.lr_schedule}, beta={tc.beta}"
        f"{f' annealed over {tc.anneal} epochs' if tc.anneal else ''}{_objective(cfg)}, device {trainer.device}, {trainer.precision}"
        + (f", {ws} ranks x batch {tc.batch_size}" if (ws := tc.world_size) > 1 else "")
    )


def _epoch_line(m: dict[str, Any], epochs: int, best: bool) -> str:
    """One line per epoch: training running means, the validation -ELBO (bits/dim where discrete)."""
    tr, val = m["train"], m.get("val")
    held = ""
    if val:
        bpd = f" = {val['bits_per_dim']:.4f} bits/dim" if val.get("bits_per_dim") is not None else ""
        held = f"  val -ELBO {val['neg_elbo']:.2f}{bpd}{' *' if best else '  '}  active {m.get('active_units')}"
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train -ELBO {tr['neg_elbo']:.2f} (recon {tr['recon']:.2f} KL {tr['kl']:.2f}){held}  "
        f"beta {m['beta']:.2f}  {m['train_seconds']:.0f}s"
    )


def _fit_with_progress(trainer: Any, stop: threading.Event, quiet: bool, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..device import bf16_warning
    from ..train.recipe import ramp_warning

    console.print(_first_line(trainer))
    for warning in (bf16_warning(trainer.precision, trainer.device), ramp_warning(trainer.cfg.train)):
        if warning:
            console.print(f"[yellow]warning: {warning}[/yellow]")
    for notice in trainer.notices:
        console.print(f"[yellow]note: {notice}[/yellow]")
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} recon {task.fields[recon]} KL {task.fields[kl]}{task.fields[bpd]} beta {task.fields[beta]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    task = None
    m = trainer.cfg.model
    bits = (
        1 / (m.channels * m.image_size * m.image_size * math.log(2))
        if trainer.model.likelihood.is_discrete(trainer.cfg.data.binarize)
        else 0
    )

    def on_progress(p: Any) -> None:
        nonlocal task
        bpd = f" ({fmt((p.recon + p.kl) * bits, 3)} bits/dim)" if bits else ""
        fields: dict[str, Any] = {"epoch": f"{p.epoch + 1}/{p.epochs}", "loss": fmt(p.loss, 1), "recon": fmt(p.recon, 1), "kl": fmt(p.kl, 2),
                  "bpd": bpd, "beta": fmt(p.beta, 2), "ips": _ips(p.images_per_second)}  # fmt: skip
        if p.kind == "start":
            task = progress.add_task("train", total=p.steps_per_epoch, completed=p.step, **fields)
        elif p.kind == "step" and task is not None:
            progress.update(task, completed=p.step, **fields)
        elif p.kind == "notice":
            progress.console.print(f"[yellow]warning: {p.message}[/yellow]", highlight=False)
        elif p.kind == "note":
            progress.console.print(p.message, highlight=False, markup=False)
        elif p.kind == "epoch" and task is not None:
            best = trainer.state.best is not None and trainer.state.evals_since_best == 0
            progress.console.print(_epoch_line(p.metrics, p.epochs, best), highlight=False)
            if p.epoch + 1 < p.epochs:
                progress.reset(task, total=p.steps_per_epoch, completed=0, **{**fields, "epoch": f"{p.epoch + 2}/{p.epochs}"})

    with progress:
        return trainer.fit(on_progress, stop)


def _ips(value: float | None) -> str:
    """Images per second for people: "-" where nothing was measured (before the warm-up steps)."""
    return "-" if value is None else f"{value:,.0f}"


def _model_brief(m: Any) -> str:
    """``conv 16,32 z=32`` / ``seed z=32``: the model in a few words."""
    shared = " shared scale" if m.logistic_scale == "shared" else ""
    lk = f", {m.likelihood}" + (f" x{m.mixtures}{shared}" if m.likelihood == "logistic" else "")
    groups = f" groups {','.join(map(str, m.groups))}" if m.arch == "hvae" else ""
    return f"{m.arch}{' ' + ','.join(map(str, m.widths)) if m.arch != 'seed' else ''} z={m.latent_dim}{groups}{lk}"


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
    if tc.ema:
        parts.append(f", EMA {tc.ema:g}")
    if cfg.data.binarize:
        parts.append(", binarised pixels")
    return "".join(parts)


STOPPED = {
    "done": "all epochs done",
    "max_steps": "--max-steps reached",
    "time_budget": "--time-budget reached",
    "early_stop": "stopped early: no better validation -ELBO for --early-stop evaluations",
    "interrupted": "interrupted",
}


def _summary_table(cfg: Any, result: Any, console: Any) -> None:
    """The end of a run: the explained numbers (vaecli.eval.explain) as a table, then where the run is."""
    from .runs import explained_table

    s = result.summary
    title = f"run {result.run}: {result.epochs} epochs, {result.steps} steps ({STOPPED.get(result.stopped, result.stopped)})"
    console.print(explained_table(cfg, s, title))
    console.print(
        f"time {result.seconds:.1f}s  {_ips(result.images_per_second)} img/s  {result.device} {result.precision}", highlight=False
    )
    console.print(f"run saved in {result.path}", highlight=False, soft_wrap=True)
