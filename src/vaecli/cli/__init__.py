"""The `vae` command line: a thin Typer layer over the core library."""

from __future__ import annotations

import os

from . import (  # noqa: F401  (register commands)
    analysis,  # noqa: F401, I001  (registered after train: listed after it in --help)
    disentangle,  # noqa: F401, I001
    eval_samples,  # noqa: F401, I001
    explore,  # noqa: F401, I001
    prior,  # noqa: F401, I001
    runs,
    train,
)
from .app import app


def main() -> None:
    """Console-script entry point."""
    # OpenMP threads sleep instead of spinning between parallel regions (set before torch loads).
    # On a busy machine spinning threads steal the cores the work needs (measured 4-5x faster
    # training on a shared 2-core machine, docs/performance.md). OMP_WAIT_POLICY=ACTIVE restores it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


__all__ = ["app", "main"]
