"""What the whole suite shares: every test gets its own runs dir and data dir (no user dirs touched);
the tiny models, data and runs; the CLI runner and its checks; image files and PNG pixels.

Test modules import the plain helpers (``from conftest import vae, one_error_line``) and take the
fixtures by name.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

# As the `vae` entry point does: sleeping OpenMP threads (before torch loads); keeps the suite
# fast on a shared machine where spinning threads starve each other (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# Shared real files beside the repository (absent elsewhere: the tests that need them skip).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EMOJI = SHARED / "data" / "noto-emoji-64"  # 3,786 real 64x64 RGBA PNGs (data/README.md there)
# torch.hub's cache with the MobileNetV2 file torchvision downloads: tests and CI never download it.
# Only here: the product keeps torch.hub's own TORCH_HOME (~/.cache/torch unless the user sets it).
os.environ.setdefault("TORCH_HOME", str(SHARED / "weights" / "torch-hub"))

TINY = {"latent_dim": 8, "widths": (8, 16), "hidden": 64}  # the tiny run's model (z = 8)
MICRO = {"latent_dim": 4, "widths": (4, 8), "hidden": 16}  # a smaller conv model for the training tests
TRAIN = {"epochs": 2, "batch_size": 32, "device": "cpu", "seed": 3}  # start_tiny's training settings
S = 28  # the tiny run's image side
PAD = 2  # the grids' default padding


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_HOME", str(tmp_path / "runs"))
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("VAE_DEBUG", raising=False)


# ----------------------------------------------------------------------------- the CLI


def vae(*args: object, input: str | None = None) -> Any:
    """``vae ARGS`` through typer's CliRunner (arguments as strings, ``input`` on stdin); the Result."""
    from typer.testing import CliRunner

    from vaecli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(*args: object, input: str | None = None) -> Any:
    """``vae ARGS`` that must succeed (exit 0, no traceback); the Result."""
    r = vae(*args, input=input)
    assert r.exit_code == 0, f"{args}: exit {r.exit_code}: {r.stderr}{r.exception!r}"
    assert "Traceback" not in r.stderr, (args, r.stderr)
    return r


def one_error_line(result: Any) -> str:
    """The one line a refused command writes: exit 2, one non-blank line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def src_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m vaecli`` subprocess: this checkout's src first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **extra}


# ----------------------------------------------------------------------------- tiny models, data and runs


def start_tiny(name: str, data: Any = None, *, model: Any = None, data_cfg: Any = None, **train: Any) -> Any:
    """The Trainer of a new run ``name``: ``model`` (ModelConfig fields, default MICRO) on ``data``
    (a (train, test) pair of ImageData, or None to load ``data_cfg``) named by ``data_cfg`` (default
    fashion-mnist-mini); ``train`` overrides TRAIN (TrainConfig fields)."""
    from vaecli.config import DataConfig, ModelConfig, TrainConfig
    from vaecli.train.run import start_run

    model_cfg = ModelConfig(**(MICRO if model is None else model))
    train_cfg = TrainConfig(**{**TRAIN, **train})
    return start_run(model_cfg, data_cfg or DataConfig(name="fashion-mnist-mini"), train_cfg, name=name, data=data)


def last_weights(run: Path) -> Any:
    """A run's model holding its last weights (those of train_state.safetensors, the resume point;
    model.safetensors holds the best by validation)."""
    from safetensors.torch import load_file

    from vaecli.runs import store as checkpoint

    model, _, _ = checkpoint.load_model(run)
    tensors = load_file(str(Path(run) / checkpoint.STATE))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    return model


def _train_tiny(home: Path, name: str, data: Any = None, **train: Any) -> Path:
    """Train the tiny model (TINY) on fashion-mnist-mini (or ``data``, a DataConfig) as run ``name``
    under ``home`` (``train``: TrainConfig fields such as epochs and max_steps); returns its folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VAE_HOME", str(home))
    try:
        start_tiny(name, model=TINY, data_cfg=data, **{"batch_size": 64, "seed": 0, **train}).fit()
    finally:
        mp.undo()
    return Path(home) / name


@pytest.fixture(scope="session")
def train_tiny() -> Callable[..., Path]:
    """The tiny-run trainer, for fixtures that need runs of their own."""
    return _train_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained for a few steps on fashion-mnist-mini (shared by read-only tests)."""
    return _train_tiny(tmp_path_factory.mktemp("tiny-home"), "tiny", epochs=1, max_steps=20)


@pytest.fixture(scope="module")
def tiny(tiny_run: Path) -> tuple[Any, Any, Any]:
    """The tiny run loaded: (model, RunConfig, its test split)."""
    from vaecli.data import load_data
    from vaecli.runs.store import load_model

    model, cfg, _ = load_model(tiny_run)
    _, test, _ = load_data(cfg.data, download=False)
    return model, cfg, test


@pytest.fixture
def ck(tiny_run: Path) -> list[str]:
    """The CLI arguments that name the tiny run."""
    return ["--checkpoint", str(tiny_run)]


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The MobileNetV2 weights file in TORCH_HOME's torch.hub cache; the test is skipped without it."""
    from vaecli.eval.features import hub_weights_path, mobilenet_url

    path = hub_weights_path(mobilenet_url())
    if not path.is_file():
        pytest.skip(f"no MobileNetV2 weights at {path} (TORCH_HOME={os.environ.get('TORCH_HOME')}): tests never download them")
    return path


