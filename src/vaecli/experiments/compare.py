"""Finished runs side by side: one row of numbers per run, read from its folder, optional scores, the
notes that say where runs do not compare, and the files of a comparison (``vae sweep`` and ``vae compare``).

Per run (from ``summary.json``, the test split scored with the kept weights): **rate** = test KL
(nats/image), **distortion** = test reconstruction -log p(x|z), **-ELBO** = their sum, in the unit
of the run's likelihood (BCE nats, Gaussian nats, or nats of a discrete likelihood, with bits/dim),
active units, images/s and training seconds. Scores, when asked for: sample quality (FD, KID,
precision, recall; :mod:`vaecli.eval.fidelity`) in the default feature space of the run's images
(:func:`vaecli.eval.features.default_features`; a note instead when its weights cannot be had), MIG and
the FactorVAE score (:mod:`vaecli.eval.disentangle`) for runs on ``shapes``.

Files: ``NAME.json`` and ``NAME.csv`` (a header and one row per run), ``rd.png`` (distortion against
rate, one labelled point per run or per group of seeds, a line through each series: the
rate-distortion plane of Alemi et al. 2018, "Fixing a Broken ELBO"; for ``shapes`` a second panel
of MIG against beta), ``samples.png`` (a row of prior samples per run) and ``traverse.png`` (each
run's top latent dimensions by KL, traversed from the first test image).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..eval.explain import likelihood_units
from ..fileio import atomic_write_json, atomic_write_text
from ..runs import store as ckpt

# the numbers of a row, in table order (means and stds over seeds are taken of these)
NUMBERS = ("rate", "distortion", "neg_elbo", "bits_per_dim", "active_units", "fd", "kid", "precision", "recall", "mig",
           "factorvae_score", "images_per_second", "train_seconds")  # fmt: skip
# sweep.csv / compare.csv: the numbers with a few more facts beside them
CSV_COLUMNS = ("run", "label", "units", *NUMBERS[:5], "latent_dim", *NUMBERS[5:7], "kid_std", *NUMBERS[7:],
               "steps", "stopped", "beta", "data", "likelihood")  # fmt: skip
SAMPLES_PER_ROW = 8
TRAVERSE_DIMS = 3
TRAVERSE_STEPS = 7
TRAVERSE_RANGE = 3.0
VOTES = 10_000  # FactorVAE training votes per run (as vae eval-disentangle; half as many held out)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def run_row(folder: Path, values: dict[str, Any] | None = None, label: str | None = None) -> dict[str, Any]:
    """One run's numbers from its folder (config.json, summary.json); ``values``: its swept values."""
    cfg = ckpt.read_config(folder)
    s = ckpt.read_summary(folder)
    test = s.get("test") or {}
    name = s.get("likelihood_name", cfg.model.likelihood)
    discrete = bool(s.get("discrete", cfg.data.binarize and name == "bernoulli"))
    tc = cfg.train
    return {
        "run": folder.name,
        "path": str(folder),
        "values": dict(values or {}),
        "label": label or folder.name,
        "finished": s.get("stopped") in ckpt.FINISHED,
        "stopped": s.get("stopped"),
        "data": cfg.data.name,
        "fingerprint": cfg.data.fingerprint,
        "test_size": cfg.data.test_size,
        "binarize": cfg.data.binarize,
        "image": [cfg.model.channels, cfg.model.image_size],
        "likelihood": name,
        "discrete": discrete,
        "units": likelihood_units(name, discrete),
        "likelihood_label": s.get("likelihood", ""),
        "rate": _num(test.get("kl")),
        "distortion": _num(test.get("recon")),
        "neg_elbo": _num(test.get("neg_elbo")),
        "bits_per_dim": _num(test.get("bits_per_dim")),
        "active_units": s.get("active_units"),
        "latent_dim": cfg.model.latent_dim,
        "beta": tc.beta,
        "arch": cfg.model.arch,
        "images_per_second": _num(s.get("images_per_second")),
        "train_seconds": _num(s.get("train_seconds")),
        "steps": s.get("steps"),
        "epochs_done": s.get("epochs_done"),
        "budget": {"time_budget": tc.time_budget, "epochs": tc.epochs, "max_steps": tc.max_steps},
        "fd": None,
        "kid": None,
        "kid_std": None,
        "precision": None,
        "recall": None,
        "mig": None,
        "factorvae_score": None,
    }


