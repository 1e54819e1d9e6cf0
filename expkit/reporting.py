"""Several records at once: ``exp compare``, ``exp diff``, ``exp report`` and ``exp tree``.

Each record's numbers come from its analysis in the front matter (``results.run_table``), so a
report over a thousand records reads front matters, not a thousand metrics files. Curves are
drawn from ``metrics.jsonl`` only where a plot asks for them.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from . import record as rec_mod
from . import results, store
from .errors import RecordError, UsageError
from .version import Version
from .workspace import Workspace

REPORT_MD = "EXPERIMENT_REPORT.md"
TRACKER_CSV = "experiment_tracker.csv"
REPORT_PLOTS = "report"
#: A lineage plot shows at most this many runs (the newest): more lines are unreadable.
MAX_LINES = 8
#: What a report reads of each front matter (reading only these keeps 1,000 records fast).
REPORTED = ("parent", "baseline", "status", "description", "config", "analysis")
ANALYSIS_PARTS = {"analysis": ("metrics", "verdicts", "changes")}
#: The metric ``exp tree`` shows beside each node, with its fallback.
TREE_METRICS = ("best_val_loss", "final_loss")


def _differing(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """{key: [a's value, b's value]} for the keys whose values differ, in a's order then b's."""
    keys = list(a) + [k for k in b if k not in a]
    return {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}


def _meta(ws: Workspace, version: Version | str) -> dict[str, Any]:
    path = ws.record_path(version)
    if not path.exists():
        raise RecordError(f"no experiment {version} ({store._rel(ws, path)}); `exp list` shows the records")
    return rec_mod.read_meta(path)


def _distinct(versions: list[Version]) -> list[Version]:
    seen = set()
    for v in versions:
        if str(v) in seen:
            raise UsageError(f"{v} is given twice; name each experiment once")
        seen.add(str(v))
    return versions


def _table_or_fail(ws: Workspace, version: Version | str, meta: dict[str, Any], what: str) -> dict[str, Any]:
    table = results.run_table(ws, version, meta)
    if table is None:
        from .analysis import AnalysisError

        raise AnalysisError(
            f"{version} has no run results (status {meta.get('status')}); run it (`exp run {version}`) or leave it out of the {what}"
        )
    return results.clean_table(table)


# -- exp compare -------------------------------------------------------------------------------------
def compare_records(ws: Workspace, versions: list[Version], plot: Path | None = None) -> dict[str, Any]:
    """Config keys that differ, the metric table with deltas against the first version, and
    (with ``plot``) the runs' curves overlaid in one PNG."""
    from . import analysis

    if len(versions) < 2:
        raise UsageError("give at least two versions to compare, e.g. `exp compare 0.1.0 0.1.1`")
    _distinct(versions)
    tables: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for v in versions:
        meta = _meta(ws, v)
        tables[str(v)] = _table_or_fail(ws, v, meta, "comparison")
        configs[str(v)] = meta.get("config") or {}
    out = analysis.compare(tables, configs)
    if plot is not None:
        runs = {label: m for label in tables if (m := results.metrics_file(ws, label)) is not None}
        if not runs:
            raise analysis.AnalysisError("none of these runs has a metrics.jsonl to plot; leave out --plot")
        analysis.plot_compare(runs, plot, title=" vs ".join(tables))
        out["plot"] = str(plot)
        out["not_plotted"] = [label for label in tables if label not in runs]
    return out


