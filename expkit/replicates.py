"""A replicated run's numbers: the mean table of its replicates, each metric's statistics (n,
mean, sd, 95 % Student t interval) and the mean curve. Layer 3 (pure): tables and loaded
``Metrics`` in, data out; numpy only inside ``mean_curve``.

A record whose config has ``replicates`` > 1 trains once per seed, each replicate in
``out/experiment_V/r{i}/`` (``catalog.replicate_tables`` reads them). Its metrics are the
replicates' mean; ``stats`` says how sure that mean is, and is what the generated metrics
section (mean ± half-width), the evidence and the group's table show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .intervals import mean_sd, t_interval
from .metrics import SERIES, Metrics
from .numbers import is_finite_number



def _values(tables: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    return [float(t[metric]) for t in tables if is_finite_number(t.get(metric))]


def mean_table(tables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each metric's mean over the replicates that have it (a count every replicate agrees on,
    such as ``steps``, stays the integer it is)."""
    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        raw = [t[key] for t in tables if is_finite_number(t.get(key))]
        if not raw:
            continue
        out[key] = raw[0] if all(x == raw[0] for x in raw) else mean_sd([float(x) for x in raw])[0]
    return out


def stat(values: Sequence[float]) -> dict[str, Any]:
    """{n, mean, sd, ci_low, ci_high, half, df} of one metric's per-replicate values (sd and the
    interval None for a single value)."""
    n = len(values)
    mean, sd = mean_sd(values)
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": sd, "ci_low": None, "ci_high": None, "half": None, "df": None}
    if n >= 2:
        iv = t_interval(values)
        out.update(ci_low=iv.low, ci_high=iv.high, half=iv.half, df=iv.df)
    return out


def stats(tables: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``stat`` of every metric that at least one replicate has: {metric: {n, mean, sd, ...}}."""
    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys and is_finite_number(t.get(k))]
    return {k: stat(v) for k in keys if (v := _values(tables, k))}


def mean_curve(runs: Sequence[Metrics]) -> Metrics | None:
    """The replicates' mean curve: each series averaged at the steps every replicate logged
    (train loss, lr, ...) and evaluated (val loss). None without runs; one run is itself."""
    import numpy as np

    runs = [m for m in runs if m is not None and len(m)]
    if not runs:
        return None
    if len(runs) == 1:
        return runs[0]
    steps = runs[0].step
    for m in runs[1:]:
        steps = np.intersect1d(steps, m.step)
    val_steps = runs[0].val_step
    for m in runs[1:]:
        val_steps = np.intersect1d(val_steps, m.val_step)

    def at(m: Metrics, name: str) -> np.ndarray:
        idx = np.searchsorted(m.step, steps)
        return getattr(m, name)[idx]

    series = {name: np.mean([at(m, name) for m in runs], axis=0) if len(steps) else np.zeros(0) for name in SERIES}
    val = (np.mean([m.val_loss[np.searchsorted(m.val_step, val_steps)] for m in runs], axis=0)
           if len(val_steps) else np.zeros(0))
    return Metrics(runs[0].path, steps, val_step=val_steps, val_loss=val, **series)
