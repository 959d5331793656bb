"""The Hugging Face Hub: a run as a model repository (``vae export --format hub``), uploaded
(``vae push``) and downloaded into the runs folder (``vae pull``).

The repository holds ``model.safetensors``, ``config.json``, ``summary.json``, a fitted prior when
the run has one (``prior.safetensors``, ``prior.json``), a model card ``README.md`` and a sample grid
``samples.png``: safetensors, JSON, Markdown and PNG only, which is all that ``pull`` downloads
(never a pickle). The network calls are thin wrappers over ``huggingface_hub``, which finds the
user's login (``huggingface-cli login``) or ``HF_TOKEN`` itself.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError, RunNotFoundError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..paths import runs_dir
from ..runs import store as ckpt
from ..runs.priors import has_prior, load_fitted, load_prior

HUB_EXTRA = "pip install 'vaecli[hub]'"
CARD, SAMPLES = "README.md", "samples.png"
COPIED = (ckpt.MODEL, ckpt.CONFIG, ckpt.SUMMARY, ckpt.PRIOR, ckpt.PRIOR_INFO)  # the run's files a hub folder holds, when present
PULLED = (*COPIED, CARD, SAMPLES)  # what `vae pull` copies into the runs folder
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.md", "*.png"]  # what snapshot_download fetches: no pickles
SAMPLE_COUNT = 64
# The Hub's names of the built-in datasets (the card's `datasets`); a folder of the user's images has none.
HUB_DATASETS = {
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "fashion-mnist-mini": "zalando-datasets/fashion_mnist",
}


def check_hub() -> None:
    """Refuse in one line when huggingface_hub is missing."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise ConfigError(f"the Hugging Face Hub needs the huggingface_hub package: {HUB_EXTRA}") from None


# ----------------------------------------------------------------------------- the repository's layout


