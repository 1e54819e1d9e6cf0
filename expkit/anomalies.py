"""Anomalies of a training curve: NaN/Inf, divergence, spikes, overfitting, plateaus,
throughput drops, stalls and early stops, each with its steps and the numbers it fired on.

``detect_anomalies(metrics, max_steps) -> list[Anomaly]``. Layer 3 (pure; numpy inside functions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .metrics import Metrics
from .numbers import format_number as _num
from .numbers import format_percent as _pct
from .numbers import json_safe

if TYPE_CHECKING:
    import numpy as np

# -- anomalies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The rules' knobs. Defaults keep a healthy tiny CPU run (60 steps, log every 5) and the
    360-step demo free of anomalies while each synthetic bad curve fires its own kind."""

    #: spike: a loss above the median of the previous `spike_window` lines by more than
    #: `spike_mads` robust standard deviations (1.4826 × MAD of the previous `scale_window`
    #: residuals) *and* by `spike_min_jump` of the loss itself (noise of a flat, quiet curve
    #: has a tiny MAD; 5% keeps it from firing). 6 MADs: one false alarm in ~10⁹ Gaussian lines.
    spike_window: int = 9
    scale_window: int = 50
    spike_mads: float = 6.0
    spike_min_jump: float = 0.05
    #: divergence: the smoothed loss (median of 9 lines) ends ≥ 10% above its minimum and the
    #: last 20% of steps trend up (least squares); a late uptick of noise does not.
    divergence_rise: float = 0.10
    divergence_tail: float = 0.20
    #: plateau: over the last 25% of steps the loss improved < 0.5% (median of the first vs the
    #: last third of that window) while the mean lr stayed ≥ 30% of its peak, i.e. the flat
    #: curve is not explained by annealing (cosine to min_lr_ratio 0.1 ends far below 30%).
    plateau_tail: float = 0.25
    plateau_min_improvement: float = 0.005
    plateau_lr_ratio: float = 0.30
    #: overfitting: over the last 3 evals val_loss rose ≥ 1% while the train loss fell.
    overfit_evals: int = 3
    overfit_rise: float = 0.01
    #: throughput drop: tokens/s below 50% of the run's median on ≥ 2 consecutive log lines. One
    #: line alone is a blip on a shared machine (a tiny run on a busy 2-core box shows 60% dips);
    #: a long single gap is a stall. The first line (start-up, compilation) is left out.
    throughput_ratio: float = 0.5
    throughput_min_lines: int = 2
    #: throughput shift: the median tokens/s of one third of the run is more than 2x another's,
    #: up or down — the machine's load changed under the run, so its tokens/s (and wall time)
    #: are not the experiment's alone.
    throughput_shift_factor: float = 2.0
    throughput_shift_parts: int = 3
    #: stall: a gap between log lines ≥ 10x the median time per step and ≥ 60 s beyond what
    #: the steps in it should take (evals and checkpoint saves stay below that).
    stall_factor: float = 10.0
    stall_min_s: float = 60.0
    #: at most this many spikes / throughput drops / stalls are reported one by one.
    max_events: int = 5


DEFAULT_THRESHOLDS = Thresholds()

#: Anomaly kinds, in report order.
ANOMALY_KINDS = ("nonfinite", "one_class", "prediction_collapse", "divergence", "spike", "overfitting", "plateau", "throughput_drop", "throughput_shift", "stall",
                 "early_stop")


@dataclass(frozen=True)
class Anomaly:
    """One finding of ``detect_anomalies``: where (step..end_step of ``metric``) and the numbers
    (``evidence``) that its one-line ``message`` cites."""

    kind: str
    metric: str
    step: int | None
    end_step: int | None
    evidence: dict[str, float | int]
    #: a class name the message names (a classifier's anomalies), else ""
    label: str = ""

    def message(self, lang: str = "en") -> str:
        return _anomaly_message(self, lang)

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "step": self.step, "end_step": self.end_step,
                "evidence": json_safe(dict(self.evidence)), "message": self.message(lang), **({"label": self.label} if self.label else {})}