# -- exp diff ----------------------------------------------------------------------------------------
def diff_records(ws: Workspace, a: Version, b: Version) -> dict[str, Any]:
    """How two experiments differ: config, environment, rendered script, code, metrics."""
    from . import analysis, gitops
    from . import config as cfg_mod

    ma, mb = _meta(ws, a), _meta(ws, b)
    ra, rb = ma.get("run") or {}, mb.get("run") or {}

    environment = _differing(ra.get("env") or {}, rb.get("env") or {})

    sa, sb = ws.run_script_path(a), ws.run_script_path(b)
    script: dict[str, Any] = {"a": store._rel(ws, sa), "b": store._rel(ws, sb), "diff": ""}
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

    ta, tb = results.run_table(ws, a, ma), results.run_table(ws, b, mb)
    metrics: dict[str, Any] = {}
    if ta is not None and tb is not None:
        metrics = analysis.metric_deltas(results.clean_table(tb), results.clean_table(ta))
    return {
        "a": str(a),
        "b": str(b),
        "config": {k: list(v) for k, v in cfg_mod.diff(ma.get("config") or {}, mb.get("config") or {}).items()},  # TrainConfig order
        "environment": environment,
        "script": script,
        "code": code,
        "metrics": metrics,
        "metrics_note": None if metrics else "; ".join(
            f"{v} has no run results" for v, t in ((a, ta), (b, tb)) if t is None
        ) or None,
    }


# -- exp report --------------------------------------------------------------------------------------
CACHE_FILE = "report-index.json"
CACHE_LAYOUT = 2  # bump when _row changes what it returns


def _row(ws: Workspace, path: Path, version: str) -> dict[str, Any]:
    """One record as ``analysis.report_rows`` takes it (a broken record is listed as broken).

    Only the report's seven config keys and three parts of the analysis are read (the YAML
    constructor is the cost); the config diff against the parent comes from the analysis, or
    for a record not analysed yet from both full configs."""
    from .analysis import REPORT_CONFIG

    try:
        meta = rec_mod.read_meta(path, REPORTED, {**ANALYSIS_PARTS, "config": REPORT_CONFIG})
        found = meta.get("analysis") or {}
        changes = found.get("changes")
        parent = meta.get("parent")
        if not isinstance(changes, dict):
            changes = {}
            if parent and ws.record_path(parent).exists():
                # not store.config_diff: that validates through pydantic, which `exp tree` must not import
                mine = rec_mod.read_meta(path, ("config",)).get("config") or {}
                changes = _differing(rec_mod.read_meta(ws.record_path(parent), ("config",)).get("config") or {}, mine)
    except RecordError as err:
        return {"version": version, "status": "broken", "description": str(err)}
    return {
        "version": version, "status": meta.get("status"), "description": meta.get("description"),
        "parent": parent, "baseline": meta.get("baseline"), "config": meta.get("config"),
        "metrics": found.get("metrics"), "verdicts": found.get("verdicts"), "changes": changes,
    }


def collect(ws: Workspace) -> list[dict[str, Any]]:
    """Every record as ``analysis.report_rows`` takes it, sorted by version.

    Reading a front matter with its config and analysis costs ~2 ms (the YAML constructor),
    2 s for a thousand records; so each record's row is kept in ``out/.cache/`` under its file's
    size and mtime, and only records that changed since the last report are read again."""
    cache_path = ws.cache_dir() / CACHE_FILE
    try:
        saved = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    # rows of another layout (an older or newer expkit) are not reused
    cache = saved.get("rows") if isinstance(saved, dict) and saved.get("layout") == [CACHE_LAYOUT, list(REPORTED)] else None
    cache = cache if isinstance(cache, dict) else {}
    fresh: dict[str, Any] = {}
    out = []
    for version, path in store.record_files(ws):
        st = path.stat()
        stamp = [st.st_mtime_ns, st.st_size]
        hit = cache.get(path.name)
        row = hit["row"] if isinstance(hit, dict) and hit.get("stamp") == stamp else _row(ws, path, str(version))
        fresh[path.name] = {"stamp": stamp, "row": row}
        out.append(row)
    if fresh != cache:
        try:
            text = json.dumps({"layout": [CACHE_LAYOUT, list(REPORTED)], "rows": fresh}, ensure_ascii=False, separators=(",", ":"))
            store.atomic_write(cache_path, text)
        except OSError:
            pass  # a read-only out/: the report is still right, only slower next time
    return out


