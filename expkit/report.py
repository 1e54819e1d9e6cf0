"""The report over all records: its rows, the tracker CSV and the report markdown, as text.

Layer 3 (pure): the caller (``reporting``) reads the records and writes the files.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .comparison import direction as metric_direction
from .intervals import mean_sd
from .metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER
from .numbers import format_number, is_finite_number
from .tasks import DEFAULT as PRETRAIN
from .tasks import Task
from .verdicts import VERDICTS, verdict_kind

# -- reports over all records ----------------------------------------------------------------------

#: Config keys the report shows as columns; the others appear in "changes" when they differ from the parent.
REPORT_CONFIG = ("model_type", "hidden_size", "num_hidden_layers", "max_seq_len", "batch_size", "learning_rate", "max_steps")
REPORT_METRICS = ("steps", "final_loss", "best_val_loss", "val_loss", "val_ppl", "tokens_seen", "tokens_per_s",
                  "wall_s", "peak_mem_mb", "params", "distinct_2", "repetition_rate")
#: Metrics whose standard deviation over a record's replicates the report shows (``METRIC_sd``).
REPORT_SD = ("final_loss", "val_loss", "best_val_loss", "tokens_per_s")
#: experiment/tracker.csv columns, in this order, always. ``group``: the group parent a member
#: belongs to; the metrics are a replicated record's means, ``n`` its replicates with results.
REPORT_COLUMNS = ("version", "status", "description", "parent", "baseline", "group", "changes", *REPORT_CONFIG,
                  *REPORT_METRICS, "n", *(f"{m}_sd" for m in REPORT_SD), "confirmed", "refuted", "inconclusive")
#: What a workspace with records of another task adds after REPORT_COLUMNS (a pretraining-only
#: workspace's CSV stays as it was): the task, the model a record starts from, then each other
#: task's key metrics and their ``_sd`` columns (``report_columns``).
TASK_COLUMNS = ("task", "init_from")

#: A task's table as the report reads it, by task name: None when its declaration cannot be read
#: (pyproject.toml is broken); its records then show the generic (pretraining) columns.
TaskTables = Mapping[str, "Task | None"]


def task_name(row: Mapping[str, Any]) -> str:
    """The task of a record or report row (none written: pretraining, which predates tasks)."""
    return str(row.get("task") or PRETRAIN)


def _tasks_present(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tasks of ``rows``: pretraining first, then the built-in and declared others by name."""
    names = {task_name(r) for r in rows}
    return sorted(names, key=lambda n: (n != PRETRAIN, n))


def _own_columns(task: Task | None) -> tuple[str, ...]:
    """The metric columns a record of ``task`` shows in the report's tables (not pretraining's)."""
    return tuple(task.key_metrics) if task is not None and task.name != PRETRAIN else ()


def report_columns(rows: Sequence[Mapping[str, Any]], tasks: TaskTables | None = None) -> tuple[str, ...]:
    """The tracker CSV's columns for ``rows``: REPORT_COLUMNS when every record is pretraining,
    else those, then TASK_COLUMNS, then each other task's key metrics (a name already a column,
    such as ``val_loss``, keeps its column) and their ``_sd`` columns."""
    present = _tasks_present(rows)
    if present in ([], [PRETRAIN]):
        return REPORT_COLUMNS
    cols = list(REPORT_COLUMNS) + list(TASK_COLUMNS)
    for name in present:
        own = _own_columns((tasks or {}).get(name))
        cols += [m for m in own if m not in cols]
        cols += [f"{m}_sd" for m in own if f"{m}_sd" not in cols]
    return tuple(dict.fromkeys(cols))


def _version_key(v: Any) -> tuple[int, tuple[int, ...], str]:
    text = str(v)
    parts = text.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), text)
    return (1, (), text)  # a malformed version sorts after the rest rather than failing the report