# One line per kind, (en, zh). Fields: metric, step, end_step and the anomaly's evidence, each
# written by format_number; evidence keys ending in "ratio" are written as percentages.
_ANOMALY_TEXT = {
    "nonfinite": ("{metric} is non-finite ({value}) at step {step}, {count} log line(s) in all",
                  "{metric} 在第 {step} 步出现非有限值（{value}），共 {count} 行"),
    "one_class": ("the classifier predicts one class only: all {n} test texts as {label} (the majority-class "
                  "baseline does the same)",
                  "分类器只预测一个类别：全部 {n} 条测试文本都判为 {label}（与多数类基线相同）"),
    "prediction_collapse": ("the classifier predicts {label} for {share_ratio} of the {n} test texts, which hold "
                            "{true_ratio} of that class; {unpredicted} of {classes} classes are never predicted",
                            "分类器把 {share_ratio} 的测试文本（共 {n} 条）判为 {label}，而该类实际只占 {true_ratio}；"
                            "{classes} 个类别中有 {unpredicted} 个从未被预测"),
    "spike": ("loss {loss} at step {step} against a recent median of {baseline} ({jump}, {mads} MADs)",
              "第 {step} 步损失 {loss}，此前中位数 {baseline}（{jump}，{mads} 倍 MAD）"),
    "divergence": ("smoothed loss {final} at step {end_step} is {rise_ratio} above its minimum {min} at step "
                   "{min_step}, and rising",
                   "第 {end_step} 步平滑损失 {final}，比第 {min_step} 步的最低值 {min} 高 {rise_ratio}，且仍在上升"),
    "plateau": ("loss improved only {improvement_ratio} over steps {step}–{end_step} while the lr stayed at "
                "{lr_ratio} of its peak",
                "第 {step}–{end_step} 步损失只改善 {improvement_ratio}，而学习率仍为峰值的 {lr_ratio}"),
    "overfitting": ("val_loss rose from {val_from} to {val_to} over steps {step}–{end_step} while the train loss "
                    "fell from {train_from} to {train_to} (gap {gap_from} → {gap_to})",
                    "第 {step}–{end_step} 步验证损失从 {val_from} 升到 {val_to}，训练损失从 {train_from} 降到 "
                    "{train_to}（差距 {gap_from} → {gap_to}）"),
    "throughput_drop": ("tokens/s fell to {min} over steps {step}–{end_step}, {ratio} of the run's median {median}",
                        "第 {step}–{end_step} 步 tokens/s 低至 {min}，为中位数 {median} 的 {ratio}"),
    "throughput_shift": ("tokens/s {direction} {factor}x within the run (median of a third of the run: {from}, then {to}; "
                         "steps {step}–{end_step}); the machine's load changed under the run",
                         "运行中 tokens/s {direction_zh} {factor} 倍（按三分之一段的中位数：{from}，后来 {to}；第 {step}–{end_step} 步）；"
                         "运行期间机器负载发生了变化"),
    "stall": ("{gap_s} s between the log lines of steps {step} and {end_step}, {factor}x the median time per step",
              "第 {step} 步与第 {end_step} 步的日志相隔 {gap_s} 秒，每步耗时为中位数的 {factor} 倍"),
    "early_stop": ("the run ended at step {end_step} of {max_steps} ({done_ratio} done)",
                   "运行停在第 {end_step} 步（共 {max_steps} 步，完成 {done_ratio}）"),
}


def _anomaly_message(a: Anomaly, lang: str) -> str:
    fields: dict[str, Any] = {"metric": a.metric, "step": a.step, "end_step": a.end_step, "label": repr(a.label)}
    for key, value in a.evidence.items():
        fields[key] = _pct(value) if key.endswith("ratio") else _num(value, signed=key == "jump")
    if a.kind == "throughput_shift":
        up = a.evidence.get("to", 0) > a.evidence.get("from", 0)
        fields["direction"], fields["direction_zh"] = ("rose", "上升") if up else ("fell", "下降")
    en, zh = _ANOMALY_TEXT.get(a.kind, ("{metric}: " + a.kind + " at step {step}",) * 2)
    return (zh if lang == "zh" else en).format(**fields)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] index pairs of the consecutive True stretches of a boolean array."""
    import numpy as np

    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def _trailing_median(x: np.ndarray, w: int) -> np.ndarray:
    """out[i] = median(x[max(0, i-w+1) : i+1]) (the window includes i)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    out = np.empty_like(x)
    head = min(w - 1, len(x))
    for i in range(head):
        out[i] = np.median(x[: i + 1])
    if len(x) >= w:
        out[w - 1:] = np.median(sliding_window_view(x, w), axis=1)
    return out