def export_hub(run: Path, out: Path) -> list[Path]:
    """Lay out run ``run`` as a Hub model repository in folder ``out`` (created); returns the files."""
    import torch

    from ..eval.inference import sample
    from ..render.images import grid_png

    model, cfg, run = ckpt.load_model(run, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in COPIED:
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
            files.append(out / name)
    choice = load_prior(run, "auto", model)
    images = sample(model, SAMPLE_COUNT, 1.0, torch.Generator().manual_seed(0), choice.prior)  # as `vae sample` draws them
    scale = 2 if cfg.model.image_size <= 32 else 1
    files.append(atomic_write_bytes(out / SAMPLES, grid_png(images, 8, 2, scale)))
    files.append(atomic_write_text(out / CARD, model_card(cfg, ckpt.read_summary(run), choice.label)))
    return files


def card_metadata(cfg: RunConfig) -> dict[str, Any]:
    """The card's YAML front matter, as a dict."""
    dataset = cfg.data.name if cfg.data.name in HUB_DATASETS else None
    tags = ["vae", "variational-autoencoder", "image-generation", "vaecli"]
    if dataset is not None:
        tags.append(dataset)
    meta: dict[str, Any] = {"library_name": "vaecli", "license": "mit", "tags": tags}
    if dataset is not None:
        meta["datasets"] = [HUB_DATASETS[dataset]]
    meta["metrics"] = ["negative-elbo", "kl-divergence"]
    return meta


def _yaml(meta: Mapping[str, Any]) -> str:
    """Flat YAML of strings and lists of strings (every value quoted as JSON, which YAML reads)."""
    import json

    lines = []
    for k, v in meta.items():
        if isinstance(v, list):
            lines += [f"{k}:", *(f"- {json.dumps(x)}" for x in v)]
        else:
            lines.append(f"{k}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def train_command(cfg: RunConfig) -> str:
    """The ``vae train`` command line of the run's options (``config.toml``'s keys as flags; options off
    by default are left out)."""
    import shlex

    from ..runs.options import run_options

    words = ["vae", "train"]
    for key, value in run_options(cfg).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _figures(cfg: RunConfig, summary: dict[str, Any]) -> list[str]:
    """The card's table of test figures with their units (:func:`vaecli.eval.explain.explain`)."""
    from ..eval.explain import explain

    rows = ["| figure | value | what it means |", "|---|---|---|"]
    for row in explain(cfg, summary) if summary else []:
        if row.value is None or row.key == "likelihood":
            continue
        value = f"{row.value:.4f}" if isinstance(row.value, float) else str(row.value)
        rows.append(f"| {_cell(row.name)} | {value} {_cell(row.unit)} | {_cell(row.meaning)} |")
    return rows if len(rows) > 2 else ["(no test figures: the run has no summary.json)"]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: ``|`` escaped, on one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def model_card(cfg: RunConfig, summary: dict[str, Any], prior_label: str) -> str:
    """The repository's ``README.md``: YAML metadata, what the model is, how it was trained, its test
    figures, a sample grid, intended uses and limits."""
    m = cfg.model
    data = cfg.data.name if cfg.data.name in HUB_DATASETS or "/" not in cfg.data.name else "a folder of the author's images"
    lines = [
        "---", _yaml(card_metadata(cfg)).rstrip("\n"), "---", "",
        f"# {cfg.name}: a variational autoencoder trained with vaecli", "",
        f"A (beta-)VAE ({m.arch} network, {m.latent_dim} latent dimensions, {m.likelihood} likelihood) on "
        f"{m.channels}x{m.image_size}x{m.image_size} images of {data}, beta = {cfg.train.beta}. "
        f"The encoder gives q(z|x), a diagonal Gaussian; the decoder gives p(x|z); samples are decoded from {prior_label}.", "",
        "## Use it", "", "```sh", "pip install 'vaecli[hub]'", "vae pull REPO_ID --name this-model",
        "vae sample --run this-model -o samples.png", "```", "",
        "Every `vae` command that reads a run works on it (`vae info`, `vae reconstruct`, `vae traverse`, `vae eval-kl`, ...).", "",
        "## How it was trained", "", "```sh", train_command(cfg), "```", "",
        "## Test figures", "", *_figures(cfg, summary), "",
        "## Samples", "", f"![{SAMPLE_COUNT} samples from the prior]({SAMPLES})", "",
        "## Intended uses and limits", "",
        "For research and teaching: latent spaces, reconstructions, samples and their metrics. The samples are blurry "
        "as a VAE's are, the model knows only images like its training data, and its figures hold for that data's test split. "
        "Not for any decision about people.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def front_matter(card: str) -> str:
    """The YAML between the card's first two ``---`` lines."""
    parts = card.split("---\n", 2)
    if len(parts) < 3 or parts[0].strip():
        raise ConfigError("the model card has no YAML front matter")
    return parts[1]


# ----------------------------------------------------------------------------- network: thin wrappers


def _hub_failure(what: str, exc: Exception) -> RunNotFoundError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return RunNotFoundError(f"{what} failed: {type(exc).__name__}{': ' + first[:200] if first else ''}")


def push(run: Path, repo_id: str, private: bool = False) -> str:
    """Upload run ``run`` in the hub layout to model repository ``repo_id`` (created when missing) with
    the user's login or ``HF_TOKEN``; returns the commit's URL."""
    check_hub()
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="vaecli-hub-") as tmp:
        export_hub(run, Path(tmp))
        api = HfApi()
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                                     commit_message=f"vaecli: run {ckpt.run_ref(run)}")  # fmt: skip
        except Exception as exc:  # huggingface_hub's HTTP, auth and validation errors: one line
            raise _hub_failure(f"upload to {repo_id}", exc) from None
    return str(getattr(info, "commit_url", info))


def pull(repo_id: str, name: str | None = None, overwrite: bool = False) -> Path:
    """Download model repository ``repo_id`` (safetensors, JSON, Markdown, PNG only) and install it as
    run ``name`` (default: the repository's name) after validating its config and weights."""
    check_hub()
    from huggingface_hub import snapshot_download

    name = ckpt.validate_run_name(name or repo_id.rstrip("/").rsplit("/", 1)[-1])
    target = runs_dir() / name
    if (target / ckpt.MODEL).exists() and not overwrite:
        raise ConfigError(f"run {name!r} already exists: give --name NEW or --overwrite to replace it")
    try:
        folder = snapshot_download(repo_id=repo_id, repo_type="model", allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # not found, offline without a cached copy, auth: one line
        raise _hub_failure(f"download of {repo_id}", exc) from None
    return install(Path(folder), name, overwrite)


def install(folder: Path, name: str, overwrite: bool = False) -> Path:
    """Copy a folder in the hub layout into the runs folder as run ``name``, once its ``config.json``
    reads as a run's and its weights load (and its fitted prior, when it has one)."""
    for required in (ckpt.CONFIG, ckpt.MODEL):
        if not (folder / required).is_file():
            raise CheckpointError(f"{folder} is not a vaecli model repository (no {required})")
    model, cfg, _ = ckpt.load_model(folder, "cpu")  # config.json as a run's (RunConfig.from_dict), weights by name and shape
    if has_prior(folder):
        load_fitted(folder, cfg.model.latent_dim)
    from ..runs.options import write_run_options

    run = ckpt.create_run_dir(name, overwrite=overwrite)
    for file in PULLED:
        if (folder / file).is_file():
            shutil.copyfile(folder / file, run / file)
    write_run_options(run, cfg)  # config.toml: `vae train --from NAME` trains it again
    return run
