"""`vae eval-disentangle`: MIG and the FactorVAE score of a run trained on data with known factors."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .app import app
from .common import check_positive, fmt, print_json, stdout_console
from .options import Json, ModelSource, model_options


@app.command("eval-disentangle")
@model_options
def eval_disentangle_cmd(
    as_json: Json = False,
    bins: Annotated[int, typer.Option("--bins", help="MIG: equal-width bins per latent dimension for the mutual information.")] = 20,
    votes: Annotated[int, typer.Option("--votes", help="FactorVAE score: training votes (half as many held out for the score).")] = 10_000,
    batch: Annotated[int, typer.Option("--vote-batch", help="FactorVAE score: images per vote (one factor fixed).")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the FactorVAE votes.")] = 0,
    model_source: ModelSource = ModelSource(),
) -> None:
    """Disentanglement of a run trained on `--data shapes`: MIG (Chen et al. 2018), FactorVAE score
    (Kim & Mnih 2018) and which latent dimension captures which factor, over all 46,080 images."""
    from ..eval.disentangle import evaluate_run, require_factors

    check_positive("--bins", bins, 2)
    check_positive("--votes", votes, 2)
    check_positive("--vote-batch", batch, 2)
    model, cfg, folder = model_source.load()
    require_factors(cfg)
    res = evaluate_run(model, cfg, bins=bins, n_train=votes, n_eval=max(1, votes // 2), batch_size=batch, seed=seed)
    if as_json:
        print_json({"run": folder.name, **res})
        return
    _table(folder.name, res)


def _table(name: str, res: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"run {name}: which latent dimension captures which factor ({res['images']:,} shapes images)")
    for col in ("factor", "H (nats)", "best dim", "MI/H", "2nd dim", "MI/H ", "gap", "FactorVAE dims"):
        t.add_column(col, justify="left" if col in ("factor", "FactorVAE dims") else "right")
    for r in res["table"]:
        t.add_row(
            r["factor"],
            fmt(r["entropy"]),
            str(r["best_dim"]),
            fmt(r["best_mi"]),
            str(r["second_dim"]),
            fmt(r["second_mi"]),
            fmt(r["gap"]),
            ", ".join(map(str, r["factorvae_dims"])) or "-",
        )
    console = stdout_console()
    console.print(t)
    v = res["votes"]
    console.print(
        f"MIG {fmt(res['mig'], 3)}  (Chen et al. 2018: mean gap / H over factors; MI from latent means in {res['bins']} bins)\n"
        f"FactorVAE score {fmt(res['factorvae_score'], 3)}  (Kim & Mnih 2018: majority-vote accuracy on {v['eval']:,} held-out "
        f"votes of {v['batch_size']} images; train accuracy {fmt(res['factorvae_train_accuracy'], 3)}; "
        f"{len(res['active_dims'])}/{res['latent_dim']} dimensions active)",
        highlight=False,
        markup=False,
    )