def _spikes(step: np.ndarray, loss: np.ndarray, smooth: np.ndarray, th: Thresholds) -> list[Anomaly]:
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    n, k = len(loss), th.scale_window
    min_hist, min_resid = 4, 5  # lines needed before a baseline, residuals needed before a scale
    if n < min_hist + min_resid + 1:
        return []
    # baseline[i] = median of the (up to) spike_window lines *before* i: a spike never dilutes
    # its own baseline, and a steep early descent leaves the baseline above the loss, so the
    # first lines of a run never look like spikes
    baseline = np.full(n, np.nan)
    baseline[min_hist:] = smooth[min_hist - 1: n - 1]
    resid = loss - baseline
    # scale[i]: robust spread (1.4826 × MAD) of the up to `scale_window` residuals before i,
    # centred on their own median so that a steady descent (every residual negative) does not
    # pass for noise
    r = resid[min_hist:]
    scale = np.full(n, np.nan)

    def mad(win: np.ndarray) -> np.ndarray:
        centre = np.median(win, axis=-1, keepdims=True)
        return 1.4826 * np.median(np.abs(win - centre), axis=-1)

    for j in range(min_resid, min(k, len(r))):  # fewer than k residuals so far
        scale[min_hist + j] = mad(r[:j])
    if len(r) > k:
        # the spread drifts slowly: one window per `stride` lines, each line taking the window
        # that ends at or before it, is 10x cheaper and still uses only earlier residuals
        stride = 10
        windows = sliding_window_view(r[:-1], k)[::stride]
        scale[min_hist + k:] = np.repeat(mad(windows), stride)[: n - min_hist - k]
    with np.errstate(invalid="ignore"):
        hit = (resid > th.spike_mads * scale) & (resid > th.spike_min_jump * np.abs(baseline))
    events = []
    for a, b in _runs(hit):
        i = a + int(np.argmax(resid[a: b + 1]))
        events.append(Anomaly("spike", "loss", int(step[i]), int(step[b]), {
            "loss": float(loss[i]), "baseline": float(baseline[i]), "jump": float(resid[i]),
            "mads": float(resid[i] / scale[i]) if scale[i] > 0 else math.inf, "lines": b - a + 1}))
    if len(events) > th.max_events:  # keep the largest, in step order
        keep = {id(e) for e in sorted(events, key=lambda e: -e.evidence["jump"])[: th.max_events]}
        events = [e for e in events if id(e) in keep]
    return events


def _tail_slope(step: np.ndarray, y: np.ndarray) -> float:
    import numpy as np

    if len(y) < 3 or np.ptp(step) == 0:
        return 0.0
    return float(np.polyfit(step.astype(np.float64), y, 1)[0])


def _divergence(step: np.ndarray, loss: np.ndarray, smooth: np.ndarray, th: Thresholds) -> Anomaly | None:
    import numpy as np

    if len(loss) < 6:
        return None
    i_min = int(np.argmin(smooth))
    lo, end = float(smooth[i_min]), float(smooth[-1])
    rise = end - lo
    tail = step >= step[-1] - th.divergence_tail * (step[-1] - step[0])
    if rise < th.divergence_rise * abs(lo) or i_min == len(loss) - 1 or _tail_slope(step[tail], loss[tail]) <= 0:
        return None
    return Anomaly("divergence", "loss", int(step[i_min]), int(step[-1]), {
        "min": lo, "min_step": int(step[i_min]), "final": end, "rise": rise, "rise_ratio": rise / abs(lo) if lo else math.inf})


