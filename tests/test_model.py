import pytest
import torch

from vaecli.config import ModelConfig
from vaecli.errors import ConfigError
from vaecli.model import VAE, count_parameters


@pytest.mark.parametrize("arch", ["conv", "seed"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_shapes(arch, channels, size):
    cfg = ModelConfig(arch=arch, channels=channels, image_size=size, latent_dim=6)
    m = VAE(cfg)
    x = torch.rand(3, channels, size, size)
    out = m(x)
    assert out.logits.shape == x.shape
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
    m = VAE(ModelConfig(latent_dim=4, widths=(4, 8), hidden=16)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(m(x, sample=False).logits, m(x, sample=False).logits)


@pytest.mark.parametrize("kwargs", [{"latent_dim": 0}, {"arch": "mlp"}, {"image_size": 30}, {"channels": 2}, {"likelihood": "poisson"}])
def test_invalid_configs(kwargs):
    with pytest.raises(ConfigError):
        VAE(ModelConfig(**kwargs))
