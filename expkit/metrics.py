"""A run's metrics: ``metrics.jsonl`` loaded into arrays, and the metrics table of a run directory.

Inputs are the trainer's outputs (``model/train_pretrain.py``): ``metrics.jsonl`` (one object
per log line; NaN/Infinity as JSON tokens or ``null`` where the trainer caught a non-finite
value; a killed run may leave a torn last line), ``summary.json``, ``samples.json`` and
``status.json``. Layer 3: reads only the files it is handed; numpy is imported inside the
functions that need it (~0.15 s, which the CLI's start-up must not pay).

- ``load_metrics(path) -> Metrics``            metrics.jsonl as arrays by step, tolerant of damage
- ``summarize(out_dir, metrics=None) -> dict``  the metrics table, keyed like the claims (SUMMARY_KEYS)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ExpError
from .names import METRICS_FILE, SAMPLES_FILE, STATUS_FILE, SUMMARY_FILE
from .numbers import is_finite_number, json_safe
from .samples import sample_quality

if TYPE_CHECKING:
    import numpy as np



#: The per-line series of metrics.jsonl that Metrics keeps as arrays (by step).
SERIES = ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s", "train_s")

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
    #: the trainer's training time so far (evaluation and checkpoint pauses left out): tokens_per_s's basis
    train_s: np.ndarray
    val_step: np.ndarray
    val_loss: np.ndarray
    nonfinite: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: a task's own series (``load_metrics(extra=...)``): name -> (steps of the lines that have it, values)
    other: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step)

    @property
    def last_step(self) -> int | None:
        return int(self.step[-1]) if len(self.step) else None

    def last(self, name: str) -> float | None:
        """The last logged value of a series (NaN/Inf included: "final" means the last line)."""
        import numpy as np

        steps, values = self.series(name)
        present = np.flatnonzero(~np.isnan(values) | np.isin(steps, self.nonfinite.get(name, [])))
        return float(values[present[-1]]) if len(present) else None

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one series: a per-line one, the eval curve, or a task's own."""
        if name in self.other:
            return self.other[name]
        if name == "val_loss":
            return self.val_step, self.val_loss
        return self.step, getattr(self, name)

    def has(self, name: str) -> bool:
        """Whether any line logged ``name`` (NaN/null included)."""
        import numpy as np

        steps, values = self.series(name) if name in self.other or name == "val_loss" or name in SERIES else ((), ())
        return bool(len(values)) and (bool((~np.isnan(values)).any()) or name in self.nonfinite)

    def to_dict(self) -> dict[str, Any]:
        """What was loaded, and the eval curve as [step, val_loss] pairs; not the per-line arrays
        (they belong in metrics.jsonl, not in a record, and as evidence they would let almost
        any loss-like number pass)."""
        return {"path": str(self.path), "lines": len(self), "first_step": int(self.step[0]) if len(self) else None,
                "last_step": self.last_step,
                "evals": [[int(s), json_safe(float(v))] for s, v in zip(self.val_step, self.val_loss)],
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

    columns = []
    for k in keys:  # each key on its own: one the run never logs (an older trainer's) costs no other key its fast path
        try:  # the trainer's lines have the key, all numbers: one C-level pass
            columns.append(np.fromiter(map(itemgetter(k), rows), dtype=np.float64, count=len(rows)))
            continue
        except (KeyError, TypeError, ValueError):
            pass
        if not any(k in r for r in rows):
            columns.append(np.full(len(rows), np.nan))
            continue
        try:  # a null somewhere (a non-finite value): numpy turns None into NaN
            columns.append(np.array([r[k] for r in rows], dtype=np.float64))
        except (KeyError, TypeError, ValueError):  # missing in some lines, or a string: value by value
            columns.append(np.array([_as_float(r.get(k)) for r in rows], dtype=np.float64))
    out = {}
    for key, values in zip(keys, columns):
        # only the few non-finite entries need a look at whether the key was there at all
        flagged = [int(i) for i in np.flatnonzero(~np.isfinite(values))
                   if key in rows[i] and (rows[i][key] is None or isinstance(rows[i][key], float))]
        out[key] = (values, flagged)
    return out


def load_metrics(path: str | Path, extra: Sequence[str] = ()) -> Metrics:
    """Read metrics.jsonl: a torn last line or a malformed line is skipped and noted, non-finite
    values are kept and flagged, repeated steps keep their last line. Missing file: AnalysisError.
    ``extra``: a task's own metric names, kept as series of the lines that have them."""
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
    other = {}
    for key in extra:
        if key in SERIES or key == "val_loss":
            continue
        idx = [i for i, r in enumerate(good) if key in r]
        if not idx:
            continue
        values, bad = _columns([good[i] for i in idx], [key])[key]
        other[key] = (steps[idx], values)
        if bad:
            nonfinite[key] = [int(steps[idx][i]) for i in bad]
    return Metrics(path, steps, val_step=val_step, val_loss=val_loss, nonfinite=nonfinite, notes=notes, other=other, **arrays)


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
            # the trainer's one definition: tokens over training time (pauses out); older logs: over elapsed time
            "tokens_per_s": tokens / basis if tokens and (basis := metrics.last("train_s") or elapsed)
            and math.isfinite(tokens / basis) else None,
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


def summarize_task(out_dir: str | Path, metric_names: Sequence[str], curves: Sequence[str],
                   lower: Sequence[str], metrics: Metrics | None = None) -> dict[str, Any]:
    """The metrics table of a run of any task but pretraining, keyed by the task's metric names:
    summary.json's top-level numbers win, else the last value of the series in metrics.jsonl;
    ``best_NAME`` for each curve (the min where ``NAME`` is in ``lower``, else the max), ``steps``
    and ``wall_s``; every other top-level number of summary.json too (it is the run's evidence).
    Plus ``status`` and ``notes``, like ``summarize``."""
    import numpy as np

    out = Path(out_dir)
    if not out.is_dir():
        raise AnalysisError(f"{out}: no such run directory (has the run started?)")
    notes: list[str] = []
    summary = _read_json(out / SUMMARY_FILE, notes)
    summary = summary if isinstance(summary, dict) else {}
    if metrics is None:
        try:
            metrics = load_metrics(out / METRICS_FILE, extra=tuple(dict.fromkeys([*metric_names, *curves])))
        except AnalysisError:
            metrics = None
    if metrics is None and not summary:
        raise AnalysisError(f"{out}: neither {SUMMARY_FILE} nor {METRICS_FILE} (the run has written no results)")
    if not summary:
        notes.append(f"no {SUMMARY_FILE}: values derived from {METRICS_FILE}")
    if metrics is not None:
        notes.extend(metrics.notes)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    table: dict[str, Any] = {}
    for name in metric_names:
        value = summary.get(name)
        table[name] = value if number(value) else (metrics.last(name) if metrics is not None and metrics.has(name) else None)
    if metrics is not None and len(metrics):
        for name in curves:
            if not metrics.has(name):
                continue
            _, values = metrics.series(name)
            finite = values[np.isfinite(values)]
            if len(finite):
                table.setdefault(f"best_{name}", float(finite.min() if name in lower else finite.max()))
        table.setdefault("steps", metrics.last_step)
        if metrics.has("elapsed_s"):
            table.setdefault("wall_s", metrics.last("elapsed_s"))
    for key, value in summary.items():  # the run's other figures (n_test, best_step, ...): evidence too
        if number(value) and key not in table and key != "status":
            table[key] = value
    for key in ("steps", "wall_s"):
        if number(summary.get(key)):
            table[key] = summary[key]
    status = summary.get("status")
    if not status:
        st = _read_json(out / STATUS_FILE, notes)
        status = st.get("status") if isinstance(st, dict) else None
    table["status"] = status or "unknown"
    table["notes"] = notes
    return table
