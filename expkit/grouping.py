"""A group's analysis: ``exp analyze PARENT`` for an ``X.Y.0`` record with members.

One row per member (what it changes, the mean ± 95 % interval of the key metrics over its
replicates, its verdict counts), the best member and how sure that is (does its interval
overlap the runner-up's?), the group's own expected results — claims that name members,
``- val_loss@1.5.2 < val_loss@1.5.1`` — judged on the members' replicates (Welch's interval of
the difference when both sides have replicates), and plots (the key metric against the swept
value with error bars; every member's loss curve overlaid).

The result is kept in the parent's state (``group_analysis``), shown in the parent's generated
``group`` section (added to the record the first time), and written whole to
``out/experiment_PARENT/group_analysis.json``. Members that have not ended yet are listed and
make the analysis *partial*. A parent that did not run itself moves ``ready → analyzed`` here
(``status.transition``), so the group can be reviewed (``exp review PARENT``).

``analyze(ws, parent)`` is the one entry point: ``exp analyze PARENT`` and the run queue (when
a group's last member ends) call it. Layer 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import catalog, citations, groups, records, results, store, times, view
from . import claims as claims_mod
from .diagnosis import reason_text
from .errors import ExpError
from .files import file_lock, read_json, write_json
from .intervals import welch_interval
from .metrics import HIGHER_IS_BETTER
from .numbers import format_number, is_finite_number
from .plots import plot_group_curves, plot_group_metric
from .record import AI, Block, Record, block_markers, digest
from .replicates import mean_curve, stat
from .status import require_status, transition
from .verdicts import NOISE_FLOORS, VERDICTS, noise_floor, verdict_kind, verdicts
from .version import Version
from .workspace import Workspace

#: The parent's generated section that shows the group's analysis.
GROUP_BLOCK = "group"
GROUP_FILE = "group_analysis.json"
#: The metrics each member's row shows (mean ± interval), in this order.
KEY_METRICS = ("val_loss", "best_val_loss", "final_loss", "tokens_per_s")
#: The metric that decides the best member: the first of these that two members have.
BEST_METRICS = ("val_loss", "best_val_loss", "final_loss")
#: The parent's statuses in which its group may be analysed (an approved group is reviewed
#: again instead: a re-analysis would void the approval).
GROUP_ANALYZABLE = ("draft", "ready", "finished", "failed", "interrupted", "analyzed", "changes_requested")
#: A member in one of these statuses has not ended yet.
PENDING = ("draft", "ready", "running")
#: A member whose analysis is in its state (what the group's table and review read).
ANALYSED = ("analyzed", "changes_requested", "approved", "committed")
_HEADING = {"en": "### 🤖 [AI build] Group analysis", "zh": "### 🤖 [AI构建] 实验组分析"}


# -- the members ---------------------------------------------------------------------------------
def _swept_label(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_number(v) if is_finite_number(v) else v}" for k, v in changes.items()) or "—"


def group_metrics(task: Any) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    """(the metrics a member's row shows, those that decide the best member in order, those
    where higher is better) for a group of ``task``'s records."""
    if task.name == "pretrain":
        return KEY_METRICS, BEST_METRICS, HIGHER_IS_BETTER
    higher = frozenset(m.name for m in task.metrics if m.direction == "higher")
    higher |= frozenset(f"best_{n}" for n in higher)
    return tuple(dict.fromkeys([task.primary, *task.key_metrics])), (task.primary,), higher


def member_row(ws: Workspace, version: Version | str, meta: dict[str, Any],
               key_metrics: tuple[str, ...] = KEY_METRICS) -> dict[str, Any]:
    """One member as the group sees it: its status and state (pending / failed / partial /
    analyzed), what it changes, n and each key metric's {n, mean, sd, ci_low, ci_high}, its verdicts."""
    status = str(meta.get("status"))
    analysis = meta.get("analysis") if isinstance(meta.get("analysis"), dict) else {}
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    if status in PENDING:
        state = "pending"
    elif not analysis:
        state = "failed" if status in ("failed", "interrupted") else "not_analyzed"
    else:
        state = "partial" if analysis.get("partial") else "analyzed"
    tables = catalog.replicate_tables(ws, version, meta) if analysis else []
    metric_stats = {}
    for m in key_metrics:
        values = [float(t[m]) for t in tables if is_finite_number(t.get(m))]
        if values:
            metric_stats[m] = stat(values)
    changes = groups.changes_of(meta)
    return {
        "version": str(version), "status": status, "state": state, "changes": changes, "label": _swept_label(changes),
        "n": len(tables), "stats": metric_stats, "values": {m: [float(t[m]) for t in tables if is_finite_number(t.get(m))]
                                                            for m in metric_stats},
        "verdict_counts": analysis.get("verdict_counts") or ({k: 0 for k in VERDICTS} if analysis else None),
        "run_status": analysis.get("run_status") or run.get("status"),
        **({"error": run["error"]} if state == "failed" and run.get("error") else {}),
    }


