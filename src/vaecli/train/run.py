"""The run lifecycle: plan a run (the data, then the one rule for defaults), start it in a new run
folder, or reopen one to resume it (what may change on a resume and what may not)."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__, distributed
from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig, check_given
from ..data import FolderLoad, ImageData, load_data
from ..errors import ConfigError
from ..runs import store as ckpt
from .recipe import accepted_image_size, build_configs, validation_size
from .trainer import Trainer


def _versions() -> dict[str, str]:
    import torchvision

    return {"vaecli": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}


def plan_run(
    data_cfg: DataConfig, given: dict[str, Any], load: FolderLoad | None = None
) -> tuple[ModelConfig, DataConfig, TrainConfig, tuple[ImageData, ImageData]]:
    """Load the data, then fill every option the user did not give (``None``) by the one rule for
    defaults (:func:`vaecli.train.recipe.build_configs`), keyed on the data's size and channels and the
    device. Returns the configs and the data, ready for :func:`start_run`. ``load``: progress and
    notice callbacks and cache use of a folder load; its detected size is rounded to the given arch."""
    check_given(given)  # a bad flag fails before a long load
    data_cfg.validate()
    device = distributed.device_for(given.get("device") or "auto")
    load = load or FolderLoad()
    load.round_size = lambda s: accepted_image_size(s, given.get("arch"), given.get("widths"))
    train, test, data_cfg = distributed.local_main_first(lambda: load_data(data_cfg, load=load))  # DDP: one download per machine
    model_cfg, train_cfg = build_configs(given, train.image_size, train.channels, device.type)
    return model_cfg, data_cfg, train_cfg, (train, test)


def start_run(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    name: str | None = None,
    overwrite: bool = False,
    data: tuple[ImageData, ImageData] | None = None,
) -> Trainer:
    """Create the run folder and write ``config.json`` (loading the data unless ``data`` =
    (train, test) is given); returns a fresh :class:`Trainer`."""
    train_cfg.validate()
    data_cfg.validate()
    train_cfg = replace(train_cfg, world_size=distributed.world_size())  # DDP: recorded in config.json
    if data is None:
        train, test, data_cfg = distributed.local_main_first(lambda: load_data(data_cfg))  # DDP: one download per machine
    else:
        train, test = data
        data_cfg = replace(data_cfg, image_size=train.image_size, channels=train.channels, train_size=len(train), test_size=len(test))
    if data_cfg.val_size is None:
        data_cfg = replace(data_cfg, val_size=validation_size(len(train)))
    model_cfg = replace(model_cfg, channels=train.channels, image_size=train.image_size)
    model_cfg.validate()

    def create() -> tuple[Path, RunConfig]:
        run_name = ckpt.validate_run_name(name) if name else ckpt.generate_run_name()
        run_cfg = RunConfig(name=run_name, model=model_cfg, data=data_cfg, train=train_cfg, created=ckpt.utc_now(), versions=_versions())
        path = ckpt.create_run_dir(run_name, overwrite=overwrite)
        ckpt.write_config(path, run_cfg)
        return path, run_cfg

    path, run_cfg = distributed.on_main(create)  # DDP: rank 0 names and creates the run, the others get it
    return Trainer(path, run_cfg, train, test)


# What a resume may change (applied and recorded in config.json): the budget, early stopping, the
# device and precision, checkpointing, recovery, the steps after training. Everything else is the run's own.
RESUME_OVERRIDES = frozenset({"epochs", "max_steps", "time_budget", "device", "precision", "save_every", "skip_nonfinite",
                              "max_nonfinite", "early_stop", "fit_prior", "eval_samples", "world_size"})  # fmt: skip


def resume_run(ref: str, overrides: dict[str, Any] | None = None, data: tuple[ImageData, ImageData] | None = None) -> Trainer:
    """Reopen run ``ref`` to continue it from its last weights. ``overrides`` may change
    :data:`RESUME_OVERRIDES` (any other key is a ConfigError); the data must be the data the run
    started on. ``max_steps`` counts this invocation (no limit unless given); ``time_budget`` is this
    invocation's training seconds: the run's budget (what the learning-rate schedule runs to) becomes
    the seconds trained so far plus it; not given, the run trains what is left of its own."""
    path = ckpt.resolve_run(ref)
    ckpt.check_writable(path, "more training")
    if not (path / ckpt.STATE).exists():  # before the data is loaded
        raise ConfigError(f"run {path.name!r} has no training state to resume from")
    run_cfg = ckpt.read_config(path)
    overrides = dict(overrides or {})
    bad = set(overrides) - RESUME_OVERRIDES
    if bad:
        raise ConfigError(f"cannot change {', '.join(sorted(bad))} when resuming")
    more_seconds = overrides.pop("time_budget", None)
    overrides.setdefault("max_steps", None)
    run_cfg.train = replace(run_cfg.train, **{**overrides, "world_size": distributed.world_size()})
    run_cfg.train.validate()
    if more_seconds is not None:
        replace(run_cfg.train, time_budget=more_seconds).validate()
    if data is None:
        train, test, loaded = distributed.local_main_first(lambda: load_data(run_cfg.data))  # DDP: one download per machine
        if run_cfg.data.fingerprint and loaded.fingerprint != run_cfg.data.fingerprint:
            raise ConfigError(
                f"the data of run {path.name!r} changed since it started (fingerprint {loaded.fingerprint} != {run_cfg.data.fingerprint})"
            )
    else:
        train, test = data
    trainer = Trainer(path, run_cfg, train, test)
    trainer.restore()
    if more_seconds is not None:  # the run's budget: the seconds trained so far plus this invocation's
        run_cfg.train = replace(run_cfg.train, time_budget=trainer.state.train_seconds + more_seconds)
    distributed.on_main(lambda: ckpt.write_config(path, run_cfg))  # DDP: rank 0 writes
    return trainer
