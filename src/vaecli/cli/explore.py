"""`vae explore`: serve the latent-space explorer page for a run."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app
from .common import stderr_console
from .options import ModelSource, model_options


@app.command("explore")
@model_options
def explore_cmd(
    port: Annotated[int, typer.Option("--port", help="TCP port (0 picks a free one).")] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default: only this machine can connect).")
    ] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser tab.")] = False,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Explore a run's latent space in the browser: one slider per dimension, live decoding."""
    from ..explore import Explorer, is_loopback, make_server

    folder, weights = model_source.locate()
    err = stderr_console()
    explorer = Explorer(folder, weights=weights, device=model_source.device, log=lambda msg: err.print(msg, markup=False, highlight=False))
    explorer.get(None)  # load the model and its per-dimension KL before the first page load
    server = make_server(explorer, host, port)
    url = server.url
    if not is_loopback(host):
        err.print(f"[yellow]warning: listening on {host}: anyone who can reach this machine can use the explorer[/yellow]")
    err.print(f"exploring run [bold]{explorer.default}[/bold] at [link={url}]{url}[/link]  (Ctrl-C to stop)")
    if not no_browser:
        import webbrowser

        try:
            webbrowser.open(url.replace("0.0.0.0", "127.0.0.1"), new=2)
        except Exception:  # no browser is not an error: the URL is printed
            pass
    import signal
    import threading

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # `kill PID` stops the server as cleanly as Ctrl-C

    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    old = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        server.server_close()