def _best(rows: list[dict[str, Any]], best_metrics: tuple[str, ...] = BEST_METRICS,
          higher: frozenset[str] = HIGHER_IS_BETTER) -> dict[str, Any] | None:
    """The best member on the first of BEST_METRICS that two analysed members have, the runner-up,
    and how sure: their 95 % intervals overlap or not (n ≥ 2 on both), or single runs compared
    with the metric's noise floor."""
    done = [r for r in rows if r["state"] == "analyzed"]
    for metric in best_metrics:
        have = [r for r in done if metric in r["stats"]]
        if len(have) >= 2:
            break
    else:
        return None
    sign = -1 if metric in higher else 1
    have.sort(key=lambda r: sign * r["stats"][metric]["mean"])
    best, runner = have[0], have[1]
    b, r = best["stats"][metric], runner["stats"][metric]
    gap = abs(b["mean"] - r["mean"])
    out: dict[str, Any] = {"metric": metric, "version": best["version"], "label": best["label"], "mean": b["mean"],
                           "runner_up": runner["version"], "runner_up_label": runner["label"], "runner_up_mean": r["mean"],
                           "gap": gap, "overlap": None, "diff_ci_low": None, "diff_ci_high": None}
    if b["n"] >= 2 and r["n"] >= 2:
        overlap = b["ci_low"] <= r["ci_high"] and r["ci_low"] <= b["ci_high"]
        diff = welch_interval(best["values"][metric], runner["values"][metric])
        out.update(overlap=overlap, diff_ci_low=diff.low, diff_ci_high=diff.high,
                   sure="overlap" if overlap else "separated")
    else:
        floor = noise_floor(metric, r["mean"]) if metric in NOISE_FLOORS else None
        out.update(sure="single_runs_within_noise" if floor is not None and gap <= floor else "single_runs",
                   floor=floor)
    return out


_SURE = {
    "en": {"separated": "the 95% intervals do not overlap: {best} is better than {runner} beyond the noise",
           "overlap": "the 95% intervals overlap: {best} is not surely better than {runner}; more replicates would tell",
           "single_runs": "single runs (n=1): no interval; the gap to {runner} is beyond {metric}'s noise floor, "
                          "but replicates (`exp set V replicates=3`) would make it sure",
           "single_runs_within_noise": "single runs (n=1): the gap to {runner} is within {metric}'s noise floor "
                                       "({floor}): not surely better; run replicates (`exp set V replicates=3`)"},
    "zh": {"separated": "95% 置信区间不重叠：{best} 优于 {runner}，差异超出噪声",
           "overlap": "95% 置信区间重叠：{best} 不能确定优于 {runner}；增加重复实验可以分辨",
           "single_runs": "单次运行（n=1）：没有置信区间；与 {runner} 的差距超出 {metric} 的噪声下限，"
                          "但需要重复实验（`exp set V replicates=3`）才能确定",
           "single_runs_within_noise": "单次运行（n=1）：与 {runner} 的差距在 {metric} 的噪声下限（{floor}）以内，"
                                       "不能确定更优；请做重复实验（`exp set V replicates=3`）"},
}


# -- the group's own claims ---------------------------------------------------------------------------
def group_claims(record: Record) -> list[claims_mod.Claim]:
    """The parent's expected-result claims that name members (``METRIC@VERSION``)."""
    block = record.block("human", "expected")
    if block is None:
        return []
    return [c for c in claims_mod.parse_claims(block.text, block.first_content_line)[0] if c.names_member]


