"""Sharing a run: `vae export --format onnx` (parity of onnxruntime with torch, dynamic batch,
export.json, the docs' numpy-only example), `vae export --format hub` (the layout, the card's YAML),
`vae push` and `vae pull` (offline: huggingface_hub's calls monkeypatched)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import noisy_folder, ok, one_error_line, start_tiny, vae

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


@pytest.fixture(scope="module")
def share_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An mlp run on fashion-mnist-mini and a spatial colour run (discretised logistic) with a fitted GMM prior."""
    from vaecli.config import DataConfig

    home = tmp_path_factory.mktemp("share-home")
    folder = noisy_folder(tmp_path_factory.mktemp("share-colour") / "imgs", 60, size=(16, 16))
    mp = pytest.MonkeyPatch()
    mp.setenv("VAE_HOME", str(home))
    try:
        start_tiny("mlp", model={"arch": "mlp", "latent_dim": 6, "widths": (32,)}, batch_size=64, epochs=1, max_steps=4, seed=0).fit()
        colour = {"arch": "spatial", "latent_dim": 16, "widths": (8, 16), "likelihood": "logistic", "channels": 3}
        start_tiny("colour", model=colour, data_cfg=DataConfig(name=str(folder)), batch_size=16, epochs=1, max_steps=3, seed=0).fit()
        ok("fit-prior", "--run", "colour", "--kind", "gmm", "--components", 2)
    finally:
        mp.undo()
    return {"mlp": home / "mlp", "colour": home / "colour"}


# ----------------------------------------------------------------------------- onnx


