"""Line charts as PNG, drawn with Pillow: the few kinds ``exp`` needs, fast to start.

Why not matplotlib: importing it costs ~0.8 s on a 2-core machine, more than everything else
``exp analyze`` does with a 100,000-step run (load, anomalies, verdicts, record), and the
command has a 1 s budget. Pillow imports in ~50 ms and draws a chart in ~30 ms.

A chart is one or more panels stacked vertically over a shared x axis; a panel holds series
on a left axis and optionally on a right one (the learning rate beside the loss). Drawing is
done at ``SCALE`` times the size and scaled down, which smooths the lines (Pillow draws
them without anti-aliasing). The output is deterministic: same data, same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_file

WIDTH, PANEL_HEIGHT = 800, 420  # pixels of the final image, per panel
SCALE = 2
#: matplotlib's "tab10": familiar colours for ML curves.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARGIN = {"left": 78, "right": 78, "top": 34, "bottom": 46}  # final pixels around a panel's plot area
GRID, AXIS, TEXT = "#e6e6e6", "#444444", "#222222"


@dataclass
class Series:
    x: Sequence[float]
    y: Sequence[float]
    label: str
    color: str
    width: float = 1.5
    dash: bool = False
    marker: bool = False
    right: bool = False  # on the panel's right axis
    legend: bool = True  # listed in the legend (an error bar or a faint replicate is not)


@dataclass
class Panel:
    series: list[Series] = field(default_factory=list)
    ylabel: str = ""
    right_label: str = ""


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's embedded scalable font (FreeType)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 × 10^k apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = first + len(ticks) * step
    return ticks


def tick_label(value: float, step: float) -> str:
    """A tick's text: as many decimals as the step needs, scientific below 1e-3."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        mantissa, exp = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"  # 5e-4, 1.5e-3, 2.25e6
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1  # 0.25 needs 2, 0.5 needs 1, 20 needs 0
    return f"{value:.{decimals}f}"


def _range(series: list[Series], pad: float = 0.05) -> tuple[float, float] | None:
    values = [v for s in series for v in s.y if math.isfinite(v)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    span = hi - lo or abs(hi) or 1.0
    return lo - span * pad, hi + span * pad


def _dashed(draw: Any, points: list[tuple[float, float]], color: str, width: int, on: float, off: float) -> None:
    """A polyline drawn as dashes of ``on`` pixels with ``off`` gaps, continuing across vertices."""
    state_on, left = True, on
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if state_on:
                a, b = pos / length, (pos + step) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=color, width=width)
            pos += step
            left -= step
            if left <= 1e-9:
                state_on = not state_on
                left = on if state_on else off


