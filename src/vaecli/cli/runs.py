"""`vae runs` and `vae info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import app
from .common import fmt, print_json, stdout_console
from .options import Json


@app.command("runs")
def runs_cmd(as_json: Json = False) -> None:
    """List trained runs (name, date, data, beta, epochs, test -ELBO), then the pretrained runs shipped
    with vaecli (`--run pretrained:NAME`, read-only)."""
    from ..runs import store as ckpt

    rows = []
    for path in [*ckpt.list_runs(), *ckpt.pretrained_runs()]:  # the shipped runs last
        try:
            rows.append(ckpt.run_brief(path))
        except Exception:  # a damaged run is listed, not fatal
            rows.append({"name": path.name, "path": str(path), "error": "unreadable config.json"})
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    console = stdout_console()
    if not rows:
        from ..paths import runs_dir

        console.print(f"no runs yet in {runs_dir()} (train one with `vae train`)")
        return
    t = Table(title=f"runs ({len(rows)})")
    for col in ("name", "created", "data", "arch", "z", "beta", "epochs", "test -ELBO"):
        t.add_column(col, justify="right" if col in ("z", "beta", "epochs", "test -ELBO") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["name"], "[red]" + r["error"] + "[/red]", "", "", "", "", "", "")
            continue
        t.add_row(
            r["name"],
            r["created"].replace("T", " ")[:19],
            str(r["data"])[-28:],
            r["arch"],
            str(r["latent_dim"]),
            fmt(r["beta"], 2),
            str(r["epochs"]),
            fmt(r["test_neg_elbo"]),
        )
    console.print(t)


@app.command("info")
def info_cmd(
    run: Annotated[str, typer.Argument(help="Run name or path (folder or model.safetensors).")],
    as_json: Json = False,
) -> None:
    """Show one run: what its numbers mean (rate, distortion, bits/dim, normalised beta, the held-out
    gap, best and last epoch), its config, parameter count and training state."""
    from ..config import RunConfig
    from ..runs import store as ckpt

    info = run_info(ckpt.resolve_run(run))
    if as_json:
        print_json(info)
        return
    from rich.table import Table

    cfg = info["config"]
    t = Table(title=f"run {info['name']}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    m, d, tr = cfg["model"], cfg["data"], cfg["train"]
    for k, v in [
        ("path", info["path"]),
        ("created", info["created"]),
        ("model", f"{m['arch']}, z={m['latent_dim']}, {m['channels']}x{m['image_size']}x{m['image_size']}, {m['likelihood']}"),
        ("parameters", f"{info['parameters']:,}"),
        (
            "data",
            f"{d['name']} ({d.get('train_size')} train of which {d.get('val_size')} validation / {d.get('test_size')} test, "
            f"fingerprint {d.get('fingerprint')})",
        ),
        (
            "training",
            f"beta={tr['beta']} anneal={tr['anneal']} lr={tr['lr']} batch={tr['batch_size']} x {tr.get('world_size', 1)} seed={tr['seed']}",
        ),
        ("epochs", f"{info['epochs']} of {tr['epochs']} ({fmt(info.get('steps'))} steps)"),
        ("resumable", "yes" if info["resumable"] else "no"),
    ]:
        t.add_row(k, str(v))
    console = stdout_console()
    console.print(t)
    if info.get("summary"):
        console.print(explained_table(RunConfig.from_dict(cfg), info["summary"], "what the numbers mean"))


def explained_table(cfg: Any, summary: dict[str, Any], title: str) -> Any:
    """The rows of :func:`vaecli.eval.explain.explain` as a rich table: figure, value with its unit, and
    what it means with the reference that places it (dim)."""
    from rich.table import Table

    from ..eval.explain import explain

    t = Table(title=title, show_lines=False, pad_edge=False)
    t.add_column("figure", style="bold", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("what it means", overflow="fold", ratio=1)
    for row in explain(cfg, summary):
        value = "" if row.value is None else fmt(row.value, 4 if row.key in ("bits_per_dim", "normalised_beta") else 2)
        shown = f"{value} {row.unit}".strip() if row.key != "likelihood" else ""
        meaning = row.meaning + (f"\n[dim]{row.reference}[/dim]" if row.reference else "")
        t.add_row(row.name, shown, meaning)
    return t


def run_info(run: Path) -> dict[str, Any]:
    """What ``vae info`` shows: :func:`run_brief` plus parameters, steps, state and the config."""
    from ..eval.explain import explain
    from ..model.vae import VAE, count_parameters
    from ..runs.store import MODEL, STATE, read_config, read_metrics, read_summary, run_brief

    run = Path(run)

    cfg = read_config(run)
    metrics = read_metrics(run)
    summary = read_summary(run)
    return {
        **run_brief(run, cfg),
        "parameters": count_parameters(VAE(cfg.model)),
        "steps": summary.get("steps"),
        "trained": (run / MODEL).exists(),
        "resumable": (run / STATE).exists(),
        "world_size": cfg.train.world_size,
        "effective_batch_size": cfg.train.batch_size * cfg.train.world_size,  # per-rank batch x world size
        "test": summary.get("test"),
        "train": summary.get("train") or (metrics[-1].get("train") if metrics else None),
        "active_units": summary.get("active_units"),
        "best": summary.get("best"),
        "last": summary.get("last"),
        "explained": {row.key: row.to_dict() for row in explain(cfg, summary)} if summary else {},
        "notices": summary.get("notices", []),
        "config": cfg.to_dict(),
        "summary": summary,
    }
