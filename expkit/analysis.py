"""What a run's outputs say: metrics, anomalies, verdicts, comparisons, plots, reports.

The pure core of ``exp analyze`` / ``exp compare`` / ``exp report``: functions of files and
plain dicts that return dataclasses (each with ``to_dict()``) or dicts. Writing into records
and printing belong to the callers.

Inputs are the trainer's outputs (``model/train_pretrain.py``): ``metrics.jsonl`` (one object
per log line; NaN/Infinity as JSON tokens or ``null`` where the trainer caught a non-finite
value; a killed run may leave a torn last line), ``summary.json``, ``samples.json`` and
``status.json``.

numpy and Pillow (``charts``) are imported inside the functions that need them: ``import
expkit.analysis`` must stay as cheap as the CLI's start-up (numpy alone costs ~0.15 s).

The API, in the order of ``exp analyze``:

- ``load_metrics(path) -> Metrics``            metrics.jsonl as arrays by step, tolerant of damage
- ``summarize(out_dir, metrics=None) -> dict``  the metrics table, keyed like the claims (SUMMARY_KEYS)
- ``detect_anomalies(metrics, max_steps) -> list[Anomaly]``
- ``verdicts(claims, observed, parent, baseline, run_ok) -> list[Verdict]``
- ``sample_quality(samples) -> dict``            distinct-1/2 and repetition of samples.json
- ``metric_deltas(observed, reference)``, ``compare(runs, configs) -> dict``
- ``diagnose(anomalies, verdicts, deltas, lang) -> (diagnosis, suggestions)`` as list[Finding]
- ``plot_run(metrics, path, overlays)``, ``plot_compare(runs, path)`` -> PNG path
- ``report_rows(records)``, ``write_tracker_csv(rows, path)``, ``render_report_md(rows, lang)``
- ``evidence_values(*sources) -> Evidence``, ``untraceable_numbers(text, evidence)``
- ``format_number(x)``, ``format_percent(ratio)``: the one number format of every text above
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .claims import Claim
from .numbers import format_number, format_percent, is_finite_number
from .errors import ExpError

if TYPE_CHECKING:
    import numpy as np

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.json"
STATUS_FILE = "status.json"

#: The per-line series of metrics.jsonl that Metrics keeps as arrays (by step).
SERIES = ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s")

#: Keys of ``summarize()``, in order: the metric names expected-result claims use.
SUMMARY_KEYS = (
    "steps", "final_loss", "train_loss", "loss", "best_train_loss", "val_loss", "best_val_loss", "val_ppl",
    "tokens_seen", "tokens_per_s", "wall_s", "peak_mem_mb", "params", "mfu", "grad_norm",
    "distinct_1", "distinct_2", "repetition_rate",
)

#: Metrics where lower is better (for "best per metric" and for the sign of a regression).
LOWER_IS_BETTER = frozenset(
    {"final_loss", "train_loss", "loss", "best_train_loss", "val_loss", "best_val_loss", "val_ppl", "wall_s",
     "peak_mem_mb", "repetition_rate"}
)
HIGHER_IS_BETTER = frozenset({"tokens_per_s", "mfu", "distinct_1", "distinct_2"})


class AnalysisError(ExpError):
    """A run's output file is missing or unreadable."""


_num, _pct = format_number, format_percent  # short names for the message templates


