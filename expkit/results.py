"""A record's results: ``exp analyze``, ``exp context``, ``exp fill``, the evidence check.

``analysis`` computes from files and plain dicts; this module decides which files belong to a
record (its run directory, its parent's and baseline's runs) and writes what was found: the
generated ``metrics`` section, drafts of the ai sections, ``meta.analysis`` in the front
matter, and ``analysis.json``, ``metrics_summary.json`` and ``plots/*.png`` in the run's
``out/`` directory. Human sections are never touched: only ``set_generated`` and the ai
blocks' ``set_text`` write, inside ``store.update`` (lock, then atomic replace).

An ai section is (re)drafted only while it still holds the template's hint or exactly the
text ``exp analyze`` drafted last time (its digest is kept in ``meta.analysis.drafts``): prose
refined with ``exp fill`` or an editor survives a re-analysis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import record as rec_mod
from . import store
from .errors import ExpError, RecordError, UsageError
from .record import Record
from .version import Version
from .workspace import Workspace

#: Statuses a run has ended in (or been analysed in already) — what ``exp analyze`` accepts.
#: Not ``approved``: a re-analysis would void the approval (edit nothing; run ``exp review``).
ANALYZABLE = ("finished", "failed", "interrupted", "analyzed", "changes_requested")
#: ``exp fill`` writes prose only after a run and before the approval.
FILLABLE = ANALYZABLE
PLOTS = "plots"
ANALYSIS_FILE = "analysis.json"
METRICS_SUMMARY_FILE = "metrics_summary.json"
#: Metrics whose deltas against the parent/baseline are kept in the front matter.
DELTA_KEYS = ("final_loss", "val_loss", "best_val_loss", "val_ppl", "tokens_per_s", "wall_s", "distinct_2", "repetition_rate")
#: The front matter keeps at most this many anomalies (analysis.json keeps them all).
META_ANOMALIES = 20
#: Parts of meta.run that are not evidence for the analysis' numbers. The start and end
#: timestamps are not either: the text check masks dates and times anyway, so their digits
#: (year, month, day, minute, second) would only let unrelated numbers such as "47%" pass.
_RUN_NOT_EVIDENCE = ("log_tail", "token", "started", "ended")
#: Parts of meta.analysis that are not evidence: bookkeeping (the drafts' hex digests would
#: yield stray numbers) and the analysis' own timestamp (see _RUN_NOT_EVIDENCE).
_ANALYSIS_NOT_EVIDENCE = ("untraceable", "drafts", "analyzed_at")


# -- the metrics of a record's run -------------------------------------------------------------
#: summarize()'s aliases of final_loss (claim names): not stored, restored on reading.
ALIASES = ("train_loss", "loss")


def clean_table(table: dict[str, Any]) -> dict[str, Any]:
    """The numeric, finite entries of a summarize() table, without the aliases (what the front
    matter keeps)."""
    from .analysis import is_finite_number

    return {k: v for k, v in table.items() if k not in ALIASES and is_finite_number(v)}


def with_aliases(table: dict[str, Any]) -> dict[str, Any]:
    """A stored table with the claim names ``train_loss`` and ``loss`` for ``final_loss``."""
    if "final_loss" in table:
        return {**table, **{k: table["final_loss"] for k in ALIASES}}
    return dict(table)


def run_table(ws: Workspace, version: Version | str, meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metrics table of a record's run, or None when it has no run to speak of.

    An analysed record's stored table wins (it is what its verdicts were judged on); else its
    run directory is summarised on the spot. ``meta``: the record's front matter, when the
    caller has read it already."""
    from . import analysis

    if meta is None:
        path = ws.record_path(version)
        if not path.exists():
            return None
        meta = rec_mod.read_meta(path)
    stored = (meta.get("analysis") or {}).get("metrics")
    if isinstance(stored, dict) and stored:
        return with_aliases(stored)
    if meta.get("status") in ("draft", "ready") or not meta.get("run"):
        return None
    try:
        return with_aliases(clean_table(analysis.summarize(ws.out_dir(Version.parse(str(version))))))
    except analysis.AnalysisError:
        return None