def _short(value: Any) -> str:
    return format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def report_rows(records: Sequence[Mapping[str, Any]], tasks: TaskTables | None = None) -> list[dict[str, Any]]:
    """One flat row per record (``report_columns``), sorted by version.

    A record is a dict::

        {"version": "1.4.1", "status": "analyzed", "description": "...",
         "parent": "1.4.0" | None, "baseline": "1.0.0" | None,
         "task": "classify" | None, "init_from": "0.1.0" | None,   # optional
         "config": {TrainConfig dump} | None,
         "metrics": summarize() table | None,           # None: never ran
         "verdicts": [Verdict.to_dict(), ...] | None,
         "changes": {key: [parent's value, this value]}}   # optional

    ``changes`` lists the config keys that differ from the parent's config ("k=v; ..."): the
    record's own ``changes`` when given, else computed when the parent is among the records.
    ``tasks``: the tables of the records' tasks (``TaskTables``); a record of a task other than
    pretraining also gets its task's key metrics (and their ``_sd`` where replicated)."""
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
            "parent": parent or "", "baseline": r.get("baseline") or "", "group": r.get("group") or "", "changes": changes,
        }
        row.update({k: config.get(k) for k in REPORT_CONFIG})
        row.update({k: metrics.get(k) for k in REPORT_METRICS})
        reps = [t for t in r.get("replicates") or [] if isinstance(t, Mapping)]
        row["n"] = len(reps) if reps else (1 if r.get("metrics") else None)

        def sd(m: str) -> float | None:
            values = [float(t[m]) for t in reps if is_finite_number(t.get(m))]
            return mean_sd(values)[1] if len(values) >= 2 else None

        row.update({f"{m}_sd": sd(m) for m in REPORT_SD})
        counts = {k: 0 for k in VERDICTS}
        for v in r.get("verdicts") or []:
            verdict = verdict_kind(v.get("verdict") if isinstance(v, Mapping) else getattr(v, "verdict", None))
            if verdict in counts:
                counts[verdict] += 1
        row.update(counts)
        # REPORT_COLUMNS so far; then what a workspace of several tasks adds (``report_columns``)
        row.update({"task": task_name(r), "init_from": r.get("init_from") or ""})
        own = _own_columns((tasks or {}).get(row["task"]))
        row.update({k: metrics.get(k) for k in own if k not in row})
        row.update({f"{m}_sd": sd(m) for m in own if f"{m}_sd" not in row})
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