@pytest.fixture(scope="module")
def exported(share_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = {}
    for name, run in share_runs.items():
        out[name] = tmp_path_factory.mktemp(f"onnx-{name}")
        ok("export", str(run), "--format", "onnx", "--out", out[name])
    return out


@pytest.mark.parametrize("name", ["mlp", "colour"])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_graphs_match_torch_at_any_batch(exported: dict[str, Path], share_runs: dict[str, Path], name: str, batch: int) -> None:
    import onnxruntime as ort
    import torch

    from vaecli.eval.inference import decode, encode
    from vaecli.runs.store import load_model

    model, cfg, _ = load_model(share_runs[name])
    c, s, d = cfg.model.channels, cfg.model.image_size, cfg.model.latent_dim
    g = torch.Generator().manual_seed(batch)
    x, z = torch.rand(batch, c, s, s, generator=g), torch.randn(batch, d, generator=g)
    enc = ort.InferenceSession(str(exported[name] / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(exported[name] / "decoder.onnx"), providers=["CPUExecutionProvider"])
    mu, logvar = enc.run(["mu", "logvar"], {"image": x.numpy()})
    (img,) = dec.run(["image"], {"z": z.numpy()})
    q = encode(model, x)
    assert mu.shape == logvar.shape == (batch, d) and img.shape == (batch, c, s, s)
    assert (torch.from_numpy(mu) - q.mu).abs().max() < 1e-4
    assert (torch.from_numpy(logvar) - q.logvar).abs().max() < 1e-4
    assert (torch.from_numpy(img) - decode(model, z)).abs().max() < 1e-4
    assert 0 <= img.min() and img.max() <= 1


def test_export_json_says_shapes_prior_and_exporter(exported: dict[str, Path], share_runs: dict[str, Path]) -> None:
    import numpy as np
    import torch

    from vaecli import __version__
    from vaecli.runs.priors import load_fitted

    info = json.loads((exported["mlp"] / "export.json").read_text())
    assert info["graphs"]["encoder.onnx"]["inputs"] == {"image": ["N", 1, 28, 28]}
    assert info["graphs"]["encoder.onnx"]["outputs"] == {"mu": ["N", 6], "logvar": ["N", 6]}
    assert info["graphs"]["decoder.onnx"]["inputs"] == {"z": ["N", 6]}
    assert info["graphs"]["decoder.onnx"]["outputs"] == {"image": ["N", 1, 28, 28]}
    assert {g["exporter"] for g in info["graphs"].values()} <= {"dynamo", "torchscript"}
    assert all(g["max_abs_diff_vs_torch"] < 1e-4 for g in info["graphs"].values())
    assert (info["latent_dim"], info["image_size"], info["channels"], info["likelihood"]) == (6, 28, 1, "bernoulli")
    assert info["prior"]["kind"] == "normal" and not (exported["mlp"] / "prior.npz").exists()
    assert info["vaecli_version"] == __version__
    colour = json.loads((exported["colour"] / "export.json").read_text())
    assert (colour["channels"], colour["image_size"], colour["likelihood"]) == (3, 16, "logistic")
    assert colour["prior"]["kind"] == "gmm" and colour["prior"]["fitted"] and colour["prior"]["file"] == "prior.npz"
    gmm, _ = load_fitted(share_runs["colour"], 16)
    with np.load(exported["colour"] / "prior.npz") as arrays:
        assert torch.allclose(torch.from_numpy(arrays["means"]), gmm.means)
        assert torch.allclose(torch.from_numpy(arrays["scale_tril"]), gmm.scale_tril)
        assert arrays["weights"].shape == (2,)


def _docs_example() -> str:
    """The first python block of docs/export.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text("utf-8"), flags=re.S)
    assert blocks, "docs/export.md has no python example"
    return blocks[0]


@pytest.mark.parametrize("name", ["mlp", "colour"])
def test_the_docs_example_samples_a_grid_with_numpy_and_onnxruntime(
    exported: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    code = _docs_example()
    assert "torch" not in code and "vaecli" not in code
    monkeypatch.chdir(exported[name])
    monkeypatch.setitem(sys.modules, "torch", None)  # the example must run without torch
    scope: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), scope)
    info = json.loads((exported[name] / "export.json").read_text())
    grid, c, s = scope["grid"], info["channels"], info["image_size"]
    assert grid.shape == (8 * s, 8 * s, c) and grid.dtype.name == "uint8"
    assert 0 < grid.max() and grid.min() < 255


def test_export_refuses_bad_format_and_names_the_extra(
    share_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    assert "--format must be onnx or hub" in one_error_line(vae("export", share_runs["mlp"], "--format", "tflite", "--out", tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    line = one_error_line(vae("export", share_runs["mlp"], "--format", "onnx", "--out", tmp_path / "o"))
    assert "pip install 'vaecli[onnx]'" in line
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert "pip install 'vaecli[hub]'" in one_error_line(vae("pull", "someone/model"))


# ----------------------------------------------------------------------------- hub


@pytest.fixture(scope="module")
def hub_folder(share_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "repo"
    ok("export", str(share_runs["colour"]), "--format", "hub", "--out", out)
    return out


def _metadata(card: str) -> dict[str, Any]:
    from vaecli.share.hub import front_matter

    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(front_matter(card))


def test_hub_layout_and_card(hub_folder: Path, share_runs: dict[str, Path]) -> None:
    from vaecli.render.images import PNG_SIGNATURE

    names = sorted(p.name for p in hub_folder.iterdir())
    assert names == sorted(
        ["README.md", "config.json", "model.safetensors", "prior.json", "prior.safetensors", "samples.png", "summary.json"]
    )
    assert (hub_folder / "model.safetensors").read_bytes() == (share_runs["colour"] / "model.safetensors").read_bytes()
    assert (hub_folder / "samples.png").read_bytes().startswith(PNG_SIGNATURE)
    card = (hub_folder / "README.md").read_text("utf-8")
    meta = _metadata(card)
    assert meta["library_name"] == "vaecli" and meta["license"] == "mit"
    assert {"vae", "variational-autoencoder", "image-generation"} <= set(meta["tags"])
    assert "datasets" not in meta and meta["metrics"]  # a folder of the user's images: no Hub dataset
    assert "vae train --data" in card and "--arch spatial" in card and "--likelihood logistic" in card
    assert "bits/dim" in card and "samples.png" in card and "Intended uses and limits" in card
    assert str(share_runs["colour"].parent) not in card


def test_hub_card_of_a_built_in_dataset(share_runs: dict[str, Path]) -> None:
    from vaecli.runs.store import read_config
    from vaecli.share.hub import card_metadata

    meta = card_metadata(read_config(share_runs["mlp"]))
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"] and "fashion-mnist-mini" in meta["tags"]


def test_pull_from_a_local_snapshot_then_sample(hub_folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hf = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list[dict[str, Any]] = []

    def snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(hub_folder)

    monkeypatch.setattr(hf, "snapshot_download", snapshot_download)
    ok("pull", "someone/colour-vae")
    assert calls == [
        {"repo_id": "someone/colour-vae", "repo_type": "model", "allow_patterns": ["*.safetensors", "*.json", "*.md", "*.png"]}
    ]
    ok("sample", "--run", "colour-vae", "-n", 4, "-o", tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()
    ok("info", "colour-vae")
    assert "already exists" in one_error_line(vae("pull", "someone/colour-vae"))
    ok("pull", "someone/colour-vae", "--overwrite")
    ok("pull", "someone/colour-vae", "--name", "again")


def test_pull_refuses_a_folder_that_is_no_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hf = pytest.importorskip("huggingface_hub")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "config.json").write_text('{"model": {"arch": "nope"}}')
    (tmp_path / "snap" / "model.safetensors").write_bytes(b"\x80junk")
    monkeypatch.setattr(hf, "snapshot_download", lambda **kw: str(tmp_path / "snap"))
    assert "config.json" in one_error_line(vae("pull", "someone/bad"))
    assert not (tmp_path / "runs" / "bad").exists()


def test_push_uploads_the_hub_folder(share_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    hf = pytest.importorskip("huggingface_hub")
    seen: dict[str, Any] = {}

    def create_repo(self: Any, repo_id: str, **kwargs: Any) -> None:
        seen["created"] = (repo_id, kwargs.get("exist_ok"))

    def upload_folder(self: Any, **kwargs: Any) -> str:
        seen.update(kwargs)
        seen["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        return "https://huggingface.co/someone/mlp-vae/commit/abc"

    monkeypatch.setattr(hf.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hf.HfApi, "upload_folder", upload_folder)
    ok("push", str(share_runs["mlp"]), "someone/mlp-vae")
    assert seen["created"] == ("someone/mlp-vae", True)
    assert seen["repo_id"] == "someone/mlp-vae" and seen["repo_type"] == "model"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors", "samples.png", "summary.json"]


def test_the_torchscript_exporter_takes_over_where_dynamo_fails(
    share_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    real = torch.onnx.export

    def export(*args: Any, dynamo: bool = True, **kwargs: Any) -> Any:
        if dynamo:
            raise RuntimeError("dynamo cannot trace this graph")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    ok("export", str(share_runs["mlp"]), "--format", "onnx", "--out", tmp_path)
    info = json.loads((tmp_path / "export.json").read_text())
    assert {g["exporter"] for g in info["graphs"].values()} == {"torchscript"}
    assert all(g["max_abs_diff_vs_torch"] < 1e-4 for g in info["graphs"].values())
