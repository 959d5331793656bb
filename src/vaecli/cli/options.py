"""Options shared by commands, declared once: Annotated aliases (``split: Split = "test"``) and the
``--run/--checkpoint/--device`` group that every command reading a trained model takes
(:func:`model_options`, as llm's option groups)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from .common import DEVICE_HELP

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..model.vae import VAE

# Optional[...] stays: Typer reads these annotations at run time on Python 3.10.
OptStr = Optional[str]  # noqa: UP045
OptInt = Optional[int]  # noqa: UP045
OptBool = Optional[bool]  # noqa: UP045
OptInts = Optional[list[int]]  # noqa: UP045
OptStrs = Optional[list[str]]  # noqa: UP045
Run = Annotated[OptStr, typer.Option("--run", help="Run name (default: the most recently trained run).")]
Checkpoint = Annotated[OptStr, typer.Option("--checkpoint", help="A run folder or its model.safetensors (instead of --run).")]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (prior samples, posterior samples).")]
Padding = Annotated[int, typer.Option("--padding", help="Pixels between grid tiles (make_grid padding).")]
Scale = Annotated[int, typer.Option("--scale", help="Upscale every image by this integer factor (nearest neighbour).")]
GridOutput = Annotated[OptStr, typer.Option("--output", "-o", help="Grid PNG to write ('-' = PNG bytes on stdout; default <command>.png).")]
AlsoGrid = Annotated[OptStr, typer.Option("--output", "-o", help="Also write a grid PNG ('-' = PNG bytes on stdout).")]
Split = Annotated[
    str, typer.Option("--split", help="Split of the run's dataset: test, val (the validation images carved out of training) or train.")
]
Inputs = Annotated[OptStrs, typer.Argument(help="Image files, folders (recursive), or - (paths on stdin).")]
InputSplit = Annotated[OptStr, typer.Option("--split", help="Take images from the run's dataset instead: test, val or train.")]
InputN = Annotated[int, typer.Option("-n", "--num", help="With --split: the first N images.")]
Fps = Annotated[float, typer.Option("--fps", help="GIF frames per second.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")]
PriorChoice = Annotated[
    str, typer.Option("--prior", help="auto (the run's fitted prior when it has one, see `vae fit-prior`; else N(0, I)) | fitted | normal.")
]
Temperature = Annotated[
    float,
    typer.Option(
        "--temperature", "-t", help="Spread of the prior (1 = the prior itself): N(0, T² I); gmm: covariances x T²; flow: base noise x T."
    ),
]

GroupTemperature = Annotated[
    OptStr,
    typer.Option(
        "--group-temperature",
        help="Hierarchical models (--arch hvae): spread of each latent group's learned prior below the top latent, one value or "
        "one per group (deepest first), e.g. 0.8 or 1,0.7 (default 0: each group's prior mean given the groups above, "
        "measured cleaner; 1: the priors as learned).",
    ),
]


def parse_group_temperature(text: str | None) -> list[float] | None:
    """``"1,0.7"`` -> ``[1.0, 0.7]`` (None stays None); not numbers: one usage error."""
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"--group-temperature takes numbers like 0.8 or 1,0.7, got {text!r}") from None


@dataclass(frozen=True)
class ModelSource:
    """Where a command's trained model comes from: ``--run`` or ``--checkpoint``, on ``--device``."""

    run: str | None = None
    checkpoint: str | None = None
    device: str = "auto"

    def locate(self) -> tuple[Path, Path | None]:
        """(run folder, the weights file ``--checkpoint`` names, else None for the run's own); bad references are one-line errors."""
        from ..errors import CheckpointError, ConfigError, RunNotFoundError
        from ..runs import store as ckpt

        if self.run is not None and self.checkpoint is not None:
            raise ConfigError("give --run or --checkpoint, not both")
        if self.checkpoint is None:
            return ckpt.resolve_run(self.run), None
        p = Path(self.checkpoint).expanduser()
        if not p.exists():
            raise RunNotFoundError(f"--checkpoint {self.checkpoint}: no such file or folder")
        if p.is_file() and not p.name.endswith(".safetensors"):
            raise CheckpointError(
                f"--checkpoint {self.checkpoint}: not a vaecli checkpoint (expected a run folder or its model.safetensors)"
            )
        return ckpt.resolve_run(p), p if p.is_file() else None

    def load(self) -> tuple[VAE, RunConfig, Path]:
        """(model in eval mode on its device, run config, run folder), by :func:`vaecli.runs.store.load_model`."""
        from ..device import resolve_device
        from ..runs import store as ckpt

        dev = resolve_device(self.device)
        folder, weights = self.locate()
        return ckpt.load_model(folder, dev, weights=weights)


F = TypeVar("F", bound=Callable[..., Any])


def model_options(func: F) -> F:
    """Give a command the options ``--run``, ``--checkpoint`` and ``--device``; it receives them as
    one keyword argument ``model_source: ModelSource`` (and loads the model when its checks have passed)."""
    sig = inspect.signature(func, eval_str=True)  # the aliases as objects, not strings
    params = [p for p in sig.parameters.values() if p.name != "model_source"]
    group = {"run": (Run, None), "checkpoint": (Checkpoint, None), "device": (Device, "auto")}
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for k, (a, d) in group.items()]

    @functools.wraps(func)
    def wrapper(*args: Any, run: str | None = None, checkpoint: str | None = None, device: str = "auto", **kwargs: Any) -> Any:
        return func(*args, model_source=ModelSource(run, checkpoint, device), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{k: v for k, v in func.__annotations__.items() if k != "model_source"},
        **{k: a for k, (a, _) in group.items()},
    }
    return wrapper  # type: ignore[return-value]
