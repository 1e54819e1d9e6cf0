"""The run's plots as PNG (drawn by ``charts``): loss and lr, runs overlaid, a metric by version.

Layer 3: writes only the file it is handed (atomically, through ``charts``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .charts import PALETTE, Panel, Series, faint, render
from .metrics import Metrics
from .numbers import is_finite_number

if TYPE_CHECKING:
    import numpy as np

# -- plots -----------------------------------------------------------------------------------------

#: A group's curves plot lists at most this many members in its legend (then the last one).
MAX_LEGEND = 10
_MAX_POINTS = 4000  # a 100k-point line draws no better than 4k points, and ~10x slower


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The finite points, at most ~_MAX_POINTS: per bucket its lowest and highest point, so a
    one-step spike survives the thinning (a plain stride would drop it)."""
    import numpy as np

    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n <= _MAX_POINTS:
        return x, y
    per = n // (_MAX_POINTS // 2)
    full = (n // per) * per
    grid = y[:full].reshape(-1, per)
    base = np.arange(0, full, per)
    idx = np.unique(np.concatenate([base + grid.argmin(axis=1), base + grid.argmax(axis=1), np.arange(full, n)]))
    return x[idx], y[idx]


def _series(x: np.ndarray, y: np.ndarray, label: str, color: str, **style: Any) -> Any:

    tx, ty = _thin(x, y)
    return Series(tx.tolist(), ty.tolist(), label, color, **style)


def plot_run(metrics: Metrics, path: str | Path, overlays: Mapping[str, Metrics] | None = None,
             title: str | None = None, replicates: Sequence[Metrics] = ()) -> Path:
    """PNG of train loss and val loss by step, the lr on a right axis, and the ``overlays``
    (e.g. {"parent 1.4.0": Metrics}) as thinner lines. With ``replicates`` (a replicated run:
    ``metrics`` is then their mean) each replicate is drawn faintly under the mean. Returns ``path``."""

    panel = Panel(ylabel="loss", right_label="learning rate")
    for i, rep in enumerate(replicates):
        first = i == 0
        panel.series.append(_series(rep.step, rep.loss, "replicates (train)", faint(PALETTE[0]), width=1.0, legend=first))
        if len(rep.val_step):
            panel.series.append(_series(rep.val_step, rep.val_loss, "replicates (val)", faint(PALETTE[1]), width=1.0,
                                        legend=first))
    others = PALETTE[7:] + PALETTE[4:7]
    for (label, other), color in zip((overlays or {}).items(), others * 10):
        panel.series.append(_series(other.step, other.loss, f"{label} train", color, width=1.0))
        if len(other.val_step):
            panel.series.append(_series(other.val_step, other.val_loss, f"{label} val", color, width=1.0, dash=True, marker=True))
    mean = f" (mean of {len(replicates)})" if replicates else ""
    panel.series.append(_series(metrics.step, metrics.loss, f"train loss{mean}", PALETTE[0]))
    if len(metrics.val_step):
        panel.series.append(_series(metrics.val_step, metrics.val_loss, f"val loss{mean}", PALETTE[1], marker=True))
    if len(metrics.step) and _any_finite(metrics.lr):
        panel.series.append(_series(metrics.step, metrics.lr, "lr", PALETTE[3], width=1.0, dash=True, right=True))
    return render([panel], path, title=title or "")


def plot_metrics(metrics: Metrics, names: Sequence[str], path: str | Path, title: str | None = None,
                 lower: Sequence[str] = ()) -> Path | None:
    """PNG of a task's own series by step, one panel for those where lower is better (``lower``)
    and one for the rest; None (nothing written) when no name has a finite point."""
    panels = []
    for which, label in ((True, "lower is better"), (False, "higher is better")):
        panel = Panel(ylabel=label)
        for name, color in zip([n for n in names if (n in lower) == which], PALETTE * 10):
            if not metrics.has(name):
                continue
            steps, values = metrics.series(name)
            if _any_finite(values):
                panel.series.append(_series(steps, values, name, color, marker=len(steps) <= 50))
        if panel.series:
            panels.append(panel)
    return render(panels, path, title=title or "") if panels else None


def _any_finite(x: np.ndarray) -> bool:
    import numpy as np

    return bool(np.isfinite(x).any())


def plot_compare(runs: Mapping[str, Metrics], path: str | Path, title: str | None = None) -> Path:
    """PNG with two panels, train loss and val loss by step, one line per run (label → Metrics)."""

    train, val = Panel(ylabel="train loss"), Panel(ylabel="val loss")
    for (label, m), color in zip(runs.items(), PALETTE * 10):
        train.series.append(_series(m.step, m.loss, label, color))
        if len(m.val_step):
            val.series.append(_series(m.val_step, m.val_loss, label, color, marker=True))
    return render([train, val], path, title=title or "")


def plot_by_version(rows: Sequence[Mapping[str, Any]], path: str | Path, metrics: Sequence[str] = ("val_loss", "best_val_loss"),
                    title: str | None = None) -> Path | None:
    """PNG of ``metrics`` per record (one point per version, in row order), from the report's
    rows alone (no metrics.jsonl): cheap for a thousand records. None when no row has a value."""

    points = {m: [(i, float(r[m])) for i, r in enumerate(rows) if is_finite_number(r.get(m))] for m in metrics}
    if not any(points.values()):
        return None
    panel = Panel(ylabel="loss")
    for (metric, pts), color in zip(points.items(), PALETTE):
        if pts:
            panel.series.append(Series([p[0] for p in pts], [p[1] for p in pts], metric, color, width=1.0, marker=True))
    labels = [str(r.get("version", "")) for r in rows]
    step = max(1, len(labels) // 12)  # at most ~12 version names fit under the axis
    return render([panel], path, title=title or "", xlabel="version",
                  xticks=[(i, labels[i]) for i in range(0, len(labels), step)])


def plot_group_metric(rows: Sequence[Mapping[str, Any]], metric: str, swept: Sequence[str], path: str | Path,
                      title: str | None = None) -> Path:
    """PNG of each group member's ``metric``: its mean, and its 95 % interval as an error bar
    (n ≥ 2), against the swept value when one numeric key is swept (a log axis when the values
    span more than a decade), else member by member. ``rows``: ``grouping.member_row`` dicts."""
    rows = [r for r in rows if metric in (r.get("stats") or {})]
    values = [r["changes"].get(swept[0]) if len(swept) == 1 else None for r in rows]
    numeric = bool(rows) and all(is_finite_number(v) for v in values)
    log = numeric and min(values) > 0 and max(values) / min(values) > 10
    if numeric:
        xs = [math.log10(v) if log else float(v) for v in values]
        ticks = [(x, f"{v:.3g}") for x, v in zip(xs, values)]
        xlabel = f"{swept[0]} (log scale)" if log else swept[0]
    else:
        xs = [float(i) for i in range(len(rows))]
        ticks = [(float(i), r["version"]) for i, r in enumerate(rows)]
        xlabel = "member"
    panel = Panel(ylabel=metric)
    for x, r in zip(xs, rows):
        st = r["stats"][metric]
        if st.get("ci_low") is not None:
            panel.series.append(Series([x, x], [st["ci_low"], st["ci_high"]], "95% interval", PALETTE[0], width=1.5,
                                       legend=False))
    panel.series.append(Series(xs, [r["stats"][metric]["mean"] for r in rows], f"{metric} (mean, 95% interval)",
                               PALETTE[1], width=1.0, marker=True))
    step = max(1, -(-len(ticks) // 8))  # at most ~8 labels fit under the axis
    return render([panel], path, title=title or "", xlabel=xlabel, xticks=ticks[::step])


def plot_group_curves(runs: Mapping[str, Metrics | Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """PNG of every group member's train and val loss curves overlaid: label → its Metrics, or the
    curve its analysis kept ({"loss": {step: v}, "val_loss": {step: v}}, evidence.curve_of's shape)."""
    train, val = Panel(ylabel="train loss"), Panel(ylabel="val loss")
    for i, ((label, m), color) in enumerate(zip(runs.items(), PALETTE * (len(runs) // len(PALETTE) + 1))):
        shown = i < MAX_LEGEND or i == len(runs) - 1  # a legend of fifty lines is no help: the first and the last
        if i == len(runs) - 1 and len(runs) > MAX_LEGEND + 1:
            label = f"… {label}"
        if isinstance(m, Metrics):
            train.series.append(_series(m.step, m.loss, label, color, legend=shown))
            if len(m.val_step):
                val.series.append(_series(m.val_step, m.val_loss, label, color, marker=True, legend=shown))
            continue
        for panel, key in ((train, "loss"), (val, "val_loss")):
            points = sorted((int(k), float(v)) for k, v in (m.get(key) or {}).items() if is_finite_number(v))
            if points:
                panel.series.append(Series([p[0] for p in points], [p[1] for p in points], label, color,
                                           marker=key == "val_loss", legend=shown))
    return render([train, val], path, title=title or "")