def _json_safe(x: Any) -> Any:
    """NaN/Inf become None: the caller writes these dicts to JSON and YAML front matter."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# -- loading metrics.jsonl -----------------------------------------------------------------------


@dataclass
class Metrics:
    """metrics.jsonl as arrays by step (numpy, float64; NaN where a line lacks the key).

    ``nonfinite[name]`` lists the steps whose value the file gave as NaN/Infinity/null: the
    values stay in the arrays (null as NaN) so a curve shows where it broke. ``val_step`` /
    ``val_loss`` hold only the eval lines. ``notes`` says what loading skipped or repaired.
    """

    path: Path
    step: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    tokens_per_s: np.ndarray
    tokens_seen: np.ndarray
    elapsed_s: np.ndarray
    val_step: np.ndarray
    val_loss: np.ndarray
    nonfinite: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.step)

    @property
    def last_step(self) -> int | None:
        return int(self.step[-1]) if len(self.step) else None

    def last(self, name: str) -> float | None:
        """The last logged value of a series (NaN/Inf included: "final" means the last line)."""
        import numpy as np

        steps, values = (self.val_step, self.val_loss) if name == "val_loss" else (self.step, getattr(self, name))
        present = np.flatnonzero(~np.isnan(values) | np.isin(steps, self.nonfinite.get(name, [])))
        return float(values[present[-1]]) if len(present) else None

    def to_dict(self) -> dict[str, Any]:
        """What was loaded, and the eval curve as [step, val_loss] pairs; not the per-line arrays
        (they belong in metrics.jsonl, not in a record, and as evidence they would let almost
        any loss-like number pass)."""
        return {"path": str(self.path), "lines": len(self), "first_step": int(self.step[0]) if len(self) else None,
                "last_step": self.last_step,
                "evals": [[int(s), _json_safe(float(v))] for s, v in zip(self.val_step, self.val_loss)],
                "nonfinite": {k: list(v) for k, v in self.nonfinite.items()}, "notes": list(self.notes)}


def _json_loads() -> tuple[Any, ...]:
    """The JSON parsers to try, fastest first. orjson (installed with swanlab, not a declared
    dependency, hence optional) parses a 100k-line file ~3x faster than the stdlib, but refuses
    the NaN/Infinity tokens a diverged run writes; the stdlib takes those."""
    try:
        import orjson
    except ImportError:
        return (json.loads,)
    return (orjson.loads, json.loads)


def _parse_rows(raw: bytes, name: str, notes: list[str]) -> list[Any]:
    parsers = _json_loads()

    def parse(text: bytes) -> Any:
        for loads in parsers:
            try:
                return loads(text)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError (a kill can cut a character)
                continue
        raise ValueError

    body = raw.strip()
    # a killed run's torn last line: drop it first, so the fast path below still applies
    cut = body.rfind(b"\n")
    try:
        if body:
            parse(body[cut + 1:])
    except ValueError:
        body = body[:cut].rstrip() if cut >= 0 else b""
        count = sum(1 for ln in body.split(b"\n") if ln.strip()) + 1
        notes.append(f"skipped truncated last line {count} of {name}")
    # the whole file as one JSON array: one parser call instead of one per line (~2x faster);
    # a blank or malformed line makes it fail, and the line-by-line pass decides
    try:
        return parse(b"[" + body.replace(b"\n", b",") + b"]")
    except ValueError:
        pass
    rows = []
    for i, line in enumerate(ln for ln in body.split(b"\n") if ln.strip()):
        try:
            rows.append(parse(line))
        except ValueError:
            notes.append(f"skipped malformed line {i + 1} of {name}")
    return rows


def _as_float(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _columns(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, tuple[np.ndarray, list[int]]]:
    """For each key: its values as float64 (NaN where absent) and the row indices whose value the
    file gave as NaN/Infinity/null (the trainer writes a non-finite loss or grad_norm as null)."""
    import numpy as np

    try:  # the trainer's lines have every key, all numbers: one C-level pass per key
        columns = [np.fromiter(map(itemgetter(k), rows), dtype=np.float64, count=len(rows)) for k in keys]
    except (KeyError, TypeError, ValueError):
        try:  # a null somewhere (a non-finite value): numpy turns None into NaN in a 2-D array
            table = np.array(list(map(itemgetter(*keys), rows)), dtype=np.float64).reshape(len(rows), len(keys))
            columns = [np.ascontiguousarray(table[:, j]) for j in range(len(keys))]
        except (KeyError, TypeError, ValueError):  # a key missing somewhere, or a string: value by value
            columns = [np.array([_as_float(r.get(k)) for r in rows], dtype=np.float64) for k in keys]
    out = {}
    for key, values in zip(keys, columns):
        # only the few non-finite entries need a look at whether the key was there at all
        flagged = [int(i) for i in np.flatnonzero(~np.isfinite(values))
                   if key in rows[i] and (rows[i][key] is None or isinstance(rows[i][key], float))]
        out[key] = (values, flagged)
    return out


def load_metrics(path: str | Path) -> Metrics:
    """Read metrics.jsonl: a torn last line or a malformed line is skipped and noted, non-finite
    values are kept and flagged, repeated steps keep their last line. Missing file: AnalysisError."""
    import numpy as np

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such file (the run has logged no metrics)") from None
    except OSError as err:
        raise AnalysisError(f"{path}: cannot read ({err.strerror or err})") from None
    notes: list[str] = []
    rows = _parse_rows(raw, path.name, notes)
    try:  # every line a dict with an integer step: the usual case, checked at C speed
        steps = np.array(list(map(itemgetter("step"), rows)), dtype=np.int64)
        good = rows
    except (KeyError, TypeError, ValueError):
        good = [r for r in rows if isinstance(r, dict) and is_finite_number(r.get("step"))]
        notes.append(f"skipped {len(rows) - len(good)} line(s) without a numeric step")
        steps = np.array([r["step"] for r in good], dtype=np.int64)
    if len(steps) > 1 and not (np.diff(steps) > 0).all():
        # a resumed run re-logs steps after its checkpoint: the later line is the one that counts
        last_of = {int(s): i for i, s in enumerate(steps)}
        order = sorted(last_of.values(), key=lambda i: steps[i])
        notes.append(f"{len(steps) - len(order)} repeated or out-of-order line(s): kept the last line of each step")
        good, steps = [good[i] for i in order], steps[order]

    nonfinite: dict[str, list[int]] = {}
    arrays = {}
    for key, (values, bad) in _columns(good, SERIES).items():
        arrays[key] = values
        if bad:
            nonfinite[key] = [int(steps[i]) for i in bad]
    val_idx = [i for i, r in enumerate(good) if "val_loss" in r]
    val_loss, bad = _columns([good[i] for i in val_idx], ["val_loss"])["val_loss"]
    val_step = steps[val_idx] if val_idx else np.zeros(0, dtype=np.int64)
    if bad:
        nonfinite["val_loss"] = [int(val_step[i]) for i in bad]
    return Metrics(path, steps, val_step=val_step, val_loss=val_loss, nonfinite=nonfinite, notes=notes, **arrays)


# -- the metrics table ---------------------------------------------------------------------------


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"ignored unreadable {path.name} ({type(err).__name__})")
        return None


def _params_total(value: Any) -> int | None:
    """summary.json's params: an int, or a dict of counts whose 'total' (else sum) is the total."""
    if is_finite_number(value):
        return int(value)
    if isinstance(value, Mapping):
        if is_finite_number(value.get("total")):
            return int(value["total"])
        parts = [v for v in value.values() if is_finite_number(v)]
        return int(sum(parts)) if parts else None
    return None


