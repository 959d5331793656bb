"""A run's options as a TOML file: ``vae train --config FILE.toml`` reads one (every ``vae train``
option as a key, spelt with ``-`` or ``_``), and every run writes its resolved options as
``config.toml`` beside ``config.json``, so that ``vae train --config RUN/config.toml`` trains it again.

The option list is not kept here: the CLI passes the kinds of its options (:data:`OptionKinds`,
read off the command's own parameters), so a new flag is a key as soon as it exists. Values are
returned in the form the command line gives them (``widths`` as ``"16,32"``) and checked further
as the command line's are (ranges: :func:`vaecli.config.check_given`).
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import MODEL_FIELDS, TRAIN_FIELDS, RunConfig, unread_by
from ..errors import ConfigError
from ..fileio import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOML = "config.toml"  # beside config.json in every run folder
KINDS = ("bool", "int", "float", "str", "list")  # list: integers, a TOML array or "16,32"
OptionKinds = Mapping[str, tuple[str, str]]  # key (the long option name, '_' for '-') -> (parameter name, kind)
NOT_IN_FILES = {
    "config": "a config file names no other file",
    "from": "give --from on the command line",
    "resume": "give --resume on the command line (a config file starts a new run)",
}
# DataConfig fields -> the option that sets them (the other data fields are found, not given)
DATA_OPTIONS = {"name": "data", "root": "data_dir", "image_size": "image_size", "channels": "channels", "fit": "fit",
                "max_image_size": "max_image_size", "strict": "strict", "binarize": "binarize", "split_seed": "split_seed",
                "val_size": "val_size"}  # fmt: skip
NOT_OPTIONS = frozenset({"world_size", "tensorboard"})  # TrainConfig fields with no option of that name


def key_of(name: str) -> str:
    """A file key as the options are looked up: ``latent-dim`` and ``latent_dim`` are one key."""
    return name.replace("-", "_")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML file; a missing or unparsable file is one ConfigError line."""
    p = Path(path).expanduser()
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def check_options(values: Mapping[str, Any], kinds: OptionKinds, where: str) -> dict[str, Any]:
    """``values`` (a file's table) as {parameter name: value in the command line's form}: an unknown
    key is refused with the nearest valid one, a value of the wrong type with its key."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        k = key_of(key)
        if k in NOT_IN_FILES:
            raise ConfigError(f"{where}: {key} cannot be set in a config file: {NOT_IN_FILES[k]}")
        if k not in kinds:
            near = difflib.get_close_matches(k, [x for x in kinds if x not in NOT_IN_FILES], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else " (the keys are the options of vae train --help)"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        param, kind = kinds[k]
        if param in out:
            raise ConfigError(f"{where}: {key} is given twice (as - and _)")
        out[param] = _checked(f"{where}: {key}", kind, value)
    return out


def _checked(what: str, kind: str, v: Any) -> Any:
    """A file's value checked against the option's kind, in the command line's form."""
    is_int = isinstance(v, int) and not isinstance(v, bool)
    shown = "a table" if isinstance(v, dict) else repr(v)
    if kind == "bool" and isinstance(v, bool):
        return v
    if kind == "int" and is_int:
        return v
    if kind == "float" and (is_int or isinstance(v, float)):
        return float(v)
    if kind in ("str", "list") and isinstance(v, str):
        return v
    if kind == "list" and isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return ",".join(map(str, v))
    want = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
            "list": "a list of integers like [16, 32] (or \"16,32\")"}[kind]  # fmt: skip
    raise ConfigError(f"{what} must be {want}, got {shown}")


# ----------------------------------------------------------------------------- a run's own options


def run_options(cfg: RunConfig) -> dict[str, Any]:
    """The resolved options of a run, by file key: what ``vae train --config`` needs to train it
    again (data, model, training; not its name, nor what it found in its data)."""
    data = cfg.data.to_dict()
    out: dict[str, Any] = {opt: data[f] for f, opt in DATA_OPTIONS.items()}
    model = cfg.model.to_dict()
    out.update({k: model[k] for k in sorted(MODEL_FIELDS, key=list(model).index) if unread_by(model, k) is None})  # what the model reads
    train = cfg.train.to_dict()
    out.update({k: v for k, v in train.items() if k in TRAIN_FIELDS - NOT_OPTIONS and k != "log_images_every"})
    if cfg.train.tensorboard is not None:  # its folder is where the run logged, as its name: a new run logs in its own
        out.update(tensorboard=True, log_images_every=cfg.train.log_images_every)
    return {k: v for k, v in out.items() if v is not None}


def write_run_options(run: Path, cfg: RunConfig) -> None:
    """Write the run's ``config.toml`` (atomically)."""
    head = (
        f"# run {cfg.name}: its options, as vae train resolved them ({cfg.created}).\n"
        f"# vae train --config {TOML} --name NEW trains it again; flags on the command line override these.\n"
    )
    atomic_write_text(run / TOML, head + toml_text(run_options(cfg)))


def toml_text(values: Mapping[str, Any]) -> str:
    """Flat ``key = value`` lines for str, int, float, bool and lists of them (the values of a run's
    options); anything else is a TypeError."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML value for {type(v).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, the rest as it is."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
