"""Where vaecli keeps things: runs under the user data dir, datasets under the user cache dir.

``VAE_HOME`` overrides the runs folder, ``VAE_DATA_DIR`` the dataset root, ``VAE_CACHE_DIR`` the decoded-image cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

APP_NAME = "vaecli"


def runs_dir() -> Path:
    """Folder holding one sub-folder per run (``$VAE_HOME`` or ``<user data dir>/vaecli/runs``)."""
    home = os.environ.get("VAE_HOME")
    if home:
        return Path(home).expanduser()
    return Path(user_data_dir(APP_NAME, appauthor=False)) / "runs"


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Dataset root: ``explicit`` (``--data-dir``), else ``$VAE_DATA_DIR``, else the user cache dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("VAE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(user_cache_dir(APP_NAME, appauthor=False)) / "data"


def cache_dir() -> Path:
    """Decoded-image cache: ``$VAE_CACHE_DIR``, else ``<user cache dir>/vaecli/images`` (honours ``XDG_CACHE_HOME``)."""
    env = os.environ.get("VAE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(user_cache_dir(APP_NAME, appauthor=False)) / "images"
