"""Dependency-free (Pillow only) PNG charts: line charts for training curves, labelled points for comparisons."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from PIL import Image, ImageDraw, ImageFont

from ..fileio import atomic_write_bytes

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
Segments = list[list[tuple[float, float]]]
Span = tuple[float, float]

# Okabe-Ito colour-blind-safe palette (yellow last: weak on white).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D"]
MAX_MARKED = 30  # series with at most this many points get markers
_SS = 2  # supersampling: draw at 2x, downscale with LANCZOS (PIL lines are not anti-aliased)
_GRID, _AXIS, _TEXT, _MUTED, _MARK = "#e5e5e5", "#555555", "#222222", "#888888", "#B00020"


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow >= 10.1: a scalable font that knows anchors


def nice_ticks(lo: float, hi: float, target: int = 6, integer: bool = False) -> list[float]:
    """Tick values inside [lo, hi] (hi > lo) on a 1-2-5 step, about `target` of them."""
    e = math.floor(math.log10((hi - lo) / max(target - 1, 1)))
    steps = [m * 10.0**k for k in (e - 1, e, e + 1) for m in (1, 2, 5) if not integer or m * 10.0**k >= 1] or [1.0]

    def count(step: float) -> int:
        return math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1

    step = min(steps, key=lambda st: (abs(count(st) - target) + (count(st) < 2) * 100, -st))
    digits = max(0, -math.floor(math.log10(step))) + 1
    return [round(i * step, digits) + 0.0 for i in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def _fmt(v: float, step: float) -> str:
    if abs(v) >= 1e6 or 0 < abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def _segments(xs: Sequence[float], ys: Sequence[float]) -> Segments:
    """Split a series into runs of finite points (NaN/inf are skipped and break the line)."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} != {len(ys)})")
    segs: Segments = [[]]
    for x, y in zip(xs, ys):
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            segs[-1].append((x, y))
        elif segs[-1]:
            segs.append([])
    return [s for s in segs if s]