def metrics_file(ws: Workspace, version: Version | str):
    """A record's loaded metrics.jsonl, or None."""
    from . import analysis

    path = ws.out_dir(Version.parse(str(version))) / analysis.METRICS_FILE
    if not path.is_file():
        return None
    try:
        m = analysis.load_metrics(path)
    except analysis.AnalysisError:
        return None
    return m if len(m) else None


def _references(ws: Workspace, record: Record) -> dict[str, dict[str, Any]]:
    """{"parent": {...}, "baseline": {...}} for the references the record names."""
    out: dict[str, dict[str, Any]] = {}
    config = record.meta.get("config") or {}
    for role in ("parent", "baseline"):
        ref = record.meta.get(role)
        if not ref:
            continue
        entry: dict[str, Any] = {"version": str(ref), "has_run": False}
        diff = store.config_diff(ws, ref, config)
        if diff is None:
            entry["missing"] = True
        else:
            entry["config_diff"] = diff
            table = run_table(ws, ref)
            entry["has_run"] = table is not None
            entry["table"] = table
        out[role] = entry
    return out


# -- computing an analysis (no files written) ----------------------------------------------------
def compute(ws: Workspace, record: Record) -> dict[str, Any]:
    """Everything ``exp analyze`` finds for a record, as JSON-safe data; writes nothing.

    Raises AnalysisError (one line) when the run has left no results at all."""
    from . import analysis
    from . import claims as claims_mod

    meta = record.meta
    v = record.version
    lang = meta.get("lang", "zh")
    out = ws.out_dir(v)
    if not out.is_dir():
        raise analysis.AnalysisError(f"{store._rel(ws, out)}/ does not exist: {v} has no run outputs; `exp run {v}` first")
    metrics = metrics_file(ws, v)
    summary = _read_json(out / analysis.SUMMARY_FILE)
    if metrics is None and not (isinstance(summary, dict) and summary):
        # summarize() would reload a metrics.jsonl without one complete line (a run killed
        # before its first log line) as an empty curve and "analyse" an empty table
        raise analysis.AnalysisError(
            f"{store._rel(ws, out)}/: neither {analysis.SUMMARY_FILE} nor {analysis.METRICS_FILE} with a complete line "
            f"(the run has written no results); `exp run {v}` first"
        )
    table = analysis.summarize(out, metrics)
    notes = list(table.pop("notes", []))
    trainer_status = table.pop("status", None)
    run = meta.get("run") or {}
    run_status = run.get("status") or trainer_status or "unknown"
    config = meta.get("config") or {}

    anomalies = analysis.detect_anomalies(metrics, max_steps=config.get("max_steps")) if metrics is not None else []
    if metrics is None:
        notes.append("no metrics.jsonl lines: no curve, no anomaly scan")

    expected = record.block("human", "expected")
    claims = claims_mod.parse_claims(expected.text, expected.first_content_line)[0] if expected else []
    refs = _references(ws, record)
    verdicts = analysis.verdicts(
        claims, table,
        (refs.get("parent") or {}).get("table"), (refs.get("baseline") or {}).get("table"),
        run_ok=run_status == "finished",
    )
    counts = {k: sum(x.verdict == k for x in verdicts) for k in analysis.VERDICTS}

    deltas_by_label: dict[str, dict[str, Any]] = {}
    references: dict[str, Any] = {}
    for role, entry in refs.items():
        ref_meta: dict[str, Any] = {"version": entry["version"], "has_run": entry["has_run"]}
        if entry.get("missing"):
            ref_meta["missing"] = True
        if "config_diff" in entry:
            ref_meta["config_diff"] = entry["config_diff"]
        if entry.get("table"):
            deltas = analysis.metric_deltas(table, entry["table"])
            deltas_by_label[f"{role} {entry['version']}"] = deltas
            ref_meta["deltas"] = {k: deltas[k] for k in DELTA_KEYS if k in deltas}
        references[role] = ref_meta

    diagnosis, suggestions = analysis.diagnose(anomalies, verdicts, deltas_by_label, lang)
    samples_raw = _read_json(out / analysis.SAMPLES_FILE)
    quality = analysis.sample_quality(samples_raw) if samples_raw else None
    verdict_dicts = []
    for x in verdicts:
        d = x.to_dict()
        d.pop("line")  # a line of the record at analysis time: stale once the front matter grows
        if x.reason:
            d["reason"] = analysis.reason_text(x, lang)  # the record's language, like its diagnosis
        if analysis.is_finite_number(x.observed) and analysis.is_finite_number(x.reference):
            d["margin"] = x.observed - x.reference  # "1.15 above the threshold" is then traceable
        verdict_dicts.append(d)
    return {
        "analyzed_at": store.now(),
        "run_status": run_status,
        "metrics": clean_table(table),
        "verdicts": verdict_dicts,
        "verdict_counts": counts,
        "anomalies": [a.to_dict(lang) for a in anomalies],
        "references": references,
        # the config diff against the parent once more, as its own entry: `exp report` reads only
        # this part of the analysis (and seven config keys) for each of possibly 1,000 records
        "changes": (references.get("parent") or {}).get("config_diff") or {},
        "samples": _sample_figures(quality),
        "diagnosis": [f.to_dict() for f in diagnosis],
        "suggestions": [f.to_dict() for f in suggestions],
        "notes": notes,
        # not stored in the front matter (see _meta_analysis): the texts and per-sample figures,
        # and the loaded curve for the plots (loading 100k lines twice would double the cost)
        "_samples": _samples_with_quality(samples_raw, quality),
        "_metrics": metrics,
    }