def summarize(out_dir: str | Path, metrics: Metrics | None = None) -> dict[str, Any]:
    """The metrics table of one run directory, keyed by the names claims use (SUMMARY_KEYS),
    plus ``status`` and ``notes``. summary.json wins where it has a value; metrics.jsonl fills
    the rest, so a killed run without summary.json still gets its losses, tokens and time.
    ``metrics`` avoids a second load when the caller already has it."""
    out = Path(out_dir)
    if not out.is_dir():
        raise AnalysisError(f"{out}: no such run directory (has the run started?)")
    notes: list[str] = []
    summary = _read_json(out / SUMMARY_FILE, notes)
    summary = summary if isinstance(summary, dict) else {}
    if metrics is None:
        try:
            metrics = load_metrics(out / METRICS_FILE)
        except AnalysisError:
            metrics = None
    if metrics is None and not summary:
        raise AnalysisError(f"{out}: neither {SUMMARY_FILE} nor {METRICS_FILE} (the run has written no results)")
    if not summary:
        notes.append(f"no {SUMMARY_FILE}: values derived from {METRICS_FILE}")
    if metrics is not None:
        notes.extend(metrics.notes)

    derived: dict[str, Any] = {}
    if metrics is not None and len(metrics):
        import numpy as np

        final = metrics.last("loss")
        finite_loss = metrics.loss[np.isfinite(metrics.loss)]
        finite_val = metrics.val_loss[np.isfinite(metrics.val_loss)]
        tokens = metrics.last("tokens_seen")
        elapsed = metrics.last("elapsed_s")
        val = metrics.last("val_loss")
        derived = {
            "steps": metrics.last_step,
            "final_loss": final,
            "best_train_loss": float(finite_loss.min()) if len(finite_loss) else None,
            "val_loss": val,
            "best_val_loss": float(finite_val.min()) if len(finite_val) else None,
            "val_ppl": math.exp(min(val, 700.0)) if val is not None and math.isfinite(val) else None,
            "tokens_seen": int(tokens) if tokens is not None and math.isfinite(tokens) else None,
            "tokens_per_s": tokens / elapsed if tokens and elapsed and math.isfinite(tokens / elapsed) else None,
            "wall_s": elapsed,
            "grad_norm": metrics.last("grad_norm"),
        }
    table: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if key == "params":
            value = _params_total(value) or _params_total(summary.get("param_counts"))
        table[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else derived.get(key)
    # best_train_loss is never in summary.json; train_loss and loss are the claims' aliases of final_loss
    table["best_train_loss"] = derived.get("best_train_loss")
    table["train_loss"] = table["loss"] = table["final_loss"]
    samples = _read_json(out / SAMPLES_FILE, notes)
    if samples:
        quality = sample_quality(samples)
        table.update({k: quality[k] for k in ("distinct_1", "distinct_2", "repetition_rate")})
    status = summary.get("status")
    if not status:
        st = _read_json(out / STATUS_FILE, notes)
        status = st.get("status") if isinstance(st, dict) else None
    table["status"] = status or "unknown"
    table["notes"] = notes
    return table


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
    #: stall: a gap between log lines ≥ 10x the median time per step and ≥ 60 s beyond what
    #: the steps in it should take (evals and checkpoint saves stay below that).
    stall_factor: float = 10.0
    stall_min_s: float = 60.0
    #: at most this many spikes / throughput drops / stalls are reported one by one.
    max_events: int = 5


DEFAULT_THRESHOLDS = Thresholds()

#: Anomaly kinds, in report order.
ANOMALY_KINDS = ("nonfinite", "divergence", "spike", "overfitting", "plateau", "throughput_drop", "stall", "early_stop")


@dataclass(frozen=True)
class Anomaly:
    """One finding of ``detect_anomalies``: where (step..end_step of ``metric``) and the numbers
    (``evidence``) that its one-line ``message`` cites."""

    kind: str
    metric: str
    step: int | None
    end_step: int | None
    evidence: dict[str, float | int]

    def message(self, lang: str = "en") -> str:
        return _anomaly_message(self, lang)

    def to_dict(self, lang: str = "en") -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "step": self.step, "end_step": self.end_step,
                "evidence": _json_safe(dict(self.evidence)), "message": self.message(lang)}


# One line per kind, (en, zh). Fields: metric, step, end_step and the anomaly's evidence, each
# written by format_number; evidence keys ending in "ratio" are written as percentages.
_ANOMALY_TEXT = {
    "nonfinite": ("{metric} is non-finite ({value}) at step {step}, {count} log line(s) in all",
                  "{metric} 在第 {step} 步出现非有限值（{value}），共 {count} 行"),
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
    "stall": ("{gap_s} s between the log lines of steps {step} and {end_step}, {factor}x the median time per step",
              "第 {step} 步与第 {end_step} 步的日志相隔 {gap_s} 秒，每步耗时为中位数的 {factor} 倍"),
    "early_stop": ("the run ended at step {end_step} of {max_steps} ({done_ratio} done)",
                   "运行停在第 {end_step} 步（共 {max_steps} 步，完成 {done_ratio}）"),
}


def _anomaly_message(a: Anomaly, lang: str) -> str:
    fields: dict[str, Any] = {"metric": a.metric, "step": a.step, "end_step": a.end_step}
    for key, value in a.evidence.items():
        fields[key] = _pct(value) if key.endswith("ratio") else _num(value, signed=key == "jump")
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
        steps, values = (metrics.val_step, metrics.val_loss) if name == "val_loss" else (metrics.step, getattr(metrics, name))
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
    found += _stalls(metrics, th)
    last = metrics.last_step or 0
    if max_steps and last < max_steps:
        found.append(Anomaly("early_stop", "step", last, last, {"max_steps": int(max_steps), "done_ratio": last / max_steps}))
    order = {k: i for i, k in enumerate(ANOMALY_KINDS)}
    return sorted(found, key=lambda a: (order.get(a.kind, len(order)), a.step or 0))


# -- verdicts on expected-result claims --------------------------------------------------------------

