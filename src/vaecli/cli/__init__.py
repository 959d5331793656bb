"""The `vae` command line: a thin Typer layer over the core library."""

from __future__ import annotations

from . import explore, runs, train  # noqa: F401  (register commands)
from .app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
