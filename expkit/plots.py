"""The run's plots as PNG (drawn by ``charts``): loss and lr, runs overlaid, a metric by version.

Layer 3: writes only the file it is handed (atomically, through ``charts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .charts import PALETTE, Panel, Series, render
from .metrics import Metrics
from .numbers import is_finite_number

if TYPE_CHECKING:
    import numpy as np

# -- plots -----------------------------------------------------------------------------------------

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
             title: str | None = None) -> Path:
    """PNG of train loss and val loss by step, the lr on a right axis, and the ``overlays``
    (e.g. {"parent 1.4.0": Metrics}) as thinner lines. Returns ``path``."""

    panel = Panel(ylabel="loss", right_label="learning rate")
    others = PALETTE[7:] + PALETTE[4:7]
    for (label, other), color in zip((overlays or {}).items(), others * 10):
        panel.series.append(_series(other.step, other.loss, f"{label} train", color, width=1.0))
        if len(other.val_step):
            panel.series.append(_series(other.val_step, other.val_loss, f"{label} val", color, width=1.0, dash=True, marker=True))
    panel.series.append(_series(metrics.step, metrics.loss, "train loss", PALETTE[0]))
    if len(metrics.val_step):
        panel.series.append(_series(metrics.val_step, metrics.val_loss, "val loss", PALETTE[1], marker=True))
    if len(metrics.step) and _any_finite(metrics.lr):
        panel.series.append(_series(metrics.step, metrics.lr, "lr", PALETTE[3], width=1.0, dash=True, right=True))
    return render([panel], path, title=title or "")


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
