"""Sharing a run: `vae export` (ONNX graphs or a Hugging Face model repository), `vae push` and
`vae pull` (the Hub). Thin: the work is in :mod:`vaecli.share`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import stderr_console
from .options import OptStr

FORMATS = ("onnx", "hub")


def _say(line: str) -> None:
    stderr_console().print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("export")
def export_cmd(
    run: Annotated[str, typer.Argument(help="Run name or path (folder or model.safetensors), or pretrained:NAME.")],
    fmt: Annotated[
        str, typer.Option("--format", help="onnx (encoder.onnx, decoder.onnx, export.json) | hub (a Hugging Face model repository).")
    ],
    out: Annotated[str, typer.Option("--out", help="Folder to write (created).")],
) -> None:
    """Write a run in a form other tools read: ONNX graphs that run without torch, or the Hub's layout."""
    from ..errors import ConfigError
    from ..runs import store as ckpt

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be {' or '.join(FORMATS)}, got {fmt!r}")
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if fmt == "onnx":
        from ..share.onnx import check_onnx, export_onnx

        check_onnx()  # before loading anything
        info = export_onnx(ckpt.resolve_run(run), folder)
        diff = max(g["max_abs_diff_vs_torch"] for g in info["graphs"].values())
        _say(f"wrote {folder}: encoder.onnx, decoder.onnx, export.json (largest difference from torch {diff:.1e})")
    else:
        from ..share.hub import export_hub

        files = export_hub(ckpt.resolve_run(run), folder)
        _say(f"wrote {folder}: " + ", ".join(p.name for p in files))


@app.command("push")
def push_cmd(
    run: Annotated[str, typer.Argument(help="Run name or path, or pretrained:NAME.")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face model repository, USER/NAME (created when missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
) -> None:
    """Upload a run to the Hugging Face Hub in the `vae export --format hub` layout (your login or HF_TOKEN)."""
    from ..runs import store as ckpt
    from ..share.hub import check_hub, push

    check_hub()
    url = push(ckpt.resolve_run(run), repo_id, private=private)
    _say(f"pushed to {repo_id}: {url}")


@app.command("pull")
def pull_cmd(
    repo_id: Annotated[str, typer.Argument(help="Hugging Face model repository, USER/NAME.")],
    name: Annotated[OptStr, typer.Option("--name", help="Run name (default: the repository's name).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run of that name.")] = False,
) -> None:
    """Download a model repository from the Hugging Face Hub into the runs folder (safetensors and JSON, never pickles)."""
    from ..runs.store import run_ref
    from ..share.hub import pull

    run = pull(repo_id, name, overwrite)
    _say(f"pulled {repo_id} as run {run_ref(run)}: vae sample --run {run_ref(run)}")
