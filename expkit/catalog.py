"""The read side of the records: ``exp list``, ``exp show``, and a record's run table.

Fast on purpose: a listing reads each record's state (JSON), never the markdown, and nothing
here imports the config schema, the templates or YAML (``exp list`` over 1,000 records and
``exp show`` must start in a fraction of a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from . import approval, commit, groups, records, store, tasks
from . import claims as claims_mod
from .comparison import config_changes
from .errors import ConfigError, RecordError, UsageError
from .files import atomic_write
from .intervals import mean_sd
from .metrics import METRICS_FILE, AnalysisError, Metrics, load_metrics, summarize, summarize_task
from .numbers import is_finite_number
from .report import REPORT_CONFIG
from .record import HUMAN, REQUIRED_META
from .replicates import mean_table
from .status import STATUSES, next_step
from .verdicts import Noise
from .version import Version
from .workspace import Workspace


#: Config keys that say where a run goes and what it logs, not what it learns: they are not the
#: variable a validation changes (setting device=cpu on both records is no second variable).
PLACEMENT_KEYS = ("device", "cuda_devices", "swanlab_mode", "swanlab_project", "log_interval", "save_interval", "keep_top_k")


def parent_exists(ws: Workspace, meta: dict[str, Any]) -> bool:
    return bool(meta.get("parent")) and ws.record_path(meta["parent"]).exists()


def one_variable_issues(ws: Workspace, meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(level, message, fix) of the one-variable rule: a validation version (X.Y.Z, Z ≥ 1)
    changes one thing relative to its parent; the same config is an error (nothing is under test
    yet), a new model type or several keys are warnings. Placement keys do not count."""
    parent = meta.get("parent")
    if not parent or not Version.is_valid(str(meta.get("version"))):
        return []
    version = Version.parse(str(meta["version"]))
    if version.category != "validation":
        return []
    if not parent_exists(ws, meta):
        return [("warning", f"parent {parent} has no record", "restore it or clear `parent:`")]
    # replicates (seeds of the same run, `exp sweep --seeds`) is how sure, not what is under test
    changed = {k: v for k, v in config_changes(store.read_meta(ws, parent).get("config") or {}, meta.get("config") or {}).items()
               if k not in PLACEMENT_KEYS and k != "replicates"}
    new_direction = f"exp new {version.major}.{version.minor + 1}.0 --from {parent}"
    if not changed:
        return [("error", f"{version} is a validation of {parent} but its config is the same: nothing is under test yet",
                 f"set the variable under test: `exp set {version} KEY=VALUE` (a change that is not in the config, such as "
                 f"new code, is a new direction: `{new_direction}`)")]
    out = []
    if "model_type" in changed:
        old, new = changed["model_type"]
        out.append(("warning", f"model_type changes from {old} to {new} in a validation version",
                    f"a new model type is a new direction: use an exploratory version (X.Y.0), e.g. `{new_direction}`; "
                    "a person may keep the version as it is (this is advice, not an error)"))
    if len(changed) > 1:
        out.append(("warning", f"{len(changed)} config keys differ from parent {parent}: {', '.join(changed)}",
                    "change one variable at a time, or split this into several versions"))
    return out