def _span(values: list[float], integer: bool = False) -> Span | None:
    """Axis limits: data range plus a small margin; constant data gets a symmetric pad."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = 1.0 if integer else (abs(lo) * 0.1 or 1.0)
        return lo - pad, hi + pad
    return lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo)


def _axis(span: Span | None, target: int = 6, integer: bool = False) -> list[tuple[float, str]]:
    """(value, label) for the nice ticks inside `span`."""
    if span is None:
        return []
    ticks = nice_ticks(*span, target=target, integer=integer)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    return [(t, _fmt(t, step)) for t in ticks]


def _log_axis(span: Span | None, target: int = 6) -> list[tuple[float, str]]:
    """(log10 value, label) ticks of a logarithmic axis over ``span`` (in log10 units): powers of ten,
    with 2 and 5 between them while that stays near ``target`` ticks, or every power of two on a short span."""
    if span is None:
        return []
    lo, hi = span
    for mantissas in ((1, 2, 5), (1,)):
        vals = [m * 10.0**e for e in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in mantissas]
        ticks = [v for v in vals if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
        if len(ticks) <= target + 2:
            break
    if len(ticks) < 2:  # less than a factor 2..5 wide: powers of two, else plain ticks
        ticks = [2.0**e for e in range(math.floor(lo / math.log10(2)), math.ceil(hi / math.log10(2)) + 1)]
        ticks = [v for v in ticks if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
    if len(ticks) < 2:
        return [(math.log10(v), f"{v:.3g}") for v in nice_ticks(10**lo, 10**hi, target) if v > 0]
    return [(math.log10(v), f"{v:g}") for v in ticks]


def _size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[float, float]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _vtext(img: Image.Image, center: tuple[float, float], text: str, font) -> None:
    """Paste `text` rotated 90 degrees counter-clockwise, centred on `center`."""
    w, h = _size(ImageDraw.Draw(img), text, font)
    tile = Image.new("RGBA", (round(w) + 4, round(h) + 8), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((tile.width / 2, tile.height / 2), text, font=font, anchor="mm", fill=_TEXT)
    tile = tile.rotate(90, expand=True)
    img.paste(tile, (round(center[0] - tile.width / 2), round(center[1] - tile.height / 2)), tile)


def _line(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: str, dashed: bool) -> None:
    width, on, off, pos = 2 * _SS, 9 * _SS, 5 * _SS, 0.0
    if len(pts) < 2:
        return
    if not dashed:
        draw.line(pts, fill=fill, width=width, joint="curve")
        return
    for (ax, ay), (bx, by) in zip(pts, pts[1:]):
        length, t = math.hypot(bx - ax, by - ay), 0.0
        while t < length:
            phase = pos % (on + off)
            t2 = min(length, t + (on - phase if phase < on else on + off - phase))
            if phase < on:
                a, b = t / length, t2 / length
                draw.line([(ax + (bx - ax) * a, ay + (by - ay) * a), (ax + (bx - ax) * b, ay + (by - ay) * b)], fill=fill, width=width)
            pos, t = pos + t2 - t, t2


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, kind: str, fill: str) -> None:
    r = 3.6 * _SS
    if kind == "o":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline="white", width=_SS)
    elif kind == "s":
        draw.rectangle([x - 0.9 * r, y - 0.9 * r, x + 0.9 * r, y + 0.9 * r], fill=fill, outline="white", width=_SS)
    elif kind == "^":
        draw.polygon([(x, y - 1.2 * r), (x - 1.1 * r, y + 0.8 * r), (x + 1.1 * r, y + 0.8 * r)], fill=fill, outline="white")
    else:
        draw.polygon([(x, y - 1.25 * r), (x + r, y), (x, y + 1.25 * r), (x - r, y)], fill=fill, outline="white")


def _legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, str, str, bool]], x0: float, x1: float, top: float, font) -> float:
    """Centred legend rows (label, colour, marker, dashed) wrapped to [x0, x1]; returns the y below it."""
    sample, gap, lh = 28 * _SS, 18 * _SS, _size(draw, "Ag", font)[1] + 8 * _SS
    widths = [sample + 6 * _SS + _size(draw, e[0], font)[0] + gap for e in entries]
    rows: list[list[int]] = []
    for i, w in enumerate(widths):
        if not rows or sum(widths[j] for j in rows[-1]) + w > x1 - x0:
            rows.append([])
        rows[-1].append(i)
    for row in rows:
        lx, cy = (x0 + x1) / 2 - (sum(widths[j] for j in row) - gap) / 2, top + lh / 2
        for j in row:
            label, colour, marker, dashed = entries[j]
            _line(draw, [(lx, cy), (lx + sample, cy)], colour, dashed)
            if marker:
                _marker(draw, lx + sample / 2, cy, marker, colour)
            draw.text((lx + sample + 6 * _SS, cy), label, font=font, anchor="lm", fill=_TEXT)
            lx += widths[j]
        top += lh
    return top


class _Styled(NamedTuple):
    """One series of a panel as drawn: legend label, segments, on the right axis, colour, marker, markers drawn."""

    label: str
    segs: Segments
    secondary: bool
    colour: str
    marker: str
    marked: bool


@dataclass
class _Frame:
    """Where a panel's data go: the plot rectangle (supersampled pixels), the x range, the y ranges of
    the left (0) and right (1) axes, each axis' (value, label) ticks, and whether there is any point."""

    left: float
    top: float
    right: float
    bottom: float
    xspan: Span
    spans: list[Span | None]
    xticks: list[tuple[float, str]]
    yticks: list[tuple[float, str]]
    sticks: list[tuple[float, str]]
    has_data: bool

    def fx(self, v: float) -> float:
        """The pixel column of x = ``v``."""
        xlo, xhi = self.xspan
        return self.left + (v - xlo) / (xhi - xlo) * (self.right - self.left)

    def fy(self, v: float, axis: int) -> float:
        """The pixel row of y = ``v`` on the left (0) or right (1) axis."""
        lo, hi = self.spans[axis] or (0.0, 1.0)
        return self.bottom - (v - lo) / (hi - lo) * (self.bottom - self.top)


