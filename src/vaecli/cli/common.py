"""Pieces shared by the commands: consoles, option types, JSON output."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

DEVICE_HELP = "auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)."


def stderr_console():  # type: ignore[no-untyped-def]
    """A rich console on stderr (progress, tables next to --json)."""
    from rich.console import Console

    return Console(stderr=True)


def stdout_console():  # type: ignore[no-untyped-def]
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


class load_reporter:  # noqa: N801 - used as a context manager, like a function
    """A :class:`vaecli.data.FolderLoad` that prints each notice as one line on stderr and shows a
    rich bar while a folder decodes (only past 300 files or 0.5 s); ``quiet``: notices only."""

    def __init__(self, quiet: bool = False, use_cache: bool = True, show_notices: bool = True) -> None:
        self.quiet, self.use_cache, self.show_notices = quiet, use_cache, show_notices
        self.console = stderr_console()
        self.bar: Any = None
        self.task: Any = None
        self.start = 0.0

    def __enter__(self):  # type: ignore[no-untyped-def]
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

            self.bar = Progress(TextColumn("decoding images"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=self.console, transient=True)  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("decode", total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
