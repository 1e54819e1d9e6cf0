"""The record's generated sections, rendered from its state through the templates.

A generated block (``info``, ``config``, ``execution``, ``environment``, ``metrics``,
``review``, and a group parent's ``group``) is a view of the record's state: ``regenerate`` renders it again from data, and
refuses when a person edited it by hand (the edit would be lost), unless asked to keep that
text aside under ``out/.discarded/`` first. Layer 4: the templates (Jinja) and the parameter
table (the config schema) are imported here, not on the read path (``exp list``, ``exp show``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import config as cfg_mod
from . import groups, store, tasks, times
from .errors import ConfigError, HandEditError
from .files import atomic_write, read_json
from .metrics import SAMPLES_FILE
from .record import GENERATED, HUMAN, Block, Record
from .render import render
from .samples import sample_quality
from .version import Version
from .workspace import Workspace

#: The record shows this many samples, each cut to this many characters (samples.json has all).
SHOWN_SAMPLES, SAMPLE_CHARS = 6, 80


def block_context(ws: Workspace, record: Record, names: tuple[str, ...] = GENERATED) -> dict[str, Any]:
    """What the generated blocks' templates see; the parameter table and the samples are built
    only when ``names`` includes the blocks that show them."""
    meta = record.meta
    version = Version.parse(str(meta["version"]))
    lang = meta.get("lang", "zh")
    config = meta.get("config") or {}
    rows: list[dict[str, Any]] = []
    if "config" in names:
        parent_cfg = None
        if meta.get("parent") and ws.record_path(meta["parent"]).exists():
            parent_cfg = store.read_meta(ws, meta["parent"]).get("config") or {}
        try:
            schema = tasks.of(ws, meta).schema
        except ConfigError:  # an unknown task: exp check says so; the table shows the keys as they are
            schema = None
        rows = cfg_mod.table_rows(config, parent_cfg, lang, schema)
    last_group = None
    for row in rows:
        row["first"] = row["group"] != last_group
        last_group = row["group"]
    analysis = meta.get("analysis") or {}
    try:
        task: tasks.Task | None = tasks.of(ws, meta)
    except ConfigError:
        task = None
    pretrain = task is None or task.name == tasks.DEFAULT
    return {
        "task": tasks.name_of(meta),
        # a task's own words for its metrics (pretraining's are in the template)
        "metric_labels": {} if pretrain else {
            **{f"best_{m.name}": f"最佳{m.label(lang)}（运行中）" if lang == "zh" else f"best {m.name} over the run"
               for m in task.metrics},
            **{m.name: m.label(lang) if lang == "zh" else m.meaning for m in task.metrics},
            "steps": "训练步数" if lang == "zh" else "training steps", "wall_s": "用时（秒）" if lang == "zh" else "wall time (s)"},
        # final_loss's aliases; a task's own ``loss`` is shown
        "hidden_metrics": ("train_loss", "loss") if pretrain else (),
        # a classifier's starting model: a pretraining record of this workspace (lineage)
        "init_from": config.get("init_from") if Version.is_valid(str(config.get("init_from"))) else None,
        "version": str(version),
        "stem": version.stem,
        "category": version.category,
        "description": meta.get("description", ""),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "created": meta.get("created", ""),
        "lang": lang,
        "script": ws.rel(ws.run_script_path(version)),
        "out": ws.rel(ws.out_dir(version)) + "/",
        "rows": rows,
        "changed": [r["key"] for r in rows if r["changed"]],
        "run": meta.get("run") or {},
        "analysis": analysis,
        "group_analysis": meta.get("group_analysis") or {},
        # a group parent's ``group`` section (grouping.analyze): its plots, linked from the record
        "group_plots": plot_links(ws, record.path, [str(p) for p in (meta.get("group_analysis") or {}).get("plots") or []])
        if record.path and "group" in names else [],
        "plots": plot_links(ws, record.path, [str(p) for p in analysis.get("plots") or []]) if record.path else [],
        # samples.json is read (and its quality computed) only for the section that shows it
        "samples": sample_rows(ws, version) if "metrics" in names and analysis and tasks.name_of(meta) == tasks.DEFAULT else [],
        # a classifier's samples.json: its most confident mistakes on the test set
        "misclassified": misclassified_rows(ws, version) if "metrics" in names and analysis and tasks.name_of(meta) == "classify" else [],
        "review": meta.get("review") or {},
        "member": member_context(ws, record) if "member" in names else None,
    }


def member_context(ws: Workspace, record: Record) -> dict[str, Any] | None:
    """What a member's ``member`` block shows: its group, what it changes, and each human section
    as it holds for the member — the parent's text, quoted, or a note that the member wrote its own."""
    parent = groups.group_of(record.meta)
    if parent is None:
        return None
    exists = ws.record_path(parent).exists()
    sections = []
    # a skeleton (exp sweep) has no sections yet: each is its parent's
    effective = groups.effective_human(ws, record) if exists else {}
    for name in HUMAN:
        entry = effective.get(name)
        own = entry is None or entry["from"] != str(parent)
        text = "" if own else entry["text"].strip("\n")
        sections.append({"name": name, "own": own, "filled": groups.is_filled(text) if not own else True,
                         "quoted": [("> " + line).rstrip() for line in text.split("\n")] if text else []})
    return {
        "parent": str(parent),
        "exists": exists,
        "path": os.path.relpath(ws.record_path(parent), record.path.parent).replace(os.sep, "/") if record.path else "",
        "changes": groups.changes_of(record.meta),
        "sections": sections,
    }


