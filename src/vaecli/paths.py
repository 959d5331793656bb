"""Where vaecli keeps things: runs under the user data dir, datasets under the user cache dir.

``VAE_HOME`` overrides the runs folder, ``VAE_DATA_DIR`` the dataset root, ``VAE_CACHE_DIR`` the decoded-image cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

APP_NAME = "vaecli"


def _folder(variable: str, base: str, sub: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$variable``, else the user ``base`` ("data" or "cache") dir's ``vaecli/sub``."""
    chosen = explicit or os.environ.get(variable)
    if chosen:
        return Path(chosen).expanduser()
    where = user_data_dir if base == "data" else user_cache_dir
    return Path(where(APP_NAME, appauthor=False)) / sub


def runs_dir() -> Path:
    """Folder holding one sub-folder per run (``$VAE_HOME`` or ``<user data dir>/vaecli/runs``)."""
    return _folder("VAE_HOME", "data", "runs")


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Dataset root: ``explicit`` (``--data-dir``), else ``$VAE_DATA_DIR``, else the user cache dir."""
    return _folder("VAE_DATA_DIR", "cache", "data", explicit)


def cache_dir() -> Path:
    """Decoded-image cache: ``$VAE_CACHE_DIR``, else ``<user cache dir>/vaecli/images`` (honours ``XDG_CACHE_HOME``)."""
    return _folder("VAE_CACHE_DIR", "cache", "images")
