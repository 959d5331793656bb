"""The `vae` command line: a thin Typer layer over the core library."""

from __future__ import annotations

from . import runs, train  # noqa: F401  (register commands)
from . import analysis  # noqa: F401, I001  (registered after train: listed after it in --help)
from . import explore  # noqa: F401, I001
from . import disentangle  # noqa: F401, I001
from .app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