def render_block(ws: Workspace, record: Record, name: str, context: dict[str, Any] | None = None) -> str:
    ctx = context or block_context(ws, record)
    text = render(ws.templates_dir, f"{ctx['lang']}/blocks/{name}.md.j2", r=ctx)
    return text if text.endswith("\n") else text + "\n"


def hand_edit_error(ws: Workspace, record: Record, block: Block) -> HandEditError:
    v = record.meta.get("version")
    return HandEditError(
        f"{ws.rel(record.path) if record.path else 'record'}:{block.line}: the generated section "
        f"'{block.name}' was edited by hand and would be overwritten; make the change with "
        f"`exp set {v} KEY=VALUE` instead (to drop the hand edit, `exp set {v} --regenerate` saves it under out/.discarded/ first)"
    )


def regenerate(ws: Workspace, record: Record, names: tuple[str, ...] = GENERATED, discard: bool = False) -> list[Path]:
    """Render generated blocks again from the state. Refuses (HandEditError) if one was edited
    by hand, unless ``discard``, in which case the edited text is saved first; returns those files."""
    saved: list[Path] = []
    if discard and "group" not in names and record.block("generated", "group") is not None and record.meta.get("group_analysis"):
        names = (*names, "group")  # `exp set --regenerate` restores a group parent's section too
    edited = {b.name: b for b in record.edited_generated()}
    for name in names:
        if name in edited:
            if not discard:
                raise hand_edit_error(ws, record, edited[name])
            saved.append(_save_discarded(ws, record, edited[name]))
    ctx = block_context(ws, record, names)
    for name in names:
        if record.block("generated", name) is not None:
            record.set_generated(name, render_block(ws, record, name, ctx))
    return saved


def regenerate_quietly(ws: Workspace, record: Record, names: tuple[str, ...]) -> str | None:
    """``regenerate`` for a run's own bookkeeping: the data is in the state either way; a hand
    edit is left for ``exp check`` to report. Returns the warning, if any."""
    try:
        regenerate(ws, record, names)
    except HandEditError as err:
        return str(err)
    return None


def _save_discarded(ws: Workspace, record: Record, block: Block) -> Path:
    path = ws.discarded_dir() / f"experiment_{record.meta.get('version')}.{block.name}.{times.stamp()}.md"
    atomic_write(path, block.content)
    return path


def plot_links(ws: Workspace, record_path: Path, plots: list[str]) -> list[dict[str, str]]:
    """The plots as markdown-relative links from the record's directory."""
    out = []
    for p in plots:
        target = ws.root / p
        out.append({"name": Path(p).stem, "href": os.path.relpath(target, record_path.parent).replace(os.sep, "/")})
    return out


def samples_with_quality(raw: Any, quality: dict[str, Any] | None) -> list[dict[str, Any]]:
    """samples.json's samples, each with its quality figures (``samples.sample_quality``)."""
    items = raw.get("samples", []) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    per = (quality or {}).get("samples") or []
    out = []
    for item, q in zip([i for i in items if isinstance(i, (dict, str))], per):
        entry = ({"prompt": item.get("prompt"), "completion": item.get("completion", item.get("text"))}
                 if isinstance(item, dict) else {"prompt": None, "completion": item})
        entry.update({k: q.get(k) for k in ("mode", "tokens", "distinct_1", "distinct_2", "repetition_rate")})
        out.append(entry)
    return out


def misclassified_rows(ws: Workspace, version: Version | str) -> list[dict[str, Any]]:
    """A classifier's most confident mistakes (samples.json's ``misclassified``), text cut short."""
    raw = read_json(ws.out_dir(version) / SAMPLES_FILE)
    items = raw.get("misclassified") if isinstance(raw, dict) else None
    rows = []
    for item in (items if isinstance(items, list) else [])[:SHOWN_SAMPLES]:
        if not isinstance(item, dict):
            continue
        text = " ".join(str(item.get("text") or "").split())
        rows.append({"text": text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…",
                     "label": str(item.get("label", "")), "predicted": str(item.get("predicted", "")),
                     "confidence": item.get("confidence")})
    return rows


def sample_rows(ws: Workspace, version: Version | str) -> list[dict[str, Any]]:
    """The run's samples for the record's metrics section: prompt, the completion cut short,
    and its quality figures."""
    raw = read_json(ws.out_dir(version) / SAMPLES_FILE)
    if not raw:
        return []
    rows = samples_with_quality(raw, sample_quality(raw))[:SHOWN_SAMPLES]
    for r in rows:
        text = " ".join(str(r.get("completion") or "").split())
        r["completion"] = text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"
    return rows
