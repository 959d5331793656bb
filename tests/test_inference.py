"""The operations behind the analysis commands (vaecli.eval.inference): interpolation and traversal
latents, encode / decode / reconstruct, prior samples."""

from __future__ import annotations

import pytest
import torch

from vaecli.data import to_float
from vaecli.errors import ConfigError
from vaecli.eval import inference

# ----------------------------------------------------------------------------- interpolation / traversal


@pytest.mark.parametrize("mode", ["lerp", "slerp"])
def test_interpolation_has_exact_endpoints(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, generator=g), torch.randn(6, generator=g)
    z = inference.interpolate_latents(a, b, 7, mode)
    assert z.shape == (7, 6)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b)
    assert torch.isfinite(z).all()


def test_slerp_follows_the_great_circle_and_lerp_the_line() -> None:
    a = torch.tensor([2.0, 0.0])
    b = torch.tensor([0.0, 2.0])
    s = inference.interpolate_latents(a, b, 5, "slerp")
    assert torch.allclose(s.norm(dim=1), torch.full((5,), 2.0), atol=1e-5)  # same-norm ends: constant norm
    mid = inference.interpolate_latents(a, b, 3, "lerp")[1]
    assert torch.allclose(mid, torch.tensor([1.0, 1.0]))


def test_interpolation_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        inference.interpolate_latents(torch.zeros(3), torch.ones(3), 1)
    with pytest.raises(ConfigError):
        inference.interpolate_latents(torch.zeros(3), torch.ones(3), 4, "cubic")


def test_traversal_rows_vary_only_in_their_own_dimension() -> None:
    base = torch.tensor([0.5, -1.0, 2.0, 0.25])
    dims = [2, 0, 3]
    z = inference.traverse_latents(base, dims, value_range=3.0, steps=5)
    assert z.shape == (len(dims) * 5, 4)
    values = torch.linspace(-3, 3, 5)
    for r, j in enumerate(dims):
        rows = z[r * 5 : (r + 1) * 5]
        assert torch.equal(rows[:, j], values)
        others = [k for k in range(4) if k != j]
        assert torch.equal(rows[:, others], base[others].expand(5, -1))


def test_traversal_rejects_out_of_range_dims() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        inference.traverse_latents(torch.zeros(4), [4])
    with pytest.raises(ConfigError):
        inference.traverse_latents(torch.zeros(4), [0], value_range=0)


def test_dims_by_kl_puts_the_most_informative_first() -> None:
    assert inference.dims_by_kl([0.1, 3.0, 0.0, 3.0, 1.5]) == [1, 3, 4, 0, 2]


# ----------------------------------------------------------------------------- model-backed


def test_reconstruct_decodes_the_posterior_mean(tiny) -> None:  # type: ignore[no-untyped-def]
    model, cfg, test = tiny
    x = to_float(test.images[:6])
    q = inference.encode(model, x)
    mu = q.mean
    assert q.mu.shape == q.logvar.shape == (6, cfg.model.latent_dim)
    r = inference.reconstruct(model, x)
    assert r.shape == x.shape
    assert torch.allclose(r, inference.decode(model, mu))
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
    # a latent of the wrong size is refused
    with pytest.raises(ConfigError):
        inference.decode(model, torch.zeros(2, cfg.model.latent_dim + 1))


def test_sample_is_reproducible_by_generator(tiny) -> None:  # type: ignore[no-untyped-def]
    model, cfg, _ = tiny
    a = inference.sample(model, 4, generator=torch.Generator().manual_seed(3))
    b = inference.sample(model, 4, generator=torch.Generator().manual_seed(3))
    c = inference.sample(model, 4, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, cfg.model.channels, cfg.model.image_size, cfg.model.image_size)
    assert torch.equal(a, b) and not torch.equal(a, c)
