"""Writes old_layout.safetensors and old_layout.json: models saved by the layout before the named
parts (vaecli 5ea71c0, the encoder and decoder as anonymous nn.Sequential lists), for
tests/test_checkpoint.py's key-compatibility test. Run once, against that commit's sources:
``PYTHONPATH=src python tests/data/make_old_layout.py`` (kept for the record; rerunning it on a newer
layout writes the newer layout)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vaecli.config import ModelConfig
from vaecli.model.vae import VAE

HERE = Path(__file__).resolve().parent
TINY = {"image_size": 8, "latent_dim": 4, "widths": (2, 4), "hidden": 8}
CASES: dict[str, dict[str, object]] = {
    "mlp": {**TINY, "arch": "mlp", "widths": (8, 6)},
    "mlp-vamp": {**TINY, "arch": "mlp", "widths": (8,), "prior": "vamp", "pseudo_inputs": 3},
    "conv": {**TINY, "arch": "conv"},
    "conv-blocks-group-resize-logistic": {**TINY, "arch": "conv", "channels": 3, "blocks": 1, "norm": "group",
                                          "upsample": "resize", "likelihood": "logistic", "mixtures": 2},
    "conv-batch-gaussian-vamp": {**TINY, "arch": "conv", "norm": "batch", "likelihood": "gaussian", "prior": "vamp",
                                 "pseudo_inputs": 2},
    "conv-mlp-blocks": {**TINY, "arch": "conv-mlp", "blocks": 1, "norm": "group"},
    "spatial": {**TINY, "arch": "spatial", "channels": 3, "latent_dim": 8, "likelihood": "discrete-gaussian"},
    "spatial-blocks-resize-shared": {**TINY, "arch": "spatial", "channels": 3, "latent_dim": 8, "blocks": 2,
                                     "upsample": "resize", "likelihood": "logistic", "logistic_scale": "shared"},
}  # fmt: skip
SEED = {"arch": "seed", "image_size": 8, "latent_dim": 4}  # 1M parameters at 8 px: its names and shapes only


def main() -> None:
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, object] = {}
    for name, fields in {**CASES, "seed": SEED}.items():
        torch.manual_seed(0)
        cfg = ModelConfig(**fields)  # type: ignore[arg-type]
        model = VAE(cfg).eval()
        sd = model.state_dict()
        layout[name] = {
            "config": cfg.to_dict(),
            "keys": {k: list(v.shape) for k, v in sd.items()},
            "parameters": [k for k, _ in model.named_parameters()],
        }  # the optimizer's order
        if name == "seed":
            continue
        with torch.no_grad():
            for p in model.parameters():  # away from the init (zeroed residual convs, logvar heads)
                p.add_(0.1 * torch.randn_like(p))
            x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
            mu, logvar = model.encode(x)
            params = model.decode_params(mu)
        tensors.update({f"{name}/model/{k}": v.contiguous() for k, v in model.state_dict().items()})
        tensors.update({f"{name}/x": x, f"{name}/mu": mu, f"{name}/logvar": logvar, f"{name}/params": params})
    save_file(tensors, str(HERE / "old_layout.safetensors"))
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in layout.items()]  # one model a line
    (HERE / "old_layout.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