def comparability_notes(rows: Sequence[dict[str, Any]], budgets: bool = True) -> list[str]:
    """Where the runs' numbers do not compare: other data, another test split, other likelihood
    units; with ``budgets``, other training budgets too (a note, not a flaw)."""
    notes: list[str] = []

    def by(key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[str]]:
        out: dict[Any, list[str]] = {}
        for r in rows:
            out.setdefault(key(r), []).append(r["run"])
        return out

    def listing(groups: dict[Any, list[str]], show: Callable[[Any], str]) -> str:
        return "; ".join(f"{show(k)}: {', '.join(v)}" for k, v in groups.items())

    data = by(lambda r: r["data"])
    if len(data) > 1:
        notes.append(f"not comparable: the runs are on other data ({listing(data, str)}); their numbers measure other images")
    else:
        split = by(lambda r: (r["fingerprint"], r["test_size"], tuple(r["image"])))
        if len(split) > 1:
            notes.append(
                "not comparable: another test split (the data's fingerprint, test size or image shape differ: "
                f"{listing(split, lambda k: f'{k[0]}, {k[1]} test images, {k[2][0]}x{k[2][1]}px')})"
            )
    units = by(lambda r: r["units"] + (" (binarised pixels)" if r["binarize"] else ""))
    if len(units) > 1:
        notes.append(
            f"not comparable: other likelihood units ({listing(units, str)}): -ELBO and distortion are in different units and do not "
            "compare across them; the rate (KL, nats) does"
        )
    if budgets:
        budget = by(_budget)
        if len(budget) > 1:
            notes.append("other budgets: " + listing(budget, lambda k: ", ".join(f"{a.replace('_', ' ')} {v:g}" for a, v in k)))
    return notes


