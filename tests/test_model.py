"""The VAE (vaecli.model.vae): output shapes of every arch, the seed arch's size and init, deterministic
evaluation, invalid configs, layer widths, norms, fp32 outputs under bf16 autocast."""

import pytest
import torch
from conftest import MICRO

from vaecli.config import ModelConfig
from vaecli.errors import ConfigError
from vaecli.model.vae import VAE, count_parameters


@pytest.mark.parametrize("arch", ["conv", "mlp", "conv-mlp", "seed"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_shapes(arch, channels, size):
    widths = (64, 32) if arch == "mlp" else (16, 32)
    cfg = ModelConfig(arch=arch, channels=channels, image_size=size, latent_dim=6, widths=widths, hidden=64)
    m = VAE(cfg)
    x = torch.rand(3, channels, size, size)
    out = m(x)
    assert out.params.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 6)
    img = m.decode(torch.randn(2, 6))
    assert img.shape == (2, channels, size, size)
    assert img.min() >= 0 and img.max() <= 1


def test_seed_arch_parameter_count():
    assert count_parameters(VAE(ModelConfig(arch="seed"))) == 7_048_865


def test_seed_logvar_init():
    m = VAE(ModelConfig(arch="seed"))
    assert torch.all(m.fc_logvar.weight == 0) and torch.all(m.fc_logvar.bias == -6)


def test_eval_without_sampling_is_deterministic():
    m = VAE(ModelConfig(**MICRO)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(m(x, sample=False).params, m(x, sample=False).params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"arch": "transformer"},
        {"image_size": 30},
        {"channels": 2},
        {"likelihood": "poisson"},
        {"norm": "layer"},
        {"arch": "conv-mlp", "image_size": 30},
    ],
)
def test_invalid_configs(kwargs):
    with pytest.raises(ConfigError):
        VAE(ModelConfig(**kwargs))


def test_mlp_layers_follow_widths_and_take_any_side():
    m = VAE(ModelConfig(arch="mlp", widths=(100, 50), latent_dim=5, image_size=30, channels=1))
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    shapes = [(mod.in_features, mod.out_features) for mod in linears]
    # encoder 900-100-50, heads 50->5 (x2), decoder 5-50-100-900
    assert shapes == [(900, 100), (100, 50), (5, 50), (50, 100), (100, 900), (50, 5), (50, 5)]
    assert m(torch.rand(2, 1, 30, 30)).params.shape == (2, 1, 30, 30)


@pytest.mark.parametrize("norm,layer", [("group", torch.nn.GroupNorm), ("batch", torch.nn.BatchNorm2d)])
def test_conv_norm_adds_a_layer_per_stage(norm, layer):
    m = VAE(ModelConfig(widths=(8, 16, 24), norm=norm, image_size=32, channels=3))
    assert sum(isinstance(mod, layer) for mod in m.modules()) == 3 + 2  # encoder stages, decoder inner stages
    assert not any(isinstance(mod, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) for mod in VAE(ModelConfig()).modules())
    assert m(torch.rand(2, 3, 32, 32)).params.shape == (2, 3, 32, 32)


def test_mlp_output_layer_stays_fp32_under_bf16_autocast():
    m = VAE(ModelConfig(arch="mlp", widths=(32,), latent_dim=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.rand(2, 1, 28, 28))
    assert out.params.dtype == torch.float32 and out.params.shape == (2, 1, 28, 28)


def test_every_arch_in_the_config_has_a_builder():
    from vaecli.config import ARCHS
    from vaecli.model.vae import _BUILDERS

    assert set(ARCHS) == set(_BUILDERS)
