"""The read side of the records: ``exp list``, ``exp show``, and a record's run table.

Fast on purpose: a listing reads each record's state (JSON), never the markdown, and nothing
here imports the config schema, the templates or YAML (``exp list`` over 1,000 records and
``exp show`` must start in a fraction of a second).
"""

from __future__ import annotations

from typing import Any

from . import approval, commit, records, store
from . import claims as claims_mod
from .comparison import config_changes
from .errors import UsageError
from .metrics import METRICS_FILE, AnalysisError, Metrics, load_metrics, summarize
from .numbers import is_finite_number
from .record import HUMAN, REQUIRED_META, sha256
from .status import STATUSES, next_step
from .version import Version
from .workspace import Workspace


def describe(ws: Workspace, version: Version) -> dict[str, Any]:
    """``exp show``: the record's state, human sections, claims, config changes and next step."""
    record = records.load(ws, version)
    meta = record.meta
    sections = {name: (record.block("human", name).text if record.block("human", name) else "") for name in HUMAN}
    expected = record.block("human", "expected")
    found = claims_mod.parse_claims(expected.text, expected.first_content_line)[0] if expected else []
    parent = meta.get("parent")
    changed = (config_changes(store.read_meta(ws, parent).get("config") or {}, meta.get("config") or {})
               if parent and ws.record_path(parent).exists() else {})
    warnings = []
    prereg = (meta.get("prereg") or {}).get("sections") or {}
    changed_sections = [n for n, d in prereg.items() if n in sections and sha256(sections[n]) != d]
    if changed_sections:
        warnings.append(f"changed after the run started (pre-registration): {', '.join(changed_sections)}")
    if record.edited_generated():
        warnings.append(f"hand-edited generated sections: {', '.join(b.name for b in record.edited_generated())}")
    stale = approval.stale_approval_problem(ws, record)
    if stale:
        warnings.append(stale)
    nxt = next_step(record.status, str(version))
    if record.status in ("draft", "ready") and parent and not changed and version.category == "validation":
        nxt = f"set the variable under test: `exp set {version} KEY=VALUE` (its config is still {parent}'s)"
        warnings.append(f"the config is the same as {parent}'s: nothing is under test yet")
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
            "claims": [c.to_dict() for c in found],
            "changed_from_parent": changed,
            "prereg_changed": changed_sections,
            "warnings": warnings,
        }
    )
    for key in ("run", "analysis", "review"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    analysis = meta.get("analysis") or {}
    info["verdicts"] = [
        {k: x.get(k) for k in ("claim", "verdict", "observed", "reference", "reason", "metric")}
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
    rows = []
    for e in store.entries(ws):
        if status and e.status != status:
            continue
        rows.append(
            {
                "version": str(e.version),
                "status": e.status,
                "category": e.version.category,
                "parent": e.meta.get("parent"),
                "baseline": e.meta.get("baseline"),
                "description": e.error or e.meta.get("description", ""),
                "path": ws.rel(e.path),
            }
        )
    return rows


# -- the metrics of a record's run -------------------------------------------------------------
#: summarize()'s aliases of final_loss (claim names): not stored, restored on reading.
LOSS_ALIASES = ("train_loss", "loss")


def clean_table(table: dict[str, Any]) -> dict[str, Any]:
    """The numeric, finite entries of a summarize() table, without the aliases (what the state keeps)."""
    return {k: v for k, v in table.items() if k not in LOSS_ALIASES and is_finite_number(v)}


def with_aliases(table: dict[str, Any]) -> dict[str, Any]:
    """A stored table with the claim names ``train_loss`` and ``loss`` for ``final_loss``."""
    if "final_loss" in table:
        return {**table, **{k: table["final_loss"] for k in LOSS_ALIASES}}
    return dict(table)


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
    try:
        return with_aliases(clean_table(summarize(ws.out_dir(version))))
    except AnalysisError:
        return None


def metrics_file(ws: Workspace, version: Version | str) -> Metrics | None:
    """A record's loaded metrics.jsonl, or None."""
    path = ws.out_dir(version) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        m = load_metrics(path)
    except AnalysisError:
        return None
    return m if len(m) else None