def _budget(row: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    """A run's budget: its time budget and step cap where it had them, else its epochs."""
    b = row["budget"]
    return tuple((k, float(b[k])) for k in ("time_budget", "max_steps") if b.get(k) is not None) or (("epochs", float(b["epochs"])),)


# ----------------------------------------------------------------------------- scores and pictures of one run


@dataclass
class Study:
    """What the pictures need of one run: its label, prior samples, and traversal rows with their labels."""

    label: str
    samples: Any  # (k, C, H, W) float in [0, 1]
    traverse: Any  # (dims * steps, C, H, W)
    traverse_labels: list[str]


def _score_key(row: dict[str, Any], n: int, seed: int, prior: str) -> dict[str, Any]:
    """What cached scores must have been computed for: the same weights (steps, seconds), n, seed and prior."""
    return {"steps": row["steps"], "train_seconds": row["train_seconds"], "n": n, "seed": seed, "prior": prior}


def _prior_key(choice: Any) -> str:
    """The prior samples are drawn from, for the score cache: a fitted prior by its tensors' sha256
    (a refit is another prior), else the model's own prior by its kind (``normal``, ``vamp``)."""
    if choice.info is not None:
        return str(choice.info.get("tensors_sha256"))
    return str(choice.prior.kind)


def study_run(
    row: dict[str, Any],
    *,
    score: bool,
    n: int = 2000,
    seed: int = 0,
    device: str = "auto",
    cache: Path | None = None,
    pictures: bool = True,
    votes: int = VOTES,
) -> tuple[dict[str, Any], list[str], Study | None]:
    """Load one finished run and compute its scores (when ``score``; from ``cache``, a folder of JSON
    files, when it holds them for the same weights and settings) and the pictures' material. Returns
    (scores merged into the row's keys, notes about the run, :class:`Study` or None without ``pictures``)."""
    import torch

    from ..data import load_split, to_float
    from ..eval.inference import decode, dims_by_kl, encode, sample, traverse_latents
    from ..eval.metrics import latent_stats
    from ..runs.priors import load_prior

    folder = Path(row["path"])
    model, cfg, _ = ckpt.load_model(folder, device)
    choice = load_prior(folder, "auto", model)  # the run's fitted prior when it has one (vae fit-prior, vae train --fit-prior)
    prior, key = choice.prior, _score_key(row, n, seed, _prior_key(choice))
    test = load_split(replace(cfg.data, binarize=False), "test")  # original pixels: the real side of the scores, the traversals' base
    notes: list[str] = []
    scores: dict[str, Any] = {}
    if score:
        cached = _read_cache(cache, row["run"], key)
        if cached is not None:
            scores = cached
        else:
            scores = _scores(model, cfg, row, n, seed, votes, notes, test, prior)
            if not scores.pop("_incomplete", False) and cache is not None:  # incomplete: scored again once the weights can be had
                atomic_write_json(cache / f"{row['run']}.json", {"key": key, "scores": scores, "notes": notes})
        notes.extend(scores.pop("_notes", []))
    if not pictures:
        return scores, notes, None
    g = torch.Generator().manual_seed(seed)
    samples = sample(model, SAMPLES_PER_ROW, 1.0, g, prior)
    kl, _, _ = latent_stats(model, ckpt.read_summary(folder), lambda: test, seed=seed)
    dims = dims_by_kl(kl or [0.0] * cfg.model.latent_dim)[:TRAVERSE_DIMS]
    mu = encode(model, to_float(test.images[:1])).mean
    grid = decode(model, traverse_latents(mu[0], dims, TRAVERSE_RANGE, TRAVERSE_STEPS, model.prior.marginal_std()))
    labels = [f"{row['label']}  z{j}" + (f" KL {kl[j]:.1f}" if kl else "") for j in dims]
    return scores, notes, Study(row["label"], samples, grid, labels)


def _read_cache(cache: Path | None, run: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached scores of ``run`` (with their notes under ``_notes``) when they were computed for ``key``."""
    if cache is None:
        return None
    try:
        data = json.loads((cache / f"{run}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("scores"), dict):
        return None
    return {**data["scores"], "_notes": list(data.get("notes") or [])}


def _scores(
    model: Any, cfg: Any, row: dict[str, Any], n: int, seed: int, votes: int, notes: list[str], test: Any, prior: Any
) -> dict[str, Any]:
    """Sample quality in the default feature space of the run's images (a note and ``_incomplete`` when
    its weights cannot be had: offline before the first download), MIG and FactorVAE on shapes."""
    from ..errors import DataError
    from ..eval.fidelity import evaluate_run

    out: dict[str, Any] = {}
    try:
        res = evaluate_run(model, cfg, n, seed=seed, reconstructions=False, data=test, prior=prior)
    except DataError as exc:
        notes.append(f"no sample scores: {exc}")
        out["_incomplete"] = True
    else:
        out.update({k: res[k] for k in ("fd", "kid", "kid_std", "precision", "recall")}, samples_scored=res["n"], features=res["features"])
    if cfg.data.name == "shapes":
        from ..eval.disentangle import evaluate_run as disentangle

        res = disentangle(model, cfg, n_train=votes, n_eval=max(1, votes // 2), seed=seed)
        out.update(mig=res["mig"], factorvae_score=res["factorvae_score"])
    return out


# ----------------------------------------------------------------------------- groups of seeds


def aggregate(rows: Sequence[dict[str, Any]], factors: Sequence[str]) -> list[dict[str, Any]]:
    """Rows that differ only in their seed, as one group each: mean and sample standard deviation of
    every number over the seeds (std 0 for one seed), in the order of first appearance."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r["values"].get(k) for k in factors), []).append(r)
    out = []
    for key, members in groups.items():
        mean, std = {}, {}
        for k in NUMBERS:
            vals = [float(m[k]) for m in members if _num(m.get(k)) is not None]
            mean[k] = statistics.fmean(vals) if vals else None
            std[k] = (statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None
        values = dict(zip(factors, key))
        out.append(
            {
                "values": values,
                "label": " ".join(f"{k}={cell_text(v)}" for k, v in values.items()) or "all seeds",
                "n": len(members),
                "runs": [m["run"] for m in members],
                "units": members[0]["units"],
                "mean": mean,
                "std": std,
            }
        )
    return out


def cell_text(v: Any) -> str:
    """A table cell for a swept value (numbers as the sweep names them), anything else as text."""
    from .sweep.flags import value_text

    return value_text(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


# ----------------------------------------------------------------------------- files


def write_tables(folder: Path, stem: str, result: dict[str, Any], swept: Sequence[str] = ()) -> dict[str, str]:
    """``STEM.json`` (the whole result) and ``STEM.csv`` (a header and one row per run; the swept
    values first), written atomically. Returns {kind: path}."""
    cols = [*swept, *(c for c in CSV_COLUMNS if c not in swept)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in result["runs"]:
        w.writerow(["" if (v := (r["values"].get(c) if c in swept else r.get(c))) is None else v for c in cols])
    files = {"json": str(folder / f"{stem}.json"), "csv": str(folder / f"{stem}.csv")}
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_json(files["json"], {**result, "files": {**result.get("files", {}), **files}})
    return files


def rd_png(path: Path, result: dict[str, Any], factors: Sequence[str]) -> bytes:
    """``rd.png``: distortion against rate, a labelled point per run (per group of seeds when seeds
    repeat), a line through each series (a grid: one series per value of the other factors; a
    comparison: points only, one series per likelihood unit); a second panel of MIG against beta
    when runs have a MIG (``shapes``)."""
    from ..render.plot import PointsPanel, points_chart

    runs, lines = result["runs"], bool(factors)
    if factors:  # a sweep: a point per group of seeds (a single run without seeds), a series per value of the other factors
        groups = result.get("groups") or aggregate(runs, factors)
        points = [
            {
                **g["mean"],
                "label": f"{factors[0]}={cell_text(g['values'][factors[0]])}",
                "series": " ".join(f"{k}={cell_text(g['values'][k])}" for k in factors[1:]) or f"{factors[0]} swept",
                "units": g["units"],
                "beta": _group_beta(g, runs),
            }
            for g in groups
        ]
        if any(g["n"] > 1 for g in groups):
            for p, g in zip(points, groups):
                p["series"] += f" (mean of {g['n']} seeds)"
    elif result.get("kind") == "sweep":  # only seeds swept
        points = [{**r, "label": f"seed={cell_text(r['values'].get('seed'))}", "series": "seeds"} for r in runs]
    else:  # a comparison: each run its own point, named
        points = [{**r, "series": r["units"]} for r in runs]
    units = {p["units"] for p in points}
    if len(units) > 1:
        for p in points:
            p["series"] = f"{p['series']} [{p['units']}]" if lines else p["units"]
    unit = next(iter(units)) if len(units) == 1 else "units differ: see the legend"

    def series(y: str, x: str) -> dict[str, list[tuple[float, float, str]]]:
        out: dict[str, list[tuple[float, float, str]]] = {}
        for p in points:
            if _num(p.get(x)) is not None and _num(p.get(y)) is not None:
                out.setdefault(p["series"], []).append((float(p[x]), float(p[y]), p["label"]))
        return out

    title = f"{result['name']}: rate-distortion (test split)" if result.get("name") else "rate-distortion (test split)"
    panels = [
        PointsPanel(
            series("distortion", "rate"), title, "rate = KL(q(z|x) || p(z)), nats/image", f"distortion = -log p(x|z), {unit}", lines=lines
        )
    ]
    if any(_num(p.get("mig")) is not None for p in points):
        mig = series("mig", "beta")
        xlog = all(x > 0 for pts in mig.values() for x, _, _ in pts)
        panels.append(
            PointsPanel(mig, "MIG against beta (shapes, all 46,080 images)", "beta", "MIG (Chen et al. 2018)", xlog=xlog, lines=lines)
        )
    return points_chart(path, panels)


def _group_beta(group: dict[str, Any], runs: Sequence[dict[str, Any]]) -> float | None:
    first = next((r for r in runs if r["run"] == group["runs"][0]), None)
    return None if first is None else first["beta"]


def _common(images: Sequence[Any]) -> list[Any]:
    """Tensors (N, C, H, W) brought to one size (the largest, nearest neighbour) and one channel count."""
    import torch.nn.functional as F

    side = max(t.shape[-1] for t in images)
    colour = any(t.shape[1] == 3 for t in images)
    out = []
    for t in images:
        if t.shape[-1] != side:
            t = F.interpolate(t, size=(side, side), mode="nearest")
        if colour and t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        out.append(t)
    return out


def _scale(side: int) -> int:
    return 2 if side <= 32 else 1


def samples_png(path: Path, studies: Sequence[Study]) -> bytes:
    """``samples.png``: one row of prior samples (decoder means of z from the run's prior: fitted when it has one,
    else the one it trained with; one seed) per run, its label at the row's start."""
    import torch

    from ..fileio import atomic_write_bytes
    from ..render.images import grid, label_grid, png_bytes

    tiles = _common([s.samples for s in studies])
    side, pad = tiles[0].shape[-1], 2
    img = grid(torch.cat(tiles), SAMPLES_PER_ROW, pad, _scale(side))
    data = png_bytes(label_grid(img, [s.label for s in studies], side * _scale(side), pad))
    atomic_write_bytes(path, data)
    return data


def traverse_png(path: Path, studies: Sequence[Study]) -> bytes:
    """``traverse.png``: for each run its top latent dimensions by test KL, each swept from -3 to +3
    prior standard deviations around the posterior mean of the first test image (one row per dimension)."""
    import torch

    from ..eval.inference import traversal_values
    from ..fileio import atomic_write_bytes
    from ..render.images import traversal_png

    tiles = _common([s.traverse for s in studies])
    side = tiles[0].shape[-1]
    labels = [lab for s in studies for lab in s.traverse_labels]
    data = traversal_png(torch.cat(tiles), traversal_values(TRAVERSE_RANGE, TRAVERSE_STEPS).tolist(), 2, _scale(side), labels)
    atomic_write_bytes(path, data)
    return data


__all__ = [
    "run_row",
    "comparability_notes",
    "study_run",
    "Study",
    "aggregate",
    "write_tables",
    "rd_png",
    "samples_png",
    "traverse_png",
    "NUMBERS",
]