VERDICTS = ("confirmed", "refuted", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """A claim judged against the evidence. ``reference`` is the threshold the observed value
    was compared with (the claim's number, or parent/baseline with its offset applied).
    ``reason_code`` (not in ``to_dict``) lets ``diagnose`` word the reason in either language."""

    claim: str
    verdict: str
    observed: float | None
    reference: float | None
    reason: str | None
    metric: str
    line: int
    reason_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({"claim": self.claim, "verdict": self.verdict, "observed": self.observed,
                           "reference": self.reference, "reason": self.reason, "metric": self.metric, "line": self.line})


def _number_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def verdicts(claims: Sequence[Claim], observed: Mapping[str, Any], parent: Mapping[str, Any] | None,
             baseline: Mapping[str, Any] | None, run_ok: bool) -> list[Verdict]:
    """Confirmed / refuted / inconclusive for each claim. ``observed``, ``parent`` and ``baseline``
    are metric tables (``summarize()``); parent/baseline None = that record has no run."""
    out = []
    for c in claims:
        obs = _number_or_none(observed.get(c.metric))
        ref_table = {"parent": parent, "baseline": baseline}.get(c.reference)
        ref_value = None
        code = reason = None
        if c.reference in ("parent", "baseline"):
            if ref_table is None:
                code, reason = "reference_no_run", f"the {c.reference} has no run"
            else:
                ref_value = _number_or_none(ref_table.get(c.metric))
                if ref_value is None:
                    code, reason = "reference_lacks_metric", f"the {c.reference} run has no {c.metric}"
                elif not math.isfinite(ref_value):
                    code, reason = "reference_nonfinite", f"the {c.reference}'s {c.metric} is {_num(ref_value)}"
        threshold = c.threshold(ref_value) if code is None else None
        if not run_ok:
            code, reason = "run_not_ok", "the run did not finish"
        elif obs is None:
            code, reason = "metric_missing", f"the run did not log {c.metric}"
        elif not math.isfinite(obs):
            code, reason = "observed_nonfinite", f"{c.metric} is {_num(obs)}"
        elif code is None and (threshold is None or not math.isfinite(threshold)):
            code, reason = "reference_nonfinite", f"the threshold of {c.text!r} is not a finite number"
        held = c.holds(obs, ref_value) if code is None and obs is not None else None
        verdict = "inconclusive" if held is None else "confirmed" if held else "refuted"
        out.append(Verdict(c.text, verdict, obs, threshold, reason, c.metric, c.line, code))
    return out


# -- sample quality --------------------------------------------------------------------------------

# CJK ideographs, kana and hangul are words of one character; latin text splits on spaces.
_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
# (Patterns are kept as strings and compiled on first use through re's cache: compiling them
# all at import would cost the CLI's start-up ~30 ms.)
_TOKEN = rf"[{_CJK}]|[^\s{_CJK}\W]+|[\n\t]|[^\s\w{_CJK}]"

#: The n of repetition_rate's n-grams.
REPETITION_N = 3


def sample_tokens(text: str) -> list[str]:
    """The tokens sample quality counts: each CJK character (and CJK punctuation), each latin
    word (a run of letters/digits), each other punctuation mark, and each line break or tab.
    Spaces only separate. Line breaks and tabs count because an untrained model's favourite
    degenerate output is a run of them, and dropping them would call that output diverse."""
    return re.findall(_TOKEN, text)


def _distinct(tokens: list[str], n: int) -> float | None:
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def sample_quality(samples: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """distinct-1, distinct-2 and repetition rate of generated texts, per sample and their mean.

    ``samples``: samples.json's dict (its "samples" list), or a list of {"completion" | "text"}
    dicts or of strings. Only the generated part (``completion``) is measured when present.
    distinct-n = unique n-grams / n-grams; repetition_rate = share of the 3-grams that repeat an
    earlier 3-gram of the same sample (= 1 − distinct-3). A sample too short for an n-gram gets
    None for it and is left out of that mean."""
    items = samples.get("samples", []) if isinstance(samples, Mapping) else samples
    per = []
    for item in items:
        if isinstance(item, str):
            text, prompt, mode = item, None, None
        elif isinstance(item, Mapping):
            text = item.get("completion")
            text = item.get("text") or "" if text is None else text
            prompt, mode = item.get("prompt"), item.get("mode")
        else:
            continue
        tokens = sample_tokens(str(text))
        d3 = _distinct(tokens, REPETITION_N)
        per.append({"prompt": prompt, "mode": mode, "tokens": len(tokens), "distinct_1": _distinct(tokens, 1),
                    "distinct_2": _distinct(tokens, 2), "repetition_rate": None if d3 is None else 1.0 - d3})

    def mean(key: str) -> float | None:
        vals = [p[key] for p in per if p[key] is not None]
        return math.fsum(vals) / len(vals) if vals else None

    return {"distinct_1": mean("distinct_1"), "distinct_2": mean("distinct_2"),
            "repetition_rate": mean("repetition_rate"), "samples": per}


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


# -- diagnosis and suggestions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One diagnosis or suggestion: the rule that fired, the numbers it fired on, and its text
    (one markdown bullet whose every number comes from ``evidence``, written by format_number)."""

    rule: str
    evidence: dict[str, Any]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "evidence": _json_safe(dict(self.evidence)), "text": self.text}


_RULE_TITLE = {
    "nonfinite": ("NaN/Inf", "数值溢出"), "divergence": ("divergence", "损失发散"), "spike": ("loss spikes", "损失尖峰"),
    "overfitting": ("overfitting", "过拟合"), "plateau": ("plateau", "损失停滞"),
    "throughput_drop": ("throughput drop", "吞吐下降"), "stall": ("stall", "训练停顿"),
    "early_stop": ("stopped early", "提前停止"), "claim_refuted": ("claim refuted", "预期被推翻"),
    "claim_inconclusive": ("claim inconclusive", "预期无法判定"), "claims_confirmed": ("claims confirmed", "预期成立"),
    "delta_better": ("better than reference", "优于参照"), "delta_worse": ("worse than reference", "劣于参照"),
    "delta_slower": ("slower than reference", "慢于参照"), "healthy": ("healthy run", "运行正常"),
}

# Suggestions by rule: (en, zh). They name config keys, never new numbers: a number in the
# text must be evidence, and a proposed value is not.
_SUGGEST = {
    "nonfinite": ("lower learning_rate, keep grad_clip on, and prefer dtype bfloat16 or float32 over float16; "
                  "check the data around the first bad step",
                  "降低 learning_rate，保持 grad_clip 开启，dtype 优先 bfloat16 或 float32 而非 float16；"
                  "检查首个异常步附近的数据"),
    "divergence": ("lower learning_rate or lengthen warmup_steps", "降低 learning_rate 或加长 warmup_steps"),
    "spike": ("lower grad_clip or learning_rate; look at the batches at the spike steps",
              "降低 grad_clip 或 learning_rate；检查尖峰步对应的数据批次"),
    "overfitting": ("use more (or more varied) data, or raise dropout / weight_decay; stop at the best val_loss checkpoint",
                    "增加（或更多样的）数据，或提高 dropout / weight_decay；使用验证损失最佳的检查点"),
    "plateau": ("raise learning_rate or change the schedule (warmup_steps, min_lr_ratio); if that fails, the model "
                "may be too small for the data",
                "提高 learning_rate 或调整调度（warmup_steps、min_lr_ratio）；若仍无效，模型容量可能不足"),
    "throughput_drop": ("check data loading and other processes on the machine during those steps",
                        "检查这些步的数据加载以及同机其他进程"),
    "stall": ("check the disk / network (checkpoint saves, data reads) and other processes at that time",
              "检查当时的磁盘/网络（检查点保存、数据读取）与其他进程"),
    "early_stop": ("resume the run from its last checkpoint (the trainer's --resume) and analyze again",
                   "从最后的检查点恢复运行（训练脚本的 --resume）后重新分析"),
    "claim_refuted": ("revisit the hypothesis: the evidence contradicts this expected result",
                      "重新审视研究假设：证据与该预期结果矛盾"),
    "delta_worse": ("compare the config changes against the reference one at a time", "逐项对比相对参照实验的配置改动"),
    "delta_slower": ("check what slowed the run: batch_size / max_seq_len changes, dtype, or machine load",
                     "检查变慢原因：batch_size / max_seq_len 改动、dtype 或机器负载"),
}
_INCONCLUSIVE_FIX = {
    "run_not_ok": ("finish (or resume) the run, then analyze again", "完成（或恢复）运行后重新分析"),
    "metric_missing": ("log the metric, or fix the claim's metric name", "记录该指标，或修正预期中的指标名"),
    "observed_nonfinite": ("fix the non-finite metric first (see the NaN/Inf finding)", "先解决非有限值问题"),
    "reference_no_run": ("run the reference record first, or compare against a value", "先运行参照实验，或改为与具体数值比较"),
    "reference_lacks_metric": ("re-analyze the reference record so it has the metric", "重新分析参照实验以获得该指标"),
    "reference_nonfinite": ("compare against a finite reference or a value", "改为与有限的参照值或具体数值比较"),
}
_REASON_ZH = {
    "run_not_ok": "运行未成功结束", "metric_missing": "运行没有记录 {metric}", "observed_nonfinite": "{metric} 为非有限值",
    "reference_no_run": "{ref}没有运行结果", "reference_lacks_metric": "{ref}的运行没有 {metric}",
    "reference_nonfinite": "{ref}的 {metric} 不是有限数",
}


def _bullet(rule: str, lang: str, sentence: str) -> str:
    en, zh = _RULE_TITLE.get(rule, (rule, rule))
    return f"- **{zh if lang == 'zh' else en}**: {sentence}"


def _aggregate(kind: str, items: list[Anomaly], lang: str) -> Finding:
    """One diagnosis per anomaly kind: the count and the worst instance's message."""
    zh = lang == "zh"
    worst_key = {"spike": lambda a: -a.evidence["jump"], "throughput_drop": lambda a: a.evidence["ratio"],
                 "stall": lambda a: -a.evidence["extra_s"]}.get(kind, lambda a: a.step or 0)
    worst = sorted(items, key=worst_key)[0]
    evidence = {"count": len(items), **worst.evidence}
    text = worst.message(lang)
    if len(items) > 1:
        text = (f"共 {len(items)} 处，最严重的：" if zh else f"{len(items)} occurrences; the worst: ") + text
    return Finding(kind, {**evidence, "step": worst.step, "end_step": worst.end_step}, _bullet(kind, lang, text))


#: A val_loss change against a reference smaller than this (relative) is not worth a line.
DELTA_VAL_REL = 0.005
#: tokens/s this much lower (relative) than a reference is reported as slower.
DELTA_SLOWER_REL = -0.10

# Claim and delta sentences, (en, zh); fields are written by format_number / format_percent.
_TEXT = {
    "healthy": ("no anomalies detected (NaN, spikes, divergence, plateau, overfitting, throughput, stalls, early stop)",
                "未检测到异常（NaN、尖峰、发散、停滞、过拟合、吞吐、停顿、提前停止）"),
    "claim_refuted": ("`{claim}` is refuted: observed {observed} against {reference}",
                      "`{claim}` 不成立：实际 {observed}，阈值 {reference}"),
    "claim_inconclusive": ("`{claim}` is inconclusive: {why}", "`{claim}` 无法判定：{why}"),
    "claims_confirmed": ("all {count} expected result(s) confirmed", "全部 {count} 条预期成立"),
    "delta_better": ("val_loss {value} against {reference} for {label}: {abs} ({rel})",
                     "val_loss {value}，{label} 为 {reference}：{abs}（{rel}）"),
    "delta_slower": ("tokens/s {value} against {reference} for {label} ({rel})",
                     "tokens/s {value}，{label} 为 {reference}（{rel}）"),
}
_TEXT["delta_worse"] = _TEXT["delta_better"]


def _say(rule: str, lang: str, **fields: Any) -> str:
    en, zh = _TEXT[rule]
    return _bullet(rule, lang, (zh if lang == "zh" else en).format(**fields))


def reason_text(v: Verdict, lang: str = "en") -> str:
    """Why a verdict is inconclusive, in the record's language ("" when it is not)."""
    if lang == "zh" and v.reason_code in _REASON_ZH:
        ref = re.search(r"\b(parent|baseline)\b", v.claim)
        return _REASON_ZH[v.reason_code].format(metric=v.metric, ref={"parent": "父实验", "baseline": "基线"}.get(
            ref[1] if ref else "", ""))
    return v.reason or ""


def _as_verdict(v: Verdict | Mapping[str, Any]) -> Verdict:
    """A Verdict, also from its to_dict() form (as stored in a record; no reason_code then)."""
    if isinstance(v, Verdict):
        return v
    return Verdict(str(v.get("claim")), str(v.get("verdict")), v.get("observed"), v.get("reference"), v.get("reason"),
                   str(v.get("metric", "")), int(v.get("line") or 0))


def diagnose(anomalies: Sequence[Anomaly], verdicts: Sequence[Verdict | Mapping[str, Any]],
             deltas: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
             lang: str = "en") -> tuple[list[Finding], list[Finding]]:
    """Draft (diagnosis, suggestions) by explicit rules, as markdown bullets in ``lang`` (zh|en).

    ``deltas``: {reference label, e.g. "parent 1.4.0": metric_deltas(this run, that run)}.
    Rules, in order: no anomaly → "healthy"; each anomaly kind → one diagnosis (count and the
    worst instance) and that kind's suggestion; refuted claim → diagnosis and "revisit the
    hypothesis"; inconclusive claim → its reason and how to make it decidable; all claims
    confirmed → one line; val_loss better / worse than a reference by ≥ DELTA_VAL_REL, tokens/s
    lower by ≥ 10% → diagnosis (and a suggestion when worse or slower). Suggestions are deduplicated.
    """
    zh = lang == "zh"
    diagnosis: list[Finding] = []
    suggestions: list[Finding] = []

    def suggest(rule: str, evidence: dict[str, Any], pair: tuple[str, str], about: str = "") -> None:
        text = _bullet(rule, lang, (pair[1] if zh else pair[0]) + (f" ({about})" if about else ""))
        if all(s.text != text for s in suggestions):
            suggestions.append(Finding(rule, evidence, text))

    if not anomalies:
        diagnosis.append(Finding("healthy", {}, _say("healthy", lang)))
    by_kind: dict[str, list[Anomaly]] = {}
    for a in anomalies:
        by_kind.setdefault(a.kind, []).append(a)
    for kind in sorted(by_kind, key=lambda k: ANOMALY_KINDS.index(k) if k in ANOMALY_KINDS else len(ANOMALY_KINDS)):
        finding = _aggregate(kind, by_kind[kind], lang)
        diagnosis.append(finding)
        if kind in _SUGGEST:
            suggest(kind, finding.evidence, _SUGGEST[kind])

    vs = [_as_verdict(v) for v in verdicts]
    for v in vs:
        ev = {"observed": v.observed, "reference": v.reference}
        if v.verdict == "refuted":
            text = _say("claim_refuted", lang, claim=v.claim, observed=_num(v.observed), reference=_num(v.reference))
            diagnosis.append(Finding("claim_refuted", ev, text))
            suggest("claim_refuted", ev, _SUGGEST["claim_refuted"], f"`{v.claim}`")
        elif v.verdict == "inconclusive":
            why = reason_text(v, lang)
            diagnosis.append(Finding("claim_inconclusive", {**ev, "reason": v.reason_code or v.reason},
                                     _say("claim_inconclusive", lang, claim=v.claim, why=why)))
            if v.reason_code in _INCONCLUSIVE_FIX:
                suggest("claim_inconclusive", ev, _INCONCLUSIVE_FIX[v.reason_code], f"`{v.claim}`")
    confirmed = sum(v.verdict == "confirmed" for v in vs)
    if vs and confirmed == len(vs):
        diagnosis.append(Finding("claims_confirmed", {"count": confirmed}, _say("claims_confirmed", lang, count=confirmed)))

    for label, table in (deltas or {}).items():
        for metric, rule in (("val_loss", None), ("tokens_per_s", "delta_slower")):
            d = table.get(metric)
            if not d or d.get("rel") is None:
                continue
            if metric == "val_loss":
                if abs(d["rel"]) < DELTA_VAL_REL:
                    continue
                rule = "delta_better" if d["abs"] < 0 else "delta_worse"
            elif d["rel"] > DELTA_SLOWER_REL:
                continue
            text = _say(rule, lang, label=label, value=_num(d["value"]), reference=_num(d["reference"]),
                        abs=_num(d["abs"], signed=True), rel=_pct(d["rel"], signed=True))
            diagnosis.append(Finding(rule, dict(d), text))
            if rule in _SUGGEST:
                suggest(rule, dict(d), _SUGGEST[rule], label)
    return diagnosis, suggestions


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
    from .charts import Series

    tx, ty = _thin(x, y)
    return Series(tx.tolist(), ty.tolist(), label, color, **style)


def plot_run(metrics: Metrics, path: str | Path, overlays: Mapping[str, Metrics] | None = None,
             title: str | None = None) -> Path:
    """PNG of train loss and val loss by step, the lr on a right axis, and the ``overlays``
    (e.g. {"parent 1.4.0": Metrics}) as thinner lines. Returns ``path``."""
    from .charts import PALETTE, Panel, render

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
    from .charts import PALETTE, Panel, render

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
    from .charts import PALETTE, Panel, Series, render

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


# -- reports over all records ----------------------------------------------------------------------

#: Config keys the report shows as columns; the others appear in "changes" when they differ from the parent.
REPORT_CONFIG = ("model_type", "hidden_size", "num_hidden_layers", "max_seq_len", "batch_size", "learning_rate", "max_steps")
REPORT_METRICS = ("steps", "final_loss", "best_val_loss", "val_loss", "val_ppl", "tokens_seen", "tokens_per_s",
                  "wall_s", "peak_mem_mb", "params", "distinct_2", "repetition_rate")
#: experiment/tracker.csv columns, in this order, always.
REPORT_COLUMNS = ("version", "status", "description", "parent", "baseline", "changes", *REPORT_CONFIG,
                  *REPORT_METRICS, "confirmed", "refuted", "inconclusive")


def _version_key(v: Any) -> tuple[int, tuple[int, ...], str]:
    text = str(v)
    parts = text.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), text)
    return (1, (), text)  # a malformed version sorts after the rest rather than failing the report


