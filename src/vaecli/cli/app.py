"""The Typer app and the single error boundary: VaeError -> one line on stderr, exit 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

DEBUG = {"on": False}
# Pillow logs remarks about damaged files (e.g. TIFF tags) via logging's last-resort stderr handler;
# the DataError of data.load_image already says what is wrong, in the one line an error gets.
logging.getLogger("PIL").addHandler(logging.NullHandler())


def _debug_from_env() -> bool:
    return os.environ.get("VAE_DEBUG", "") not in ("", "0", "false", "no")


def _err(msg: str, exc: BaseException | None = None) -> None:
    """Write one line on stderr. Under torchrun, other ranks than 0 label their lines and
    stay silent on errors they only mirror from rank 0 (``exc.mirrored``)."""
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") else "0"
    if rank not in ("", "0"):
        if getattr(exc, "mirrored", False):
            return
        msg = msg.replace("vae: ", f"vae (rank {rank}): ", 1)
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()


class VaeGroup(TyperGroup):
    """Runs commands with click's standalone mode off so that every error is reported here."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        from ..errors import VaeError

        DEBUG["on"] = _debug_from_env()  # per invocation: `--debug` sets it again in the callback
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "vae",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except VaeError as exc:
            if DEBUG["on"]:
                raise
            _err(f"vae: error: {exc}", exc)
            sys.exit(2)
        except KeyboardInterrupt:
            _err("vae: interrupted")
            sys.exit(130)
        except BrokenPipeError:
            sys.stderr = open(os.devnull, "w")  # the reader went away (e.g. `| head`)
            sys.exit(1)
        except OSError as exc:
            if DEBUG["on"]:
                raise
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            _err(f"vae: error: {exc.strerror or exc}{where}", exc)
            sys.exit(2)
        except Exception as exc:
            # click/typer usage errors carry exit_code and format_message (duck-typed: no click import)
            if hasattr(exc, "exit_code") and hasattr(exc, "format_message"):
                ctx = getattr(exc, "ctx", None)
                cmd = ctx.command_path if ctx is not None else "vae"
                _err(f"{cmd}: error: {exc.format_message()} (see {cmd} --help)")
                sys.exit(exc.exit_code)
            if type(exc).__name__ == "Abort":
                _err("vae: aborted")
                sys.exit(1)
            if DEBUG["on"]:
                raise
            _err(f"vae: internal error: {type(exc).__name__}: {exc} (run with VAE_DEBUG=1 for the traceback)", exc)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=VaeGroup,
    name="vae",
    help="Train and study (beta-)Variational Autoencoders on images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"vaecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also VAE_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Train and study (beta-)Variational Autoencoders on images."""
    if debug:
        DEBUG["on"] = True
