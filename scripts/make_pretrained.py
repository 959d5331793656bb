"""Make the pretrained run shipped inside the package from a trained run (scripts/train_pretrained.sh).

    python scripts/make_pretrained.py RUN_DIR NAME

Writes ``src/vaecli/assets/pretrained/NAME/``: ``model.safetensors`` with the weights in half precision
(they load into float32 parameters), ``config.json`` (the data root cleared: the user's own data dir),
``summary.json``, ``metrics.jsonl`` and ``loss.png``. No optimizer state: the run is read-only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(run: Path, name: str) -> Path:
    """Copy ``run`` into the package as pretrained run ``name``; returns its folder."""
    from vaecli.fileio import atomic_write_json
    from vaecli.runs import store as ckpt

    tensors, meta = ckpt.read_safetensors(run / ckpt.MODEL)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    out = ROOT / "src" / "vaecli" / "assets" / "pretrained" / name
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, ckpt.WEIGHTS_SHA256: ckpt._tensors_sha256(half)}
    ckpt.write_safetensors(out / ckpt.MODEL, half, meta)
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    cfg["name"] = name
    cfg["data"]["root"] = None
    atomic_write_json(out / ckpt.CONFIG, cfg)
    for f in (ckpt.SUMMARY, ckpt.METRICS, ckpt.LOSS_PLOT):
        shutil.copyfile(run / f, out / f)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    folder = main(Path(sys.argv[1]), sys.argv[2])
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder}: {size / 1e6:.2f} MB")