def _short(value: Any) -> str:
    return format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def report_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record (REPORT_COLUMNS), sorted by version.

    A record is a dict::

        {"version": "1.4.1", "status": "analyzed", "description": "...",
         "parent": "1.4.0" | None, "baseline": "1.0.0" | None,
         "config": {TrainConfig dump} | None,
         "metrics": summarize() table | None,           # None: never ran
         "verdicts": [Verdict.to_dict(), ...] | None,
         "changes": {key: [parent's value, this value]}}   # optional

    ``changes`` lists the config keys that differ from the parent's config ("k=v; ..."): the
    record's own ``changes`` when given, else computed when the parent is among the records."""
    configs = {str(r.get("version")): r.get("config") or {} for r in records}
    rows = []
    for r in sorted(records, key=lambda r: _version_key(r.get("version"))):
        config = r.get("config") or {}
        metrics = r.get("metrics") or {}
        parent = r.get("parent")
        changes = ""
        if isinstance(r.get("changes"), Mapping):
            changes = "; ".join(f"{k}={_short(v[1] if isinstance(v, (list, tuple)) else v)}" for k, v in r["changes"].items())
        elif parent and str(parent) in configs:
            pc = configs[str(parent)]
            changes = "; ".join(f"{k}={_short(config.get(k))}" for k in config if config.get(k) != pc.get(k))
        row: dict[str, Any] = {
            "version": str(r.get("version", "")), "status": r.get("status") or "", "description": r.get("description") or "",
            "parent": parent or "", "baseline": r.get("baseline") or "", "changes": changes,
        }
        row.update({k: config.get(k) for k in REPORT_CONFIG})
        row.update({k: metrics.get(k) for k in REPORT_METRICS})
        counts = {k: 0 for k in VERDICTS}
        for v in r.get("verdicts") or []:
            verdict = v.get("verdict") if isinstance(v, Mapping) else getattr(v, "verdict", None)
            if verdict in counts:
                counts[verdict] += 1
        row.update(counts)
        rows.append(row)
    return rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf"))
    text = str(value)
    # a cell starting with = + @ is a formula to a spreadsheet (CSV injection): quote it as text
    return "'" + text if text[:1] in ("=", "+", "@") else text


def write_tracker_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV with REPORT_COLUMNS in that order. UTF-8 *with* a BOM: Excel opens a
    BOM-less UTF-8 CSV as the local code page and garbles Chinese descriptions; LibreOffice,
    Google Sheets and Python's ``encoding="utf-8-sig"`` read the BOM correctly. Floats are
    written in full (repr), missing values as empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")  # RFC 4180 line ends; what spreadsheets expect
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c)) for c in REPORT_COLUMNS])
    tmp.replace(path)
    return path


