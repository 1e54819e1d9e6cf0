"""A record's results: ``exp analyze``, ``exp context``, ``exp fill``, and the evidence check.

The pure modules compute (``metrics``, ``anomalies``, ``verdicts``, ``comparison``,
``diagnosis``, ``samples``, ``plots``); this one decides which files belong to a record (its
run directory, its parent's and baseline's runs) and writes what was found: the generated
``metrics`` section, drafts of the ai sections, ``analysis`` in the record's state, and
``analysis.json``, ``metrics_summary.json``, ``plots/*.png`` and ``curves.json`` (the curves
``exp site`` draws, thinned once) in the run's ``out/`` directory. Human sections are never touched.

An ai section is (re)drafted only while it still holds the template's hint or exactly the
text ``exp analyze`` drafted last time (its digest is kept in ``analysis.drafts``): prose
written with ``exp fill`` or in an editor survives a re-analysis. An analysis of a run that
did not finish (interrupted, failed) is *partial* and says so; the run may still be resumed.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import claims as claims_mod
from . import citations, groups, pages, records, store, times, view
from . import evidence as evidence_mod
from .catalog import (
    clean_table,
    metrics_file,
    replicate_runs,
    replicate_tables,
    run_table,
    same_config_noise,
    summarize_run,
    task_of,
    with_aliases,
)
from .anomalies import DEFAULT_THRESHOLDS, detect_anomalies, prediction_anomalies
from .comparison import config_changes, metric_deltas
from .diagnosis import diagnose, reason_text
from .errors import ExpError, RecordError, UsageError
from .files import atomic_write, read_json, write_json
from .metrics import METRICS_FILE, SAMPLES_FILE, SUMMARY_FILE, AnalysisError, Metrics
from .names import CURVES_FILE
from .numbers import format_number as num
from .numbers import format_percent as pct
from .numbers import is_finite_number
from .plots import plot_compare, plot_metrics, plot_run
from .problem import Problem
from .record import AI, GENERATED, HINT_RE, HUMAN, Block, Record, digest
from .replicates import mean_curve, mean_table
from .replicates import stats as replicate_stats
from .samples import MIN_TOKENS, sample_quality
from .status import require_status, transition
from .verdicts import ENVIRONMENT_DIFFERS, VERDICTS, WITHIN_NOISE, verdict_kind, verdicts
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
#: The state keeps at most this many anomalies (analysis.json keeps them all).
META_ANOMALIES = 20


def _references(ws: Workspace, record: Record) -> dict[str, dict[str, Any]]:
    """{"parent": {...}, "baseline": {...}} for the references the record names."""
    out: dict[str, dict[str, Any]] = {}
    config = record.meta.get("config") or {}
    for role in ("parent", "baseline"):
        ref = record.meta.get(role)
        if not ref:
            continue
        entry: dict[str, Any] = {"version": str(ref), "has_run": False}
        if not ws.record_path(ref).exists():
            entry["missing"] = True
        else:
            ref_meta = store.read_meta(ws, ref)
            entry["config_diff"] = config_changes(ref_meta.get("config") or {}, config)
            table = run_table(ws, ref, ref_meta)
            entry["has_run"] = table is not None
            entry["table"] = table
            entry["replicates"] = replicate_tables(ws, ref, ref_meta, table) if table is not None else []
            entry["load"] = _load_of(ws, ref, ref_meta)
        out[role] = entry
    return out


def _load_of(ws: Workspace, version: Version | str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The machine load a record's run ran under: its analysis' copy, else its summary.json's."""
    load = (meta.get("analysis") or {}).get("load")
    if not isinstance(load, dict):
        summary = read_json(ws.out_dir(version) / SUMMARY_FILE)
        load = summary.get("load") if isinstance(summary, dict) else None
    return load if isinstance(load, dict) else None


# -- computing an analysis (no files written) ----------------------------------------------------
def _partial(run: dict[str, Any], run_status: str, steps: Any, max_steps: Any) -> dict[str, Any] | None:
    """Why an analysis is partial (the run did not finish), or None for a finished run."""
    if run_status == "finished":
        return None
    return {"run_status": run_status, "steps": steps, "max_steps": max_steps,
            "resumable": run_status in ("interrupted", "failed")}


