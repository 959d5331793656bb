"""Core pieces behind the analysis commands: inference, latents JSON lines, image grids and inputs."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import pytest
import torch
from PIL import Image

from vaecli import inference, metrics
from vaecli.checkpoint import load_model
from vaecli.data import load_data, to_float
from vaecli.errors import ConfigError, DataError
from vaecli.images import PNG_SIGNATURE, collect_inputs, gif_bytes, grid, grid_png, output_name, to_uint8
from vaecli.latents import format_lines, parse_lines
from vaecli.metrics import evaluate
from vaecli.posterior import Posterior


@pytest.fixture(scope="module")
def tiny(tiny_run: Path):  # type: ignore[no-untyped-def]
    model, cfg, _ = load_model(tiny_run)
    _, test, _ = load_data(cfg.data, download=False)
    return model, cfg, test


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
    mu, logvar = inference.encode(model, x)
    assert mu.shape == logvar.shape == (6, cfg.model.latent_dim)
    r = inference.reconstruct(model, x)
    assert r.shape == x.shape
    assert torch.allclose(r, inference.decode(model, mu))
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
    # a latent of the wrong size is refused
    with pytest.raises(ConfigError):
        inference.decode(model, torch.zeros(2, cfg.model.latent_dim + 1))


def test_elbo_per_image_matches_evaluate(tiny) -> None:  # type: ignore[no-untyped-def]
    model, _, test = tiny
    x = to_float(test.images)
    recon, kl = metrics.elbo_per_image(model, x, torch.Generator().manual_seed(0))
    assert recon.shape == kl.shape == (len(test),)
    assert torch.isfinite(recon).all() and (kl >= 0).all()
    mu, logvar = inference.encode(model, x)
    assert torch.allclose(kl, Posterior(mu, logvar).kl(), rtol=1e-5)
    res = evaluate(model, test)
    assert float(kl.double().mean()) == pytest.approx(res.kl, rel=1e-5)
    # one posterior sample each: the mean reconstruction term is close to evaluate's
    assert float(recon.double().mean()) == pytest.approx(res.recon, rel=0.02)


def test_sample_is_reproducible_by_generator(tiny) -> None:  # type: ignore[no-untyped-def]
    model, cfg, _ = tiny
    a = inference.sample(model, 4, generator=torch.Generator().manual_seed(3))
    b = inference.sample(model, 4, generator=torch.Generator().manual_seed(3))
    c = inference.sample(model, 4, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, cfg.model.channels, cfg.model.image_size, cfg.model.image_size)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- latents JSON lines


def test_latent_lines_round_trip_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    text = format_lines(["a.png", "b/c.png", "d e.png"], mu, logvar)
    z, paths = parse_lines(text, 5)
    assert torch.equal(z, mu)
    assert paths == ["a.png", "b/c.png", "d e.png"]


def test_latent_lines_accept_bare_lists_and_skip_blank_lines() -> None:
    z, paths = parse_lines('[1, 2.5]\n\n{"z": [0, -1]}\n', 2)
    assert z.tolist() == [[1.0, 2.5], [0.0, -1.0]]
    assert paths == [None, None]


@pytest.mark.parametrize(
    "text, match",
    [
        ("[1, 2]\nnot json\n", "line 2"),
        ("[1, 2, 3]\n", "expected 2 numbers"),
        ('{"path": "a.png"}\n', 'no "mu"'),
        ('[1, "x"]\n', "not a finite number"),
        ("[1, NaN]\n", "not a finite number"),
        ("[true, 1]\n", "not a finite number"),
        ('"hello"\n', "expected a list"),
        ('{"mu": [1, 2], "path": 3}\n', "path"),
        ("\n\n", "no latent vectors"),
    ],
)
def test_malformed_latent_lines_are_refused(text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        parse_lines(text, 2)


# ----------------------------------------------------------------------------- images


def test_grid_png_has_make_grid_geometry() -> None:
    imgs = torch.rand(10, 1, 28, 28)
    data = grid_png(imgs, nrow=4, padding=2)
    assert data.startswith(PNG_SIGNATURE)
    im = Image.open(io.BytesIO(data))
    assert im.size == (4 * 28 + 5 * 2, 3 * 28 + 4 * 2)
    assert im.mode == "L"
    # the first tile holds the first image, rounded like save_image
    px = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width)
    assert torch.equal(px[2:30, 2:30], to_uint8(imgs[0, 0]))
    rgb = grid(torch.rand(3, 3, 8, 8), nrow=3, padding=0, scale=2)
    assert rgb.mode == "RGB" and rgb.size == (48, 16)


def test_gif_bytes_loop_forward_and_back() -> None:
    frames = [grid(torch.full((1, 1, 8, 8), v), 1, 0) for v in (0.0, 0.5, 1.0)]
    im = Image.open(io.BytesIO(gif_bytes(frames, fps=10)))
    assert im.format == "GIF" and im.n_frames == 4  # 0, 1, 2, 1


@pytest.mark.parametrize(
    "path, expected",
    [
        ("imgs/a.png", "imgs/a.png"),
        ("./imgs/b c.jpg", "imgs/b c.png"),
        ("/abs/dir/x.png", "x.png"),
        ("../up/y.webp", "y.png"),
        ("test/00003", "test/00003.png"),
        ("", "fallback.png"),
    ],
)
def test_output_name(path: str, expected: str) -> None:
    assert output_name(path, "fallback") == PurePosixPath(expected)


def test_collect_inputs_expands_folders_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub dir").mkdir(parents=True)
    for rel in ("d/a.png", "d/sub dir/b c.png", "d/notes.txt", "single.png"):
        (tmp_path / rel).write_bytes(b"x")
    items = collect_inputs([str(tmp_path / "d")])
    assert [str(it.rel) for it in items] == ["a.png", "sub dir/b c.png"]
    items = collect_inputs(["-"], read_stdin=lambda: f"{tmp_path / 'single.png'}\n\n{tmp_path / 'd'}\n")
    assert [it.path.name for it in items] == ["single.png", "a.png", "b c.png"]
    with pytest.raises(DataError, match="no input images"):
        collect_inputs(["-"], read_stdin=lambda: "\n")
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([str(tmp_path / "missing.png")])
