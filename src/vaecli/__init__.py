"""vaecli: train and study (beta-)Variational Autoencoders on images."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "VAE", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "load_model", "VaeError"]

if TYPE_CHECKING:  # pragma: no cover
    from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from .errors import VaeError
    from .model.vae import VAE
    from .runs.store import load_model

_LAZY = {
    "VAE": "model.vae",
    "ModelConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "RunConfig": "config",
    "load_model": "runs.store",
    "VaeError": "errors",
}


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so ``import vaecli`` (and ``vae --help``) does not import torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