def _families(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Lineage root → its versions (itself and every descendant)."""
    from .analysis import lineage

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
    from . import analysis

    index_path = folder / ".plots.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    written = []
    fresh_index = {}
    for root, versions in _families(rows).items():
        files = {v: ws.out_dir(v) / analysis.METRICS_FILE for v in versions}
        runs = [v for v, f in files.items() if f.is_file()][-MAX_LINES:]
        if len(runs) < 2:
            continue
        path = folder / f"lineage_{root}.png"
        stamp = {v: files[v].stat().st_mtime_ns for v in runs}
        key = path.name
        if not (path.is_file() and index.get(key) == stamp):
            loaded = {v: m for v in runs if (m := results.metrics_file(ws, v)) is not None}
            if len(loaded) < 2:
                continue
            analysis.plot_compare(loaded, path, title=f"lineage of {root}")
        fresh_index[key] = stamp
        written.append(path)
    for stale in set(index) - set(fresh_index):  # a lineage that no longer has two runs
        (folder / stale).unlink(missing_ok=True)
    if fresh_index or index:
        store.atomic_write(index_path, json.dumps(fresh_index, indent=1, sort_keys=True) + "\n")
    return written


_PLOTS_HEADING = {"zh": "## 图表", "en": "## Plots"}


def report(ws: Workspace, plots: bool = True) -> dict[str, Any]:
    """Write experiment/EXPERIMENT_REPORT.md, experiment/experiment_tracker.csv and the
    comparison PNGs under experiment/report/."""
    from . import analysis

    records = collect(ws)
    rows = analysis.report_rows(records)
    ws.experiment_dir.mkdir(parents=True, exist_ok=True)
    csv_path = analysis.write_tracker_csv(rows, ws.experiment_dir / TRACKER_CSV)
    lang = ws.default_lang if ws.default_lang in ("zh", "en") else "zh"
    pngs: list[Path] = []
    if plots and rows:
        folder = ws.experiment_dir / REPORT_PLOTS
        title = "val_loss by version"
        overview = analysis.plot_by_version(rows, folder / "val_loss_by_version.png", title=title)
        if overview is None:
            (folder / "val_loss_by_version.png").unlink(missing_ok=True)
        else:
            pngs.append(overview)
        pngs += _lineage_plots(ws, rows, folder)
    text = analysis.render_report_md(rows, lang)
    if pngs:
        links = [f"![{p.stem}]({p.relative_to(ws.experiment_dir).as_posix()})" for p in pngs]
        text += "\n" + _PLOTS_HEADING[lang] + "\n\n" + "\n".join(links) + "\n"
    md_path = ws.experiment_dir / REPORT_MD
    store.atomic_write(md_path, text)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "records": len(rows),
        "by_status": counts,
        "report": store._rel(ws, md_path),
        "tracker": store._rel(ws, csv_path),
        "plots": [store._rel(ws, p) for p in pngs],
    }


# -- exp tree ------------------------------------------------------------------------------------------
def tree(ws: Workspace) -> list[dict[str, Any]]:
    """The lineage by parent, each node with its verdict counts and its best loss; the node with
    the lowest of those across the workspace is marked ``best``. Reads the report's rows
    (``collect``), so it shares their cache."""
    from .analysis import VERDICTS, lineage

    rows = collect(ws)
    roots, children = lineage(rows)
    values = [m[1] for r in rows if (m := _tree_metric(r))]
    best_value = min(values) if values else None

    def node(r: dict[str, Any]) -> dict[str, Any]:  # no cycle guard: lineage() leaves cycles unreachable
        verdicts = None
        if r.get("verdicts") is not None:
            verdicts = {k: sum(1 for x in r["verdicts"] if isinstance(x, dict) and x.get("verdict") == k) for k in VERDICTS}
        metric = _tree_metric(r)
        return {
            "version": r["version"],
            "status": r.get("status") or "?",
            "description": r.get("description") or "",
            "verdicts": verdicts,
            "metric": {"name": metric[0], "value": metric[1]} if metric else None,
            "best": metric is not None and metric[1] == best_value,
            "children": [node(c) for c in children.get(r["version"], [])],
        }

    return [node(r) for r in roots]


def _tree_metric(row: dict[str, Any]) -> tuple[str, float] | None:
    from .analysis import is_finite_number

    table = row.get("metrics") or {}
    return next(((name, float(table[name])) for name in TREE_METRICS if is_finite_number(table.get(name))), None)