def _panel(
    img: Image.Image,
    box: tuple[int, int, int, int],
    series: Series,
    secondary: Series | None,
    title: str,
    xlabel: str,
    ylabel: str,
    secondary_label: str,
    marks: Sequence[tuple[float, str]] = (),
    point_labels: Mapping[str, Sequence[str]] | None = None,
    xlog: bool = False,
    lines: bool = True,
) -> None:
    """Draw one chart (title, legend, frame, grid, ticks, lines) inside `box` of the supersampled image;
    ``marks`` are (x, label) events drawn as labelled vertical lines; ``point_labels``: a text beside
    each point of the named series; ``xlog``: a logarithmic x axis (every x must be > 0); ``lines``
    False: markers only."""
    draw, S = ImageDraw.Draw(img), _SS
    f_title, f_label, f_tick = _font(17 * S), _font(14 * S), _font(12 * S)
    if xlog:  # positions in log10 x; the ticks are labelled with x itself
        series = {k: ([math.log10(x) if x > 0 else math.nan for x in xs], ys) for k, (xs, ys) in series.items()}
    groups = [[(lab, _segments(xs, ys)) for lab, (xs, ys) in s.items()] for s in (series, secondary or {})]
    styled = _styled(groups)
    top: float = box[1] + 14 * S
    if title:
        draw.text(((box[0] + box[2]) / 2, top), title, font=f_title, anchor="mt", fill=_TEXT)
        top += _size(draw, "Ag", f_title)[1] + 10 * S
    if styled:
        entries = [(st.label, st.colour, st.marker if st.marked else "", st.secondary) for st in styled]
        top = _legend(draw, entries, box[0] + 14 * S, box[2] - 14 * S, top, f_label) + 6 * S
    right_label = secondary_label if groups[1] else ""
    fr = _frame(draw, box, top, groups, xlog, (xlabel, ylabel, right_label), (f_label, f_tick))
    _draw_axes(img, draw, box, fr, marks, (xlabel, ylabel, right_label), (f_label, f_tick))
    if not fr.has_data:
        draw.text(((fr.left + fr.right) / 2, (fr.top + fr.bottom) / 2), "no data", font=f_title, anchor="mm", fill=_MUTED)
        return
    _draw_series(draw, fr, styled, lines)
    if point_labels:
        _draw_point_labels(draw, fr, series, point_labels, f_tick)


def _styled(groups: list[list[tuple[str, Segments]]]) -> list[_Styled]:
    """The series of both axes in drawing order, each with its colour and marker (by position) and its
    legend label; markers only on series of at most :data:`MAX_MARKED` points."""
    flat = [(lab, segs, k == 1) for k, g in enumerate(groups) for lab, segs in g]
    out = []
    for i, (lab, segs, sec) in enumerate(flat):
        colour, marker = PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
        out.append(_Styled(lab + (" (right axis)" if sec else ""), segs, sec, colour, marker, sum(map(len, segs)) <= MAX_MARKED))
    return out


def _frame(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], top: float, groups: list[list[tuple[str, Segments]]], xlog: bool,
    labels: tuple[str, str, str], fonts: tuple[Any, Any],
) -> _Frame:  # fmt: skip
    """The plot rectangle below ``top`` (margins follow the tick-label widths and the axis labels
    ``labels``: x, left, right) and the axes' ranges and ticks."""
    (x0, _, x1, y1), S, pad = box, _SS, 14 * _SS
    (xlabel, ylabel, right_label), (f_label, f_tick) = labels, fonts
    pts = [[p for _, segs in g for s in segs for p in s] for g in groups]
    xs_all = [p[0] for p in pts[0] + pts[1]]
    integer_x = not xlog and all(x.is_integer() for x in xs_all)
    xspan, spans = _span(xs_all, integer_x), [_span([p[1] for p in g]) for g in pts]
    yticks, sticks = _axis(spans[0]), _axis(spans[1])
    lab_h, tick_h = _size(draw, "Ag", f_label)[1], _size(draw, "0", f_tick)[1]
    widest = lambda ticks: max([_size(draw, t, f_tick)[0] for _, t in ticks] + [0])  # noqa: E731
    left = x0 + pad + (lab_h + 10 * S if ylabel else 0) + max(widest(yticks), 20 * S) + 8 * S
    right = x1 - pad - (8 * S + widest(sticks) + (lab_h + 10 * S if right_label else 0) if groups[1] else 6 * S)
    bottom = y1 - pad - tick_h - 8 * S - (lab_h + 10 * S if xlabel else 0)
    target = max(2, min(10, int((right - left) / (80 * S))))
    xticks = _log_axis(xspan, target) if xlog else _axis(xspan, target, integer_x)
    return _Frame(left, top, right, bottom, xspan or (0.0, 1.0), spans, xticks, yticks, sticks, bool(xs_all))