def compute(ws: Workspace, record: Record) -> dict[str, Any]:
    """Everything ``exp analyze`` finds for a record, as JSON-safe data; writes nothing.

    Raises AnalysisError (one line) when the run has left no results at all."""
    meta = record.meta
    v = record.version
    lang = meta.get("lang", "zh")
    out = ws.out_dir(v)
    if not out.is_dir():
        raise AnalysisError(f"{ws.rel(out)}/ does not exist: {v} has no run outputs; `exp run {v}` first")
    task = task_of(ws, meta)
    metrics = metrics_file(ws, v, meta)
    summary = read_json(out / SUMMARY_FILE)
    reps = replicate_runs(ws, v, meta=meta)
    if metrics is None and not (isinstance(summary, dict) and summary) and not reps:
        # summarize() would reload a metrics.jsonl without one complete line (a run killed
        # before its first log line) as an empty curve and "analyse" an empty table
        raise AnalysisError(
            f"{ws.rel(out)}/: neither {SUMMARY_FILE} nor {METRICS_FILE} with a complete line "
            f"(the run has written no results); `exp run {v}` first"
        )
    config = meta.get("config") or {}
    rep_curves: list[Metrics | None] = []
    if reps:
        # a replicated run: its metrics are the replicates' mean (replicates.stats says how sure)
        table = summarize_run(task, out, metrics) if metrics is not None or summary else {"notes": []}
        notes = list(table.pop("notes", []))
        table.pop("status", None)
        rep_status = [str(t.get("status")) for _, _, t in reps]
        trainer_status = "finished" if all(x == "finished" for x in rep_status) else next(
            x for x in rep_status if x != "finished")
        tables = [with_aliases(clean_table(t)) for _, _, t in reps]
        table = with_aliases({**clean_table(table), **mean_table([clean_table(t) for _, _, t in reps])})
        rep_curves = [m for _, m, _ in reps]
        metrics = metrics if metrics is not None else mean_curve([m for m in rep_curves if m is not None])
        wanted = len(groups.replicate_seeds(config))
        unfinished = [f"{d.name} ({x})" for (d, _, _), x in zip(reps, rep_status) if x != "finished"]
        if len(reps) < wanted:
            notes.append(f"{len(reps)} of {wanted} replicates have results")
        if unfinished:
            notes.append(f"replicates that did not finish: {', '.join(unfinished)}")
    else:
        table = summarize_run(task, out, metrics)
        notes = list(table.pop("notes", []))
        trainer_status = table.pop("status", None)
        tables = replicate_tables(ws, v, table=clean_table(table))
    run = meta.get("run") or {}
    run_status = run.get("status") or trainer_status or "unknown"

    if reps:
        anomalies = []
        for (d, _, _), m in zip(reps, rep_curves):
            anomalies += [(d.name, a) for a in (detect_anomalies(m, max_steps=config.get("max_steps")) if m is not None else [])]
            anomalies += [(d.name, a) for a in prediction_anomalies(read_json(d / SUMMARY_FILE))]
    else:
        anomalies = [(None, a) for a in (detect_anomalies(metrics, max_steps=config.get("max_steps")) if metrics is not None else [])]
        anomalies += [(None, a) for a in prediction_anomalies(summary if isinstance(summary, dict) else None)]
    if metrics is None:
        notes.append("no metrics.jsonl lines: no curve, no anomaly scan")

    claims = own_claims(ws, record)
    refs = _references(ws, record)
    if not isinstance(summary, dict) and reps:  # the replicates' load: the first one's summary
        summary = read_json(reps[0][0] / SUMMARY_FILE)
    load = summary.get("load") if isinstance(summary, dict) and isinstance(summary.get("load"), dict) else None
    own_base = own_baseline(task, meta, table)
    if own_base is not None:  # no baseline record: a claim's `baseline` is the task's own (the majority class)
        refs["baseline"] = {"version": OWN_BASELINE, "has_run": True, "table": own_base, "replicates": None, "own": True}
    found = verdicts(claims, table, (refs.get("parent") or {}).get("table"), (refs.get("baseline") or {}).get("table"),
                     run_ok=run_status == "finished",
                     replicates={"this": tables, **{role: e.get("replicates") for role, e in refs.items()}},
                     noise=same_config_noise(ws, v, config, tables) if len(tables) < 2 and claims else None,
                     loads={"this": load, **{role: e.get("load") for role, e in refs.items()}}, version=str(v))
    counts = {k: sum(verdict_kind(x.verdict) == k for x in found) for k in VERDICTS}

    deltas_by_label: dict[str, dict[str, Any]] = {}
    references: dict[str, Any] = {}
    for role, entry in refs.items():
        if entry.get("own"):
            own_deltas = metric_deltas({k: table[k] for k in entry["table"] if is_finite_number(table.get(k))}, entry["table"])
            references[role] = {"version": entry["version"], "own": True, "has_run": True,
                                "values": dict(entry["table"]), "deltas": own_deltas}
            continue
        ref_meta: dict[str, Any] = {"version": entry["version"], "has_run": entry["has_run"]}
        if entry.get("missing"):
            ref_meta["missing"] = True
        if "config_diff" in entry:
            ref_meta["config_diff"] = entry["config_diff"]
        if entry.get("table"):
            deltas = metric_deltas(clean_table(table), clean_table(entry["table"]))
            deltas_by_label[f"{role} {entry['version']}"] = deltas
            ref_meta["deltas"] = deltas  # every metric both runs have: what `exp compare` prints
        references[role] = ref_meta

    changes_by_label = {f"{role} {entry['version']}": list(entry.get("config_diff") or {}) for role, entry in refs.items()}
    diagnosis, suggestions = diagnose([a for _, a in anomalies], found, deltas_by_label, lang, changes_by_label)
    samples_raw = read_json(out / SAMPLES_FILE)
    if samples_raw is None and reps:
        samples_raw = read_json(reps[0][0] / SAMPLES_FILE)
    quality = sample_quality(samples_raw) if samples_raw else None
    if quality and quality.get("short"):
        notes.append(f"{quality['short']} of {quality['short'] + quality['measured']} samples stopped after fewer than "
                     f"{MIN_TOKENS} tokens: left out of distinct-1/2 and the repetition rate")
    verdict_dicts = []
    for x in found:
        d = x.to_dict()
        d.pop("line")  # a line of the record at analysis time: stale once the record grows
        d["label"] = VERDICT_LABELS[lang][x.verdict]  # what the record's table says: 成立 / confirmed
        if x.reason:
            d["reason"] = reason_text(x, lang)  # the record's language, like its diagnosis
        if is_finite_number(x.observed) and is_finite_number(x.reference):
            d["margin"] = x.observed - x.reference  # "1.15 above the threshold" is then traceable
        verdict_dicts.append(d)
    result = {
        "analyzed_at": times.now(),
        **({"task": task.name, "primary": task.primary, "task_metrics": list(task.metric_names),
            **({"monitor": config["monitor"]} if isinstance(config.get("monitor"), str) else {})}
           if task.name != "pretrain" else {}),
        "run_status": run_status,
        "metrics": clean_table(table),
        "verdicts": verdict_dicts,
        "verdict_counts": counts,
        # the per-replicate tables when there are several (catalog.replicate_tables reads them back)
        **({"replicates": [clean_table(t) for t in tables],
            "replicate_stats": replicate_stats([clean_table(t) for t in tables])} if len(tables) > 1 else {}),
        **({"load": load} if load else {}),
        "anomalies": [_tagged(a.to_dict(lang), where) for where, a in anomalies],
        "references": references,
        # the config diff against the parent once more, as its own entry: `exp report` reads only
        # this part of the analysis (and seven config keys) for each of possibly 1,000 records
        "changes": (references.get("parent") or {}).get("config_diff") or {},
        "samples": _sample_figures(quality) if task.name == "pretrain" else None,
        **({"classification": classification} if (classification := classification_of(summary, reps)) else {}),
        "diagnosis": [f.to_dict() for f in diagnosis],
        "suggestions": [f.to_dict() for f in suggestions],
        "notes": notes,
        # not stored in the state (see _stored_analysis): the texts and per-sample figures,
        # and the loaded curve for the plots (loading 100k lines twice would double the cost)
        "_samples": view.samples_with_quality(samples_raw, quality),
        "_metrics": metrics,
        "_replicate_curves": [m for m in rep_curves if m is not None],
    }
    partial = _partial(run, run_status, table.get("steps"), config.get("max_steps"))
    if partial:
        result["partial"] = partial
    return result


