"""Several records at once: ``exp compare``, ``exp diff``, ``exp report`` and ``exp tree``.

Each record's numbers come from its analysis in its state (``catalog.run_table``), so a
report over a thousand records reads their states, not a thousand metrics files. Curves are
drawn from ``metrics.jsonl`` only where a plot asks for them.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from . import catalog, gitops, store, tasks
from .catalog import clean_table, metrics_file, run_table
from .comparison import better, compare, config_changes, metric_deltas
from .errors import UsageError
from .files import atomic_write
from .metrics import METRICS_FILE, AnalysisError
from .numbers import is_finite_number
from .plots import plot_by_version, plot_compare
from .report import PRETRAIN, TaskTables, best_of, lineage, render_report_md, report_columns, report_rows, task_name, tracker_csv
from .verdicts import VERDICTS, verdict_kind
from .version import Version
from .workspace import Workspace

REPORT_MD = "EXPERIMENT_REPORT.md"
TRACKER_CSV = "experiment_tracker.csv"
REPORT_PLOTS = "report"
#: A lineage plot shows at most this many runs (the newest): more lines are unreadable.
MAX_LINES = 8
#: The metric ``exp tree`` shows beside each node, with its fallback.
TREE_METRICS = ("best_val_loss", "final_loss")


def _meta(ws: Workspace, version: Version | str) -> dict[str, Any]:
    return store.read_meta(ws, version)


def task_tables(ws: Workspace, rows: list[dict[str, Any]]) -> dict[str, tasks.Task | None]:
    """The table of each task the rows name; None for one whose declaration in pyproject.toml
    cannot be read (a report must not die on one bad record: its rows show the generic columns)."""
    out: dict[str, tasks.Task | None] = {}
    for name in dict.fromkeys(task_name(r) for r in rows):
        try:
            out[name] = tasks.get(ws.settings, name)
        except tasks.TaskError:
            out[name] = None
    return out


def _distinct(versions: list[Version]) -> list[Version]:
    seen = set()
    for v in versions:
        if str(v) in seen:
            raise UsageError(f"{v} is given twice; name each experiment once")
        seen.add(str(v))
    return versions


def _table_or_fail(ws: Workspace, version: Version | str, meta: dict[str, Any], what: str) -> dict[str, Any]:
    table = run_table(ws, version, meta)
    if table is None:
        raise AnalysisError(
            f"{version} has no run results (status {meta.get('status')}); run it (`exp run {version}`) or leave it out of the {what}"
        )
    return clean_table(table)


# -- exp compare -------------------------------------------------------------------------------------
def compare_records(ws: Workspace, versions: list[Version], plot: Path | None = None) -> dict[str, Any]:
    """Config keys that differ, the metric table with deltas against the first version, whether
    each is better or worse (``better``: label → metric → True/False/None, by the record's task's
    direction), and (with ``plot``) the runs' curves overlaid in one PNG."""
    if len(versions) < 2:
        raise UsageError("give at least two versions to compare, e.g. `exp compare 0.1.0 0.1.1`")
    _distinct(versions)
    tables: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for v in versions:
        meta = metas[str(v)] = _meta(ws, v)
        tables[str(v)] = _table_or_fail(ws, v, meta, "comparison")
        configs[str(v)] = meta.get("config") or {}
    out = compare(tables, configs)
    found = task_tables(ws, list(metas.values()))
    out["tasks"] = {label: task_name(m) for label, m in metas.items()}
    # better or worse than the reference, in each record's own task's direction (pretraining's sets otherwise)
    out["better"] = {label: better(d, found.get(out["tasks"][label])) for label, d in out["deltas"].items()}
    if plot is not None:
        runs = {label: m for label in tables if (m := metrics_file(ws, label)) is not None}
        if not runs:
            raise AnalysisError("none of these runs has a metrics.jsonl to plot; leave out --plot")
        plot_compare(runs, plot, title=" vs ".join(tables))
        out["plot"] = str(plot)
        out["not_plotted"] = [label for label in tables if label not in runs]
    return out


