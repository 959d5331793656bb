"""Pieces shared by the commands: consoles, JSON output, number checks, the folder-load reporter,
and the inputs and outputs of the commands that read a trained run (images from files or a split,
output checks before any work, files written atomically or PNG bytes to stdout)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from ..config import RunConfig
    from ..data import FolderLoad

DEVICE_HELP = "auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)."


def stderr_console() -> Console:
    """A rich console on stderr (progress, tables next to --json)."""
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Console:
    """A rich console on stdout."""
    from rich.console import Console

    return Console()


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so the output is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """One JSON object on stdout (strict JSON)."""
    sys.stdout.write(json.dumps(_clean(obj)) + "\n")
    sys.stdout.flush()


def fmt(v: Any, digits: int = 2) -> str:
    """A number for a table cell ('-' when missing)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def check_positive(name: str, value: int | float | None, minimum: float = 1) -> None:
    """Reject nonsense numbers with a ConfigError (one line, exit 2)."""
    from ..errors import ConfigError

    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum:g}, got {value}")


class load_reporter:  # lower case: used as a context manager, like a function
    """A :class:`vaecli.data.FolderLoad` that prints each notice as one line on stderr and shows a
    rich bar while a folder decodes (only past 300 files or 0.5 s); ``quiet``: notices only."""

    def __init__(self, quiet: bool = False, use_cache: bool = True, show_notices: bool = True) -> None:
        self.quiet, self.use_cache, self.show_notices = quiet, use_cache, show_notices
        self.console = stderr_console()
        self.bar: Any = None
        self.task: Any = None
        self.start = 0.0

    def __enter__(self) -> FolderLoad:
        import time

        from ..data import FolderLoad

        self.start = time.monotonic()
        return FolderLoad(progress=self._progress, notice=self._notice, use_cache=self.use_cache)

    def _notice(self, line: str) -> None:
        if self.show_notices:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _progress(self, done: int, total: int) -> None:
        import time

        if self.quiet:
            return
        if self.bar is None:
            if total <= 300 and time.monotonic() - self.start < 0.5:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("decoding images"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("decode", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ----------------------------------------------------------------------------- inputs of a trained run's commands


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU random generator seeded with ``--seed``."""
    import torch

    return torch.Generator().manual_seed(seed)


def split_images(cfg: RunConfig, split: str, indices: list[int]) -> torch.Tensor:
    """Float images (N, C, H, W) number ``indices`` (``--index``) of the run's ``split``."""
    from ..data import load_split, to_float
    from ..errors import ConfigError

    data = load_split(cfg.data, split)
    for i in indices:
        if not 0 <= i < len(data):
            raise ConfigError(f"--index {i} is out of range: the {split} split has images 0..{len(data) - 1}")
    return to_float(data.images[indices])


def _decode_inputs(items: Sequence[Any], cfg: RunConfig) -> torch.Tensor:
    from ..data import to_float
    from ..render.images import load_inputs

    return to_float(load_inputs(items, cfg.model.channels, cfg.model.image_size, cfg.data.fit))


def image_files(paths: Sequence[str], cfg: RunConfig) -> torch.Tensor:
    """Float images (N, C, H, W) of image files named on the command line, decoded by the run's rule."""
    from ..render.images import InputImage

    return _decode_inputs([InputImage(Path(p).expanduser(), Path(p)) for p in paths], cfg)


def read_inputs(inputs: list[str] | None, split: str | None, n: int, cfg: RunConfig) -> tuple[torch.Tensor, list[str], list[PurePath]]:
    """Float images (N, C, H, W), display paths and output names from INPUTS or ``--split``/``-n``."""
    from ..data import load_split, to_float
    from ..errors import ConfigError
    from ..render.images import collect_inputs, output_name

    if split is not None:
        if inputs:
            raise ConfigError("give INPUTS or --split, not both")
        check_positive("-n", n)
        data = load_split(cfg.data, split)
        if len(data) == 0:
            raise ConfigError(f"the {split} split is empty")
        k = min(n, len(data))
        paths = [f"{split}/{i:05d}" for i in range(k)]
        return to_float(data.images[:k]), paths, [output_name(p, "image") for p in paths]
    if not inputs:
        raise ConfigError("no inputs: give image files, folders, - (paths on stdin) or --split test")
    items = collect_inputs(inputs)
    return _decode_inputs(items, cfg), [str(it.path) for it in items], [it.rel for it in items]


# ----------------------------------------------------------------------------- outputs


def check_target(path: str | None, what: str = "-o") -> None:
    """Refuse an output file name that is empty or a folder (``-`` is stdout)."""
    from ..errors import ConfigError

    if path is None or path == "-":
        return
    if not path.strip():
        raise ConfigError(f"{what} must not be empty")
    if Path(path).expanduser().is_dir():
        raise ConfigError(f"{what} {path} is a folder (give a file name)")


def check_outputs(
    output: str | None, *, out_dir: str | None = None, gif: str | None = None, nrow: int | None = None, padding: int = 0
) -> None:
    """Refuse bad output options before any work: grid layout numbers, -o, --gif and --out-dir targets."""
    from ..errors import ConfigError
    from ..render.images import check_grid

    check_grid(nrow, padding)
    check_target(output)
    check_target(gif, "--gif")
    if out_dir is not None and Path(out_dir).expanduser().exists() and not Path(out_dir).expanduser().is_dir():
        raise ConfigError(f"--out-dir {out_dir} exists and is not a folder")


def files_in(out_dir: str, names: Sequence[PurePath | str], pngs: list[bytes]) -> list[tuple[str, bytes]]:
    """(path, bytes) of one PNG per name under ``--out-dir``; two outputs of the same name are refused."""
    from ..render.images import check_unique

    check_unique(names)
    return [(str(Path(out_dir).expanduser() / n), b) for n, b in zip(names, pngs)]


def _stdout_binary(data: bytes) -> None:
    from ..errors import ConfigError

    if sys.stdout.isatty():
        raise ConfigError("refusing to write PNG bytes to a terminal: redirect stdout or give -o FILE")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def write_outputs(files: list[tuple[str, bytes]]) -> None:
    """Write rendered outputs: '-' goes to stdout, files atomically (temp + fsync + rename); says what it wrote on stderr."""
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
