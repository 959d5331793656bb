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