_WHY = {
    "en": {"not_member": "{v} is not a member of this group", "pending": "{v} has not finished yet (status {status})",
           "no_analysis": "{v} has no analysis (status {status}); `exp analyze {v}`",
           "no_run": "{v} (the group's parent) has no analysed run of its own"},
    "zh": {"not_member": "{v} 不是本实验组的成员", "pending": "{v} 尚未完成（状态 {status}）",
           "no_analysis": "{v} 没有分析结果（状态 {status}）；`exp analyze {v}`",
           "no_run": "{v}（实验组的父实验）自身没有已分析的运行"},
}


def _side(ws: Workspace, version: str, metas: dict[str, dict[str, Any]], lang: str = "en",
          parent: str | None = None) -> dict[str, Any]:
    """A claim's side: the run's table, its replicates, its load, whether it finished, or why not."""
    why = _WHY.get(lang, _WHY["en"])
    meta = metas.get(version)
    if meta is None and version == parent:
        return {"why": why["no_run"].format(v=version)}
    if meta is None:
        return {"why": why["not_member"].format(v=version)}
    status = str(meta.get("status"))
    analysis = meta.get("analysis") if isinstance(meta.get("analysis"), dict) else {}
    if status in PENDING:
        return {"why": why["pending"].format(v=version, status=status), "pending": True}
    if not analysis:
        return {"why": why["no_analysis"].format(v=version, status=status)}
    table = catalog.run_table(ws, version, meta)
    return {"table": table or {}, "replicates": catalog.replicate_tables(ws, version, meta, table),
            "load": results._load_of(ws, version, meta), "ok": analysis.get("run_status") == "finished"}


def judge_group(ws: Workspace, claims: list[claims_mod.Claim], metas: dict[str, dict[str, Any]],
                lang: str, parent: str | None = None) -> list[dict[str, Any]]:
    """Each group claim judged on the members it names (``verdicts.verdicts``, intervals and all)."""
    out = []
    for c in claims:
        left = _side(ws, c.at, metas, lang, parent) if c.at else {"why": f"`{c.text}` names no member on the left"}
        right = _side(ws, c.ref_version, metas, lang, parent) if c.reference == "member" and c.ref_version else {}
        why = left.get("why") or right.get("why")
        if why:
            d = {"claim": c.text, "verdict": "inconclusive", "observed": None, "reference": None, "reason": why,
                 "metric": c.metric, "n": None, "mean": None, "sd": None, "ci_low": None, "ci_high": None,
                 "method": None, "df": None, "noise": None, "pending": bool(left.get("pending") or right.get("pending"))}
        else:
            key = c.ref_version
            found = verdicts([c], left["table"], None, None, run_ok=bool(left["ok"] and right.get("ok", True)),
                             replicates={"this": left["replicates"], **({key: right["replicates"]} if key else {})},
                             loads={"this": left["load"], **({key: right["load"]} if key else {})},
                             version=str(c.at), members={key: right["table"]} if key else None)[0]
            d = found.to_dict()
            d.pop("line", None)
            if found.reason:
                d["reason"] = reason_text(found, lang)
            d["pending"] = False
        d["at"], d["against"] = c.at, c.ref_version
        d["label"] = results.VERDICT_LABELS[lang].get(d["verdict"], d["verdict"])
        out.append(d)
    return out


