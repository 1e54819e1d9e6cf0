"""The PNG charts: round ticks, deterministic bytes, degenerate inputs drawn rather than failing."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from expkit import charts


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (7.62, 8.81), (1e-4, 3e-3), (-2.5, 2.5), (1.0, 100_000.0), (5.0, 5.0)])
def test_ticks_are_round_evenly_spaced_and_cover_the_range(lo, hi):
    ticks = charts.nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 12
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-9) for m in (1, 2, 2.5, 5))
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in zip(ticks, ticks[1:]))
    span = max(hi - lo, 1.0 if hi == lo else 0)
    assert ticks[0] <= lo + span * 0.5 and ticks[-1] >= hi - span * 0.5 - step


def test_tick_labels_use_the_decimals_the_step_needs():
    assert charts.tick_label(7.75, 0.25) == "7.75"
    assert charts.tick_label(8.0, 0.5) == "8.0"
    assert charts.tick_label(20.0, 20.0) == "20"
    assert charts.tick_label(0.0, 1.0) == "0"
    assert charts.tick_label(5e-4, 5e-4) == "5e-4"


def test_a_chart_is_a_deterministic_png_of_the_stated_size(tmp_path):
    s = charts.Series([1, 2, 3], [3.0, 2.0, 2.5], "loss", charts.PALETTE[0], marker=True)
    lr = charts.Series([1, 2, 3], [1e-3, 2e-3, 1e-3], "lr", charts.PALETTE[3], dash=True, right=True)
    panels = [charts.Panel([s, lr], "loss", "lr"), charts.Panel([s], "val")]
    a = charts.render(panels, tmp_path / "a.png", title="0.1.0 学习率")
    b = charts.render(panels, tmp_path / "sub" / "b.png", title="0.1.0 学习率")
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as img:
        assert img.size == (charts.WIDTH, 2 * charts.PANEL_HEIGHT)
        colours = {c for _, c in img.getcolors(1 << 20)}
        assert (31, 119, 180) in colours  # the loss line's colour was drawn


def test_empty_nonfinite_and_single_point_series_still_draw(tmp_path):
    nan = float("nan")
    panels = [charts.Panel([charts.Series([], [], "none\nwith a newline", "#000000"),
                            charts.Series([1, 2], [nan, float("inf")], "bad", "#ff0000"),
                            charts.Series([5], [2.0], "one", "#00ff00")])]
    path = charts.render(panels, tmp_path / "x.png", title="evil $(touch X)\nnext line")
    assert path.read_bytes().startswith(b"\x89PNG")