def _draw_axes(
    img: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fr: _Frame, marks: Sequence[tuple[float, str]],
    labels: tuple[str, str, str], fonts: tuple[Any, Any],
) -> None:  # fmt: skip
    """Grid, ticks and their labels, the frame, the marks (labelled vertical lines) and the axis labels."""
    (x0, _, x1, y1), S, pad = box, _SS, 14 * _SS
    (xlabel, ylabel, right_label), (f_label, f_tick) = labels, fonts
    left, top, right, bottom = fr.left, fr.top, fr.right, fr.bottom
    for v, t in fr.yticks:
        draw.line([(left, fr.fy(v, 0)), (right, fr.fy(v, 0))], fill=_GRID, width=S)
        draw.text((left - 8 * S, fr.fy(v, 0)), t, font=f_tick, anchor="rm", fill=_TEXT)
    for v, t in fr.xticks:
        draw.line([(fr.fx(v), top), (fr.fx(v), bottom)], fill=_GRID, width=S)
        draw.line([(fr.fx(v), bottom), (fr.fx(v), bottom + 4 * S)], fill=_AXIS, width=S)
        draw.text((fr.fx(v), bottom + 8 * S), t, font=f_tick, anchor="mt", fill=_TEXT)
    for v, t in fr.sticks:
        draw.line([(right, fr.fy(v, 1)), (right + 4 * S, fr.fy(v, 1))], fill=_AXIS, width=S)
        draw.text((right + 8 * S, fr.fy(v, 1)), t, font=f_tick, anchor="lm", fill=_TEXT)
    draw.rectangle([left, top, right, bottom], outline=_AXIS, width=S)
    for x, label in marks:
        if fr.xspan[0] <= x <= fr.xspan[1]:
            _line(draw, [(fr.fx(x), top), (fr.fx(x), bottom)], _MARK, True)
            draw.text((fr.fx(x) + 4 * S, top + 4 * S), label, font=f_tick, anchor="lt", fill=_MARK)
    lab_h = _size(draw, "Ag", f_label)[1]
    if xlabel:
        draw.text(((left + right) / 2, y1 - pad), xlabel, font=f_label, anchor="mb", fill=_TEXT)
    if ylabel:
        _vtext(img, (x0 + pad + lab_h / 2, (top + bottom) / 2), ylabel, f_label)
    if right_label:
        _vtext(img, (x1 - pad - lab_h / 2, (top + bottom) / 2), right_label, f_label)


def _draw_series(draw: ImageDraw.ImageDraw, fr: _Frame, styled: list[_Styled], lines: bool) -> None:
    """Each series' lines (dashed on the right axis) and markers; isolated points always get theirs."""
    for st in styled:
        mapped = [[(fr.fx(x), fr.fy(y, st.secondary)) for x, y in s] for s in st.segs]
        for m in mapped if lines else ():
            _line(draw, m, st.colour, st.secondary)
        for m in mapped if st.marked or not lines else [m for m in mapped if len(m) == 1]:  # isolated points stay visible
            for x, y in m:
                _marker(draw, x, y, st.marker, st.colour)


def _draw_point_labels(draw: ImageDraw.ImageDraw, fr: _Frame, series: Series, point_labels: Mapping[str, Sequence[str]], font: Any) -> None:
    """The text beside each point of the named series (left of the point where the right edge is near)."""
    S = _SS
    for label, (xs, ys) in series.items():
        for x, y, text in zip(xs, ys, point_labels.get(label, ())):
            if text and math.isfinite(x) and math.isfinite(y):
                px, py = fr.fx(x), fr.fy(y, 0)
                fits = px + 7 * S + _size(draw, text, font)[0] <= fr.right  # else on the point's left
                draw.text((px + 7 * S if fits else px - 7 * S, py - 5 * S), text, font=font, anchor="lb" if fits else "rb", fill=_TEXT)


