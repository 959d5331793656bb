"""Shared fixtures: every test gets its own runs dir and data dir (no user dirs touched)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# As the `vae` entry point does: sleeping OpenMP threads (before torch loads); keeps the suite
# fast on a shared machine where spinning threads starve each other (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_HOME", str(tmp_path / "runs"))
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("VAE_DEBUG", raising=False)


def _train_tiny(home: Path, name: str, data: Any = None, **train: Any) -> Path:
    """Train the tiny model (z = 8, widths 8, 16, hidden 64) on fashion-mnist-mini (or ``data``, a
    DataConfig) as run ``name`` under ``home`` (``train``: TrainConfig fields such as epochs and
    max_steps); returns its folder."""
    from vaecli.config import DataConfig, ModelConfig, TrainConfig
    from vaecli.training import start_run

    mp = pytest.MonkeyPatch()
    mp.setenv("VAE_HOME", str(home))
    try:
        start_run(
            ModelConfig(latent_dim=8, widths=(8, 16), hidden=64),
            data or DataConfig(name="fashion-mnist-mini"),
            TrainConfig(**{"batch_size": 64, "device": "cpu", "seed": 0, **train}),
            name=name,
        ).fit()
    finally:
        mp.undo()
    return Path(home) / name


@pytest.fixture(scope="session")
def train_tiny() -> Callable[..., Path]:
    """The tiny-run trainer, for fixtures that need runs of their own."""
    return _train_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained for a few steps on fashion-mnist-mini (shared by read-only tests)."""
    return _train_tiny(tmp_path_factory.mktemp("tiny-home"), "tiny", epochs=1, max_steps=20)
