"""The JSON-lines format of ``vae encode`` / ``vae decode``.

One JSON value per line: an object ``{"path": ..., "mu": [...], "logvar": [...]}`` (what
``vae encode`` writes; ``path`` and ``logvar`` optional, ``z`` accepted in place of ``mu``) or a
bare list of numbers (a latent vector). Blank lines are skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import torch

from ..errors import DataError

FLOAT32_MAX = 3.4028234663852886e38  # larger values would become inf in the float32 latent tensor


def format_lines(paths: Sequence[str], mu: torch.Tensor, logvar: torch.Tensor) -> str:
    """JSON lines ``{"path", "mu", "logvar"}``, one per row (floats written exactly, float32 round-trips)."""
    out = []
    for p, m, lv in zip(paths, mu.tolist(), logvar.tolist()):
        out.append(json.dumps({"path": str(p), "mu": m, "logvar": lv}) + "\n")
    return "".join(out)


def _vector(value: object, where: str, latent_dim: int) -> list[float]:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of {latent_dim} numbers")
    if len(value) != latent_dim:
        raise DataError(f"{where}: expected {latent_dim} numbers (the model's latent size), got {len(value)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DataError(f"{where}: {v!r} is not a finite number")
        f = float(v) if isinstance(v, float) or abs(v) <= FLOAT32_MAX else math.inf  # huge ints: no OverflowError
        if not math.isfinite(f) or abs(f) > FLOAT32_MAX:
            shown = repr(v) if isinstance(v, float) else f"an integer of {len(str(abs(v)))} digits"
            raise DataError(f"{where}: {shown} is not a finite number (as float32: |z| <= 3.4e38)")
        out.append(f)
    return out


def _is_file_name(path: str) -> bool:
    """True when ``path`` can name a file here (no NUL, encodable: a lone surrogate cannot)."""
    try:
        os.fsencode(path)
    except UnicodeError:
        return False
    return "\x00" not in path


def parse_lines(text: str, latent_dim: int, source: str = "stdin") -> tuple[torch.Tensor, list[str | None]]:
    """Latent vectors (N, latent_dim) and their ``path`` (None when absent) from JSON lines.

    Raises :class:`DataError` naming the first bad line; nothing is returned for a partly valid input.
    """
    zs: list[list[float]] = []
    paths: list[str | None] = []
    for no, line in enumerate(text.split("\n"), start=1):  # JSON lines end at "\n" only (not at U+2028 ...)
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{source} line {no}"
        try:
            obj = json.loads(line, parse_constant=lambda c: float("nan"))
        except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
            raise DataError(f'{where}: not valid JSON (expected {{"mu": [...]}} or a list of numbers)') from None
        if isinstance(obj, dict):
            key = "mu" if "mu" in obj else "z" if "z" in obj else None
            if key is None:
                raise DataError(f'{where}: object has no "mu" (or "z") list')
            vec = _vector(obj[key], f'{where} "{key}"', latent_dim)
            path = obj.get("path")
            if path is not None and (not isinstance(path, str) or not path.strip()):
                raise DataError(f'{where}: "path" must be a non-empty string')
            if path is not None and not _is_file_name(path):
                raise DataError(f'{where}: "path" is not a usable file name')
            paths.append(path)
        else:
            vec = _vector(obj, where, latent_dim)
            paths.append(None)
        zs.append(vec)
    if not zs:
        raise DataError(f"no latent vectors in {source} (expected JSON lines from `vae encode`)")
    return torch.tensor(zs, dtype=torch.float32), paths