def _plateau(step: np.ndarray, loss: np.ndarray, lr_step: np.ndarray, lr: np.ndarray, th: Thresholds) -> Anomaly | None:
    import numpy as np

    if len(loss) < 8:
        return None
    start = step[-1] - th.plateau_tail * (step[-1] - step[0])
    tail = loss[step >= start]
    if len(tail) < 6:
        return None
    third = max(2, len(tail) // 3)
    before, after = float(np.median(tail[:third])), float(np.median(tail[-third:]))
    improvement = (before - after) / abs(before) if before else 0.0
    if improvement >= th.plateau_min_improvement:
        return None
    # no lr logged: the flat curve cannot be put down to annealing, so the loss alone decides
    lr_ratio = 1.0
    if len(lr):
        peak = float(lr.max())
        tail_lr = lr[lr_step >= start]
        lr_ratio = float(tail_lr.mean()) / peak if peak > 0 and len(tail_lr) else 1.0
    if lr_ratio < th.plateau_lr_ratio:
        return None
    first = int(step[step >= start][0])
    return Anomaly("plateau", "loss", first, int(step[-1]), {
        "loss_from": before, "loss_to": after, "improvement_ratio": improvement, "lr_ratio": lr_ratio})


def _overfitting(m: Metrics, th: Thresholds) -> Anomaly | None:
    import numpy as np

    ok = np.isfinite(m.val_loss)
    vs, vl = m.val_step[ok], m.val_loss[ok]
    k = th.overfit_evals
    if len(vl) < k:
        return None
    vs, vl = vs[-k:], vl[-k:]
    # the train loss "at" an eval: the mean of the lines since the eval before it (one line is noisy)
    finite = np.isfinite(m.loss)
    train = []
    for j, s in enumerate(vs):
        prev = vs[j - 1] if j else s - (vs[1] - vs[0])
        sel = finite & (m.step > prev) & (m.step <= s)
        train.append(float(m.loss[sel].mean()) if sel.any() else math.nan)
    if not (math.isfinite(train[0]) and math.isfinite(train[-1])):
        return None
    rising = all(b >= a for a, b in zip(vl, vl[1:])) and vl[-1] >= vl[0] * (1 + th.overfit_rise)
    gap_from, gap_to = float(vl[0] - train[0]), float(vl[-1] - train[-1])
    if not (rising and train[-1] < train[0] and gap_to > gap_from):
        return None
    return Anomaly("overfitting", "val_loss", int(vs[0]), int(vs[-1]), {
        "val_from": float(vl[0]), "val_to": float(vl[-1]), "train_from": train[0], "train_to": train[-1],
        "gap_from": gap_from, "gap_to": gap_to})


def _throughput(m: Metrics, th: Thresholds) -> list[Anomaly]:
    import numpy as np

    sel = np.isfinite(m.tokens_per_s)
    sel[:1] = False  # step 1 carries start-up, compilation and the first allocations
    steps, tps = m.step[sel], m.tokens_per_s[sel]
    if len(tps) < 5:
        return []
    median = float(np.median(tps))
    if median <= 0:
        return []
    events = []
    for a, b in _runs(tps < th.throughput_ratio * median):
        if b - a + 1 < th.throughput_min_lines:
            continue
        low = float(tps[a: b + 1].min())
        events.append(Anomaly("throughput_drop", "tokens_per_s", int(steps[a]), int(steps[b]),
                              {"min": low, "median": median, "ratio": low / median, "lines": b - a + 1}))
    return sorted(sorted(events, key=lambda e: e.evidence["ratio"])[: th.max_events], key=lambda e: e.step or 0)


def _throughput_shift(m: Metrics, th: Thresholds) -> Anomaly | None:
    """The throughput level moving by more than ``throughput_shift_factor`` within the run, up or
    down: the run (its first line left out) cut into ``throughput_shift_parts`` equal parts, the
    median of each, the lowest against the highest, reported from the earlier to the later. A
    brief dip moves no part's median (that is a throughput drop); a level that holds does."""
    import numpy as np

    sel = np.isfinite(m.tokens_per_s)
    sel[:1] = False
    steps, tps = m.step[sel], m.tokens_per_s[sel]
    k = th.throughput_shift_parts
    if len(tps) < 3 * k:
        return None
    parts = np.array_split(np.arange(len(tps)), k)
    level = [float(np.median(tps[p])) for p in parts]
    i_lo, i_hi = int(np.argmin(level)), int(np.argmax(level))
    lo, hi = level[i_lo], level[i_hi]
    if lo <= 0 or hi <= th.throughput_shift_factor * lo:
        return None
    a, b = sorted((i_lo, i_hi))
    return Anomaly("throughput_shift", "tokens_per_s", int(steps[parts[a][0]]), int(steps[parts[b][-1]]),
                   {"from": level[a], "to": level[b], "factor": hi / lo})


def _stalls(m: Metrics, th: Thresholds) -> list[Anomaly]:
    import numpy as np

    sel = np.isfinite(m.elapsed_s)
    steps, t = m.step[sel], m.elapsed_s[sel]
    if len(t) < 4:
        return []
    dstep, dt = np.diff(steps).astype(np.float64), np.diff(t)
    per_step = dt / np.maximum(dstep, 1)
    median = float(np.median(per_step))
    if median <= 0:
        return []
    extra = dt - median * dstep
    hit = (per_step >= th.stall_factor * median) & (extra >= th.stall_min_s)
    events = [Anomaly("stall", "elapsed_s", int(steps[i]), int(steps[i + 1]), {
        "gap_s": float(dt[i]), "extra_s": float(extra[i]), "median_step_s": median, "factor": float(per_step[i] / median)})
        for i in np.flatnonzero(hit)]
    return sorted(sorted(events, key=lambda e: -e.evidence["extra_s"])[: th.max_events], key=lambda e: e.step or 0)


def detect_anomalies(metrics: Metrics, max_steps: int | None = None,
                     thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Anomaly]:
    """Every anomaly of one run, in ANOMALY_KINDS order then by step. ``max_steps`` (the
    config's) enables the early-stop check."""
    import numpy as np

    th = thresholds
    found: list[Anomaly] = []
    for name, bad in metrics.nonfinite.items():
        steps, values = metrics.series(name)
        first = int(np.searchsorted(steps, bad[0]))
        found.append(Anomaly("nonfinite", name, bad[0], bad[-1], {"value": float(values[first]), "count": len(bad)}))
    ok = np.isfinite(metrics.loss)
    step, loss = metrics.step[ok], metrics.loss[ok]
    lr_ok = np.isfinite(metrics.lr)
    smooth = _trailing_median(loss, th.spike_window)  # shared: the spike baseline and the divergence curve
    divergence = _divergence(step, loss, smooth, th)
    found += [divergence] if divergence else []
    found += _spikes(step, loss, smooth, th)
    overfit = _overfitting(metrics, th)
    found += [overfit] if overfit else []
    plateau = None if divergence else _plateau(step, loss, metrics.step[lr_ok], metrics.lr[lr_ok], th)
    found += [plateau] if plateau else []
    found += _throughput(metrics, th)
    shift = _throughput_shift(metrics, th)
    found += [shift] if shift else []
    found += _stalls(metrics, th)
    last = metrics.last_step or 0
    if max_steps and last < max_steps:
        found.append(Anomaly("early_stop", "step", last, last, {"max_steps": int(max_steps), "done_ratio": last / max_steps}))
    order = {k: i for i, k in enumerate(ANOMALY_KINDS)}
    return sorted(found, key=lambda a: (order.get(a.kind, len(order)), a.step or 0))


#: A classifier has collapsed when one class takes this share of its predictions...
COLLAPSE_SHARE = 0.9
#: ... while that class holds less than this share of the texts.
COLLAPSE_TRUE_SHARE = 0.5


def prediction_anomalies(summary: Mapping[str, Any] | None) -> list[Anomaly]:
    """A classifier's anomalies on its test set, from summary.json's ``confusion_matrix``
    (rows: true class, columns: predicted) and ``labels``: predicting one class only, or one
    class for most texts while it holds few of them."""
    m = (summary or {}).get("confusion_matrix")
    labels = (summary or {}).get("labels")
    if not (isinstance(m, list) and m and all(isinstance(r, list) and len(r) == len(m) for r in m)
            and isinstance(labels, list) and len(labels) == len(m)):
        return []
    try:
        predicted = [sum(int(r[j]) for r in m) for j in range(len(m))]
        true = [sum(int(x) for x in r) for r in m]
    except (TypeError, ValueError):
        return []
    n = sum(predicted)
    if n == 0 or len(m) < 2:
        return []
    top = max(range(len(m)), key=lambda j: predicted[j])
    step = summary.get("best_step") if isinstance(summary.get("best_step"), int) else None
    if predicted[top] == n:
        return [Anomaly("one_class", "test_predictions", step, step, {"n": n, "classes": len(m)}, str(labels[top]))]
    share, true_share = predicted[top] / n, true[top] / n
    if share >= COLLAPSE_SHARE and true_share < COLLAPSE_TRUE_SHARE:
        return [Anomaly("prediction_collapse", "test_predictions", step, step,
                        {"n": n, "share_ratio": share, "true_ratio": true_share, "classes": len(m),
                         "unpredicted": sum(1 for p in predicted if p == 0)}, str(labels[top]))]
    return []
