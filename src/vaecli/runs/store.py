"""Runs on disk: ``config.json`` (and ``config.toml``) + ``model.safetensors`` + ``train_state.safetensors`` +
``metrics.jsonl`` + ``summary.json`` + ``loss.png`` in ``<runs dir>/<name>/``.

Only safetensors and JSON are ever read: no pickle, no ``torch.load`` on user files.
Every write goes through :mod:`vaecli.fileio` (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, RunNotFoundError
from ..fileio import atomic_write, atomic_write_json, atomic_write_text
from ..paths import runs_dir
from .state import TrainState

if TYPE_CHECKING:
    from ..model.vae import VAE

CONFIG = "config.json"
MODEL = "model.safetensors"
STATE = "train_state.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOSS_PLOT = "loss.png"
PRIOR = "prior.safetensors"  # a prior fitted after training (vaecli.train.fit_prior, vaecli.runs.priors)
PRIOR_INFO = "prior.json"
MODEL_FORMAT = "vaecli-model-1"
WEIGHTS_SHA256 = "weights_sha256"  # model.safetensors metadata: the fingerprint of its tensors (weights_fingerprint)
STATE_FORMAT = "vaecli-train-state-1"
SWEEPS = "sweeps"  # <runs dir>/sweeps/NAME/: the plans and results of `vae sweep`
RESERVED = {SWEEPS: "the runs folder keeps the plans of `vae sweep` there"}  # folders of the runs dir that are no runs
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


FINISHED = frozenset({"done", "max_steps", "time_budget", "early_stop"})  # summary.json "stopped" of a run that is over


def validate_run_name(name: str) -> str:
    """A run name is a plain folder name: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' (max 128)")
    return name


def generate_run_name(prefix: str = "vae") -> str:
    """A fresh name like ``vae-20261124-223015`` (suffixed when taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{prefix}-{stamp}"
    name, i = base, 2
    while (runs_dir() / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def utc_now() -> str:
    """ISO-8601 UTC timestamp, second precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------- locating runs


PRETRAINED = "pretrained:"  # `--run pretrained:NAME`: a run shipped inside the package, read-only


def pretrained_dir() -> Path:
    """The folder of the runs shipped inside the package (``vaecli/assets/pretrained/NAME``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "pretrained"


def pretrained_runs() -> list[Path]:
    """The shipped runs, by name."""
    root = pretrained_dir()
    return sorted(p for p in root.iterdir() if (p / CONFIG).exists()) if root.is_dir() else []


def is_pretrained(run: Path) -> bool:
    """Whether ``run`` is a run shipped inside the package (read-only)."""
    return Path(run).resolve().parent == pretrained_dir()


def run_ref(run: Path) -> str:
    """How to name ``run`` on the command line: ``pretrained:NAME`` for a shipped run, else its folder name."""
    return f"{PRETRAINED}{Path(run).name}" if is_pretrained(run) else Path(run).name


def check_writable(run: Path, what: str) -> None:
    """Refuse to write ``what`` into a shipped run (it lives inside the installed package)."""
    if is_pretrained(run):
        raise CheckpointError(f"{run_ref(run)} is a pretrained run shipped with vaecli and is read-only: cannot store {what} in it")


def resolve_run(ref: str | os.PathLike[str] | None = None) -> Path:
    """Folder of a run given its name, its folder, its ``model.safetensors`` or ``pretrained:NAME`` (a
    run shipped inside the package); None = the latest run."""
    if ref is None:
        return latest_run()
    if str(ref).startswith(PRETRAINED):
        name = str(ref)[len(PRETRAINED) :]
        shipped = {p.name: p for p in pretrained_runs()}
        if name not in shipped:
            have = ", ".join(PRETRAINED + n for n in shipped) or "none"
            raise RunNotFoundError(f"no pretrained run named {name!r} (shipped: {have})")
        return shipped[name]
    p = Path(ref).expanduser()
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if p.is_dir() and (p / CONFIG).exists():
        return p
    s = str(ref)
    if "/" not in s and s not in (".", ".."):
        cand = runs_dir() / s
        if (cand / CONFIG).exists():
            return cand
    if p.is_dir():
        raise CheckpointError(f"{p} is not a vaecli run (no {CONFIG})")
    if p.is_file():
        raise CheckpointError(f"{p} is not a vaecli checkpoint (expected a run folder or its {MODEL})")
    raise RunNotFoundError(f"no run named {s!r} in {runs_dir()} (see `vae runs`)")


def list_runs() -> list[Path]:
    """Run folders under :func:`runs_dir`, oldest first (by creation time in config.json)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / CONFIG).exists()]

    def key(p: Path) -> tuple[str, float]:
        try:
            created = json.loads((p / CONFIG).read_text("utf-8")).get("created", "")
        except (OSError, ValueError, AttributeError):
            created = ""
        return (str(created), (p / CONFIG).stat().st_mtime)

    return sorted(runs, key=key)