#: The name the analysis gives a task's own baseline (classify: the majority class, same test set).
OWN_BASELINE = "majority-class"


def own_baseline(task: Any, meta: dict[str, Any], table: dict[str, Any]) -> dict[str, Any] | None:
    """The values a claim's ``baseline`` means when the record names no baseline record and its
    task measures one in the same run (classify: ``test_macro_f1`` -> ``majority_macro_f1``)."""
    if meta.get("baseline") or not task.own_baseline:
        return None
    values = {m: table[b] for m, b in task.own_baseline.items() if is_finite_number(table.get(b))}
    return values or None


def classification_of(summary: Any, reps: list[Any]) -> dict[str, Any] | None:
    """What a classifier's record shows beyond its metrics: the label set, per-class
    precision/recall/F1/support, the confusion matrix and the majority class (summary.json's;
    a replicated run's first replicate's, named)."""
    source, where = summary, None
    if not (isinstance(source, dict) and isinstance(source.get("per_class"), dict)) and reps:
        source, where = read_json(reps[0][0] / SUMMARY_FILE), reps[0][0].name
    if not (isinstance(source, dict) and isinstance(source.get("per_class"), dict)):
        return None
    out = {k: source[k] for k in ("labels", "per_class", "confusion_matrix", "majority_label", "n_test", "best_step",
                                  "early_stop_step") if k in source}
    if where:
        out["replicate"] = where
    return out


def _tagged(anomaly: dict[str, Any], replicate: str | None) -> dict[str, Any]:
    """An anomaly of one replicate says which (``r1: loss spike ...``)."""
    if replicate is None:
        return anomaly
    return {**anomaly, "replicate": replicate, "message": f"{replicate}: {anomaly['message']}"}


def own_claims(ws: Workspace, record: Record) -> list[claims_mod.Claim]:
    """The claims a record's own run is judged on: its effective expected result (a member's
    unfilled one is its group parent's, ``groups.effective_human``), without the claims that
    name members (``METRIC@VERSION``: the group's analysis judges those)."""
    if groups.group_of(record.meta) is not None:
        text = groups.effective_human(ws, record)["expected"]["text"]
        block = record.block("human", "expected")
        first = block.first_content_line if block is not None and groups.is_filled(block.text) else 0
        found = claims_mod.parse_claims(text, first)[0] if text else []
    else:
        expected = record.block("human", "expected")
        found = claims_mod.parse_claims(expected.text, expected.first_content_line)[0] if expected else []
    return [c for c in found if not c.names_member]