def render(panels: list[Panel], path: str | Path, title: str = "", xlabel: str = "step",
           xticks: list[tuple[float, str]] | None = None) -> Path:
    """Draw ``panels`` stacked (shared x axis) and save a PNG at ``path``; returns the path.
    ``xticks``: fixed (position, text) ticks, e.g. version names, instead of numeric ones."""
    from PIL import Image, ImageDraw

    s = SCALE
    title = " ".join(title.split())  # Pillow measures one line only; a description may hold newlines
    height = PANEL_HEIGHT * len(panels)
    img = Image.new("RGB", (WIDTH * s, height * s), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(12 * s), _font(10 * s)

    every = [x for p in panels for ser in p.series for x in ser.x if math.isfinite(x)]
    x_lo, x_hi = (min(every), max(every)) if every else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_pad = (x_hi - x_lo) * 0.02
    x_lo, x_hi = x_lo - x_pad, x_hi + x_pad

    if title:
        w = draw.textlength(title, font=font)
        draw.text(((WIDTH * s - w) / 2, 8 * s), title, fill=TEXT, font=font)
    for i, panel in enumerate(panels):
        top = (i * PANEL_HEIGHT + MARGIN["top"]) * s
        bottom = ((i + 1) * PANEL_HEIGHT - MARGIN["bottom"]) * s
        left, right = MARGIN["left"] * s, (WIDTH - MARGIN["right"]) * s
        px = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (right - left)  # noqa: E731

        # x grid and ticks (labels under every panel, like sharex with visible labels)
        ticks = xticks if xticks is not None else [(t, None) for t in nice_ticks(x_lo, x_hi, 8)]
        x_step = (ticks[1][0] - ticks[0][0]) if len(ticks) > 1 else 1.0
        for x, text in ticks:
            if not x_lo <= x <= x_hi:
                continue
            draw.line([(px(x), top), (px(x), bottom)], fill=GRID, width=s)
            label = text if text is not None else tick_label(x, x_step)
            w = draw.textlength(label, font=small)
            draw.text((px(x) - w / 2, bottom + 4 * s), label, fill=TEXT, font=small)
        if i == len(panels) - 1 and xlabel:
            w = draw.textlength(xlabel, font=font)
            draw.text(((left + right - w) / 2, bottom + 20 * s), xlabel, fill=TEXT, font=font)

        legend: list[Series] = []
        for side in (False, True):
            group = [ser for ser in panel.series if ser.right == side]
            yr = _range(group)
            if yr is None:
                continue
            y_lo, y_hi = yr
            py = lambda y, lo=y_lo, hi=y_hi: bottom - (y - lo) / (hi - lo) * (bottom - top)  # noqa: E731
            yt = nice_ticks(y_lo, y_hi, 6)
            y_step = yt[1] - yt[0] if len(yt) > 1 else 1.0
            for y in yt:
                if not y_lo <= y <= y_hi:
                    continue
                label = tick_label(y, y_step)
                if side:
                    draw.line([(right, py(y)), (right + 4 * s, py(y))], fill=AXIS, width=s)
                    draw.text((right + 7 * s, py(y) - 6 * s), label, fill=TEXT, font=small)
                else:
                    draw.line([(left, py(y)), (right, py(y))], fill=GRID, width=s)
                    w = draw.textlength(label, font=small)
                    draw.text((left - 7 * s - w, py(y) - 6 * s), label, fill=TEXT, font=small)
            name = panel.right_label if side else panel.ylabel
            if name:
                _vertical_text(img, name, font, x=(right + 56 * s) if side else 6 * s, y_mid=(top + bottom) / 2)
            for ser in group:
                pts = [(px(x), py(y)) for x, y in zip(ser.x, ser.y) if math.isfinite(x) and math.isfinite(y)]
                width = max(1, round(ser.width * s))
                if len(pts) > 1:
                    if ser.dash:
                        _dashed(draw, pts, ser.color, width, 6 * s, 4 * s)
                    else:
                        draw.line(pts, fill=ser.color, width=width, joint="curve")
                if ser.marker or len(pts) == 1:
                    r = 2.5 * s
                    for x, y in pts:
                        draw.ellipse([x - r, y - r, x + r, y + r], fill=ser.color)
                if ser.legend:
                    legend.append(ser)
        draw.rectangle([left, top, right, bottom], outline=AXIS, width=s)
        _legend(draw, legend, small, right, top)
    img = img.reduce(SCALE)  # a box filter: as smooth as LANCZOS at 2x, ~10x faster
    path = Path(path)
    with atomic_file(path) as fh:  # two analyses at once: each PNG is one writer's, whole
        img.save(fh, format="PNG", optimize=False)
    return path


def faint(color: str, amount: float = 0.7) -> str:
    """``color`` blended ``amount`` of the way towards white: a replicate's line beside the mean."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def _vertical_text(img: Any, text: str, font: Any, x: float, y_mid: float) -> None:
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(img)
    w = int(probe.textlength(text, font=font)) + 4
    h = int(font.size * 1.3) if hasattr(font, "size") else 16
    tile = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(tile).text((2, 0), text, fill=TEXT, font=font)
    tile = tile.rotate(90, expand=True)
    img.paste(tile, (int(x), int(y_mid - tile.height / 2)))


def _legend(draw: Any, series: list[Series], font: Any, right: float, top: float) -> None:
    if not series:
        return
    for ser in series:
        ser.label = " ".join(str(ser.label).split())
    s = SCALE
    line_h = 15 * s
    width = max(draw.textlength(ser.label, font=font) for ser in series) + 38 * s
    x0, y0 = right - width - 8 * s, top + 8 * s
    draw.rectangle([x0, y0, x0 + width, y0 + line_h * len(series) + 6 * s], fill="white", outline="#cccccc", width=s)
    for i, ser in enumerate(series):
        y = y0 + 4 * s + i * line_h + line_h / 2
        seg = [(x0 + 6 * s, y), (x0 + 26 * s, y)]
        if ser.dash:
            _dashed(draw, seg, ser.color, max(1, round(ser.width * s)), 5 * s, 3 * s)
        else:
            draw.line(seg, fill=ser.color, width=max(1, round(ser.width * s)))
        if ser.marker:
            draw.ellipse([x0 + 16 * s - 2.5 * s, y - 2.5 * s, x0 + 16 * s + 2.5 * s, y + 2.5 * s], fill=ser.color)
        draw.text((x0 + 32 * s, y - 7 * s), ser.label, fill=TEXT, font=font)