def latest_run() -> Path:
    """The most recently created run that has weights."""
    runs = [p for p in list_runs() if (p / MODEL).exists()]
    if not runs:
        raise RunNotFoundError(f"no trained runs in {runs_dir()}: train one with `vae train`")
    return runs[-1]


def create_run_dir(name: str, overwrite: bool = False) -> Path:
    """Make ``<runs dir>/<name>``; an existing run is refused unless ``overwrite``."""
    validate_run_name(name)
    if name in RESERVED:
        raise ConfigError(f"run name {name!r} is reserved: {RESERVED[name]}")
    path = runs_dir() / name
    if path.exists() and not overwrite and not (path / MODEL).exists() and not (path / STATE).exists():
        overwrite = True  # a run that never saved weights (failed at start) holds nothing to lose
    if path.exists():
        if not overwrite:
            raise ConfigError(f"run {name!r} already exists: use --resume {name} to continue it or --overwrite to replace it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------- config


def write_config(run: Path, cfg: RunConfig) -> None:
    """Write ``config.json``, then ``config.toml`` (the run's options, :mod:`vaecli.runs.options`)."""
    from .options import write_run_options

    atomic_write_json(run / CONFIG, cfg.to_dict())
    write_run_options(run, cfg)


def read_json_file(path: Path, missing: Exception) -> Any:
    """A run's JSON file, parsed: ``missing`` raised when it is not there, a CheckpointError naming
    the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise missing from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None


def read_config(run: Path) -> RunConfig:
    """Read and validate ``config.json``."""
    path = run / CONFIG
    data = read_json_file(path, RunNotFoundError(f"{run} has no {CONFIG}"))
    try:
        return RunConfig.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- tensors


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file (tensors and metadata); anything else -> CheckpointError."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises SafetensorError / OSError / others on junk
        head = path.read_bytes()[:2] if path.is_file() else b""
        hint = " (it looks like a pickle: refused, pickles are never loaded)" if head[:1] == b"\x80" or head[:2] == b"PK" else ""
        raise CheckpointError(
            f"{path}: not a safetensors file{hint} ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
        ) from None
    return tensors, meta


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def save_model(run: Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (state dict of the bare model; the config and the weights'
    fingerprint, see :func:`weights_fingerprint`, in the metadata)."""
    sd = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    meta = {"format": MODEL_FORMAT, "model_config": json.dumps(config), WEIGHTS_SHA256: _tensors_sha256(sd)}
    write_safetensors(run / MODEL, sd, meta)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / compile wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


# ----------------------------------------------------------------------------- fingerprints of weights
#
# What a fitted prior records to tell later whether it is sampled with the weights it was fitted to.
# The cheapest correct choice: the SHA-256 of the state dict's tensors, computed once when the
# weights are written (save_model puts it in model.safetensors' metadata, which loading reads anyway:
# no extra I/O) and stamped on the model that load_model returns, with the version counter, storage
# address and dtype of each of its tensors. Asking again costs nothing while those are unchanged;
# hashing happens only for a model whose file has no fingerprint or whose weights changed since (an
# optimizer step, load_state_dict, ``add_``, ``.to(dtype)``): then from the tensors in memory, never
# by reading the file again. (Writing through ``p.data.copy_`` bypasses version counters; no code
# here does, and a model that load_model returned is only read.)

_STAMP = "_vaecli_weights_sha256"  # attribute of a model: (fingerprint, _tensor_state of its tensors)


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the bytes, not copied
    return h.hexdigest()


def _tensor_state(model: torch.nn.Module) -> tuple[tuple[int, int, str], ...] | None:
    try:
        return tuple((t._version, t.data_ptr(), str(t.dtype)) for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:  # inference tensors have no version counter
        return None


def _stamp(model: torch.nn.Module, fingerprint: str) -> None:
    model = _unwrap(model)
    object.__setattr__(model, _STAMP, (fingerprint, _tensor_state(model)))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """The SHA-256 of ``model``'s weights as :func:`save_model` stores it: the stamp that
    :func:`load_model` left while the weights are unchanged since, else hashed from the tensors."""
    model = _unwrap(model)
    stamp = getattr(model, _STAMP, None)
    state = _tensor_state(model)
    if stamp is not None and state is not None and stamp[1] == state:
        return str(stamp[0])
    fingerprint = _tensors_sha256(model.state_dict())
    _stamp(model, fingerprint)
    return fingerprint


def load_state_dict_into(model: torch.nn.Module, path: Path) -> dict[str, str]:
    """Load ``model.safetensors`` into ``model``, checking names and shapes; returns the file's metadata."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a vaecli model (format {meta.get('format')!r})")
    load_checked(model, tensors, path)
    return meta


def load_checked(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(tensors)`` after checking that names, shapes and dtypes match. Weights
    stored in half precision (the shipped pretrained runs) load into float32 parameters; a VAE's
    tensors saved before its encoder and decoder had named parts load under their names now
    (:func:`vaecli.model.vae.upgrade_state_dict`)."""
    from ..model.vae import upgrade_state_dict

    tensors = upgrade_state_dict(model, tensors)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        half = v.dtype == torch.float32 and tensors[k].dtype in (torch.float16, torch.bfloat16)
        if tuple(v.shape) != tuple(tensors[k].shape) or (v.dtype != tensors[k].dtype and not half):
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, the config needs {tuple(v.shape)}")
    model.load_state_dict(tensors)


def load_model(
    ref: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu", weights: str | os.PathLike[str] | None = None
) -> tuple[VAE, RunConfig, Path]:
    """Load a run's model in eval mode on ``device`` (a name as ``--device`` takes, e.g. ``auto``, or
    a torch.device): returns ``(model, run_config, run_path)``. ``ref`` is as :func:`resolve_run`
    takes it; ``weights`` is a safetensors file to load instead of the run's ``model.safetensors``."""
    from ..device import resolve_device
    from ..model.vae import VAE

    dev = resolve_device(device) if isinstance(device, str) else device
    run = resolve_run(ref)
    cfg = read_config(run)
    model = VAE(cfg.model)
    meta = load_state_dict_into(model, Path(weights) if weights is not None else run / MODEL)
    model.to(dev).eval()
    if meta.get(WEIGHTS_SHA256):  # the weights' fingerprint, for free (see weights_fingerprint)
        _stamp(model, meta[WEIGHTS_SHA256])
    return model, cfg, run


def save_train_state(
    run: Path,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: TrainState,
    model: torch.nn.Module,
    ema: torch.nn.Module | None = None,
) -> None:
    """Write ``train_state.safetensors``, the resume point, in one atomic file: the model's current
    (last) weights, the moving average of the weights when there is one, the optimizer's state, the
    RNG states and the :class:`~vaecli.runs.state.TrainState` (JSON metadata)."""
    sd = optimizer.state_dict()
    out = {f"rng.{k}": v for k, v in rng.items()}
    out.update({f"model.{k}": v for k, v in _unwrap(model).state_dict().items()})
    if ema is not None:
        out.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for idx, pstate in sd["state"].items():
        for key, val in pstate.items():
            out[f"opt.{idx}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    meta = {"format": STATE_FORMAT, "param_groups": json.dumps(sd["param_groups"]), "state": json.dumps(state.to_json())}
    write_safetensors(run / STATE, out, meta)


def load_train_state(
    run: Path, optimizer: torch.optim.Optimizer, model: torch.nn.Module, ema: torch.nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], TrainState]:
    """Restore the model's last weights, the moving average (into ``ema``, when given) and the
    optimizer from ``train_state.safetensors``; return (RNG states, :class:`~vaecli.runs.state.TrainState`)."""
    path = run / STATE
    tensors, meta = read_safetensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a vaecli training state")
    try:
        groups = json.loads(meta["param_groups"])
        state = TrainState.from_json(json.loads(meta["state"]), str(path))
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: damaged metadata") from None
    parts: dict[str, dict[str, torch.Tensor]] = {"rng": {}, "model": {}, "ema": {}, "opt": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        if head not in parts or not rest:
            raise CheckpointError(f"{path}: unexpected tensor {k!r}")
        parts[head][rest] = v
    load_checked(model, parts["model"], path)
    if ema is not None:
        if not parts["ema"]:
            raise CheckpointError(f"{path}: no moving average of the weights in the training state (--ema)")
        load_checked(ema, parts["ema"], path)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in parts["opt"].items():
        idx, _, key = k.partition(".")
        if not idx.isdigit() or not key:
            raise CheckpointError(f"{path}: damaged optimizer state ({k!r})")
        opt_state.setdefault(int(idx), {})[key] = v
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not match the model ({exc})") from None
    return parts["rng"], state


def read_train_state(run: Path) -> TrainState | None:
    """The :class:`~vaecli.runs.state.TrainState` of ``train_state.safetensors`` (its metadata only, no
    tensors read), or None when the run has none or it cannot be read."""
    from safetensors import safe_open

    path = run / STATE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
        if meta.get("format") != STATE_FORMAT:
            return None
        return TrainState.from_json(json.loads(meta["state"]), str(path))
    except Exception:  # damaged or foreign file: no usable state
        return None


def remove_temp_files(run: Path) -> list[str]:
    """Delete temp files that a killed writer left in ``run`` (``.<file>.<random>.tmp`` of
    :func:`vaecli.fileio.atomic_write`); call only while no other process writes to the run."""
    names = (CONFIG, MODEL, STATE, METRICS, SUMMARY, LOSS_PLOT, PRIOR, PRIOR_INFO)
    removed = []
    for p in run.iterdir():
        if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


# ----------------------------------------------------------------------------- metrics


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl``: one JSON object per completed epoch, and after a stop inside an
    epoch one last row for the part done, marked ``"partial": true`` with its ``steps`` and
    ``epochs_done`` (replaced when the epoch completes)."""
    atomic_write_text(run / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; unparsable lines are skipped."""
    path = run / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def build_summary(result: dict[str, Any], state: TrainState, facts: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of a training invocation: the headline ``result`` (run, epochs, steps, train
    and test numbers, active units, stop reason, speed), the best and the last validation
    evaluations, recoveries and notices from the state, and the ``facts`` of how it ran (the test
    split's per-dimension statistics, likelihood, held-out sizes, runtime, DDP)."""
    notes = [{"kind": "note", "epoch": state.epoch, "message": m} for m in facts.pop("notes", [])]
    last_val = facts.pop("last_val", None)
    return {
        **result,
        "epochs_done": facts.pop("epochs_done"),
        "best": state.best,
        "last": {"epoch": facts.pop("last_epoch"), "val": last_val},
        "nonfinite_skipped": state.nonfinite_skipped,
        "recoveries": list(state.recoveries),
        "notices": [*state.notices, *notes],
        "train_seconds": round(state.train_seconds, 3),
        **facts,
    }


def write_summary(run: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (the latest end-of-training numbers)."""
    atomic_write_json(run / SUMMARY, summary)


def read_summary(run: Path) -> dict[str, Any]:
    """``summary.json`` or {} when absent/damaged."""
    try:
        data = json.loads((run / SUMMARY).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_brief(run: Path, cfg: RunConfig | None = None) -> dict[str, Any]:
    """One row of a run list: name, path, created, data, arch, z, beta, epochs, test -ELBO
    (from ``summary.json``, else the last ``metrics.jsonl`` row)."""
    cfg = cfg or read_config(run)
    summary = read_summary(run)
    metrics = read_metrics(run)
    test = summary.get("test") or {}
    return {
        "name": run_ref(run),
        "path": str(run),
        "created": cfg.created,
        "data": cfg.data.name,
        "arch": cfg.model.arch,
        "latent_dim": cfg.model.latent_dim,
        "beta": cfg.train.beta,
        "epochs": summary.get("epochs", sum(1 for r in metrics if not r.get("partial"))),  # complete epochs
        "test_neg_elbo": test.get("neg_elbo"),
    }