def _sample_figures(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    if not quality:
        return None
    return {k: quality[k] for k in ("distinct_1", "distinct_2", "repetition_rate", "measured", "short")
            if quality.get(k) is not None} or None


# -- the evidence check --------------------------------------------------------------------------
def run_curve(metrics: Metrics | None) -> dict[str, Any]:
    """The evidence's ``curve`` of a run: every evaluation (``evidence.curve_of``) and the spread
    of its throughput over the log lines ("was the throughput stable?"), the first line left out
    (start-up, compilation)."""
    import numpy as np

    curve = evidence_mod.curve_of(_curve_rows(metrics))
    tps = metrics.tokens_per_s[1:] if metrics is not None else []
    tps = tps[np.isfinite(tps)] if len(tps) else tps
    if len(tps):
        p10, median, p90 = (float(x) for x in np.percentile(tps, [10, 50, 90]))
        curve["tokens_per_s"] = {"min": float(tps.min()), "p10": p10, "median": median, "p90": p90, "max": float(tps.max())}
    return curve


def _curve_rows(metrics: Metrics | None) -> list[dict[str, Any]]:
    """The metrics lines the evidence's curve takes: every evaluation (its val and train loss),
    and the first and last line's train loss."""
    if metrics is None or not len(metrics):
        return []
    loss_at = {int(s): float(v) for s, v in zip(metrics.step, metrics.loss)}
    rows = [{"step": int(metrics.step[0]), "loss": float(metrics.loss[0])}]
    rows += [{"step": int(s), "val_loss": float(v), **({"loss": loss_at[int(s)]} if int(s) in loss_at else {})}
             for s, v in zip(metrics.val_step, metrics.val_loss)]
    rows.append({"step": int(metrics.step[-1]), "loss": float(metrics.loss[-1])})
    return rows


VERDICT_LABELS = {"zh": {"confirmed": "成立", "refuted": "不成立", "inconclusive": "无法判定",
                         WITHIN_NOISE: "无法判定（在噪声范围内）", ENVIRONMENT_DIFFERS: "无法判定（运行环境不同）"},
                  "en": {"confirmed": "confirmed", "refuted": "refuted", "inconclusive": "inconclusive",
                         WITHIN_NOISE: WITHIN_NOISE, ENVIRONMENT_DIFFERS: ENVIRONMENT_DIFFERS}}


def _curve_of_run(ws: Workspace, version: Version | str) -> dict[str, Any] | None:
    """A run's evaluations as the evidence shapes them: from its analysis.json, else its metrics."""
    full = read_json(ws.out_dir(version) / ANALYSIS_FILE)
    if isinstance(full, dict) and isinstance(full.get("curve"), dict):
        return full["curve"]
    return run_curve(metrics_file(ws, version)) or None


def evidence(ws: Workspace, record: Record, curve: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every value the AI's text may cite (``evidence.build``): the analysis, the parameter
    breakdown and peak memory of summary.json, every validation loss along the run (kept in
    analysis.json; ``curve`` when the caller has it) and the references' own, the config and
    the run's record."""
    meta = record.meta
    out = ws.out_dir(record.version)
    analysis = dict(meta.get("analysis") or {})
    full = read_json(out / ANALYSIS_FILE)
    if not (isinstance(full, dict) and full.get("analyzed_at") == analysis.get("analyzed_at")):
        full = {}  # analysis.json of another analysis (an older one, or one being written now)
    if curve is None and isinstance(full.get("curve"), dict):
        curve = full["curve"]
    if isinstance(full.get("anomalies"), list):
        analysis["anomalies"] = full["anomalies"]  # all of them: the state keeps the first 20
    references = {}
    for role, ref in (analysis.get("references") or {}).items():
        ref = dict(ref)
        if ref.get("has_run"):  # "lower than the parent at every evaluation" needs the parent's curve
            ref["curve"] = _curve_of_run(ws, ref["version"])
        references[role] = ref
    analysis["references"] = references
    if curve is None:
        own = metrics_file(ws, record.version)
        curve = run_curve(own) if own is not None else {}  # no run (a group's parent): no numpy to import
    ev = evidence_mod.build(analysis, meta.get("config") or {}, meta.get("run") or {}, read_json(out / SUMMARY_FILE),
                            curve=curve)
    if isinstance(meta.get("group_analysis"), dict):
        ev["group"] = group_evidence(meta["group_analysis"])
    cls = analysis.get("classification")
    if isinstance(cls, dict) and isinstance(cls.get("per_class"), dict):
        # a classifier's per-class figures: "recall of 'cookie' 0.62" is then traceable
        ev["classification"] = {"per_class": {str(k): {f: x for f, x in v.items() if evidence_mod.is_scalar(x)}
                                              for k, v in cls["per_class"].items() if isinstance(v, dict)},
                                **{k: cls[k] for k in ("n_test", "best_step", "early_stop_step") if evidence_mod.is_scalar(cls.get(k))}}
    stats = analysis.get("replicate_stats")
    if isinstance(stats, dict) and stats:
        # a replicated run: each metric's n, mean, sd and 95 % interval (metrics.X is the mean)
        ev["replicates"] = {"n": len(analysis.get("replicates") or []),
                            "metrics": {k: {f: x for f, x in st.items() if evidence_mod.is_scalar(x)}
                                        for k, st in stats.items() if isinstance(st, dict)}}
    return ev


def group_evidence(ga: dict[str, Any]) -> dict[str, Any]:
    """A group's citable values (``grouping.analyze``'s result): each member's n, stats and verdict
    counts (a list in member order: a version holds dots, which a path cannot), the best member,
    the group's verdicts and counts."""
    def scalars(d: Any) -> dict[str, Any]:
        return {str(k): v for k, v in d.items() if evidence_mod.is_scalar(v)} if isinstance(d, dict) else {}

    members = []
    for m in ga.get("members") or []:
        if isinstance(m, dict):
            members.append({"version": m.get("version"), "n": m.get("n"), "label": m.get("label"),
                            "stats": {k: scalars(st) for k, st in (m.get("stats") or {}).items()},
                            "verdict_counts": scalars(m.get("verdict_counts"))})
    analysed = sum(1 for m in ga.get("members") or [] if isinstance(m, dict) and m.get("state") in ("analyzed", "partial"))
    return {"members": members, "best": scalars(ga.get("best")), "size": len(members), "analysed": analysed,
            "pending": len(ga.get("pending") or []),
            "verdicts": [scalars(x) for x in ga.get("verdicts") or [] if isinstance(x, dict)],
            "verdict_counts": scalars(ga.get("verdict_counts")), "member_verdict_counts": scalars(ga.get("member_verdict_counts"))}


def _human(record: Record) -> dict[str, str]:
    return {n: record.block("human", n).text for n in HUMAN if record.block("human", n) is not None}


def untraceable(ws: Workspace, record: Record, ev: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each number in an ai section that is neither a citation still true to the evidence nor a
    value its sentence names, with its record line and why."""
    ev = evidence(ws, record) if ev is None else ev
    human = _human(record)
    index = citations.Index(ev)
    out = []
    for name in AI:
        block = record.block("ai", name)
        if block is None:
            continue
        cited = record.ai_entry(name).get("citations") or ()
        for f in citations.check(block.text, ev, cited, human, index):
            out.append({"section": name, "line": block.first_content_line + f.line - 1, "number": f.number, "reason": f.reason})
    return out


def evidence_problems(ws: Workspace, record: Record) -> list[Problem]:
    """``exp check``'s view of the evidence check: one error per untraceable number."""
    if not record.meta.get("analysis") and not record.meta.get("group_analysis"):
        return []
    v = str(record.meta.get("version"))
    return [
        Problem(
            "error", u["line"], f"the number {u['number']} in the ai section '{u['section']}' is not traceable: {u['reason']}",
            f"cite it as [[PATH]] with `exp fill {v} {u['section']} --file F` (`exp context {v} --json` lists the evidence), "
            "name the quantity it is, or drop it",
        )
        for u in untraceable(ws, record)
    ]


# -- drafting the ai sections ----------------------------------------------------------------------
_DRAFT = {
    "run": ("- Run: {status}, {steps} steps in {wall_s} s, {tokens_seen} tokens at {tokens_per_s} tokens/s.",
            "- 运行：{status}，共 {steps} 步，耗时 {wall_s} 秒，处理 {tokens_seen} 个 token，{tokens_per_s} tokens/s。"),
    "partial": ("- Partial analysis: the run ended {status} at step {steps} of {max_steps}; `exp run {version} --resume` "
                "continues it, and the analysis is made again when it finishes.",
                "- 部分分析：运行在第 {steps} 步（共 {max_steps} 步）以 {status} 结束；`exp run {version} --resume` "
                "可继续运行，完成后会重新分析。"),
    "loss": ("- Loss: final train loss {final_loss}, final val loss {val_loss} (best {best_val_loss}, perplexity {val_ppl}).",
             "- 损失：最终训练损失 {final_loss}，最终验证损失 {val_loss}（最佳 {best_val_loss}，困惑度 {val_ppl}）。"),
    "task_run": ("- Run: {status}, {steps} steps in {wall_s} s.", "- 运行：{status}，共 {steps} 步，耗时 {wall_s} 秒。"),
    "classify": ("- Test set: accuracy {test_acc}, macro-F1 {test_macro_f1} (weighted F1 {test_weighted_f1}); the "
                 "majority class scores accuracy {majority_acc} and macro-F1 {majority_macro_f1} on the same test set.",
                 "- 测试集：准确率 {test_acc}，宏 F1 {test_macro_f1}（加权 F1 {test_weighted_f1}）；同一测试集上多数类基线的"
                 "准确率为 {majority_acc}，宏 F1 为 {majority_macro_f1}。"),
    "classify_best": ("- Checkpoint: the best by {monitor} at step {best_step}{stopped}.",
                      "- 检查点：按 {monitor} 最佳的是第 {best_step} 步{stopped}。"),
    "stopped": (", early stop at step {step}", "，第 {step} 步提前停止"),
    "task_metrics": ("- Metrics: {pairs}.", "- 指标：{pairs}。"),
    "task_delta": ("- Against {label}: {metric} {value} vs {reference} ({abs}, {rel}).",
                   "- 与{label} 相比：{metric} {value} 对 {reference}（{abs}，{rel}）。"),
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
    m = result["metrics"]
    analysis_lines = []
    if result.get("partial"):
        p = result["partial"]
        analysis_lines.append(_say("partial", lang, status=p["run_status"], steps=num(p.get("steps")),
                                   max_steps=num(p.get("max_steps")), version=version))
    task = result.get("task") or "pretrain"
    if task == "pretrain":
        analysis_lines += [
            _say("run", lang, status=result["run_status"], steps=num(m.get("steps")), wall_s=num(m.get("wall_s")),
                 tokens_seen=num(m.get("tokens_seen")), tokens_per_s=num(m.get("tokens_per_s"))),
            _say("loss", lang, final_loss=num(m.get("final_loss")), val_loss=num(m.get("val_loss")),
                 best_val_loss=num(m.get("best_val_loss")), val_ppl=num(m.get("val_ppl"))),
        ]
    else:
        analysis_lines += _task_lines(result, lang, task)
    analysis_lines.append(_say("claims", lang, **result["verdict_counts"]) if result["verdicts"] else _say("no_claims", lang))
    for role, ref in result["references"].items():
        if task != "pretrain":
            analysis_lines += _task_delta(role, ref, result.get("primary"), lang)
            continue
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


def _task_lines(result: dict[str, Any], lang: str, task: str) -> list[str]:
    """The run and its figures in the words of a task other than pretraining."""
    m = result["metrics"]
    lines = [_say("task_run", lang, status=result["run_status"], steps=num(m.get("steps")), wall_s=num(m.get("wall_s")))]
    if task == "classify" and "test_acc" in m:
        lines.append(_say("classify", lang, **{k: num(m.get(k)) for k in ("test_acc", "test_macro_f1", "test_weighted_f1",
                                                                            "majority_acc", "majority_macro_f1")}))
        if is_finite_number(m.get("best_step")):
            stopped = _say("stopped", lang, step=num(m["early_stop_step"])) if is_finite_number(m.get("early_stop_step")) else ""
            lines.append(_say("classify_best", lang, monitor=result.get("monitor") or "val_macro_f1",
                              best_step=num(m["best_step"]), stopped=stopped))
        return lines
    names = [n for n in result.get("task_metrics") or [] if is_finite_number(m.get(n))]
    if names:
        lines.append(_say("task_metrics", lang, pairs=", ".join(f"{n} {num(m[n])}" for n in names)))
    return lines


def _task_delta(role: str, ref: dict[str, Any], metric: str | None, lang: str) -> list[str]:
    d = (ref.get("deltas") or {}).get(metric or "")
    if not d:
        return []
    label = f"{_ROLE_ZH[role]} {ref['version']}" if lang == "zh" else f"{role} {ref['version']}"
    return [_say("task_delta", lang, label=label, metric=metric, value=num(d["value"]), reference=num(d["reference"]),
                 abs=num(d["abs"], signed=True), rel=pct(d["rel"], signed=True))]


def _untouched(block: Block, previous: str | None) -> bool:
    """Still the template's hint (or empty), or exactly the last draft: safe to (re)draft."""
    lines = [ln for ln in block.text.split("\n") if ln.strip()]
    if all(HINT_RE.match(ln) for ln in lines):
        return True
    return previous is not None and digest(block.text) == previous


# -- exp analyze ----------------------------------------------------------------------------------
def write_plots(ws: Workspace, record: Record, metrics: Metrics | None = None,
                replicates: list[Metrics] | None = None) -> list[Path]:
    """loss.png (train and val loss with the lr) and, when the parent or baseline has a run,
    compare.png (this run over theirs); a plot that no longer applies is removed. Each PNG is
    written atomically, so two analyses at once leave valid files. ``metrics``: the run's
    loaded metrics.jsonl, when the caller has it."""
    v = record.version
    folder = ws.out_dir(v) / PLOTS
    paths = {"loss": folder / "loss.png", "compare": folder / "compare.png", "metrics": folder / "metrics.png"}
    task = task_of(ws, record.meta)
    metrics = metrics_file(ws, v, record.meta) if metrics is None else metrics
    written = []
    if metrics is not None:
        desc = " ".join(str(record.meta.get("description") or "").split())
        # the charts' font has no CJK glyphs: a Chinese description would print as boxes
        title = f"{v} {desc}".strip() if desc.isascii() else str(v)
        if task.name == "pretrain" or metrics.has("loss"):
            written.append(plot_run(metrics, paths["loss"], title=title, replicates=replicates or ()))
        if task.name != "pretrain":  # the task's own metrics over steps (accuracy, F1, any declared one)
            shown = [n for n in task.curves if n != "loss"]
            lower = [m.name for m in task.metrics if m.direction == "lower"]
            drawn = plot_metrics(metrics, shown, paths["metrics"], title=title, lower=lower)
            written += [drawn] if drawn is not None else []
        overlays = {}
        for role in ("parent", "baseline"):
            ref = record.meta.get(role)
            if ref and str(ref) != str(v) and not any(label.endswith(f" {ref}") for label in overlays):
                other = metrics_file(ws, ref)
                if other is not None and other.has("loss") and metrics.has("loss"):
                    overlays[f"{role} {ref}"] = other
        if overlays:
            runs = {f"this {v}": metrics, **overlays}
            written.append(plot_compare(runs, paths["compare"], title=f"{v} vs " + ", ".join(overlays)))
    for p in paths.values():
        if p not in written:
            p.unlink(missing_ok=True)
    return written


def _stored_analysis(result: dict[str, Any], plots: list[str], drafted: dict[str, str]) -> dict[str, Any]:
    keep = {k: v for k, v in result.items() if not k.startswith("_")}
    if len(keep["anomalies"]) > META_ANOMALIES:
        keep["anomalies_total"] = len(keep["anomalies"])
        keep["anomalies"] = keep["anomalies"][:META_ANOMALIES]
    if keep.get("samples") is None:
        keep.pop("samples", None)
    keep["plots"] = plots
    keep["drafts"] = drafted
    return keep


def write_curves(out: Path, task: Any) -> None:
    """The run's curves as ``exp site`` draws them, thinned once into ``out/curves.json``: a
    thousand record pages then copy them instead of thinning a thousand metrics files. The site
    uses the file only while the metrics file is the one it was thinned from (a run that goes on
    logging is read again); one that cannot be written costs the site that thinning."""
    text = pages.curves_file_text(out / METRICS_FILE, pages.drawn_series(task))
    if text is not None:
        try:
            atomic_write(out / CURVES_FILE, text, durable=False)
        except OSError:
            pass


def analyze(ws: Workspace, version: Version) -> dict[str, Any]:
    """``exp analyze``: compute, plot, then write the record and out/'s analysis files."""
    record = records.load(ws, version)
    require_status(record, ANALYZABLE, "analyze")
    edited = [b for b in record.edited_generated() if b.name == "metrics"]
    if edited:  # refuse before anything is written, plots included
        raise view.hand_edit_error(ws, record, edited[0])
    result = compute(ws, record)
    lang = record.meta.get("lang", "zh")
    texts = drafts(result, lang, str(version))
    plots = [ws.rel(p) for p in write_plots(ws, record, result["_metrics"], result["_replicate_curves"])]
    out = ws.out_dir(version)
    # the trainer's own figures (classify: the confusion matrix) are the record's plots too
    plots += [ws.rel(p) for p in sorted((out / PLOTS).glob("*.png")) if ws.rel(p) not in plots and p.name != "loss.png"
              and p.name != "compare.png" and p.name != "metrics.png"]
    curve = run_curve(result["_metrics"])

    kept: list[str] = []
    drafted_names: list[str] = []
    with records.update(ws, version) as rec:
        require_status(rec, ANALYZABLE, "analyze")
        previous = ((rec.meta.get("analysis") or {}).get("drafts")) or {}
        digests: dict[str, str] = {}
        for name in AI:
            block = rec.block("ai", name)
            if block is None:
                continue
            if _untouched(block, previous.get(name)):
                rec.set_ai(name, texts[name])
                digests[name] = digest(rec.require_block("ai", name).text)
                drafted_names.append(name)
            else:
                kept.append(name)
                if name in previous:
                    digests[name] = previous[name]
        rec.meta["analysis"] = _stored_analysis(result, plots, digests)
        transition(rec, "analyzed")
        view.regenerate(ws, rec, ("metrics",))  # refuses (nothing written) if hand-edited
        found = untraceable(ws, rec, evidence(ws, rec, curve=curve))
    full = {"version": str(version), **{k: v for k, v in result.items() if not k.startswith("_")},
            "samples_detail": result["_samples"], "plots": plots, "curve": curve, "untraceable": found}
    write_json(out / ANALYSIS_FILE, full)
    write_json(out / METRICS_SUMMARY_FILE, result["metrics"])
    write_curves(out, task_of(ws, record.meta))
    return {
        "version": str(version),
        "status": "analyzed",
        "path": ws.rel(ws.record_path(version)),
        "metrics": result["metrics"],
        "verdicts": result["verdicts"],
        "verdict_counts": result["verdict_counts"],
        "anomalies": result["anomalies"],
        "partial": result.get("partial"),
        "untraceable": found,
        "plots": plots,
        "drafted": drafted_names,
        "kept": kept,
        "notes": result["notes"],
        "files": [ws.rel(out / ANALYSIS_FILE), ws.rel(out / METRICS_SUMMARY_FILE)],
    }


# -- exp fill -------------------------------------------------------------------------------------
class UntraceableError(ExpError):
    """The text has numbers the evidence does not hold; nothing was written."""


def fill(ws: Workspace, version: Version, section: str, text: str, allow_untraceable: bool = False) -> dict[str, Any]:
    """Write prose into an ai section, its ``[[PATH]]`` / ``[[PATH:FORMAT]]`` citations resolved
    against the evidence. A number that is neither cited nor named by its sentence refuses the
    text (nothing written) unless ``allow_untraceable``. Human and generated sections are refused."""
    if section in HUMAN:
        raise RecordError(
            f"'{section}' is a human section: only a person writes it, in the record itself; "
            f"`exp fill` writes the ai sections ({', '.join(AI)})"
        )
    if section in GENERATED:
        raise RecordError(
            f"'{section}' is generated from data by the tool (`exp set`, `exp analyze`); "
            f"`exp fill` writes the ai sections ({', '.join(AI)})"
        )
    if section not in AI:
        raise UsageError(f"no section {section!r}; `exp fill` writes one of: {', '.join(AI)}")
    source = text.replace("\r\n", "\n").rstrip("\n")
    if not source.strip():
        raise UsageError("the text is empty; nothing was written (give the prose with --file F, or - for stdin)")
    with records.update(ws, version) as rec:
        require_status(rec, FILLABLE, f"fill the {section} of")
        if not rec.meta.get("analysis") and not rec.meta.get("group_analysis"):
            raise RecordError(f"{version} is not analysed yet: its numbers have no evidence to be checked against; "
                              f"run `exp analyze {version}` first (nothing was written)")
        ev = evidence(ws, rec)
        rendered, cited = citations.resolve(source, ev, version=str(version))
        block = rec.require_block("ai", section)
        findings = [{"section": section, "line": block.first_content_line + f.line - 1, "text_line": f.line,
                     "number": f.number, "reason": f.reason}
                    for f in citations.check(rendered, ev, cited, _human(rec))]
        if findings and not allow_untraceable:
            said: dict[tuple[int, str, str], int] = {}  # the same number twice on a line: said once, counted
            for u in findings:
                key = (u["text_line"], u["number"], u["reason"])
                said[key] = said.get(key, 0) + 1
            listed = "; ".join(f"line {line} of the text: {number}{f' (×{n})' if n > 1 else ''} ({reason})"
                               for (line, number, reason), n in list(said.items())[:5])
            more = f"; and {len(said) - 5} more" if len(said) > 5 else ""
            raise UntraceableError(
                f"{len(findings)} number(s) in the {section} are not traceable — {listed}{more}; cite each as [[PATH]] "
                f"(`exp context {version} --json` lists the evidence) or name the quantity it is; nothing was written "
                "(--allow-untraceable writes it anyway, and `exp check` will list them)"
            )
        rec.set_ai(section, rendered, source=source, citations=[c.to_dict() for c in cited])
    return {"version": str(version), "section": section, "path": ws.rel(ws.record_path(version)),
            "citations": [c.to_dict() for c in cited], "untraceable": findings, "text": rendered}


# -- exp context ----------------------------------------------------------------------------------
def context(ws: Workspace, version: Version) -> dict[str, Any]:
    """What an assistant needs to write or check the analysis, in one JSON object."""
    record = records.load(ws, version)
    meta = record.meta
    v = record.version
    out = ws.out_dir(v)
    sections = {b.name: {"kind": b.kind, "line": b.first_content_line, "text": b.text} for b in record.blocks()}
    stored = meta.get("analysis")
    live = None
    if stored is None and out.is_dir() and meta.get("run"):
        try:
            live = compute(ws, record)
        except ExpError as err:  # AnalysisError: say why, still give the rest
            live = {"error": str(err)}
    analysis_data = stored if stored is not None else ({k: x for k, x in live.items() if not k.startswith("_")} if live else None)
    full = read_json(out / ANALYSIS_FILE) or {}
    samples = (full.get("samples_detail") or (live or {}).get("_samples")
               or view.samples_with_quality(read_json(out / SAMPLES_FILE), None))
    parent_diff = (config_changes(store.read_meta(ws, meta["parent"]).get("config") or {}, meta.get("config") or {})
                   if meta.get("parent") and ws.record_path(meta["parent"]).exists() else None)
    paths = {
        "record": ws.rel(ws.record_path(v)),
        "state": ws.rel(ws.state_path(v)),
        "script": ws.rel(ws.run_script_path(v)),
        "out": ws.rel(out),
        "metrics": ws.rel(out / METRICS_FILE),
        "summary": ws.rel(out / SUMMARY_FILE),
        "samples": ws.rel(out / SAMPLES_FILE),
        "analysis": ws.rel(out / ANALYSIS_FILE),
        "plots": list((analysis_data or {}).get("plots") or []),
        **({"classification_report": ws.rel(out / "classification_report.txt")}
           if (out / "classification_report.txt").is_file() else {}),
    }
    return {
        "version": str(v),
        "status": record.status,
        "description": meta.get("description", ""),
        "lang": meta.get("lang", "zh"),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "analyzed": stored is not None or bool(meta.get("group_analysis")),
        "partial": (analysis_data or {}).get("partial"),
        "sections": sections,
        "writable_sections": list(AI),
        # the record's task: its metrics with their direction, the files it writes (exp tasks)
        "task": task_of(ws, meta).to_dict(),
        "config": meta.get("config") or {},
        "diff_from_parent": parent_diff,
        "run": {k: x for k, x in (meta.get("run") or {}).items() if k != "token"},
        "metrics": (analysis_data or {}).get("metrics"),
        "verdicts": (analysis_data or {}).get("verdicts") or [],
        "anomalies": (analysis_data or {}).get("anomalies") or [],
        "anomaly_rules": asdict(DEFAULT_THRESHOLDS),  # the thresholds each anomaly kind fires at (expkit/anomalies.py)
        "references": (analysis_data or {}).get("references") or {},
        "diagnosis": (analysis_data or {}).get("diagnosis") or [],
        "suggestions": (analysis_data or {}).get("suggestions") or [],
        "samples": samples,
        "sample_quality": (analysis_data or {}).get("samples"),
        "evidence": evidence(ws, record) if stored is not None or meta.get("group_analysis") else None,
        "untraceable": untraceable(ws, record) if stored is not None or meta.get("group_analysis") else [],
        # a group's parent: its group's analysis (`exp analyze PARENT`), cited as [[group....]]
        **({"group_analysis": meta["group_analysis"]} if meta.get("group_analysis") else {}),
        "error": (live or {}).get("error") if isinstance(live, dict) else None,
        "paths": paths,
        "rules": {
            "numbers": "cite every number as [[PATH]] or [[PATH:FORMAT]] (a Python format spec, e.g. "
                       "[[references.parent.deltas.val_loss.rel:+.1%]]), PATH a dotted path into `evidence`; exp fill "
                       "writes the value and keeps where it came from. A number written out must be a value that its "
                       "sentence names, at the precision written. Exempt: versions, list numbering, code spans (write "
                       "a proposal as `exp set VERSION key=value`), and quotations of the human sections in quotation marks",
            "write": f"exp fill {v} SECTION --file F (SECTION: {', '.join(AI)}); human sections are the person's",
            "after": f"stop and ask a person to run `exp review {v}`",
        },
        "generated_at": times.now(),
    }

