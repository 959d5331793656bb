"""Bounded fuzzing (hypothesis) of the two readers of untrusted input: the image loader and the
JSON-lines reader. Each must return well-formed values or raise the library's own error, never
anything else. ``VAE_FUZZ_EXAMPLES`` (default 200) sets the examples per test; the counts of a
run are printed with ``pytest -s`` (docs/reliability.md has the figures of a long run)."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaecli.data import load_image
from vaecli.errors import DataError, VaeError
from vaecli.eval.latents import format_lines, parse_lines

EXAMPLES = int(os.environ.get("VAE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
COUNTS: Counter[str] = Counter()


def _seed_images() -> list[bytes]:
    """Small valid files of every accepted format and the modes that need converting."""
    out = []
    for mode, fmt in [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("1", "PNG"),
                      ("LA", "PNG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "BMP"), ("RGB", "GIF"), ("RGB", "TIFF"),
                      ("I;16", "TIFF"), ("RGB", "WEBP"), ("L", "PPM")]:  # fmt: skip
        buf = io.BytesIO()
        img = Image.new(mode, (13, 9))
        img.putpixel((3, 4), 1 if mode == "1" else (200 if mode in ("L", "P", "I;16") else tuple([200] * len(mode))))  # type: ignore[arg-type]
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """A valid image with random edits (byte flips, cuts, insertions, header field changes) or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:pos] + data[pos + draw(st.integers(0, 64)) :]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "header" and data:  # the first 40 bytes hold sizes, depths, chunk lengths
            data[draw(st.integers(0, min(39, max(len(data) - 1, 0))))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "dup" and data:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.mark.slow
@FUZZ
@given(data=image_bytes(), channels=st.sampled_from([None, 1, 3]), size=st.sampled_from([None, 8, 28]))
def test_load_image_returns_pixels_or_data_error(data: bytes, channels: int | None, size: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.png"
        path.write_bytes(data)
        COUNTS["load_image"] += 1
        try:
            img = load_image(path, channels, size)
        except DataError as exc:
            COUNTS["load_image: DataError"] += 1
            assert str(exc).startswith(str(path))
            return
    COUNTS["load_image: decoded"] += 1
    assert isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3
    assert img.shape[0] == (channels or img.shape[0]) and img.shape[0] in (1, 3)
    if size is not None:
        assert img.shape[1:] == (size, size)
    assert img.shape[1] >= 1 and img.shape[2] >= 1


DIM = 4
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.sampled_from([0, -0.0, 1e38, 3.5e38, -1e39, 2**1000, True, None]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.sampled_from(["mu", "z", "path", "logvar", "x"]), children, max_size=4)
    ),
    max_leaves=20,
)


def _line(value: object) -> str:
    try:
        return json.dumps(value)  # NaN/Infinity as JSON extensions, as Python writes them
    except (ValueError, OverflowError):
        return "[]"


@st.composite
def bad_line(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=40))  # anything, incl. U+2028, NUL, lone surrogates
    if kind == 1:
        return _line(draw(st.lists(NUMBERS, min_size=DIM - 1, max_size=DIM + 1)))
    if kind == 2:
        obj = {draw(st.sampled_from(["mu", "z"])): draw(st.lists(NUMBERS, min_size=DIM, max_size=DIM))}
        if draw(st.booleans()):
            obj["path"] = draw(st.one_of(st.text(max_size=12), st.integers(), st.none()))
        return _line(obj)
    if kind == 3:
        return _line(draw(JSON_VALUES))
    good = draw(good_line())  # a valid line cut short
    return good[: draw(st.integers(0, len(good)))]


@st.composite
def good_line(draw: st.DrawFn) -> str:
    vec = draw(st.lists(st.floats(-1e30, 1e30) | st.integers(-(10**30), 10**30), min_size=DIM, max_size=DIM))
    if draw(st.booleans()):
        return _line(vec)
    return _line({"path": draw(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=12).filter(str.strip)),
                  draw(st.sampled_from(["mu", "z"])): vec})  # fmt: skip


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    """Valid lines, blank lines and, half of the time, bad ones: JSON lines that are almost right."""
    lines = draw(st.lists(good_line() | st.just("") | st.just("   "), max_size=5))
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(bad_line()))
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return sep.join(lines) + draw(st.sampled_from(["", sep]))


@pytest.mark.slow
@FUZZ
@given(text=json_lines())
def test_json_lines_reader_returns_vectors_or_vae_error(text: str) -> None:
    COUNTS["parse_lines"] += 1
    try:
        z, paths = parse_lines(text, DIM)
    except VaeError:
        COUNTS["parse_lines: VaeError"] += 1
        return
    COUNTS["parse_lines: parsed"] += 1
    assert z.dtype == torch.float32 and z.ndim == 2 and z.shape[1] == DIM and z.shape[0] >= 1
    assert bool(torch.isfinite(z).all())
    assert len(paths) == z.shape[0]
    for p in paths:
        assert p is None or (isinstance(p, str) and p.strip() and "\x00" not in p)
        if p is not None:
            os.fsencode(p)  # usable as a file name


@pytest.mark.slow
@FUZZ
@given(
    mu=st.lists(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=DIM, max_size=DIM), min_size=1, max_size=5),
    names=st.lists(
        st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=10).filter(str.strip), min_size=5, max_size=5
    ),
)
def test_encode_output_round_trips_exactly(mu: list[list[float]], names: list[str]) -> None:
    COUNTS["round trip"] += 1
    m = torch.tensor(mu, dtype=torch.float32)
    text = format_lines(names[: len(mu)], m, torch.zeros_like(m))
    z, paths = parse_lines(text, DIM)
    assert torch.equal(z, m) and paths == names[: len(mu)]


@pytest.fixture(scope="module", autouse=True)
def _report_counts():  # type: ignore[no-untyped-def]
    yield
    if COUNTS:
        print("\nfuzz examples:", json.dumps(dict(sorted(COUNTS.items()))))


def test_the_fuzzers_reach_both_outcomes() -> None:
    """Guard against a vacuous fuzzer: good seeds decode, junk is refused (run after the fuzz tests)."""
    with tempfile.TemporaryDirectory() as d:
        for i, data in enumerate(SEEDS):
            p = Path(d) / f"s{i}"
            p.write_bytes(data)
            assert load_image(p, 1, 8).shape == (1, 8, 8)
        (Path(d) / "junk").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
        with pytest.raises(DataError):
            load_image(Path(d) / "junk")
    assert parse_lines("[1, 2, 3, 4]\n", DIM)[0].shape == (1, DIM)
    assert not math.isnan(float(parse_lines('{"mu": [0, 0, 0, 1e38]}', DIM)[0][0, 3]))