def _finish(img: Image.Image, size: tuple[int, int], path: str | os.PathLike[str] | None) -> bytes:
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.LANCZOS).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def line_chart(
    path: str | os.PathLike[str] | None,
    series: Series,
    *,
    title: str = "",
    xlabel: str = "epoch",
    ylabel: str = "",
    secondary: Series | None = None,
    secondary_label: str = "",
    size: tuple[int, int] = (900, 560),
) -> bytes:
    """Render a PNG line chart; write it atomically to `path` when given; return the PNG bytes."""
    img = Image.new("RGB", (size[0] * _SS, size[1] * _SS), "white")
    _panel(img, (0, 0, img.width, img.height), series, secondary, title, xlabel, ylabel, secondary_label)
    return _finish(img, size, path)


@dataclass
class PointsPanel:
    """One panel of :func:`points_chart`: series of labelled points, each series joined by a line in
    the order given. ``series``: legend label -> [(x, y, text beside the point)]."""

    series: dict[str, list[tuple[float, float, str]]]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xlog: bool = False
    lines: bool = True  # False: markers only (runs that are no curve)


def points_chart(path: str | os.PathLike[str] | None, panels: Sequence[PointsPanel], *, width: int = 900, panel_height: int = 600) -> bytes:
    """A PNG of labelled points (e.g. a rate-distortion curve, Alemi et al. 2018, with each point named
    by its beta), the panels stacked; written atomically to ``path`` when given. Returns the PNG bytes.
    A log x axis needs every x > 0 (points at x <= 0 are left out)."""
    size = (width, panel_height * max(1, len(panels)))
    img = Image.new("RGB", (size[0] * _SS, size[1] * _SS), "white")
    h = img.height // max(1, len(panels))
    for i, p in enumerate(panels):
        series: Series = {k: ([float(x) for x, _, _ in pts], [float(y) for _, y, _ in pts]) for k, pts in p.series.items()}
        texts = {k: [t for _, _, t in pts] for k, pts in p.series.items()}
        _panel(
            img,
            (0, i * h, img.width, (i + 1) * h),
            series,
            None,
            p.title,
            p.xlabel,
            p.ylabel,
            "",
            point_labels=texts,
            xlog=p.xlog,
            lines=p.lines,
        )
    return _finish(img, size, path)


def _metric(rows: list[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    pairs = [
        (r.get("epochs_done", r["epoch"]), r[split][key]) for r in rows if isinstance(r.get(split), dict) and r[split].get(key) is not None
    ]
    return [float(e) for e, _ in pairs], [float(v) for _, v in pairs]


def plot_training_curves(path: str | os.PathLike[str] | None, metrics: list[dict], marks: Sequence[tuple[float, str]] = ()) -> bytes:
    """loss.png of a run from metrics.jsonl rows: top panel train -ELBO, train recon, validation
    -ELBO (nats/image); bottom panel train/validation KL (nats) with beta on a right-hand axis.
    ``marks`` (epoch, label): alarms and recoveries, drawn on both panels. Returns PNG bytes."""
    rows = sorted((r for r in metrics if "epoch" in r), key=lambda r: r["epoch"])
    top: dict[str, tuple[Sequence[float], Sequence[float]]] = {
        "train -ELBO": _metric(rows, "train", "neg_elbo"),
        "train recon": _metric(rows, "train", "recon"),
    }
    bottom: dict[str, tuple[Sequence[float], Sequence[float]]] = {"train KL": _metric(rows, "train", "kl")}
    if any(isinstance(r.get("val"), dict) for r in rows):
        top["validation -ELBO"] = _metric(rows, "val", "neg_elbo")
        bottom["validation KL"] = _metric(rows, "val", "kl")
    b_rows = [r for r in rows if r.get("beta") is not None]
    beta = {"beta": ([float(r.get("epochs_done", r["epoch"])) for r in b_rows], [float(r["beta"]) for r in b_rows])} if b_rows else None
    size = (900, 1040)
    img = Image.new("RGB", (size[0] * _SS, size[1] * _SS), "white")
    half = img.height // 2
    _panel(img, (0, 0, img.width, half), top, None, "Loss per epoch", "epoch", "nats / image", "", marks)
    _panel(img, (0, half, img.width, img.height), bottom, beta, "KL divergence per epoch", "epoch", "KL (nats)", "beta", marks)
    return _finish(img, size, path)