# -- computing and writing ---------------------------------------------------------------------------
def compute(ws: Workspace, parent: Record, metas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The group's analysis from the members' states (``metas``: version → meta, the parent
    included when it ran itself); writes nothing."""
    lang = parent.meta.get("lang", "zh")
    lang = lang if lang in _SURE else "en"
    pv = str(parent.meta.get("version"))
    key_metrics, best_metrics, higher = group_metrics(catalog.task_of(ws, parent.meta))
    rows = [member_row(ws, v, m, key_metrics) for v, m in metas.items() if v != pv]
    rows.sort(key=lambda r: Version.parse(r["version"]))
    swept: list[str] = []
    for r in rows:
        swept += [k for k in r["changes"] if k not in swept]
    best = _best(rows, best_metrics, higher)
    if best is not None:
        best["text"] = _SURE[lang][best["sure"]].format(best=best["version"], runner=best["runner_up"], metric=best["metric"],
                                                        floor=format_number(best.get("floor")))
    found = judge_group(ws, group_claims(parent), metas, lang, pv)
    counts = {k: sum(verdict_kind(x["verdict"]) == k for x in found) for k in VERDICTS}
    member_counts = {k: sum((r["verdict_counts"] or {}).get(k, 0) for r in rows) for k in VERDICTS}
    pending = [r["version"] for r in rows if r["state"] == "pending"]
    failed = [r["version"] for r in rows if r["state"] in ("failed", "not_analyzed")]
    return {
        "analyzed_at": times.now(),
        "members": [{k: x for k, x in r.items() if k != "values"} for r in rows],
        "swept": swept,
        "key_metrics": list(key_metrics),
        "best": best,
        "verdicts": found,
        "verdict_counts": counts,
        "member_verdict_counts": member_counts,
        "pending": pending,
        "failed": failed,
        "partial": bool(pending),
        "_rows": rows,
    }


def _ensure_block(record: Record) -> None:
    """Add the parent's ``group`` section after its metrics section, the first time."""
    if record.block("generated", GROUP_BLOCK) is not None:
        return
    lang = record.meta.get("lang", "zh")
    nl = record.newline
    opener, closer = block_markers("generated", GROUP_BLOCK)
    block = Block("generated", GROUP_BLOCK, opener.replace("\n", nl), nl, closer.replace("\n", nl), newline=nl)
    heading = nl + _HEADING.get(lang, _HEADING["en"]) + nl
    anchor = record.block("generated", "metrics")
    at = record.parts.index(anchor) + 1 if anchor is not None else len(record.parts)
    record.parts[at:at] = [heading, block]
    record.refresh_lines()


def write_plots(ws: Workspace, parent: Version, result: dict[str, Any]) -> list[Path]:
    """metric_by_member.png (each member's mean ± 95 % interval of the best-deciding metric, by
    swept value) and curves.png (every member's loss curves overlaid, replicates' mean)."""
    folder = ws.out_dir(parent) / results.PLOTS
    paths = {"metric": folder / "group_metric.png", "curves": folder / "group_curves.png"}
    rows = [r for r in result["_rows"] if r["stats"]]
    written = []
    metric = (result.get("best") or {}).get("metric") or next(
        (m for m in (*BEST_METRICS, *result.get("key_metrics", ())) if any(m in r["stats"] for r in rows)), None)
    if metric and rows:
        written.append(plot_group_metric(rows, metric, result["swept"], paths["metric"], title=f"group {parent}: {metric}"))
    curves = {}
    for r in rows:
        m = _member_curve(ws, r["version"])
        if m is not None:
            curves[f"{r['version']} {r['label']}"] = m
    if curves:
        written.append(plot_group_curves(curves, paths["curves"], title=f"group {parent}: loss curves"))
    for p in paths.values():
        if p not in written:
            p.unlink(missing_ok=True)
    return written


def _member_curve(ws: Workspace, version: str) -> Any:
    """A member's loss curve as its analysis kept it (analysis.json's ``curve``: the train and
    val loss at every evaluation, of the replicates' mean curve), else from its metrics files."""
    curve = (read_json(ws.out_dir(version) / results.ANALYSIS_FILE) or {}).get("curve")
    if isinstance(curve, dict) and isinstance(curve.get("val_loss"), dict) and curve["val_loss"]:
        return curve
    own = catalog.metrics_file(ws, version)
    if own is not None:
        return own
    return mean_curve([m for _, m, _ in catalog.replicate_runs(ws, version)])


def _prepare_members(ws: Workspace, members: list[store.Entry]) -> list[str]:
    """Analyse the members that ended but were not analysed (a finished run; a failed or
    interrupted one partially, when it left results). Returns notes on those that could not be."""
    notes = []
    for e in members:
        if e.meta.get("status") in ("finished", "failed", "interrupted") and not e.meta.get("analysis"):
            try:
                results.analyze(ws, e.version)
            except ExpError as err:
                notes.append(f"{e.version}: {err}")
    return notes


def analyze(ws: Workspace, parent: Version) -> dict[str, Any]:
    """``exp analyze PARENT`` for a group (also called when a group's last member ends): analyse
    the members that ended unanalysed, then write the group's section, its state and files.
    A member still pending makes the analysis partial."""
    members = groups.require_group(ws, parent)
    record = records.load(ws, parent)
    require_status(record, GROUP_ANALYZABLE, "analyze the group of")
    notes = _prepare_members(ws, members)
    if record.status in ("finished", "failed", "interrupted") and record.meta.get("run"):
        try:  # the parent ran itself too: its own analysis first
            results.analyze(ws, parent)
        except ExpError as err:
            notes.append(f"{parent}: {err}")
    metas = {str(e.version): store.read_meta(ws, e.version) for e in groups.members(ws, parent)}
    record = records.load(ws, parent)
    if record.meta.get("analysis"):
        metas[str(parent)] = record.meta
    result = compute(ws, record, metas)
    result["notes"] = notes
    plots = [ws.rel(p) for p in write_plots(ws, parent, result)]
    result["plots"] = plots
    stored = {k: v for k, v in result.items() if not k.startswith("_")}
    with records.update(ws, parent) as rec:
        require_status(rec, GROUP_ANALYZABLE, "analyze the group of")
        first = not rec.meta.get("group_analysis")
        rec.meta["group_analysis"] = {**stored, "drafts": ((rec.meta.get("group_analysis") or {}).get("drafts") or {})}
        drafted, ev = _draft(ws, rec, result)
        if rec.status == "draft" and all(groups.is_filled(rec.block("human", n).text) for n in ("goal", "hypothesis", "expected")
                                         if rec.block("human", n) is not None):
            transition(rec, "ready")  # its members ran on its human sections: it is past its check
        if rec.status != "draft":
            transition(rec, "analyzed")
        else:
            result["notes"].append(f"{parent} is a draft (its human sections are not filled): the group cannot be "
                                   f"reviewed until they are (`exp check {parent}`, then `exp analyze {parent}`)")
        _ensure_block(rec)
        _render(ws, rec, metrics_too=first)
        status = rec.status
        found = results.untraceable(ws, rec, ev)
    write_json(ws.out_dir(parent) / GROUP_FILE, {"version": str(parent), **stored})
    return {"version": str(parent), "group": True, "status": status, "path": ws.rel(ws.record_path(parent)),
            "file": ws.rel(ws.out_dir(parent) / GROUP_FILE), "drafted": drafted, "untraceable": found, **stored}


_GROUP_DRAFT = {
    "en": {
        "members": "- Group: [[group.size]] members; [[group.analysed]] analysed, [[group.pending]] pending (table above).",
        "best": "- Best by {metric}: {best} ([[group.best.label]]), mean [[group.best.mean]]; runner-up {runner}, mean "
                "[[group.best.runner_up_mean]]; {sure}.",
        "separated": "their intervals do not overlap: the best is better beyond the noise",
        "overlap": "their intervals overlap: not surely better",
        "single_runs": "single runs, no interval: replicates would make it sure",
        "single_runs_within_noise": "single runs within the metric's noise floor: not surely better",
        "claims": "- The group's expected results: [[group.verdict_counts.confirmed]] confirmed, [[group.verdict_counts.refuted]] "
                  "refuted, [[group.verdict_counts.inconclusive]] inconclusive; the members' own: "
                  "[[group.member_verdict_counts.confirmed]] confirmed, [[group.member_verdict_counts.refuted]] refuted, "
                  "[[group.member_verdict_counts.inconclusive]] inconclusive.",
        "failed": "- Ended without results: {failed}; read `exp logs VERSION` for each.",
        "healthy": "- Every member ended with results.",
        "noise": "- The best member is not surely better than the runner-up: more replicates decide it "
                 "(`exp set VERSION replicates=N` on both, then `exp run`).",
        "next": "- Next: `exp new NEXT --from {best}` to build on the best member, one change at a time.",
        "pending": "- Wait for the pending members, then `exp analyze {version}` again.",
    },
    "zh": {
        "members": "- 实验组：[[group.size]] 个成员；已分析 [[group.analysed]] 个，未完成 [[group.pending]] 个（见上表）。",
        "best": "- 按 {metric} 最佳：{best}（[[group.best.label]]），均值 [[group.best.mean]]；次佳 {runner}，均值 "
                "[[group.best.runner_up_mean]]；{sure}。",
        "separated": "两者的置信区间不重叠：最佳成员的优势超出噪声",
        "overlap": "两者的置信区间重叠：不能确定更优",
        "single_runs": "单次运行，没有置信区间：需要重复实验才能确定",
        "single_runs_within_noise": "单次运行，差距在该指标的噪声下限以内：不能确定更优",
        "claims": "- 实验组的预期结果：[[group.verdict_counts.confirmed]] 条成立，[[group.verdict_counts.refuted]] 条不成立，"
                  "[[group.verdict_counts.inconclusive]] 条无法判定；各成员自身：[[group.member_verdict_counts.confirmed]] 条成立，"
                  "[[group.member_verdict_counts.refuted]] 条不成立，[[group.member_verdict_counts.inconclusive]] 条无法判定。",
        "failed": "- 未产生结果而结束的成员：{failed}；请分别查看 `exp logs VERSION`。",
        "healthy": "- 所有成员都产生了结果。",
        "noise": "- 最佳成员并不确定优于次佳成员：增加重复实验可以分辨（两者都 `exp set VERSION replicates=N`，再 `exp run`）。",
        "next": "- 下一步：`exp new 下一个版本 --from {best}`，在最佳成员基础上每次只改一个变量。",
        "pending": "- 等待未完成的成员结束后，再次运行 `exp analyze {version}`。",
    },
}


def drafts(result: dict[str, Any], lang: str, version: str) -> dict[str, str]:
    """Sources for the parent's ai sections (a parent that did not run itself), every number a
    citation of the group's evidence (``[[group....]]``), resolved like ``exp fill``'s."""
    t = _GROUP_DRAFT.get(lang, _GROUP_DRAFT["en"])
    analysis = [t["members"]]
    best = result.get("best")
    if best:
        analysis.append(t["best"].format(metric=best["metric"], best=best["version"], runner=best["runner_up"],
                                         sure=t[best["sure"]]))
    analysis.append(t["claims"])
    diagnosis = [t["failed"].format(failed=", ".join(result["failed"])) if result["failed"] else t["healthy"]]
    suggestions = []
    if best and best["sure"] != "separated":
        suggestions.append(t["noise"])
    suggestions.append(t["pending"].format(version=version) if result["pending"] else
                       t["next"].format(best=best["version"] if best else version))
    return {"analysis": "\n".join(analysis), "diagnosis": "\n".join(diagnosis), "suggestions": "\n".join(suggestions)}


def _draft(ws: Workspace, record: Record, result: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """Draft the parent's ai sections that still hold the hint or the last draft (a parent with
    its own analysis has its own drafts, left alone); their digests go into ``group_analysis.drafts``."""
    if record.meta.get("analysis"):
        return [], None
    lang = record.meta.get("lang", "zh")
    texts = drafts(result, lang, str(record.meta.get("version")))
    previous = (record.meta.get("group_analysis") or {}).get("drafts") or {}
    ev = results.evidence(ws, record)
    digests, drafted = {}, []
    for name in AI:
        block = record.block("ai", name)
        if block is None:
            continue
        if results._untouched(block, previous.get(name)):
            rendered, cited = citations.resolve(texts[name], ev, version=str(record.meta.get("version")))
            record.set_ai(name, rendered, source=texts[name], citations=[c.to_dict() for c in cited])
            digests[name] = digest(record.require_block("ai", name).text)
            drafted.append(name)
        elif name in previous:
            digests[name] = previous[name]
    record.meta["group_analysis"]["drafts"] = digests
    return drafted, ev


def _render(ws: Workspace, record: Record, metrics_too: bool = True) -> None:
    """Render the ``group`` section from ``group_analysis`` (a hand edit refuses, as every generated section)."""
    view.regenerate(ws, record, (GROUP_BLOCK,))  # refuses (HandEditError) a hand-edited section, as every generated one
    if metrics_too and not record.meta.get("analysis"):  # the metrics section says where a parent that did not run has its results
        view.regenerate_quietly(ws, record, ("metrics",))


def after_member_end(ws: Workspace, version: Version) -> dict[str, Any] | None:
    """The group's analysis, automatic when its last member ends (``runner.conclude`` calls this
    for every record whose run ended, however it ended): None when ``version`` is no member, a
    member has not ended yet (draft, ready or running), or the parent cannot be analysed now.
    Members ending at once are judged one at a time: the last one analyses."""
    parent = groups.group_of(store.read_meta(ws, version))
    if parent is None or not ws.record_path(parent).exists():
        return None
    with file_lock(ws.group_lock_path(parent)):
        if any(e.status in PENDING for e in groups.members(ws, parent)):
            return None
        if store.read_meta(ws, parent).get("status") not in GROUP_ANALYZABLE:
            return None
        return analyze(ws, parent)


def analyze_any(ws: Workspace, version: Version) -> dict[str, Any]:
    """``exp analyze VERSION``: the group's analysis when VERSION leads members, else the record's own."""
    if groups.can_lead(version) and groups.members(ws, version):
        return analyze(ws, version)
    return results.analyze(ws, version)
