"""Latent vectors as JSON lines (vaecli.eval.latents): what `vae encode` writes and `vae decode` reads."""

from __future__ import annotations

import pytest
import torch

from vaecli.errors import DataError
from vaecli.eval.latents import format_lines, parse_lines


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