_MD = {
    "title": ("Experiment report", "实验报告"),
    "count": ("{n} experiment(s).", "共 {n} 个实验。"),
    "overview": ("Overview", "总览"),
    "best": ("Best per metric", "各指标最佳"),
    "lineage": ("Lineage", "谱系"),
    "status": ("By status", "按状态"),
    "cols": (("version", "status", "description", "key config", "changes vs parent", "final_loss", "val_loss",
              "best_val_loss", "tokens/s", "verdicts ✓/✗/?"),
             ("版本", "状态", "描述", "关键配置", "相对父实验的改动", "final_loss", "val_loss", "best_val_loss", "tokens/s",
              "结论 ✓/✗/?")),
    "best_cols": (("metric", "best", "version"), ("指标", "最佳值", "版本")),
    "none": ("no finished run has metrics yet", "尚无带指标的完成运行"),
}


def _md_cell(value: Any) -> str:
    text = _short(value) if value is not None and value != "" else "—"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _key_config(row: Mapping[str, Any]) -> str:
    """"128×2 seq 128 bs 16 lr 0.003 360 steps": the shape and the optimisation at a glance."""
    if row.get("hidden_size") is None:
        return ""
    kind = "" if row.get("model_type") in (None, "model_original") else f"{row['model_type']} "
    return (f"{kind}{_short(row.get('hidden_size'))}×{_short(row.get('num_hidden_layers'))} seq {_short(row.get('max_seq_len'))} "
            f"bs {_short(row.get('batch_size'))} lr {_short(row.get('learning_rate'))} {_short(row.get('max_steps'))} steps")