# -- exp diff ----------------------------------------------------------------------------------------
def diff_records(ws: Workspace, a: Version, b: Version) -> dict[str, Any]:
    """How two experiments differ: config, environment, rendered script, code, metrics."""
    ma, mb = _meta(ws, a), _meta(ws, b)
    ra, rb = ma.get("run") or {}, mb.get("run") or {}

    environment = config_changes(ra.get("env") or {}, rb.get("env") or {})

    sa, sb = ws.run_script_path(a), ws.run_script_path(b)
    script: dict[str, Any] = {"a": ws.rel(sa), "b": ws.rel(sb), "diff": ""}
    if sa.is_file() and sb.is_file():
        lines = difflib.unified_diff(
            sa.read_text(encoding="utf-8").splitlines(keepends=True), sb.read_text(encoding="utf-8").splitlines(keepends=True),
            fromfile=script["a"], tofile=script["b"],
        )
        script["diff"] = "".join(lines)
    else:
        missing = [str(v) for v, p in ((a, sa), (b, sb)) if not p.is_file()]
        script["note"] = f"no run script for {', '.join(missing)} (rendered by `exp run`)"

    code: dict[str, Any] = {"a": ra.get("git_sha"), "b": rb.get("git_sha"),
                            "a_dirty": ra.get("git_dirty"), "b_dirty": rb.get("git_dirty")}
    if code["a"] and code["b"]:
        code["same"] = code["a"] == code["b"]
        if not code["same"]:
            code.update(gitops.diffstat(ws.root, code["a"], code["b"]))
    else:
        code["note"] = "a git revision is recorded when a record runs inside a git repository"
    code["trainer"] = _trainer_code(ra, rb, str(a), str(b))

    ta, tb = run_table(ws, a, ma), run_table(ws, b, mb)
    metrics: dict[str, Any] = {}
    if ta is not None and tb is not None:
        metrics = metric_deltas(clean_table(tb), clean_table(ta))
    return {
        "a": str(a),
        "b": str(b),
        "config": config_changes(ma.get("config") or {}, mb.get("config") or {}),  # TrainConfig order
        "environment": environment,
        "script": script,
        "code": code,
        "metrics": metrics,
        "metrics_note": None if metrics else "; ".join(
            f"{v} has no run results" for v, t in ((a, ta), (b, tb)) if t is None
        ) or None,
    }


def _trainer_code(run_a: dict[str, Any], run_b: dict[str, Any], a_name: str, b_name: str) -> dict[str, Any]:
    """The trainer code each run used (its checkout and revision, or its package) and whether
    they are known to be the same: uncommitted changes on either side make that unknown."""
    a, b = run_a.get("code"), run_b.get("code")

    def where(code: Any) -> str | None:
        if not isinstance(code, dict):
            return None
        if code.get("package"):
            return str(code["package"])
        return f"{code.get('location')} @ {str(code.get('git_sha'))[:12]}" + (" (+ uncommitted changes: code.diff)" if code.get("dirty") else "")

    out: dict[str, Any] = {"a": where(a), "b": where(b)}
    not_run = [name for name, run in ((a_name, run_a), (b_name, run_b)) if not run]
    if not_run:
        out["same"] = None
        out["note"] = f"{' and '.join(not_run)} {'has' if len(not_run) == 1 else 'have'} not run yet"
    elif out["a"] is None or out["b"] is None:
        out["same"] = None
        out["note"] = "a run made before exp recorded the trainer code has none"
    else:
        same_revision = (a.get("git_sha"), a.get("package")) == (b.get("git_sha"), b.get("package"))
        out["same"] = same_revision and not a.get("dirty") and not b.get("dirty")
        if same_revision and not out["same"]:
            out["note"] = "the same revision, but with uncommitted changes: compare the runs' code.diff"
        elif not same_revision:
            out["note"] = "the runs trained with different code"
    return out


