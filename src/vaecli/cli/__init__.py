"""The `vae` command line: a thin Typer layer over the core library."""

from __future__ import annotations

import os
from importlib import import_module

from .app import app

# The command modules, imported to register their commands; `vae --help` lists them in this order.
COMMAND_MODULES = (
    "train",
    "generate",
    "reconstruct",
    "eval_kl",
    "eval_samples",
    "prior",
    "disentangle",
    "sweep",
    "explore",
    "export",
    "runs",
)
for _name in COMMAND_MODULES:
    import_module(f"{__name__}.{_name}")


def main() -> None:
    """Console-script entry point."""
    # OpenMP threads sleep instead of spinning between parallel regions (set before torch loads).
    # On a busy machine spinning threads steal the cores the work needs (measured 4-5x faster
    # training on a shared 2-core machine, docs/performance.md). OMP_WAIT_POLICY=ACTIVE restores it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


__all__ = ["app", "main"]