def _sample_figures(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    if not quality:
        return None
    return {k: quality[k] for k in ("distinct_1", "distinct_2", "repetition_rate") if quality.get(k) is not None} or None


def _samples_with_quality(raw: Any, quality: dict[str, Any] | None) -> list[dict[str, Any]]:
    items = raw.get("samples", []) if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    per = (quality or {}).get("samples") or []
    out = []
    for item, q in zip([i for i in items if isinstance(i, (dict, str))], per):
        entry = {"prompt": item.get("prompt"), "completion": item.get("completion", item.get("text"))} if isinstance(item, dict) else {"prompt": None, "completion": item}
        entry.update({k: q.get(k) for k in ("mode", "tokens", "distinct_1", "distinct_2", "repetition_rate")})
        out.append(entry)
    return out


#: The record shows this many samples, each cut to this many characters (samples.json has all).
SHOWN_SAMPLES, SAMPLE_CHARS = 6, 80


def sample_rows(ws: Workspace, version: Version | str) -> list[dict[str, Any]]:
    """The run's samples for the record's metrics section: prompt, the completion cut short,
    and its quality figures."""
    from . import analysis

    raw = _read_json(ws.out_dir(Version.parse(str(version))) / analysis.SAMPLES_FILE)
    if not raw:
        return []
    rows = _samples_with_quality(raw, analysis.sample_quality(raw))[:SHOWN_SAMPLES]
    for r in rows:
        text = " ".join(str(r.get("completion") or "").split())
        r["completion"] = text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


# -- the evidence check --------------------------------------------------------------------------
def evidence(record: Record):
    """Every number the AI's text may cite: the analysis (metrics, verdicts, deltas, anomalies,
    findings, sample figures), the config, and the run's record (environment, timings)."""
    from . import analysis

    meta = record.meta
    found = {k: v for k, v in (meta.get("analysis") or {}).items() if k not in _ANALYSIS_NOT_EVIDENCE}
    run = {k: v for k, v in (meta.get("run") or {}).items() if k not in _RUN_NOT_EVIDENCE}
    return analysis.evidence_values(found, meta.get("config") or {}, run)


def untraceable(record: Record, ev: Any = None) -> list[dict[str, Any]]:
    """Each number in an ai section that the evidence does not explain, with its record line."""
    from . import analysis

    ev = evidence(record) if ev is None else ev
    out = []
    for name in rec_mod.AI:
        block = record.block("ai", name)
        if block is None:
            continue
        for line, number in analysis.untraceable_numbers(block.text, ev):
            out.append({"section": name, "line": block.first_content_line + line - 1, "number": number})
    return out


def store_untraceable(record: Record) -> list[dict[str, Any]]:
    """Put the untraceable numbers into ``meta.analysis`` (when analysed) with the lines they
    will have in the written file: storing them moves the body's lines, so settle in two passes."""
    analysis = record.meta.get("analysis")
    found: list[dict[str, Any]] = []
    for _ in range(3):
        if found or (analysis or {}).get("untraceable"):
            record.refresh_lines()  # only numbers carry lines; none before and none now: nothing moves
        found = untraceable(record)
        if analysis is None or analysis.get("untraceable") == found:
            break
        analysis["untraceable"] = found
    return found


def evidence_problems(record: Record) -> list:
    """``exp check``'s view of the evidence check: one error per untraceable number."""
    from .problems import Problem

    if not record.meta.get("analysis"):
        return []
    v = str(record.meta.get("version"))
    return [
        Problem(
            "error", u["line"], f"the number {u['number']} in the ai section '{u['section']}' is not in the run's evidence",
            f"cite the value as `exp context {v} --json` gives it (at the precision written), or drop the number",
        )
        for u in untraceable(record)
    ]


# -- drafting the ai sections ----------------------------------------------------------------------
_DRAFT = {
    "run": ("- Run: {status}, {steps} steps in {wall_s} s, {tokens_seen} tokens at {tokens_per_s} tokens/s.",
            "- 运行：{status}，共 {steps} 步，耗时 {wall_s} 秒，处理 {tokens_seen} 个 token，{tokens_per_s} tokens/s。"),
    "loss": ("- Loss: final train loss {final_loss}, final val loss {val_loss} (best {best_val_loss}, perplexity {val_ppl}).",
             "- 损失：最终训练损失 {final_loss}，最终验证损失 {val_loss}（最佳 {best_val_loss}，困惑度 {val_ppl}）。"),
    "claims": ("- Expected results: {confirmed} confirmed, {refuted} refuted, {inconclusive} inconclusive (table above).",
               "- 预期结果：{confirmed} 条成立，{refuted} 条不成立，{inconclusive} 条无法判定（见上表）。"),
    "no_claims": ("- No machine-checkable expected result: judge the hypothesis from the figures above.",
                  "- 没有可自动检验的预期结果：请根据上面的数字判断假设。"),
    # zh: a space between the version and 相比, as the config section writes "与父实验 X.Y.Z 相比"
    "delta": ("- Against {label}: val_loss {value} vs {reference} ({abs}, {rel}); tokens/s {tps} vs {tps_ref}.",
              "- 与{label} 相比：val_loss {value} 对 {reference}（{abs}，{rel}）；tokens/s {tps} 对 {tps_ref}。"),
    "samples": ("- Samples: distinct-1 {distinct_1}, distinct-2 {distinct_2}, repetition rate {repetition_rate}.",
                "- 生成样本：distinct-1 {distinct_1}，distinct-2 {distinct_2}，重复率 {repetition_rate}。"),
    "next": ("- Next: `exp new NEXT --from {version}` to test the most promising suggestion, one change at a time.",
             "- 下一步：`exp new 下一个版本 --from {version}`，每次只改一个变量，验证最有希望的建议。"),
}
_ROLE_ZH = {"parent": "父实验", "baseline": "基线"}


def _say(key: str, lang: str, **fields: Any) -> str:
    en, zh = _DRAFT[key]
    return (zh if lang == "zh" else en).format(**fields)


def drafts(result: dict[str, Any], lang: str, version: str) -> dict[str, str]:
    """Texts for the ai sections, every number written by ``format_number`` from ``result``."""
    from .analysis import format_number as num
    from .analysis import format_percent as pct

    m = result["metrics"]
    analysis_lines = [
        _say("run", lang, status=result["run_status"], steps=num(m.get("steps")), wall_s=num(m.get("wall_s")),
             tokens_seen=num(m.get("tokens_seen")), tokens_per_s=num(m.get("tokens_per_s"))),
        _say("loss", lang, final_loss=num(m.get("final_loss")), val_loss=num(m.get("val_loss")),
             best_val_loss=num(m.get("best_val_loss")), val_ppl=num(m.get("val_ppl"))),
        _say("claims", lang, **result["verdict_counts"]) if result["verdicts"] else _say("no_claims", lang),
    ]
    for role, ref in result["references"].items():
        d = ref.get("deltas") or {}
        if "val_loss" in d:
            label = f"{_ROLE_ZH[role]} {ref['version']}" if lang == "zh" else f"{role} {ref['version']}"
            tps = d.get("tokens_per_s") or {}
            analysis_lines.append(_say(
                "delta", lang, label=label, value=num(d["val_loss"]["value"]), reference=num(d["val_loss"]["reference"]),
                abs=num(d["val_loss"]["abs"], signed=True), rel=pct(d["val_loss"]["rel"], signed=True),
                tps=num(tps.get("value")), tps_ref=num(tps.get("reference")),
            ))
    if result.get("samples"):
        s = result["samples"]
        analysis_lines.append(_say("samples", lang, **{k: num(s.get(k)) for k in ("distinct_1", "distinct_2", "repetition_rate")}))
    suggestions = [f["text"] for f in result["suggestions"]] + [_say("next", lang, version=version)]
    return {
        "analysis": "\n".join(analysis_lines),
        "diagnosis": "\n".join(f["text"] for f in result["diagnosis"]),
        "suggestions": "\n".join(suggestions),
    }


def _untouched(block: rec_mod.Block, previous: str | None) -> bool:
    """Still the template's hint (or empty), or exactly the last draft: safe to (re)draft."""
    lines = [ln for ln in block.text.split("\n") if ln.strip()]
    if all(rec_mod.HINT_RE.match(ln) for ln in lines):
        return True
    return previous is not None and rec_mod.digest(block.text) == previous


# -- exp analyze ----------------------------------------------------------------------------------
def _plot_paths(ws: Workspace, v: Version) -> dict[str, Path]:
    d = ws.out_dir(v) / PLOTS
    return {"loss": d / "loss.png", "compare": d / "compare.png"}


def write_plots(ws: Workspace, record: Record, metrics: Any = None) -> list[Path]:
    """loss.png (train and val loss with the lr) and, when the parent or baseline has a run,
    compare.png (this run over theirs). Old PNGs of the run are replaced. ``metrics``: the
    run's loaded metrics.jsonl, when the caller has it."""
    from . import analysis

    v = record.version
    paths = _plot_paths(ws, v)
    metrics = metrics_file(ws, v) if metrics is None else metrics
    written = []
    for p in paths.values():
        p.unlink(missing_ok=True)
    if metrics is None:
        return written
    desc = " ".join(str(record.meta.get("description") or "").split())
    # the charts' font has no CJK glyphs: a Chinese description would print as boxes
    title = f"{v} {desc}".strip() if desc.isascii() else str(v)
    written.append(analysis.plot_run(metrics, paths["loss"], title=title))
    overlays = {}
    for role in ("parent", "baseline"):
        ref = record.meta.get(role)
        if ref and str(ref) != str(v) and not any(label.endswith(f" {ref}") for label in overlays):
            other = metrics_file(ws, ref)
            if other is not None:
                overlays[f"{role} {ref}"] = other
    if overlays:
        runs = {f"this {v}": metrics, **overlays}
        written.append(analysis.plot_compare(runs, paths["compare"], title=f"{v} vs " + ", ".join(overlays)))
    return written


def _meta_analysis(result: dict[str, Any], plots: list[str], drafted: dict[str, str]) -> dict[str, Any]:
    keep = {k: v for k, v in result.items() if not k.startswith("_")}
    if len(keep["anomalies"]) > META_ANOMALIES:
        keep["anomalies_total"] = len(keep["anomalies"])
        keep["anomalies"] = keep["anomalies"][:META_ANOMALIES]
    for key in ("samples",):
        if keep.get(key) is None:
            keep.pop(key)
    keep["plots"] = plots
    keep["drafts"] = drafted
    return keep


def analyze(ws: Workspace, version: Version) -> dict[str, Any]:
    """``exp analyze``: compute, plot, then write the record and out/'s analysis files."""
    record = store.load(ws, version)
    rec_mod.require_status(record, ANALYZABLE, "analyze")
    edited = [b for b in record.edited_generated() if b.name == "metrics"]
    if edited:  # refuse before anything is written, plots included
        raise store.hand_edit_error(ws, record, edited[0])
    result = compute(ws, record)
    lang = record.meta.get("lang", "zh")
    texts = drafts(result, lang, str(version))
    plots = [store._rel(ws, p) for p in write_plots(ws, record, result["_metrics"])]
    out = ws.out_dir(version)

    kept: list[str] = []
    drafted_names: list[str] = []
    with store.update(ws, version) as rec:
        rec_mod.require_status(rec, ANALYZABLE, "analyze")
        previous = ((rec.meta.get("analysis") or {}).get("drafts")) or {}
        digests: dict[str, str] = {}
        for name in rec_mod.AI:
            block = rec.block("ai", name)
            if block is None:
                continue
            if _untouched(block, previous.get(name)):
                block.set_text(texts[name])
                digests[name] = rec_mod.digest(block.text)
                drafted_names.append(name)
            else:
                kept.append(name)
                if name in previous:
                    digests[name] = previous[name]
        rec.meta["analysis"] = _meta_analysis(result, plots, digests)
        rec.set_status("analyzed")
        store.regenerate_blocks(ws, rec, ("metrics",))  # refuses (nothing written) if hand-edited
        store_untraceable(rec)
        meta_analysis = rec.meta["analysis"]
    full = {"version": str(version), **{k: v for k, v in result.items() if not k.startswith("_")},
            "samples_detail": result["_samples"], "plots": plots, "untraceable": meta_analysis["untraceable"]}
    store.atomic_write(out / ANALYSIS_FILE, json.dumps(full, ensure_ascii=False, indent=2) + "\n")
    store.atomic_write(out / METRICS_SUMMARY_FILE, json.dumps(result["metrics"], ensure_ascii=False, indent=2) + "\n")
    return {
        "version": str(version),
        "status": "analyzed",
        "path": store._rel(ws, ws.record_path(version)),
        "metrics": result["metrics"],
        "verdicts": result["verdicts"],
        "verdict_counts": result["verdict_counts"],
        "anomalies": result["anomalies"],
        "untraceable": meta_analysis["untraceable"],
        "plots": plots,
        "drafted": drafted_names,
        "kept": kept,
        "notes": result["notes"],
        "files": [store._rel(ws, out / ANALYSIS_FILE), store._rel(ws, out / METRICS_SUMMARY_FILE)],
    }


def plot_links(ws: Workspace, record_path: Path, plots: list[str]) -> list[dict[str, str]]:
    """The plots as markdown-relative links from the record's directory."""
    out = []
    for p in plots:
        target = ws.root / p
        out.append({"name": Path(p).stem, "href": os.path.relpath(target, record_path.parent).replace(os.sep, "/")})
    return out


# -- exp fill -------------------------------------------------------------------------------------
def fill(ws: Workspace, version: Version, section: str, text: str) -> dict[str, Any]:
    """Write prose into an ai section; human and generated sections are refused, untouched."""
    if section in rec_mod.HUMAN:
        raise RecordError(
            f"'{section}' is a human section: only a person writes it, in the record itself; "
            f"`exp fill` writes the ai sections ({', '.join(rec_mod.AI)})"
        )
    if section in store.GENERATED:
        raise RecordError(
            f"'{section}' is generated from data by the tool (`exp set`, `exp analyze`); "
            f"`exp fill` writes the ai sections ({', '.join(rec_mod.AI)})"
        )
    if section not in rec_mod.AI:
        raise UsageError(f"no section {section!r}; `exp fill` writes one of: {', '.join(rec_mod.AI)}")
    text = text.replace("\r\n", "\n").rstrip("\n")
    if not text.strip():
        raise UsageError("the text is empty; nothing was written (give the prose with --file F, or - for stdin)")
    with store.update(ws, version) as rec:
        rec_mod.require_status(rec, FILLABLE, f"fill the {section} of")
        block = rec.require_block("ai", section)
        block.set_text(text)
        found = store_untraceable(rec)
    analyzed = rec.meta.get("analysis") is not None
    # before the analysis the evidence lacks the run's metrics: every loss would be "untraceable"
    # while the CLI says the numbers cannot be checked yet (exp check skips them too)
    mine = [u for u in found if u["section"] == section] if analyzed else []
    return {"version": str(version), "section": section, "path": store._rel(ws, ws.record_path(version)),
            "untraceable": mine, "analyzed": analyzed}


# -- exp context ----------------------------------------------------------------------------------
def context(ws: Workspace, version: Version) -> dict[str, Any]:
    """What an assistant needs to write or check the analysis, in one JSON object."""
    record = store.load(ws, version)
    meta = record.meta
    v = record.version
    out = ws.out_dir(v)
    sections = {}
    for b in record.blocks():
        sections[b.name] = {"kind": b.kind, "line": b.first_content_line, "text": b.text}
    stored = meta.get("analysis")
    live = None
    if stored is None and out.is_dir() and meta.get("run"):
        try:
            live = compute(ws, record)
        except ExpError as err:  # AnalysisError: say why, still give the rest
            live = {"error": str(err)}
    analysis_data = stored if stored is not None else ({k: x for k, x in live.items() if not k.startswith("_")} if live else None)
    full = _read_json(out / ANALYSIS_FILE) or {}
    samples = full.get("samples_detail") or (live or {}).get("_samples") or _samples_with_quality(_read_json(out / "samples.json"), None)
    parent_diff = store.config_diff(ws, meta["parent"], meta.get("config") or {}) if meta.get("parent") else None
    paths = {
        "record": store._rel(ws, record.path),
        "script": store._rel(ws, ws.run_script_path(v)),
        "out": store._rel(ws, out),
        "metrics": store._rel(ws, out / "metrics.jsonl"),
        "summary": store._rel(ws, out / "summary.json"),
        "samples": store._rel(ws, out / "samples.json"),
        "analysis": store._rel(ws, out / ANALYSIS_FILE),
        "plots": list((analysis_data or {}).get("plots") or []),
    }
    return {
        "version": str(v),
        "status": record.status,
        "description": meta.get("description", ""),
        "lang": meta.get("lang", "zh"),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "analyzed": stored is not None,
        "sections": sections,
        "writable_sections": list(rec_mod.AI),
        "config": meta.get("config") or {},
        "diff_from_parent": parent_diff,
        "run": {k: x for k, x in (meta.get("run") or {}).items() if k != "token"},
        "metrics": (analysis_data or {}).get("metrics"),
        "verdicts": (analysis_data or {}).get("verdicts") or [],
        "anomalies": (analysis_data or {}).get("anomalies") or [],
        "references": (analysis_data or {}).get("references") or {},
        "diagnosis": (analysis_data or {}).get("diagnosis") or [],
        "suggestions": (analysis_data or {}).get("suggestions") or [],
        "samples": samples,
        "sample_quality": (analysis_data or {}).get("samples"),
        "untraceable": untraceable(record) if stored is not None else [],
        "error": (live or {}).get("error") if isinstance(live, dict) else None,
        "paths": paths,
        "rules": {
            "numbers": "every number in an ai section must equal, at the precision written, a value in this "
                       "object's metrics, verdicts, references, anomalies, config or run; versions and list numbering excepted",
            "write": f"exp fill {v} SECTION --file F (SECTION: {', '.join(rec_mod.AI)}); human sections are the person's",
            "after": f"stop and ask a person to run `exp review {v}`",
        },
        "generated_at": store.now(),
    }