def lineage(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], dict[str, list[Mapping[str, Any]]]]:
    """(roots, children by parent version) of rows with "version" and "parent", in row order.
    A row whose parent is not among the rows is a root; rows in a parent cycle are in neither."""
    versions = {str(r["version"]) for r in rows}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots = []
    for r in rows:
        p = r.get("parent")
        if p and str(p) in versions and str(p) != str(r["version"]):
            children.setdefault(str(p), []).append(r)
        else:
            roots.append(r)
    return roots, children


def render_report_md(rows: Sequence[Mapping[str, Any]], lang: str = "zh") -> str:
    """experiment/EXPERIMENT_REPORT.md from ``report_rows``: the overview table of every
    experiment, the best value of each metric and where, the lineage tree, counts by status.
    Deterministic (no date): the file changes only when a record does."""
    i = 1 if lang == "zh" else 0
    t = {k: v[i] for k, v in _MD.items()}
    out = [f"# {t['title']}", "", t["count"].format(n=len(rows)), "", f"## {t['overview']}", ""]
    cols = t["cols"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        counts = f"{r.get('confirmed', 0)}/{r.get('refuted', 0)}/{r.get('inconclusive', 0)}"
        cells = [r.get("version"), r.get("status"), r.get("description"), _key_config(r), r.get("changes"),
                 r.get("final_loss"), r.get("val_loss"), r.get("best_val_loss"), r.get("tokens_per_s"), counts]
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")

    out += ["", f"## {t['best']}", ""]
    best_lines = []
    for metric in REPORT_METRICS:
        if metric not in LOWER_IS_BETTER and metric not in HIGHER_IS_BETTER:
            continue
        cands = [(r[metric], r["version"]) for r in rows if is_finite_number(r.get(metric))]
        if not cands:
            continue
        sign = 1 if metric in LOWER_IS_BETTER else -1
        value = min(c[0] * sign for c in cands) * sign
        where = ", ".join(v for x, v in cands if x == value)
        best_lines.append(f"| {metric} | {_md_cell(value)} | {_md_cell(where)} |")
    if best_lines:
        bc = t["best_cols"]
        out += ["| " + " | ".join(bc) + " |", "|---|---|---|", *best_lines]
    else:
        out.append(t["none"])

    out += ["", f"## {t['lineage']}", ""]
    roots, children = lineage(rows)
    seen: set[str] = set()
    stack = [(r, 0) for r in reversed(roots)]
    while stack:  # iterative: a chain of 1,000 records must not hit the recursion limit
        r, depth = stack.pop()
        if r["version"] in seen:
            continue
        seen.add(r["version"])
        desc = f" {_md_cell(r.get('description'))}" if r.get("description") else ""
        out.append(f"{'  ' * depth}- {r['version']}{desc} ({r.get('status') or '—'})")
        stack += [(c, depth + 1) for c in reversed(children.get(r["version"], []))]
    for r in rows:  # a parent cycle leaves records unreached: list them rather than drop them
        if r["version"] not in seen:
            out.append(f"- {r['version']} ({r.get('status') or '—'})")

    out += ["", f"## {t['status']}", ""]
    by_status: dict[str, list[str]] = {}
    for r in rows:
        by_status.setdefault(r.get("status") or "—", []).append(r["version"])
    for status in sorted(by_status):
        out.append(f"- {status}: {len(by_status[status])} ({', '.join(by_status[status])})")
    return "\n".join(out) + "\n"


# -- traceable numbers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """The absolute values of every number in a run's evidence, sorted for bisection."""

    values: tuple[float, ...]

    def __contains__(self, x: float) -> bool:
        return self.matches(x, 0.0)

    def __len__(self) -> int:
        return len(self.values)

    def matches(self, written: float, tolerance: float) -> bool:
        """Whether some evidence value lies within ``tolerance`` of |written| (both ends included)."""
        w = abs(written)
        slack = tolerance * (1 + 1e-9) + 1e-12 * w  # the written decimal is itself a binary float
        i = bisect.bisect_left(self.values, w - slack)
        return i < len(self.values) and self.values[i] <= w + slack


_NUM_IN_STR = r"(?<![A-Za-z0-9_.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def evidence_values(*sources: Any) -> Evidence:
    """Every number in ``sources`` (dicts, lists, dataclasses with to_dict — summaries, configs,
    environment, verdicts, deltas, anomalies, findings), recursively: numeric values, numbers
    inside strings (a claim's "baseline - 0.1" gives 0.1), and each list's length (a text may
    say "3 spikes"). Booleans are not numbers."""
    found: set[float] = set()
    stack: list[Any] = list(sources)
    while stack:
        x = stack.pop()
        if x is None or isinstance(x, bool):
            continue
        if isinstance(x, (int, float)):
            if math.isfinite(x):
                found.add(abs(float(x)))
        elif isinstance(x, str):
            found.update(abs(float(m)) for m in re.findall(_NUM_IN_STR, x))
        elif isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            found.add(float(len(x)))
            stack.extend(x)
        elif hasattr(x, "to_dict"):
            stack.append(x.to_dict())
        elif is_dataclass(x) and not isinstance(x, type):
            stack.append(asdict(x))
        elif hasattr(x, "tolist"):  # a numpy array or scalar
            stack.append(x.tolist())
    return Evidence(tuple(sorted(found)))


# Spans whose digits are not claims about the run: masked before numbers are read.
_EXCEPT = (
    r"""https?://\S+                                          # URLs
    | `[^`\n]*(?:/|\\|\d+\.\d+\.\d+|\.[A-Za-z]\w{0,5}\b)[^`\n]*`  # inline code holding a path, file or version
    | (?<![\d.])v?\d+(?:\.\d+){2,}(?![\d])                     # versions X.Y.Z
    | \d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T\s]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?  # dates
    | \d{4}\s*年(?:\s*\d{1,2}\s*月)?(?:\s*\d{1,2}\s*日)? | \d{1,2}\s*月\s*\d{1,2}\s*日   # 2026年11月22日
    | (?<![\d.])\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?![\d])      # times
    """
)
# List numbering ("1.", "2)", "3、") and numbered headings at the start of a line.
_LIST_NUMBER = r"^\s*(?:#+\s*)?(?:[-*+]\s+)?\d+(?:\.\d+)*[.)、](?=\s|$)|^\s*#+\s*\d+(?:\.\d+)*(?=\s)"
_TEXT_NUMBER = (
    r"""(?<![A-Za-z0-9_.])                    # not the tail of an identifier (H100, bf16, distinct_2) or 1.2.
    (?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:[eE](?P<exp>[-+]?\d+))?
    (?P<suffix>%|[x×]|(?:[KMGT]i?B|ms|min|s|h)(?![A-Za-z])|[kKMBG](?![A-Za-z]))?   # a unit (MB, s) or a scale (k, M)
    (?![A-Za-z0-9_])                          # not the head of a word or hash (3rd, 4f9a2c, 2M_tokens)
    """
)
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def untraceable_numbers(text: str, evidence: Evidence) -> list[tuple[int, str]]:
    """(line number, the number as written) for each number in ``text`` that no evidence value
    explains at the precision written.

    Rule: a number written with d decimals (in the mantissa, for 3e-3 / 8.0e-05) matches a value
    v when |v| rounds to it: ||v| − w| ≤ ½·10^(−d)·10^exp (so "5.23" and "5.2" match 5.2318,
    "5.24" and "5.20" do not; halves count either way). Signs are ignored (a text says "lower by
    0.12" for a delta of −0.12). "12.5%" also matches the ratio 0.125; "1,234" is 1234; "1.2k",
    "3.4M", "2B" scale by 10³/10⁶/10⁹ with the precision scaled alike; "1.5x" is 1.5.
    Not checked: versions (1.4.1), list and heading numbering at a line start, dates and times,
    URLs, inline code holding a path, file name or version, and digits inside identifiers."""
    def blank(m: re.Match[str]) -> str:  # keep the columns: only the line number is reported, but cheap
        return " " * len(m.group())

    bad = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        masked = re.sub(_EXCEPT, blank, line, flags=re.X)
        masked = re.sub(_LIST_NUMBER, blank, masked)
        for m in re.finditer(_TEXT_NUMBER, masked, flags=re.X):
            mant = m["mant"].replace(",", "")
            decimals = len(mant.split(".")[1]) if "." in mant else 0
            exp = int(m["exp"] or 0)
            scale = _SUFFIX.get(m["suffix"] or "", 1.0)
            # decimal strings through float(): exact to the last bit, also for 1e-320-sized values
            written = float(f"{mant}e{exp}") * scale
            tol = float(f"5e{exp - decimals - 1}") * scale  # half a unit of the last written digit
            ok = evidence.matches(written, tol)
            if not ok and m["suffix"] == "%":
                ok = evidence.matches(written / 100.0, tol / 100.0)
            if not ok:
                bad.append((line_no, m.group()))
    return bad
