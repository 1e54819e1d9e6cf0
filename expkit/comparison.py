"""Metric tables side by side: deltas against a reference, several runs compared. Layer 3 (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER, SUMMARY_KEYS
from .numbers import is_finite_number

# -- comparison ------------------------------------------------------------------------------------


def metric_deltas(observed: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """For each numeric metric in both: {"value", "reference", "abs": value − reference,
    "rel": abs / |reference| (None when the reference is 0)}."""
    out = {}
    keys = [k for k in SUMMARY_KEYS if k in observed] + [k for k in observed if k not in SUMMARY_KEYS]
    for key in keys:
        v, r = observed.get(key), reference.get(key)
        if not (is_finite_number(v) and is_finite_number(r)):
            continue
        d = v - r
        out[key] = {"value": v, "reference": r, "abs": d, "rel": d / abs(r) if r else None}
    return out


def compare(runs: Mapping[str, Mapping[str, Any]], configs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Several runs side by side, the first label being the reference::

        {"reference": label, "labels": [...],
         "config_diff": {key: {label: value}},        # only keys whose values differ
         "metrics": {metric: {label: value}},          # numeric metrics any run has
         "deltas": {label: metric_deltas(run, reference)}}   # every label but the reference
    """
    labels = list(runs)
    if not labels:
        return {"reference": None, "labels": [], "config_diff": {}, "metrics": {}, "deltas": {}}
    ref = labels[0]
    configs = configs or {}
    keys: list[str] = []
    for label in labels:
        keys += [k for k in (configs.get(label) or {}) if k not in keys]
    missing = object()
    config_diff = {}
    for k in keys:
        values = [(configs.get(label) or {}).get(k, missing) for label in labels]
        if any(v != values[0] for v in values[1:]):
            config_diff[k] = {label: (None if v is missing else v) for label, v in zip(labels, values)}
    names: list[str] = []
    for label in labels:
        names += [k for k, v in runs[label].items() if is_finite_number(v) and k not in names]
    order = {k: i for i, k in enumerate(SUMMARY_KEYS)}
    names.sort(key=lambda k: order.get(k, len(order)))
    return {
        "reference": ref, "labels": labels, "config_diff": config_diff,
        "metrics": {k: {label: runs[label].get(k) for label in labels} for k in names},
        "deltas": {label: metric_deltas(runs[label], runs[ref]) for label in labels[1:]},
    }


def direction(task: Any, metric: str) -> str | None:
    """"lower" or "higher" is better for ``metric``: the record's task's table says (``task``: a
    ``tasks.Task`` or None), else pretraining's sets; None when neither knows the metric."""
    found = task.direction(metric) if task is not None else None
    if found is not None:
        return str(found)
    return "lower" if metric in LOWER_IS_BETTER else "higher" if metric in HIGHER_IS_BETTER else None


def better(deltas: Mapping[str, Mapping[str, Any]], task: Any) -> dict[str, bool | None]:
    """{metric: True (better than the reference), False (worse), None (equal, or no direction)}
    of ``metric_deltas``, each metric's direction from ``task`` (``direction``)."""
    out: dict[str, bool | None] = {}
    for metric, d in deltas.items():
        way, diff = direction(task, metric), d.get("abs")
        out[metric] = None if way is None or not diff else (diff < 0) == (way == "lower")
    return out


#: Config keys added to the schema after records existed, with their defaults: a config written
#: before a key existed holds its default (no change to report between an old and a new record).
ADDED_KEYS: dict[str, Any] = {"replicates": 1}


def config_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{key: [a's value, b's value]} for the keys whose values differ, in a's key order (a
    TrainConfig dump: the schema's order), then b's extra keys."""
    keys = list(a) + [k for k in b if k not in a]
    out = {}
    for k in keys:
        va, vb = a.get(k, ADDED_KEYS.get(k)), b.get(k, ADDED_KEYS.get(k))
        if va != vb:
            out[k] = [va, vb]
    return out
