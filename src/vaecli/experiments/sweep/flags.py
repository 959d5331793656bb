"""The swept flags: ``vae train`` options as the sweep sees them (:class:`Flag`), the parsing of a
sweep's arguments and of comma-separated values, and how a value is written in commands and names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

REFUSED = {
    "resume": "a sweep resumes its own runs (run the same `vae sweep` command again)",
    "eval_samples": "the sweep scores every run itself (see --score and -n of vae sweep)",
    "from_run": "give the sweep --config RUN_DIR/config.toml to start from a run's options",
    "name": "the sweep names its runs (give the sweep --name)",
}


@dataclass(frozen=True)
class Flag:
    """A ``vae train`` option as the sweep sees it: its parameter name (``latent_dim``), its option
    strings (``--latent-dim``), the kind of value (int, float, str or bool for an on/off flag) and
    whether its own value is comma-separated (``--widths 16,32``: never a sweep)."""

    name: str
    opts: tuple[str, ...]
    kind: str
    takes_list: bool = False

    @property
    def option(self) -> str:
        """The long option string (``--beta``)."""
        return next((o for o in self.opts if o.startswith("--")), self.opts[0])

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


def parse_values(flag: Flag, text: str) -> list[int | float]:
    """``"0.25,0.5,1"`` -> [0.25, 0.5, 1.0] for a numeric ``flag`` (whole numbers for an int flag);
    anything else, a repeated value or a non-finite one is a ConfigError naming the flag."""
    if not flag.numeric:
        raise ConfigError(f"{flag.option} takes text, not numbers: only numeric vae train flags can be swept")
    values: list[int | float] = []
    for part in text.split(","):
        p = part.strip()
        try:
            v: int | float = int(p) if flag.kind == "int" else float(p)
        except ValueError:
            kind = "a whole number" if flag.kind == "int" else "a number"
            raise ConfigError(f"{flag.option} {text}: {p!r} is not {kind}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{flag.option} {text}: {p!r} is not a finite number")
        if v in values:
            raise ConfigError(f"{flag.option} {text}: {value_text(v)} is listed twice")
        values.append(v)
    return values


def value_text(v: int | float) -> str:
    """A swept value as it is written in commands and run names: ``0.25``, ``1``, ``1e-05``."""
    if isinstance(v, int):
        return str(v)
    return f"{v:.12g}"


def parse_args(tokens: Sequence[str], flags: Sequence[Flag]) -> list[tuple[Flag, str | None]]:
    """``vae train`` options (``--beta 0.5,1 --binarize --lr=1e-3``) as (flag, value) pairs, in order;
    an on/off flag has value None. Unknown options, stray words and repeated flags are ConfigErrors."""
    by_opt = {o: f for f in flags for o in f.opts}
    out: list[tuple[Flag, str | None]] = []
    seen: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        opt, eq, val = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        flag = by_opt.get(opt)
        if flag is None:
            if not tok.startswith("-"):
                raise ConfigError(f"unexpected argument {tok!r}: vae sweep takes vae train options, e.g. --beta 0.5,1,4")
            raise ConfigError(f"unknown option {opt}: not a vae train flag (see vae train --help)")
        if flag.name in REFUSED:
            raise ConfigError(f"{flag.option} is not for a sweep: {REFUSED[flag.name]}")
        if flag.name in seen:
            raise ConfigError(f"{flag.option} is given twice")
        seen.add(flag.name)
        if flag.kind == "bool":
            if eq:
                raise ConfigError(f"{flag.option} takes no value")
            out.append((flag, None))
            i += 1
            continue
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{flag.option} needs a value")
            val, i = tokens[i + 1], i + 2
        else:
            i += 1
        out.append((flag, val))
    return out


def file_args(
    values: Mapping[str, Any], flags: Sequence[Flag], given: Sequence[tuple[Flag, str | None]], where: str
) -> list[tuple[Flag, str | None]]:
    """The options of a config file (``values``: parameter name -> value, as
    :func:`vaecli.runs.options.check_options` returns them) as (flag, value) pairs like
    :func:`parse_args`', leaving out those ``given`` on the command line (they override the file);
    an on/off flag that is off is left out."""
    by_name = {f.name: f for f in flags}
    over = {f.name for f, _ in given}
    out: list[tuple[Flag, str | None]] = []
    for name, v in values.items():
        flag = by_name[name]
        if name in over or v is False:
            continue
        if name in REFUSED:
            raise ConfigError(f"{where}: {flag.option[2:].replace('-', '_')} is not for a sweep: {REFUSED[name]}")
        text = None if v is True else value_text(v) if isinstance(v, (int, float)) else str(v)
        out.append((flag, text))
    return out
