"""The Pillow-only chart renderer (vaecli.render.plot): line charts, ticks, the training curves of loss.png."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from vaecli.render.plot import line_chart, nice_ticks, plot_training_curves

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _decode(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIG)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def _pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    raw = img.tobytes()
    return list(zip(raw[0::3], raw[1::3], raw[2::3]))


def _non_white(img: Image.Image) -> int:
    """Number of pixels that are clearly not white."""
    return sum(1 for p in _pixels(img) if min(p) < 200)


def _coloured(img: Image.Image) -> int:
    """Number of saturated (non-grey) pixels: the data lines and markers, not text or grid."""
    return sum(1 for r, g, b in _pixels(img) if max(r, g, b) - min(r, g, b) > 80)


def _fake_metrics(epochs: int = 3, with_test: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "beta": min(1.0, e / 2), "train": {"neg_elbo": 200.0 / e + 90, "recon": 180.0 / e + 70, "kl": 20.0 + e}}
        if with_test:
            row["test"] = {"neg_elbo": 205.0 / e + 92, "recon": 183.0 / e + 71, "kl": 21.0 + e}
        rows.append(row)
    return rows


def test_line_chart_writes_png_of_requested_size(tmp_path):
    out = tmp_path / "sub" / "chart.png"
    xs = list(range(1, 11))
    data = line_chart(
        out, {"a": (xs, [1.0 / x for x in xs]), "b": (xs, [0.5 + 0.01 * x for x in xs])}, title="Test", ylabel="value", size=(640, 400)
    )
    img = _decode(data)
    assert img.size == (640, 400)
    assert out.read_bytes() == data
    assert not list(out.parent.glob("*.tmp")), "no temp files left behind"
    assert _non_white(img) > 1000
    assert _coloured(img) > 200
    assert img.getpixel((2, 2)) == (255, 255, 255), "white background"


def test_path_none_returns_bytes_only(tmp_path):
    data = line_chart(None, {"a": ([1, 2, 3], [3.0, 2.0, 1.0])})
    assert _decode(data).size == (900, 560)
    assert list(tmp_path.iterdir()) == []


def test_nan_and_inf_are_skipped(tmp_path):
    ys = [1.0, float("nan"), 3.0, float("inf"), 2.0, -float("inf"), 4.0]
    data = line_chart(tmp_path / "nan.png", {"x": (list(range(len(ys))), ys)})
    img = _decode(data)
    assert img.size == (900, 560)
    assert _coloured(img) > 50


def test_single_point_is_drawn(tmp_path):
    data = line_chart(tmp_path / "one.png", {"only": ([1], [42.0])}, title="one point")
    img = _decode(data)
    assert _coloured(img) > 20  # its marker (plus the legend sample)


@pytest.mark.parametrize("series", [{}, {"empty": ([], [])}, {"all nan": ([1, 2], [math.nan, math.nan])}])
def test_empty_input_draws_axes(tmp_path, series):
    path = tmp_path / "empty.png"
    img = _decode(line_chart(path, series, title="nothing"))
    assert path.exists()
    assert img.size == (900, 560)
    assert _non_white(img) > 500  # frame, title and "no data"


def test_constant_series_and_secondary_axis(tmp_path):
    xs = [1, 2, 3, 4]
    data = line_chart(
        tmp_path / "c.png", {"flat": (xs, [5.0] * 4), "zero": (xs, [0.0] * 4)}, secondary={"beta": (xs, [1.0] * 4)}, secondary_label="beta"
    )
    img = _decode(data)
    assert _coloured(img) > 100


def test_many_points_and_mismatched_lengths(tmp_path):
    xs = list(range(500))
    img = _decode(line_chart(None, {"long": (xs, [math.sin(x / 30) for x in xs])}))
    assert _coloured(img) > 500
    with pytest.raises(ValueError):
        line_chart(None, {"bad": ([1, 2, 3], [1.0, 2.0])})


def test_nice_ticks_use_1_2_5_steps():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3.0, 97.0) == [20.0, 40.0, 60.0, 80.0]
    for lo, hi in [(0.013, 0.0871), (125.3, 297.9), (-3.2, 7.7), (1e-5, 3e-5), (0.9, 20.1)]:
        ticks = nice_ticks(lo, hi)
        assert 3 <= len(ticks) <= 10 and lo <= ticks[0] and ticks[-1] <= hi
        step = ticks[1] - ticks[0]
        assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in zip(ticks, ticks[1:]))
        mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
        assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5))
    assert nice_ticks(2.7, 3.3, integer=True) == [3.0]
    assert all(t.is_integer() for t in nice_ticks(0.5, 3.5, integer=True))


def test_plot_training_curves_two_panels(tmp_path):
    path = tmp_path / "loss.png"
    data = plot_training_curves(path, _fake_metrics(3))
    img = _decode(data)
    assert path.read_bytes() == data
    w, h = img.size
    assert h > w
    top, bottom = img.crop((0, 0, w, h // 2)), img.crop((0, h // 2, w, h))
    assert _coloured(top) > 100 and _coloured(bottom) > 100


def test_plot_training_curves_without_test_or_rows(tmp_path):
    img = _decode(plot_training_curves(tmp_path / "a.png", _fake_metrics(1, with_test=False)))
    assert _coloured(img) > 50
    img = _decode(plot_training_curves(tmp_path / "b.png", []))
    assert _non_white(img) > 500


def test_points_chart_labels_points_on_a_log_axis():
    from vaecli.render.plot import PointsPanel, _log_axis, points_chart

    rd = {"beta swept": [(30.0, 250.0, "beta=0.25"), (12.0, 262.0, "beta=1"), (3.0, 285.0, "beta=16")]}
    mig = {"runs": [(0.25, 0.05, "0.25"), (1.0, 0.1, "1"), (16.0, 0.3, "16")]}
    one = _decode(points_chart(None, [PointsPanel(rd, "rate-distortion", "rate", "distortion")]))
    two = _decode(points_chart(None, [PointsPanel(rd, "rd"), PointsPanel(mig, "MIG", "beta", "MIG", xlog=True)]))
    assert one.size == (900, 600) and two.size == (900, 1200)
    assert _coloured(one) > 500 and _coloured(two) > _coloured(one)  # the lines and markers of both panels
    dots = _decode(points_chart(None, [PointsPanel(rd, "runs", lines=False)]))
    assert 0 < _coloured(dots) < _coloured(one)  # markers without the lines between them
    ticks = [label for _, label in _log_axis((math.log10(0.25), math.log10(16)))]
    assert ticks == ["0.5", "1", "2", "5", "10"]