# -- exp report --------------------------------------------------------------------------------------
def _families(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Lineage root → its versions (itself and every descendant)."""
    roots, children = lineage(rows)
    out: dict[str, list[str]] = {}
    for root in roots:
        stack, members = [root], []
        while stack:
            r = stack.pop()
            members.append(r["version"])
            stack += children.get(r["version"], [])
        out[root["version"]] = sorted(members, key=Version.parse)
    return out


def _lineage_plots(ws: Workspace, rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per lineage with at least two runs: their curves overlaid. A PNG is redrawn only
    when its runs or their metrics files changed (an index beside the PNGs remembers)."""
    index_path = folder / ".plots.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    written = []
    fresh_index = {}
    for root, versions in _families(rows).items():
        files = {v: ws.out_dir(v) / METRICS_FILE for v in versions}
        runs = [v for v, f in files.items() if f.is_file()][-MAX_LINES:]
        if len(runs) < 2:
            continue
        path = folder / f"lineage_{root}.png"
        stamp = {v: files[v].stat().st_mtime_ns for v in runs}
        key = path.name
        if not (path.is_file() and index.get(key) == stamp):
            loaded = {v: m for v in runs if (m := metrics_file(ws, v)) is not None}
            if len(loaded) < 2:
                continue
            plot_compare(loaded, path, title=f"lineage of {root}")
        fresh_index[key] = stamp
        written.append(path)
    for stale in set(index) - set(fresh_index):  # a lineage that no longer has two runs
        (folder / stale).unlink(missing_ok=True)
    if fresh_index or index:
        atomic_write(index_path, json.dumps(fresh_index, indent=1, sort_keys=True) + "\n")
    return written


_PLOTS_HEADING = {"zh": "## 图表", "en": "## Plots"}


def report(ws: Workspace, plots: bool = True) -> dict[str, Any]:
    """Write experiment/EXPERIMENT_REPORT.md, experiment/experiment_tracker.csv and the
    comparison PNGs under experiment/report/."""
    records = catalog.rows(ws)
    found = task_tables(ws, records)
    rows = report_rows(records, found)
    ws.experiment_dir.mkdir(parents=True, exist_ok=True)
    csv_path = ws.experiment_dir / TRACKER_CSV
    atomic_write(csv_path, tracker_csv(rows, report_columns(rows, found)))
    lang = ws.default_lang if ws.default_lang in ("zh", "en") else "zh"
    pngs: list[Path] = []
    if plots and rows:
        folder = ws.experiment_dir / REPORT_PLOTS
        title = "val_loss by version"
        # pretraining's validation loss: another task's val_loss is another quantity on another scale
        pretraining = [r for r in rows if r["task"] == PRETRAIN]
        overview = plot_by_version(pretraining, folder / "val_loss_by_version.png", title=title) if pretraining else None
        if overview is None:
            (folder / "val_loss_by_version.png").unlink(missing_ok=True)
        else:
            pngs.append(overview)
        pngs += _lineage_plots(ws, rows, folder)
    text = render_report_md(rows, lang, found)
    if pngs:
        links = [f"![{p.stem}]({p.relative_to(ws.experiment_dir).as_posix()})" for p in pngs]
        text += "\n" + _PLOTS_HEADING[lang] + "\n\n" + "\n".join(links) + "\n"
    md_path = ws.experiment_dir / REPORT_MD
    atomic_write(md_path, text)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "records": len(rows),
        "by_status": counts,
        "report": ws.rel(md_path),
        "tracker": ws.rel(csv_path),
        "plots": [ws.rel(p) for p in pngs],
    }


# -- exp tree ------------------------------------------------------------------------------------------
def tree(ws: Workspace, rows: list[dict[str, Any]] | None = None, found: TaskTables | None = None) -> list[dict[str, Any]]:
    """The lineage by parent, each node with its task, the model it starts from (``init_from``),
    its verdict counts and its key metric: pretraining's best loss, another task's primary metric.
    The best node of each task (by that metric, in the task's direction) is marked ``best``. Reads
    the report's rows (``catalog.rows``), so it shares their cache; ``rows``: those rows, when the
    caller has them; ``found``: their tasks' tables (``task_tables``)."""
    rows = catalog.rows(ws) if rows is None else rows
    found = task_tables(ws, rows) if found is None else found
    roots, children = lineage(rows)
    metric = {r["version"]: _tree_metric(r, found.get(task_name(r))) for r in rows}
    best: dict[str, float] = {}
    for name in {task_name(r) for r in rows}:
        task = found.get(name)
        direction = (task.direction(task.primary) if task is not None and task.name != PRETRAIN else None) or "lower"
        top = best_of([{"version": r["version"], "x": m[1]} for r in rows if task_name(r) == name and (m := metric[r["version"]])],
                      "x", direction)
        if top is not None:
            best[name] = top[0]

    def node(r: dict[str, Any]) -> dict[str, Any]:  # no cycle guard: lineage() leaves cycles unreachable
        verdicts = None
        if r.get("verdicts") is not None:
            verdicts = {k: sum(1 for x in r["verdicts"] if isinstance(x, dict) and verdict_kind(x.get("verdict")) == k) for k in VERDICTS}
        m = metric[r["version"]]
        return {
            "version": r["version"],
            "status": r.get("status") or "?",
            "description": r.get("description") or "",
            "task": task_name(r),
            "init_from": r.get("init_from"),
            "verdicts": verdicts,
            "metric": {"name": m[0], "value": m[1]} if m else None,
            "best": m is not None and m[1] == best.get(task_name(r)),
            "children": [node(c) for c in children.get(r["version"], [])],
        }

    return [node(r) for r in roots]


def _tree_metric(row: dict[str, Any], task: tasks.Task | None) -> tuple[str, float] | None:
    """(name, value) of the metric beside a node: pretraining's (and an unreadable task's) best
    loss; another task's primary metric."""
    table = row.get("metrics") or {}
    names = TREE_METRICS if task is None or task.name == PRETRAIN else (task.primary,)
    return next(((name, float(table[name])) for name in names if is_finite_number(table.get(name))), None)
