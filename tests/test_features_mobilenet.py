"""The mobilenet-v2-imagenet feature space (vaecli.eval.features.mobilenet): loaded from TORCH_HOME without
a download (tests point TORCH_HOME at the shared copy, conftest.py), the pooled features of torchvision's
own model, one clear error offline, lazy imports, and the scores' order on real colour images."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import no_download, src_env

from vaecli.errors import DataError
from vaecli.eval import features as feat
from vaecli.eval import fidelity as fid


@pytest.fixture(scope="module")
def net(mobilenet_weights: Path) -> Iterator[feat.FeatureExtractor]:
    with pytest.MonkeyPatch.context() as mp:
        asked = no_download(mp)
        ext = feat.get_extractor(feat.MOBILENET)
        assert asked == []  # built from the cached file: no download was tried
        yield ext


def test_loads_from_torch_home_without_a_download(net: feat.FeatureExtractor, mobilenet_weights: Path) -> None:
    assert mobilenet_weights.name == "mobilenet_v2-b0353104.pth"  # the file torchvision's IMAGENET1K_V1 downloads
    assert (net.name, net.dim, net.pr_k) == ("mobilenet-v2-imagenet", 1280, feat.MOBILENET_PR_K)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(5, 3, 40, 40, generator=g)
    f = net(rgb)
    assert f.shape == (5, 1280) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and (f <= 6).all() and f.std(0).mean() > 0  # pooled ReLU6 units that differ between images
    gray = torch.rand(3, 1, 28, 28, generator=g)  # gray is repeated to RGB
    assert torch.allclose(net(gray), net(gray.repeat(1, 3, 1, 1)), atol=1e-5)
    rgba = torch.cat([rgb[:2], torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 40, 40)], 1)  # transparent, opaque
    assert torch.allclose(net(rgba), net(torch.stack([torch.ones(3, 40, 40), rgb[1]])), atol=1e-5)  # on white
    assert net(torch.empty(0, 3, 64, 64)).shape == (0, 1280)


def test_the_features_are_torchvision_models_pooled_features(net: feat.FeatureExtractor) -> None:
    """The model's own logits are its classifier applied to these features: the pooled output of the last
    features block, before the classifier, of torchvision.models.mobilenet_v2(weights=IMAGENET1K_V1)."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    with pytest.MonkeyPatch.context() as mp:
        no_download(mp)
        model = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()  # torchvision's own path, same cache
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    big = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor(feat.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(feat.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((big - mean) / std)
        ours = model.classifier(net(x))
    assert torch.allclose(ours, logits, atol=1e-3), (ours - logits).abs().max()


def test_the_default_feature_space_by_image_shape() -> None:
    assert feat.default_features(1, 28) == feat.FMNIST_NET  # the shipped Fashion-MNIST net stays for 28 px gray
    for shape in ((3, 28), (3, 64), (1, 32), (1, 64), (3, 20)):
        assert feat.default_features(*shape) == feat.MOBILENET
    assert feat.INCEPTION in feat.FEATURES  # still there, by name


def test_missing_weights_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    asked = no_download(monkeypatch)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(DataError) as e:
        feat.get_extractor(feat.MOBILENET)
    msg = str(e.value)
    assert asked == ["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"]
    assert "\n" not in msg and str(path) in msg and asked[0] in msg and f"TORCH_HOME={tmp_path / 'torch'}" in msg
    assert "URLError" in msg and "download them once" in msg
    path.write_bytes(b"not a checkpoint")  # a damaged file in the cache: no download, say which file to delete
    with pytest.raises(DataError, match=r"cannot be read .*delete the file"):
        feat.get_extractor(feat.MOBILENET)
    assert len(asked) == 1


def test_startup_imports_no_torchvision_model() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vaecli.cli import app\n"
        "import vaecli.eval.features, vaecli.eval.fidelity\n"
        "assert CliRunner().invoke(app, ['eval-samples', '--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=src_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of each channel, edges repeated (the emoji's white surround stays white)."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(-1, 1, 1, 2 * r + 1), groups=x.shape[1])
    return torch.nn.functional.conv2d(x, k.view(-1, 1, 2 * r + 1, 1), groups=x.shape[1])


def test_scores_order_real_blurred_noise_colour_images(net: feat.FeatureExtractor, emoji: torch.Tensor) -> None:
    """100 real emoji against 100 others, the others blurred and uniform noise: FD, KID and recall order them."""
    a, b = emoji[:100], emoji[100:200]
    g = torch.Generator().manual_seed(0)
    sets = {"real": b, "blur 1": _blur(b, 1.0), "noise": torch.rand(b.shape, generator=g)}
    ref = net(a)
    fs = {k: net(v) for k, v in sets.items()}
    fd = {k: fid.frechet_distance(ref, f) for k, f in fs.items()}
    kid = {k: fid.kid(ref, f, subsets=10, subset_size=80, generator=torch.Generator().manual_seed(0))[0] for k, f in fs.items()}
    pr = {k: fid.precision_recall(ref, f, fid.pr_k(net.pr_k, len(a))) for k, f in fs.items()}  # as eval-samples: k = 3 at n = 100
    assert fd["real"] < fd["blur 1"] < fd["noise"], fd
    assert fd["blur 1"] > 1.15 * fd["real"] and fd["noise"] > 3 * fd["real"], fd  # (FD of 100 points: biased up alike)
    assert abs(kid["real"]) < 0.02 < kid["blur 1"] < kid["noise"], kid
    assert pr["real"][0] > 0.7 and pr["real"][1] > 0.7, pr  # real against real: most inside each other's balls
    assert pr["real"][1] > pr["blur 1"][1] > pr["noise"][1] == 0.0, pr
    assert pr["noise"][0] < 0.05, pr