@pytest.fixture(scope="session")
def emoji() -> torch.Tensor:
    """400 real colour images of noto-emoji-64 (a seeded choice of files), float RGB (400, 3, 64, 64) in
    [0, 1], transparency composited on white by vaecli's loader; the test is skipped without the folder."""
    import torch

    from vaecli.data.files import image_names, load_image

    if not EMOJI.is_dir():
        pytest.skip(f"no {EMOJI} (the real colour images beside the repository)")
    names = image_names(EMOJI)
    pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(0))[:400].tolist()
    return torch.stack([load_image(EMOJI / names[i], channels=3) for i in pick]).float() / 255


@pytest.fixture(scope="session")
def tiny_colour_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained for 3 steps on 100 random 16x16 RGB PNGs (10 test images)."""
    folder = noisy_folder(tmp_path_factory.mktemp("colour16") / "imgs", 100, size=(16, 16))
    from vaecli.config import DataConfig

    return _train_tiny(tmp_path_factory.mktemp("colour16-home"), "colour16", data=DataConfig(name=str(folder)), epochs=1, max_steps=3)


@pytest.fixture(scope="module")
def small_data() -> tuple[Any, Any]:
    """96 training and 32 test images of fashion-mnist-mini: 3 steps an epoch at batch 32."""
    from vaecli.config import DataConfig
    from vaecli.data import ImageData, load_data

    train, test, _ = load_data(DataConfig(name="fashion-mnist-mini"))
    return ImageData(train.images[:96]), ImageData(test.images[:32])


# ----------------------------------------------------------------------------- image files and pixels


def solid(path: Path, size: tuple[int, int], colour: tuple[int, int, int] | int, mode: str = "RGB") -> Path:
    """A one-colour image file of ``size`` (width, height)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def noisy_folder(folder: Path, n: int, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """``n`` random colour PNGs (content differs per file), ten a sub-folder."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        px = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
        p = folder / f"{i // 10}" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px.numpy(), "RGB").save(p)
    return folder


@pytest.fixture
def pngs(tmp_path: Path, tiny: tuple[Any, Any, Any]) -> Path:
    """Four test images written as PNG files, one in a sub-folder with a space in its name."""
    from PIL import Image

    _, _, test = tiny
    folder = tmp_path / "imgs"
    (folder / "sub dir").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.png", "sub dir/c d.png", "sub dir/e.png"]):
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(folder / rel)
    return folder


def pixels(data_or_path: bytes | Path) -> torch.Tensor:
    """A gray PNG (bytes or file) as uint8 (H, W)."""
    import io

    import torch
    from PIL import Image

    from vaecli.render.images import PNG_SIGNATURE

    data = data_or_path.read_bytes() if isinstance(data_or_path, Path) else data_or_path
    assert data.startswith(PNG_SIGNATURE)
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "L"
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width)


def tile(px: torch.Tensor, row: int, col: int, side: int = S, pad: int = PAD) -> torch.Tensor:
    """The image at (row, col) of a grid's pixels."""
    y, x = pad + row * (side + pad), pad + col * (side + pad)
    return px[y : y + side, x : x + side]


# ----------------------------------------------------------------------------- stand-ins


def fake_fidelity(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for torch_fidelity.feature_extractor_inceptionv3 that does what the real one does
    first: fetch its weights with the module-level ``load_state_dict_from_url``."""
    mod = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    code = (
        "import torch\n"
        "from torch.hub import load_state_dict_from_url\n"
        "URL_INCEPTION_V3 = 'https://example.invalid/weights-inception-2015-12-05-6726825d.pth'\n"
        "class FeatureExtractorInceptionV3(torch.nn.Module):\n"
        "    def __init__(self, name, features_list):\n"
        "        super().__init__()\n"
        "        self.state = load_state_dict_from_url(URL_INCEPTION_V3, progress=False)\n"
        "    def forward(self, x):\n"
        "        assert x.dtype == torch.uint8 and x.shape[1] == 3\n"
        "        f = x.float().mean((2, 3))\n"
        "        return (f.repeat(1, 683)[:, :2048],)\n"
    )
    exec(code, mod.__dict__)
    pkg = types.ModuleType("torch_fidelity")
    pkg.feature_extractor_inceptionv3 = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_fidelity", pkg)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", mod)
    return mod


def no_download(monkeypatch: pytest.MonkeyPatch, copy_from: Path | None = None) -> list[str]:
    """torch.hub's downloads as offline: each fails with a URLError; or, with ``copy_from``, "downloads"
    by copying that file. Returns the URLs asked for (tests never reach the network)."""
    import shutil
    import urllib.error

    import torch

    asked: list[str] = []

    def download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        if copy_from is None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        shutil.copyfile(copy_from, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return asked