def describe(ws: Workspace, version: Version) -> dict[str, Any]:
    """``exp show``: the record's state, human sections, claims, config changes and next step."""
    record = records.load(ws, version)
    meta = record.meta
    group = groups.group_of(meta)
    # a group member's sections as they hold for it: the ones it left unfilled are its parent's
    effective = groups.effective_human(ws, record) if group is not None else None
    if effective is not None:
        sections = {name: effective[name]["text"] for name in HUMAN}
        inherited = {name: e["from"] for name, e in effective.items() if e["from"] != str(version)}
    else:
        sections = {name: (record.block("human", name).text if record.block("human", name) else "") for name in HUMAN}
        inherited = {}
    expected = record.block("human", "expected")
    found = []
    if expected is not None:  # inherited claims are numbered by the parent's lines
        first = expected.first_content_line if "expected" not in inherited else 1
        found = claims_mod.parse_claims(sections["expected"], first)[0]
    parent = meta.get("parent")
    changed = (config_changes(store.read_meta(ws, parent).get("config") or {}, meta.get("config") or {})
               if parent and ws.record_path(parent).exists() else {})
    warnings = []
    changed_sections = groups.prereg_changed(ws, record)
    if changed_sections:
        warnings.append(f"changed after the run started (pre-registration): {', '.join(changed_sections)}")
    if record.edited_generated():
        warnings.append(f"hand-edited generated sections: {', '.join(b.name for b in record.edited_generated())}")
    stale = approval.stale_approval_problem(ws, record)
    if stale:
        warnings.append(stale)
    nxt = next_step(record.status, str(version))
    for level, message, fix in one_variable_issues(ws, meta):
        warnings.append(f"{message}; {fix}")
        if level == "error" and record.status in ("draft", "ready"):
            nxt = f"set the variable under test: `exp set {version} KEY=VALUE` (its config is still {parent}'s)"
    info: dict[str, Any] = {k: meta.get(k) for k in REQUIRED_META}
    info.update(
        {
            "category": version.category,
            "lang": meta.get("lang"),
            "created": meta.get("created"),
            "path": ws.rel(ws.record_path(version)),
            "state": ws.rel(ws.state_path(version)),
            "next": nxt,
            "sections": sections,
            # an inherited claim's line is counted in its parent's section (``from`` names the parent)
            "claims": [{**c.to_dict(), **({"from": inherited["expected"]} if "expected" in inherited else {})} for c in found],
            "changed_from_parent": changed,
            "prereg_changed": changed_sections,
            "warnings": warnings,
        }
    )
    if group is not None:
        info["group"] = str(group)
        info["changes"] = groups.changes_of(meta)
        info["inherited"] = inherited
    if groups.can_lead(version):
        info["members"] = [{"version": r["version"], "status": r["status"], "changes": r.get("group_changes") or {},
                            "description": r.get("description") or ""}
                           for r in rows(ws) if r.get("group") == str(version)]
    for key in ("run", "analysis", "review", "group_analysis"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    analysis = meta.get("analysis") or {}
    info["verdicts"] = [
        {k: x.get(k) for k in ("claim", "verdict", "observed", "reference", "reason", "metric",
                               "n", "mean", "sd", "ci_low", "ci_high", "method", "df", "noise")}
        for x in analysis.get("verdicts") or [] if isinstance(x, dict)
    ]
    if analysis.get("partial"):
        info["partial"] = analysis["partial"]
    info_commit = commit.commit_info(ws, record)
    if info_commit:
        info["commit"] = info_commit
    if meta.get("review") or record.status in ("approved", "committed"):
        info["approval"] = approval.approval_state(ws, record)
    return info


def list_records(ws: Workspace, status: str | None = None) -> list[dict[str, Any]]:
    """``exp list``: every record with its status, category, parent and description."""
    if status is not None and status not in STATUSES and status != "broken":
        raise UsageError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    folder = ws.rel(ws.experiment_dir)
    everything = rows(ws)
    led: dict[str, list[str]] = {}
    for row in everything:
        if row.get("group"):
            led.setdefault(row["group"], []).append(row["version"])
    out = []
    for row in everything:
        if status and row["status"] != status:
            continue
        v = row["version"]
        entry = {"version": v, "status": row["status"], "category": Version.parse(v).category, "parent": row.get("parent"),
                 "baseline": row.get("baseline"), "description": row.get("description") or "",
                 "path": f"{folder}/experiment_{v}.md"}
        if row.get("group"):
            entry.update(group=row["group"], changes=row.get("group_changes") or {})
        if v in led:
            entry["members"] = led[v]
        out.append(entry)
    return out


# -- every record's row, cached ---------------------------------------------------------------------
CACHE_FILE = "record-rows.json"
CACHE_LAYOUT = 9  # bump when _row changes what it returns


def _row(ws: Workspace, version: str) -> dict[str, Any]:
    """One record as ``report.report_rows`` takes it (a broken record is listed as broken): the
    report's seven config keys and three parts of the analysis; the config diff against the
    parent comes from the analysis, or for a record not analysed yet from both configs."""
    try:
        meta = store.read_meta(ws, version)
        found = meta.get("analysis") or {}
        changes = found.get("changes")
        parent = meta.get("parent")
        if not isinstance(changes, dict):
            changes = {}
            if parent and ws.record_path(parent).exists():
                changes = config_changes(store.read_meta(ws, parent).get("config") or {}, meta.get("config") or {})
    except RecordError as err:
        return {"version": version, "status": "broken", "description": str(err)}
    config = meta.get("config") or {}
    return {
        "version": version, "status": meta.get("status"), "description": meta.get("description"),
        "parent": parent, "baseline": meta.get("baseline"), "config": {k: config.get(k) for k in REPORT_CONFIG},
        # what the record trains (None: pretraining, which predates tasks) and the record its model starts
        # from (a fine-tuning record's ``init_from``: lineage the parent does not say)
        "task": meta.get("task") or None,
        "init_from": init if isinstance(init := config.get("init_from"), str) and init not in ("", "none") else None,
        "metrics": found.get("metrics"), "changes": changes,
        # the verdicts as the report and the tree count them (their reasons and values stay in the state)
        "verdicts": [{"verdict": x.get("verdict")} for x in found["verdicts"] if isinstance(x, dict)]
        if isinstance(found.get("verdicts"), list) else None,
        # which runs share this one's configuration but the seed (noise estimates for single runs)
        "noise_key": noise_key(config) if found.get("run_status") == "finished" and found.get("metrics") else None,
        "replicates": found.get("replicates") if isinstance(found.get("replicates"), list) else None,
        # the group a member belongs to (`groups`), and what it changes against the group's parent
        "group": str(group) if (group := groups.group_of(meta)) is not None else None,
        "group_changes": groups.changes_of(meta) if group is not None else {},
    }


def _stamp(record_path: str) -> list[int]:
    """What changes when a record changes: the size and mtime of its markdown and its state
    (plain strings and os.stat: a thousand pathlib objects cost more than the rest of a listing)."""
    out = []
    for path in (record_path, record_path[: -len(".md")] + ".state.json"):
        try:
            st = os.stat(path)
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [0, 0]
    return out


def rows(ws: Workspace, exclude: str | None = None) -> list[dict[str, Any]]:
    """Every record's row (what ``exp list``, ``exp tree`` and ``exp report`` show), sorted by
    version. Reading a record's state costs a JSON parse of its whole analysis (0.15 s for 1,000
    records); so each row is kept in ``out/.cache/`` under its files' sizes and mtimes, and only
    records that changed since are read again. ``exclude``: a version left out and not read (the
    record being analysed asks about the others; its cached row stays for the next listing to
    check)."""
    cache_path = ws.cache_dir() / CACHE_FILE
    try:
        saved = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    # rows of another layout (an older or newer expkit) are not reused
    cache = saved.get("rows") if isinstance(saved, dict) and saved.get("layout") == CACHE_LAYOUT else None
    cache = cache if isinstance(cache, dict) else {}
    fresh: dict[str, Any] = {}
    out = []
    for version, path in store.record_files(ws):
        hit = cache.get(path.name)
        if exclude is not None and str(version) == exclude:
            if hit is not None:
                fresh[path.name] = hit  # as it was: not read now, checked by the next full listing
            continue
        stamp = _stamp(str(path))
        row = hit["row"] if isinstance(hit, dict) and hit.get("stamp") == stamp else _row(ws, str(version))
        fresh[path.name] = {"stamp": stamp, "row": row}
        out.append(row)
    if fresh != cache or not (ws.cache_dir() / NOISE_FILE).exists():
        try:
            text = json.dumps({"layout": CACHE_LAYOUT, "rows": fresh}, ensure_ascii=False, separators=(",", ":"))
            atomic_write(cache_path, text)
            _write_noise_index(ws, fresh)
        except OSError:
            pass  # a read-only out/: the report is still right, only slower next time
    return out


# -- the metrics of a record's run -------------------------------------------------------------
#: summarize()'s aliases of final_loss (claim names): not stored, restored on reading.
LOSS_ALIASES = ("train_loss", "loss")


def clean_table(table: dict[str, Any]) -> dict[str, Any]:
    """The numeric, finite entries of a summarize() table, without the aliases of ``final_loss``
    (what the state keeps; a task whose ``loss`` is its own metric keeps it)."""
    aliases = LOSS_ALIASES if "final_loss" in table else ()
    return {k: v for k, v in table.items() if k not in aliases and is_finite_number(v)}


def with_aliases(table: dict[str, Any]) -> dict[str, Any]:
    """A stored table with the claim names ``train_loss`` and ``loss`` for ``final_loss``."""
    if "final_loss" in table:
        return {**table, **{k: table["final_loss"] for k in LOSS_ALIASES}}
    return dict(table)


def task_of(ws: Workspace, meta: dict[str, Any] | None) -> tasks.Task:
    """A record's task for reading its run; a declaration that no longer loads reads the run
    through a table of no metrics of its own (summary.json's numbers still count)."""
    try:
        return tasks.of(ws, meta or {})
    except ConfigError:
        return tasks.Task(name=tasks.name_of(meta or {}), metrics=(), source="unknown")


def _meta_of(ws: Workspace, version: Version | str) -> dict[str, Any]:
    return store.read_meta(ws, version) if ws.record_path(version).exists() else {}


def load_run_metrics(task: tasks.Task, path: Path) -> Metrics:
    """metrics.jsonl of a run of ``task``: a task's own series are kept besides the trainer's."""
    return load_metrics(path) if task.name == tasks.DEFAULT else load_metrics(
        path, extra=tuple(dict.fromkeys([*task.metric_names, *task.curves])))


def summarize_run(task: tasks.Task, out: Path, metrics: Metrics | None = None) -> dict[str, Any]:
    """The metrics table of one run directory of ``task`` (``metrics.summarize`` for pretraining)."""
    if task.name == tasks.DEFAULT:
        return summarize(out, metrics)
    return summarize_task(out, task.metric_names, task.curves, [m.name for m in task.metrics if m.direction == "lower"], metrics)


def run_table(ws: Workspace, version: Version | str, meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metrics table of a record's run, or None when it has no run to speak of.

    An analysed record's stored table wins (it is what its verdicts were judged on); else its
    run directory is summarised on the spot. ``meta``: the record's meta, when the caller has it."""
    if meta is None:
        if not ws.record_path(version).exists():
            return None
        meta = store.read_meta(ws, version)
    stored = (meta.get("analysis") or {}).get("metrics")
    if isinstance(stored, dict) and stored:
        return with_aliases(stored)
    if meta.get("status") in ("draft", "ready") or not meta.get("run"):
        return None
    reps = replicate_runs(ws, version, load=False, meta=meta)
    if reps:
        return with_aliases(mean_table([clean_table(t) for _, _, t in reps]))
    try:
        return with_aliases(clean_table(summarize_run(task_of(ws, meta), ws.out_dir(version))))
    except AnalysisError:
        return None


def metrics_file(ws: Workspace, version: Version | str, meta: dict[str, Any] | None = None) -> Metrics | None:
    """A record's loaded metrics.jsonl (its task's series too), or None."""
    path = ws.out_dir(version) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        m = load_run_metrics(task_of(ws, meta if meta is not None else _meta_of(ws, version)), path)
    except AnalysisError:
        return None
    return m if len(m) else None


# -- replicates and the noise of a configuration ---------------------------------------------------
#: Config keys that do not change what a run measures: runs whose configs differ only in these
#: are replicates of one configuration (their spread is the noise of its metrics).
NOISE_IGNORED = ("seed", "replicates", *PLACEMENT_KEYS)
#: A replicate's run directory inside the record's: out/experiment_V/r0/, r1/, ... (the layout the
#: replicates runner writes; a run without them is its own single replicate).
REPLICATE_DIR = re.compile(r"r\d+")


def noise_key(config: dict[str, Any]) -> str:
    """One string per configuration, the seed (and placement) aside."""
    kept = {k: v for k, v in sorted(config.items()) if k not in NOISE_IGNORED}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def replicate_dirs(ws: Workspace, version: Version | str) -> list[Path]:
    """The ``r{i}/`` run directories of a record's replicates, in replicate order ([] for a single run)."""
    out = ws.out_dir(version)
    if not out.is_dir():
        return []
    return sorted((p for p in out.iterdir() if p.is_dir() and REPLICATE_DIR.fullmatch(p.name)), key=lambda p: int(p.name[1:]))


def replicate_runs(ws: Workspace, version: Version | str, load: bool = True,
                   meta: dict[str, Any] | None = None) -> list[tuple[Path, Metrics | None, dict[str, Any]]]:
    """(directory, loaded metrics.jsonl or None, summarize() table) of each replicate that has
    results; ``load=False`` leaves the curves unloaded (a table from summary.json is enough)."""
    found = []
    dirs = replicate_dirs(ws, version)
    task = task_of(ws, meta if meta is not None else _meta_of(ws, version)) if dirs else tasks.PRETRAIN
    for sub in dirs:
        metrics = None
        if load and (sub / METRICS_FILE).is_file():
            try:
                metrics = load_run_metrics(task, sub / METRICS_FILE)
            except AnalysisError:
                metrics = None
        try:
            found.append((sub, metrics if metrics is not None and len(metrics) else None, summarize_run(task, sub, metrics)))
        except AnalysisError:
            continue
    return found


def replicate_tables(ws: Workspace, version: Version | str, meta: dict[str, Any] | None = None,
                     table: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every per-replicate metric table of a record's run: the one place replicates come from.

    An analysed record's stored ``analysis.replicates`` (kept when it had n ≥ 2) wins; else the
    ``r{i}/`` run directories under its out dir, each summarised; else the run itself is its one
    replicate (``table`` when the caller has it, else ``run_table``). [] when it has no run."""
    stored = ((meta or {}).get("analysis") or {}).get("replicates")
    if isinstance(stored, list) and stored:
        return [with_aliases(t) for t in stored if isinstance(t, dict)]
    found = [with_aliases(clean_table(t)) for _, _, t in replicate_runs(ws, version, load=False, meta=meta)]
    if found:
        return found
    one = table if table is not None else run_table(ws, version, meta)
    return [one] if one else []


def same_config_noise(ws: Workspace, version: Version | str, config: dict[str, Any],
                      tables: list[dict[str, Any]]) -> dict[str, Noise]:
    """{metric: Noise} from the analysed, finished records whose config is this one's but the seed
    (``NOISE_IGNORED``), pooled with this run's own values; a metric needs two values or more.
    O(records) through the row cache."""
    key = noise_key(config)
    siblings = _noise_siblings(ws, key, str(version))
    if siblings is None:  # the index is missing or out of date: the rows (which rebuild it) decide
        siblings = _noise_entry([r for r in rows(ws, exclude=str(version)) if r.get("noise_key") == key])
    if not siblings["versions"]:
        return {}
    out: dict[str, Noise] = {}
    metrics = {m for t in tables for m in t}
    for metric in sorted(metrics):
        values = [t[metric] for t in tables if is_finite_number(t.get(metric))]
        versions = [str(version)] if values else []
        for theirs, sibling in zip(siblings["values"].get(metric) or [], siblings["versions"]):
            if theirs:
                values += theirs
                versions.append(sibling)
        if len(values) >= 2 and len(versions) >= 2:
            sd = mean_sd(values)[1]
            if sd is not None:
                out[metric] = Noise(sd, len(values), tuple(versions))
    return out


# -- the noise index: runs of each configuration, off `exp analyze`'s path to the whole row cache ------
#: Beside the row cache, written with it: {noise key: the versions of analysed finished runs of that
#: configuration and each one's values per metric}, with every record's stamp. `exp analyze` reads
#: this small file instead of the rows of every record (and does not pool a thousand rows by hand).
NOISE_FILE = "noise-index.json"


def _noise_entry(siblings: list[dict[str, Any]]) -> dict[str, Any]:
    """{"versions": [...], "values": {metric: [[that version's finite values], ...]}} of rows."""
    versions = [r["version"] for r in siblings]
    values: dict[str, list[list[float]]] = {}
    for i, row in enumerate(siblings):
        tables = [t for t in (row.get("replicates") or [row.get("metrics") or {}]) if isinstance(t, dict)]
        for metric in {m for t in tables for m in t}:
            column = values.get(metric)
            if column is None:  # not setdefault: its default would be built for every metric of every row
                column = values[metric] = [[] for _ in versions]
            column[i] = [t[metric] for t in tables if is_finite_number(t.get(metric))]
    return {"versions": versions, "values": values}


def _write_noise_index(ws: Workspace, fresh: dict[str, Any]) -> None:
    keys: dict[str, list[dict[str, Any]]] = {}
    for entry in fresh.values():
        row = entry["row"]
        if row.get("noise_key"):
            keys.setdefault(row["noise_key"], []).append(row)
    index = {"layout": CACHE_LAYOUT, "stamps": {name: entry["stamp"] for name, entry in fresh.items()},
             "keys": {k: _noise_entry(sorted(v, key=lambda r: Version.parse(r["version"]))) for k, v in keys.items()}}
    atomic_write(ws.cache_dir() / NOISE_FILE, json.dumps(index, separators=(",", ":")))


def _noise_siblings(ws: Workspace, key: str, exclude: str) -> dict[str, Any] | None:
    """The runs of configuration ``key`` but ``exclude``, from the noise index; None when it is
    missing or any record (``exclude`` aside) changed, appeared or went since it was written."""
    try:
        index = json.loads((ws.cache_dir() / NOISE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("layout") != CACHE_LAYOUT or not isinstance(index.get("stamps"), dict):
        return None
    stamps = index["stamps"]
    skip = f"experiment_{exclude}.md"
    files = store.record_files(ws)
    if {p.name for _, p in files} - {skip} != set(stamps) - {skip}:
        return None
    for _, path in files:
        if path.name != skip and _stamp(str(path)) != stamps.get(path.name):
            return None
    entry = (index.get("keys") or {}).get(key) or {"versions": [], "values": {}}
    if exclude not in entry["versions"]:
        return entry
    i = entry["versions"].index(exclude)
    return {"versions": entry["versions"][:i] + entry["versions"][i + 1:],
            "values": {m: col[:i] + col[i + 1:] for m, col in entry["values"].items()}}