def tracker_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    """The rows as CSV text with ``columns`` in that order (``report_columns``), starting with a BOM: Excel opens a
    BOM-less UTF-8 CSV as the local code page and garbles Chinese descriptions; LibreOffice,
    Google Sheets and Python's ``encoding="utf-8-sig"`` read the BOM correctly. Floats are
    written in full (repr), missing values as empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # RFC 4180 line ends; what spreadsheets expect
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return "\ufeff" + buf.getvalue()


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
    "groups": ("Groups", "实验组"),
    "group_cols": (("member", "status", "changes", "n", "val_loss (mean ± sd)", "final_loss (mean ± sd)", "verdicts ✓/✗/?"),
                   ("成员", "状态", "改动", "n", "val_loss（均值 ± sd）", "final_loss（均值 ± sd）", "结论 ✓/✗/?")),
    "task": ("task {name}: {n} experiment(s)", "任务 {name}：{n} 个实验"),
    "task_cols": (("version", "status", "description", "key config", "changes vs parent"),
                  ("版本", "状态", "描述", "关键配置", "相对父实验的改动")),
    "verdict_col": ("verdicts ✓/✗/?", "结论 ✓/✗/?"),
    "mean_sd": ("{m} (mean ± sd)", "{m}（均值 ± sd）"),
    "unreadable": ("the declaration of task {name} cannot be read (`exp check` says why): its records show the generic columns",
                   "任务 {name} 的声明无法读取（`exp check` 会说明原因）：其实验按通用列显示"),
    "primary": ("best record by {m} ({d} is better): {v}", "按 {m} 的最佳实验（越{d}越好）：{v}"),
    "higher": ("higher", "高"), "lower": ("lower", "低"),
}


def _mean_sd(row: Mapping[str, Any], metric: str) -> str:
    """"5.23 ± 0.012 (n=3)" for a replicated record, the value alone for one run."""
    if row.get(metric) is None:
        return "—"
    sd = row.get(f"{metric}_sd")
    return _short(row[metric]) + (f" ± {_short(sd)} (n={row.get('n')})" if sd is not None else "")


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


def best_of(rows: Sequence[Mapping[str, Any]], metric: str, direction: str) -> tuple[float, list[str]] | None:
    """(the best value of ``metric`` among ``rows``, the versions that have it), or None."""
    cands = [(r[metric], str(r["version"])) for r in rows if is_finite_number(r.get(metric))]
    if not cands:
        return None
    value = (min if direction == "lower" else max)(c[0] for c in cands)
    return value, [v for x, v in cands if x == value]


def _best_metrics(task: Task | None) -> list[str]:
    """The metrics a task's "best" table ranks: pretraining's (and an unreadable task's) report
    metrics with a known direction; another task's key metrics, its primary first, without the
    values that are a baseline of the run (classification's majority class)."""
    if task is None or task.name == PRETRAIN:
        return [m for m in REPORT_METRICS if m in LOWER_IS_BETTER or m in HIGHER_IS_BETTER]
    baselines = set(task.own_baseline.values())
    names = [task.primary] + [m for m in task.key_metrics if m != task.primary]
    return [m for m in names if m and m not in baselines and metric_direction(task, m) is not None]


def _key_config_other(row: Mapping[str, Any]) -> str:
    """Another task's key config: where its model starts, its shape when given, the optimisation."""
    parts = [f"init_from {row['init_from']}"] if row.get("init_from") else []
    if row.get("hidden_size") is not None:
        parts.append(f"{_short(row['hidden_size'])}×{_short(row.get('num_hidden_layers'))}")
    parts += [f"{label} {_short(row[k])}" for k, label in (("batch_size", "bs"), ("learning_rate", "lr")) if row.get(k) is not None]
    if row.get("max_steps"):
        parts.append(f"{_short(row['max_steps'])} steps")
    return " ".join(parts)


def _counts(r: Mapping[str, Any]) -> str:
    return f"{r.get('confirmed', 0)}/{r.get('refuted', 0)}/{r.get('inconclusive', 0)}"


def _overview(rows: Sequence[Mapping[str, Any]], task: Task | None, t: Mapping[str, Any]) -> list[str]:
    """The overview table of ``rows`` (one task's): pretraining's columns, or the task's key metrics."""
    own = _own_columns(task)
    if not own:
        cols = t["cols"]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [r.get("version"), r.get("status"), r.get("description"), _key_config(r), r.get("changes"),
                     _mean_sd(r, "final_loss"), _mean_sd(r, "val_loss"), _mean_sd(r, "best_val_loss"), _mean_sd(r, "tokens_per_s"),
                     _counts(r)]
            out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        return out
    cols = [*t["task_cols"], *own, t["verdict_col"]]
    out = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.get("version"), r.get("status"), r.get("description"), _key_config_other(r), r.get("changes"),
                 *(_mean_sd(r, m) for m in own), _counts(r)]
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return out


def _best_table(rows: Sequence[Mapping[str, Any]], task: Task | None, t: Mapping[str, Any]) -> list[str]:
    lines = []
    for metric in _best_metrics(task):
        direction = metric_direction(task, metric)
        found = best_of(rows, metric, direction) if direction else None
        if found is not None:
            lines.append(f"| {metric} | {_md_cell(found[0])} | {_md_cell(', '.join(found[1]))} |")
    if not lines:
        return [t["none"]]
    return ["| " + " | ".join(t["best_cols"]) + " |", "|---|---|---|", *lines]


def render_report_md(rows: Sequence[Mapping[str, Any]], lang: str = "zh", tasks: TaskTables | None = None) -> str:
    """experiment/EXPERIMENT_REPORT.md from ``report_rows``: the overview table of every
    experiment, the best value of each metric and where, the lineage tree, counts by status.
    With records of several tasks, the overview and the best values come per task, each in its
    task's metrics and directions (``tasks``); a pretraining-only report is as it always was.
    Deterministic (no date): the file changes only when a record does."""
    i = 1 if lang == "zh" else 0
    t = {k: v[i] for k, v in _MD.items()}
    tasks = tasks or {}
    present = _tasks_present(rows)
    several = present not in ([], [PRETRAIN])
    by_task = {name: [r for r in rows if task_name(r) == name] for name in present}
    out = [f"# {t['title']}", "", t["count"].format(n=len(rows)), "", f"## {t['overview']}", ""]
    if not several:
        out += _overview(rows, tasks.get(PRETRAIN), t)
    for name in present if several else ():
        task = tasks.get(name)
        out += [f"### {t['task'].format(name=name, n=len(by_task[name]))}", ""]
        if task is None and name != PRETRAIN:
            out += [t["unreadable"].format(name=name), ""]
        out += [*_overview(by_task[name], task, t), ""]
    if several:
        out.pop()

    out += ["", f"## {t['best']}", ""]
    if not several:
        out += _best_table(rows, tasks.get(PRETRAIN), t)
    for name in present if several else ():
        task = tasks.get(name)
        out += [f"### {name}", ""]
        primary = task.primary if task is not None and task.name != PRETRAIN else ""
        direction = metric_direction(task, primary) if primary else None
        found = best_of(by_task[name], primary, direction) if direction else None
        if found is not None:
            out += [t["primary"].format(m=primary, d=t[direction], v=", ".join(found[1])), ""]
        out += [*_best_table(by_task[name], task, t), ""]
    if several:
        out.pop()

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("group"):
            groups.setdefault(str(r["group"]), []).append(r)
    if groups:
        out += ["", f"## {t['groups']}", ""]
        by_version = {str(r["version"]): r for r in rows}
        for parent, members in groups.items():
            head = by_version.get(parent) or {}
            out += [f"### {parent}" + (f" {_md_cell(head.get('description'))}" if head.get("description") else "")
                    + f" ({head.get('status') or '—'})", ""]
            own = _own_columns(tasks.get(task_name(head or members[0])))[:2]
            shown = own or ("val_loss", "final_loss")
            gc = t["group_cols"] if not own else [*t["group_cols"][:4], *(t["mean_sd"].format(m=m) for m in own), t["verdict_col"]]
            out += ["| " + " | ".join(gc) + " |", "|" + "---|" * len(gc)]
            for r in members:
                cells = [r.get("version"), r.get("status"), r.get("changes"), r.get("n"), *(_mean_sd(r, m) for m in shown), _counts(r)]
                out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            out.append("")

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
        label = f" [{task_name(r)}]" if several and task_name(r) != PRETRAIN else ""
        start = f" ← init_from {_md_cell(r['init_from'])}" if r.get("init_from") else ""
        out.append(f"{'  ' * depth}- {r['version']}{label}{desc} ({r.get('status') or '—'}){start}")
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
