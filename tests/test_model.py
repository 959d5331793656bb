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

    assert set(ARCHS) == set(_BUILDERS) | {"hvae"}  # hvae: VAE(config) builds model.hvae.HVAE


PARTS = {"image_size": 8, "channels": 1, "latent_dim": 8, "widths": (4, 8), "hidden": 16}  # every arch: 2 px maps of 2 stages
FIELD_CHANGES = {"widths": (4, 6), "hidden": 12, "norm": "group", "blocks": 1, "upsample": "resize", "groups": (3,)}


def _layout(m: torch.nn.Module) -> list[tuple[str, str]]:
    """What a model is made of: every module's name and class, every tensor's name and shape."""
    return [(n, type(mod).__name__) for n, mod in m.named_modules()] + [(k, str(tuple(v.shape))) for k, v in m.state_dict().items()]


@pytest.mark.parametrize("arch", ["conv", "mlp", "conv-mlp", "seed", "spatial", "hvae"])
def test_each_arch_reads_the_fields_it_declares_and_no_other(arch):
    """config.ARCH_FIELDS is what the builders read: changing a declared field changes the model,
    changing any other arch field builds the same model (so refusing its flag loses nothing)."""
    from vaecli.config import ARCH_FIELDS

    base = _layout(VAE(ModelConfig(arch=arch, **PARTS)))
    changed = {f for f, v in FIELD_CHANGES.items() if _layout(VAE(ModelConfig(**{**PARTS, "arch": arch, f: v}))) != base}
    assert changed == ARCH_FIELDS[arch]


@pytest.mark.parametrize("arch", ["conv", "mlp", "conv-mlp", "seed", "spatial"])
def test_encoder_and_decoder_are_named_parts(arch):
    """encoder.body/head, decoder.body/head, no layer taken by its position: the decoder's head is
    the layer that outputs the likelihood's parameters, the encoder's body and head give the
    features that the posterior heads read."""
    from vaecli.model.vae import Decoder, Encoder

    m = VAE(ModelConfig(arch=arch, **PARTS)).eval()
    assert isinstance(m.encoder, Encoder) and isinstance(m.decoder, Decoder)
    assert {n.split(".")[1] for n, _ in m.named_parameters() if n.startswith(("encoder.", "decoder."))} <= {"body", "head"}
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        feats = m.encoder.head(m.encoder.body(x))
        q = m.encode(x)
        assert torch.equal(q.mu, m.fc_mu(feats).flatten(1))
        assert torch.equal(m.decoder.head(m.decoder.body(q.mu)), m.decode_params(q.mu))
    assert isinstance(m.encoder.head, torch.nn.Identity) == (arch in ("mlp", "spatial"))  # no fully connected layer after stages


def test_spatial_builds_no_dense_layer_sized_by_hidden(monkeypatch):
    """--arch spatial has no fully connected layer: building it makes no nn.Linear at all (the
    layout before made and dropped one of conv features x hidden: 0.7 s and 390 MB at hidden 65,536)."""
    made: list[tuple[int, int]] = []
    init = torch.nn.Linear.__init__

    def counting(self, in_features, out_features, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append((in_features, out_features))
        init(self, in_features, out_features, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Linear, "__init__", counting)
    m = VAE(ModelConfig(arch="spatial", image_size=28, latent_dim=8 * 7 * 7, hidden=65536))
    assert made == []
    assert (
        count_parameters(m) == 19_825 == count_parameters(VAE(ModelConfig(arch="spatial", image_size=28, latent_dim=8 * 7 * 7, hidden=1)))
    )


@pytest.mark.parametrize("arch", ["conv", "conv-mlp", "spatial"])
def test_blocks_add_residual_blocks_to_every_stage(arch):
    from vaecli.model.vae import ResBlock

    sizes, blocks = [], []
    for n in (0, 1, 2):
        m = VAE(ModelConfig(**{**PARTS, "arch": arch, "blocks": n}))
        sizes.append(count_parameters(m))
        blocks.append(([type(b) for b in m.encoder.body].count(ResBlock), [type(b) for b in m.decoder.body].count(ResBlock)))
        assert m(torch.rand(2, 1, 8, 8)).params.shape == (2, 1, 8, 8)
    assert sizes[0] < sizes[1] < sizes[2]
    dec = 0 if arch == "conv-mlp" else 2  # conv-mlp: an MLP decoder
    assert blocks == [(0, 0), (2, dec), (4, 2 * dec)]  # per stage (2 widths), encoder and decoder


@pytest.mark.parametrize("arch", ["conv", "spatial"])
def test_upsample_transposed_or_resize(arch):
    """transposed: k4 s2 transposed convs; resize: nearest x2 then a 3x3 conv, the output layer too."""
    kinds = {}
    for up in ("transposed", "resize"):
        m = VAE(ModelConfig(**{**PARTS, "arch": arch, "upsample": up}))
        mods = [type(mod) for mod in m.decoder.modules()]
        kinds[up] = (mods.count(torch.nn.ConvTranspose2d), mods.count(torch.nn.Upsample), type(m.decoder.head))
        assert m(torch.rand(2, 1, 8, 8)).params.shape == (2, 1, 8, 8)
    assert kinds == {"transposed": (2, 0, torch.nn.ConvTranspose2d), "resize": (0, 2, torch.nn.Conv2d)}
