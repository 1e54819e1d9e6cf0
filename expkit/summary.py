"""``exp summary``: what the project showed, from approved or committed records only.

A record counts when its status is ``approved`` or ``committed`` and its approval still holds
(``approval.approval_state``: the record and its run script hash as the reviewer approved them).
Every other record — not reviewed yet, changes requested, an approval gone stale, a committed
record changed since its commit, a file that cannot be read — is listed as *pending* and gives
no number.

``experiment/SUMMARY.md`` says, from the counted records: how many experiments and groups, the
best result of each task (on the task's ``primary`` metric, in its direction), each record
against its parent and baseline (the deltas of its stored analysis, with the 95 % interval of
its mean where it has replicates), and which expected results were confirmed, refuted or left
inconclusive. ``--style resume`` writes 3–6 short bullets instead, each naming its record.

Every number is written the way the AI's sections write theirs: a ``[[path]]`` citation of the
record's evidence (``results.evidence``) resolved by ``citations.resolve``; project counts are
citations of the summary's own ``counts``. Each line that cites a record links to it and shows
the short form of its approved content hash (the full hash is in the sources table and the
JSON). A line holds the numbers of one record, so re-resolving its ``source`` against that
record's evidence gives its text again. Text a person wrote (a description) is escaped for
markdown and quoted; it never becomes a citation.

Layer 4: reads records (``store``), writes the one file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import approval, citations, results, store, tasks
from .errors import ExpError, UsageError
from .files import atomic_write
from .groups import group_of
from .intervals import CONFIDENCE
from .numbers import is_finite_number
from .verdicts import VERDICTS, verdict_kind
from .workspace import Workspace

SUMMARY_MD = "SUMMARY.md"
STYLES = ("bullets", "resume")
LANGS = ("zh", "en")
#: The statuses that may count, when their approval still holds.
COUNTED = ("approved", "committed")
#: ``--style resume``: at most this many bullets (at least RESUME_MIN where the records hold that many findings).
RESUME_MAX = 6
RESUME_MIN = 3
#: How much of the approved content hash a line shows.
SHORT_HASH = 12
REFERENCE_ROLES = ("baseline", "parent")


@dataclass
class Source:
    """A counted record: its evidence and its approval."""

    version: str
    status: str
    meta: dict[str, Any]
    evidence: dict[str, Any]
    sha256: str
    by: str
    at: str
    link: str
    task: str
    members: list[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.sha256[:SHORT_HASH]


@dataclass
class Piece:
    """One line of SUMMARY.md: its ``source`` (with ``[[path]]`` citations of ``record``'s evidence,
    or of the summary's ``counts`` when ``record`` is None) and the ``text`` it resolved to."""

    source: str
    text: str
    record: str | None
    citations: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "source": self.source, "record": self.record, "citations": self.citations}


# -- words ----------------------------------------------------------------------------------------
_WORDS: dict[str, dict[str, str]] = {
    "title": {"en": "Project summary", "zh": "项目总结"},
    "title_resume": {"en": "Project summary: highlights", "zh": "项目总结：要点"},
    "intro": {"en": "> Written by `exp summary` from approved or committed records only; every number is cited from "
                    "the evidence of the record it links to, and `sha256:…` is the content hash the reviewer approved.",
              "zh": "> 由 `exp summary` 生成，只取已批准或已提交的记录；每个数字都引用自所链接记录的证据，"
                    "`sha256:…` 是审阅者批准的内容哈希。"},
    "overview": {"en": "Overview", "zh": "概览"},
    "counted": {"en": "- Counted: [[counted]] of [[records]] records ([[approved]] approved, [[committed]] committed); "
                      "[[pending]] pending, which give no number.",
                "zh": "- 计入：[[records]] 条记录中的 [[counted]] 条（已批准 [[approved]]，已提交 [[committed]]）；"
                      "待审 [[pending]] 条，不贡献任何数字。"},
    "groups_tasks": {"en": "- Groups: [[groups]]; tasks: {tasks}.", "zh": "- 实验组：[[groups]] 个；任务：{tasks}。"},
    "claims": {"en": "- Expected results: [[confirmed]] confirmed, [[refuted]] refuted, [[inconclusive]] inconclusive.",
               "zh": "- 预期结果：[[confirmed]] 条成立，[[refuted]] 条不成立，[[inconclusive]] 条无法判定。"},
    "intervals": {"en": "- Intervals (CI) are [[confidence:.0%]] intervals over replicates: Student t for a record's mean, "
                        "Welch where the replicates of two records are compared.",
                  "zh": "- 区间（CI）为基于重复运行的 [[confidence:.0%]] 置信区间：单条记录的均值用 Student t，"
                        "两条记录的重复运行相比较时用 Welch。"},
    "nothing": {"en": "No record is approved or committed yet, so there is nothing to summarise: a person approves an "
                      "analysed record with `exp review X.Y.Z`.",
                "zh": "还没有已批准或已提交的记录，暂无可总结的内容：由人在终端用 `exp review X.Y.Z` 批准已分析的记录。"},
    "best": {"en": "Best result per task", "zh": "各任务最佳结果"},
    "best_cols": {"en": "| task | metric | best | record |", "zh": "| 任务 | 指标 | 最佳值 | 记录 |"},
    "improvements": {"en": "Against parents and baselines", "zh": "相对父实验与基线"},
    "hypotheses": {"en": "Expected results", "zh": "预期结果"},
    "confirmed": {"en": "Confirmed", "zh": "成立"},
    "refuted": {"en": "Refuted", "zh": "不成立（被推翻）"},
    "inconclusive": {"en": "Inconclusive", "zh": "无法判定"},
    "groups": {"en": "Groups", "zh": "实验组"},
    "highlights": {"en": "Highlights", "zh": "要点"},
    "pending": {"en": "Pending (not counted)", "zh": "待审（不计入）"},
    "no_pending": {"en": "None: every record is counted.", "zh": "无：所有记录都已计入。"},
    "sources": {"en": "Sources", "zh": "来源"},
    "sources_cols": {"en": "| record | description | status | approved by | at | content hash (sha256) |",
                     "zh": "| 记录 | 描述 | 状态 | 批准人 | 时间 | 内容哈希（sha256） |"},
    "lower": {"en": "lower is better", "zh": "越低越好"},
    "higher": {"en": "higher is better", "zh": "越高越好"},
    "better": {"en": "better", "zh": "更好"},
    "worse": {"en": "worse", "zh": "更差"},
    "same": {"en": "no change", "zh": "持平"},
    "parent": {"en": "parent", "zh": "父实验"},
    "baseline": {"en": "baseline", "zh": "基线"},
    "approved": {"en": "approved", "zh": "已批准"},
    "committed": {"en": "committed", "zh": "已提交"},
}
#: Why a record is pending, by reason code.
_REASONS: dict[str, dict[str, str]] = {
    "not_reviewed": {"en": "{status}: not reviewed yet", "zh": "{status}：尚未审阅"},
    "changes_requested": {"en": "changes requested by the reviewer", "zh": "审阅者要求修改"},
    "stale": {"en": "approved, but {changed} changed since the approval: a person reviews it again",
              "zh": "已批准，但批准后 {changed} 有改动：需重新审阅"},
    "changed_after_commit": {"en": "committed, but {changed} changed since the commit", "zh": "已提交，但提交后 {changed} 有改动"},
    "no_approval": {"en": "{status}, but no approval is on record", "zh": "状态为 {status}，但没有批准记录"},
    "unreadable": {"en": "cannot be read: {error}", "zh": "无法读取：{error}"},
}
#: Lines of the findings, en and zh. Placeholders in braces are filled with escaped text before
#: the citations are resolved; ``[[...]]`` are citations of the record's evidence.
_LINES: dict[str, dict[str, str]] = {
    "best_row": {"en": "| {task} | {metric} ({direction}) | [[metrics.{m}]]{interval} | {ref} |",
                 "zh": "| {task} | {metric}（{direction}） | [[metrics.{m}]]{interval} | {ref} |"},
    "interval": {"en": " (CI [[[{base}.ci_low]], [[{base}.ci_high]]], n=[[{base}.n]])",
                 "zh": "（CI [[[{base}.ci_low]], [[{base}.ci_high]]]，n=[[{base}.n]]）"},
    "delta": {"en": "- {ref} vs {role} {other}: {metric} [[{d}.value]] vs [[{d}.reference]] ({sign}[[{d}.abs]]{rel}), "
                    "{word}{interval}",
              "zh": "- {ref} 对比{role} {other}：{metric} [[{d}.value]] 对 [[{d}.reference]]（{sign}[[{d}.abs]]{rel}），"
                    "{word}{interval}"},
    "delta_interval": {"en": "; this record: CI [[[{base}.ci_low]], [[{base}.ci_high]]], n=[[{base}.n]]",
                       "zh": "；本记录 CI [[[{base}.ci_low]], [[{base}.ci_high]]]，n=[[{base}.n]]"},
    "own": {"en": "- {ref} vs the baseline measured in the same run: {metric} [[metrics.{m}]] vs {baseline} [[metrics.{b}]], "
                  "{word}{interval}",
            "zh": "- {ref} 对比同一运行测得的基线：{metric} [[metrics.{m}]] 对 {baseline} [[metrics.{b}]]，{word}{interval}"},
    "verdict": {"en": "- {ref}: {claim} — {label}: observed [[{p}.observed]], threshold [[{p}.reference]]{stats}",
                "zh": "- {ref}：{claim} —— {label}：实测 [[{p}.observed]]，阈值 [[{p}.reference]]{stats}"},
    "verdict_bare": {"en": "- {ref}: {claim} — {label}", "zh": "- {ref}：{claim} —— {label}"},
    "verdict_stats": {"en": "; mean [[{p}.mean]], CI [[[{p}.ci_low]], [[{p}.ci_high]]], n=[[{p}.n]]",
                      "zh": "；均值 [[{p}.mean]]，CI [[[{p}.ci_low]], [[{p}.ci_high]]]，n=[[{p}.n]]"},
    "group": {"en": "- {ref}{desc}: [[group.size]] members ({members})", "zh": "- {ref}{desc}：[[group.size]] 个成员（{members}）"},
    "group_best": {"en": "; best {best} by {metric}, mean [[group.best.mean]] against [[group.best.runner_up_mean]] for {runner}",
                   "zh": "；按 {metric} 最佳为 {best}，均值 [[group.best.mean]]，次佳 {runner} 为 [[group.best.runner_up_mean]]"},
    "group_diff": {"en": " (difference CI [[[group.best.diff_ci_low]], [[group.best.diff_ci_high]]])",
                   "zh": "（差值 CI [[[group.best.diff_ci_low]], [[group.best.diff_ci_high]]]）"},
    "pending": {"en": "- {ref}{desc} — {reason}", "zh": "- {ref}{desc} —— {reason}"},
    "source": {"en": "| {ref} | {desc} | {status} | {by} | {at} | {sha} |", "zh": "| {ref} | {desc} | {status} | {by} | {at} | {sha} |"},
    # --style resume
    "r_best": {"en": "- Reached {metric} [[metrics.{m}]]{interval}, the best {task} result ({direction}) — {ref}",
               "zh": "- {task} 任务最佳：{metric} 达到 [[metrics.{m}]]{interval}（{direction}） —— {ref}"},
    "r_improved": {"en": "- Improved {metric} from [[{d}.reference]] to [[{d}.value]] ({rel}) over {role} {other} — {ref}",
                   "zh": "- 相对{role} {other}，{metric} 从 [[{d}.reference]] 改进到 [[{d}.value]]（{rel}） —— {ref}"},
    "r_own": {"en": "- Reached {metric} [[metrics.{m}]] against [[metrics.{b}]] for the baseline measured in the same run "
                    "({baseline}) — {ref}",
              "zh": "- {metric} 达到 [[metrics.{m}]]，同一运行测得的基线（{baseline}）为 [[metrics.{b}]] —— {ref}"},
    "r_confirmed": {"en": "- Expectation confirmed: {claim} (observed [[{p}.observed]], threshold [[{p}.reference]]) — {ref}",
                    "zh": "- 预期得到证实：{claim}（实测 [[{p}.observed]]，阈值 [[{p}.reference]]） —— {ref}"},
    "r_refuted": {"en": "- Expectation refuted: {claim} does not hold (observed [[{p}.observed]], threshold [[{p}.reference]]) — {ref}",
                  "zh": "- 预期被推翻：{claim} 不成立（实测 [[{p}.observed]]，阈值 [[{p}.reference]]） —— {ref}"},
    "r_group": {"en": "- Compared [[group.size]] variants in one group; {best} was best by {metric} (mean [[group.best.mean]]) — {ref}",
                "zh": "- 在一个实验组中比较 [[group.size]] 个变体，按 {metric} 最佳为 {best}（均值 [[group.best.mean]]） —— {ref}"},
    "r_metric": {"en": "- Measured {metric} [[metrics.{m}]] ({direction}) — {ref}",
                 "zh": "- 测得 {metric} [[metrics.{m}]]（{direction}） —— {ref}"},
}


def _w(key: str, lang: str) -> str:
    return _WORDS[key][lang]


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&~!])")


def md_text(value: Any) -> str:
    """Text a person wrote, safe inside a markdown line, a table cell or a link text: one line,
    markdown and HTML characters backslash-escaped (so it is shown, not interpreted, and no
    ``[[...]]`` in it is taken for a citation)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def _code(text: Any) -> str:
    """An inline code span that holds ``text`` whatever backticks it has."""
    text = " ".join(str(text).split())
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _quoted(description: Any) -> str:
    return f" “{md_text(description)}”" if description else ""


# -- gathering the records -------------------------------------------------------------------------
def _link(ws: Workspace, version: str) -> str:
    return os.path.relpath(ws.record_path(version), ws.experiment_dir).replace(os.sep, "/")


def _pending(ws: Workspace, version: str, status: str, description: Any, code: str, lang: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("status", status)
    shown = {k: ", ".join(_code(x) for x in v) if k == "changed" else md_text(v) for k, v in fields.items()}
    plain = {k: ", ".join(v) if k == "changed" else v for k, v in fields.items()}
    return {"version": version, "status": status, "description": description or "", "reason": code,
            "why": _REASONS[code][lang].format(**plain), "record": ws.rel(ws.record_path(version)),
            "link": _link(ws, version), "_why": _REASONS[code][lang].format(**shown)}


def gather(ws: Workspace, lang: str) -> tuple[list[Source], list[dict[str, Any]], int]:
    """(the counted records with their evidence, the pending ones with why, how many records)."""
    entries = store.entries(ws)
    members: dict[str, list[str]] = {}
    for e in entries:
        parent = group_of(e.meta) if not e.error else None
        if parent is not None:
            members.setdefault(str(parent), []).append(str(e.version))
    counted: list[Source] = []
    pending: list[dict[str, Any]] = []
    for e in entries:
        v = str(e.version)
        desc = e.meta.get("description")
        if e.error:
            pending.append(_pending(ws, v, "broken", desc, "unreadable", lang, error=e.error))
            continue
        status = e.status
        if status not in COUNTED:
            code = "changes_requested" if status == "changes_requested" else "not_reviewed"
            pending.append(_pending(ws, v, status, desc, code, lang))
            continue
        try:
            record = store.load(ws, e.version)
            state = approval.approval_state(ws, record)
        except ExpError as err:
            pending.append(_pending(ws, v, status, desc, "unreadable", lang, error=str(err)))
            continue
        if not state["approved"]:
            pending.append(_pending(ws, v, status, desc, "no_approval", lang))
            continue
        if state["stale"]:
            changed = [state["files"][k] for k in state["changed"]]
            code = "stale" if status == "approved" else "changed_after_commit"
            pending.append(_pending(ws, v, status, desc, code, lang, changed=changed))
            continue
        try:
            ev = results.evidence(ws, record)
        except ExpError as err:
            pending.append(_pending(ws, v, status, desc, "unreadable", lang, error=str(err)))
            continue
        counted.append(Source(version=v, status=status, meta=record.meta, evidence=ev,
                              sha256=str(state["approved_sha256"]["record"]), by=str(state.get("by") or ""),
                              at=str(state.get("at") or ""), link=_link(ws, v), task=tasks.name_of(record.meta),
                              members=members.get(v, [])))
    return counted, pending, len(entries)


# -- rendering lines -------------------------------------------------------------------------------
def _piece(template: str, evidence: dict[str, Any], record: str | None) -> Piece:
    text, cited = citations.resolve(template, evidence, version=record)
    return Piece(template, text, record, [{"record": record, "path": c.path, "format": c.format, "value": c.value,
                                           "text": c.text} for c in cited])


def _has(evidence: dict[str, Any], path: str) -> bool:
    node: Any = evidence
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return is_finite_number(node)


def _ref(s: Source) -> str:
    """A record as a line names it: a link to it and its approved content hash, short."""
    return f"[{s.version}]({s.link}) {_code('sha256:' + s.short)}"


def _interval(s: Source, metric: str, lang: str) -> str:
    base = f"replicates.metrics.{metric}"
    if all(_has(s.evidence, f"{base}.{k}") for k in ("ci_low", "ci_high", "n")):
        return _LINES["interval"][lang].format(base=base)
    return ""


class _Tasks:
    """The task of each record, looked up once per name; None for a task no longer declared."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.found: dict[str, tasks.Task | None] = {}

    def of(self, s: Source) -> tasks.Task | None:
        if s.task not in self.found:
            try:
                self.found[s.task] = tasks.of(self.ws, s.meta)
            except ExpError:
                self.found[s.task] = None
        return self.found[s.task]


def _ranked_metrics(task: tasks.Task | None) -> list[str]:
    """The metrics "best" may mean for a task, in order: its primary, its key metrics, the rest."""
    if task is None:
        return []
    names = [task.primary, *task.key_metrics, *task.metric_names]
    return [n for n in dict.fromkeys(names) if n and task.direction(n) in tasks.DIRECTIONS]


def _label(task: tasks.Task | None, metric: str, lang: str) -> str:
    m = task.metric(metric) if task is not None else None
    label = m.label(lang) if m is not None and m.name == metric else metric
    return _code(metric) if label == metric else f"{md_text(label)} {_code(metric)}"


def _best(sources: list[Source], kinds: _Tasks, lang: str) -> list[dict[str, Any]]:
    """Per task: the counted record with the best value of the task's primary metric (or the
    first of its key metrics that a counted record has)."""
    by_task: dict[str, list[Source]] = {}
    for s in sources:
        by_task.setdefault(s.task, []).append(s)
    out = []
    for name, group in by_task.items():
        task = kinds.of(group[0])
        for metric in _ranked_metrics(task):
            have = [s for s in group if _has(s.evidence, f"metrics.{metric}")]
            if have:
                break
        else:
            continue
        assert task is not None
        direction = str(task.direction(metric))
        sign = 1 if direction == "lower" else -1
        best = min(have, key=lambda s: sign * s.evidence["metrics"][metric])  # the first on a tie: by version
        fields = dict(task=md_text(name), metric=_label(task, metric, lang), direction=_w(direction, lang), m=metric,
                      interval=_interval(best, metric, lang), ref=_ref(best) + _quoted(best.meta.get("description")))
        out.append({"task": name, "metric": metric, "direction": direction, "version": best.version,
                    "value": best.evidence["metrics"][metric], "sha256": best.sha256, "candidates": len(have),
                    "interval": _stats(best.evidence, f"replicates.metrics.{metric}"),
                    "_row": _piece(_LINES["best_row"][lang].format(**fields), best.evidence, best.version),
                    "_resume": _piece(_LINES["r_best"][lang].format(**fields), best.evidence, best.version),
                    "_source": best, "_task": task})
    return out


def _stats(evidence: dict[str, Any], base: str) -> dict[str, Any] | None:
    keys = ("n", "mean", "ci_low", "ci_high")
    if not all(_has(evidence, f"{base}.{k}") for k in ("ci_low", "ci_high")):
        return None
    node: Any = evidence
    for part in base.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return {k: node.get(k) for k in keys if k in node}


def _improvements(ws: Workspace, sources: list[Source], kinds: _Tasks, lang: str) -> list[dict[str, Any]]:
    """Each counted record against its baseline and its parent (once when they are the same
    record), on the first of its task's ranked metrics that the stored deltas hold; without a
    baseline record, against the baseline its task measures in the same run (classify: the
    majority class), on the metric that has one."""
    out = []
    for s in sources:
        task = kinds.of(s)
        if task is None:
            continue
        seen: set[str] = set()
        for role in REFERENCE_ROLES:
            ref = (s.evidence.get("references") or {}).get(role) or {}
            other = str(ref.get("version") or "")
            if not other or other in seen:
                continue
            found = _against(ws, s, task, role, other, lang)
            if found is not None:
                seen.add(other)
                out.append(found)
        if not seen:
            found = _against_own(s, task, lang)
            if found is not None:
                out.append(found)
    return out


def _change(direction: str, diff: float) -> str:
    change = diff if direction == "higher" else -diff
    return "better" if change > 0 else "worse" if change < 0 else "same"


def _against(ws: Workspace, s: Source, task: tasks.Task, role: str, other: str, lang: str) -> dict[str, Any] | None:
    """The record against a reference record: the stored delta of the first ranked metric."""
    base = f"references.{role}.deltas"
    metric = next((m for m in _ranked_metrics(task)
                   if all(_has(s.evidence, f"{base}.{m}.{k}") for k in ("abs", "value", "reference"))), None)
    if metric is None:
        return None
    d = f"{base}.{metric}"
    delta = s.evidence["references"][role]["deltas"][metric]
    direction = str(task.direction(metric))
    word = _change(direction, delta["abs"])
    has_rel = _has(s.evidence, f"{d}.rel")
    link = f"[{other}]({_link(ws, other)})" if ws.record_path(other).exists() else md_text(other)
    fields = dict(ref=_ref(s), role=_w(role, lang), other=link, metric=_label(task, metric, lang), d=d,
                  sign="+" if delta["abs"] > 0 else "",
                  rel=(", " if lang == "en" else "，") + f"[[{d}.rel:+.1%]]" if has_rel else "",
                  word=_w(word, lang), interval=_delta_interval(s, metric, lang))
    resume = None
    if word == "better":
        rfields = {**fields, "rel": f"[[{d}.rel:+.1%]]" if has_rel else f"{fields['sign']}[[{d}.abs]]"}
        resume = _piece(_LINES["r_improved"][lang].format(**rfields), s.evidence, s.version)
    return {"version": s.version, "role": role, "reference": other, "metric": metric, "direction": direction,
            "value": delta["value"], "reference_value": delta["reference"], "abs": delta["abs"], "rel": delta.get("rel"),
            "improved": word == "better", "change": word, "sha256": s.sha256,
            "interval": _stats(s.evidence, f"replicates.metrics.{metric}"),
            "_piece": _piece(_LINES["delta"][lang].format(**fields), s.evidence, s.version), "_resume": resume}


def _against_own(s: Source, task: tasks.Task, lang: str) -> dict[str, Any] | None:
    """The record against the baseline its own run measured (``Task.own_baseline``): both
    values cited from its metrics (the evidence holds no delta of them, so none is written)."""
    pairs = task.own_baseline or {}
    metric = next((m for m in _ranked_metrics(task) if m in pairs and _has(s.evidence, f"metrics.{m}")
                   and _has(s.evidence, f"metrics.{pairs[m]}")), None)
    if metric is None:
        return None
    theirs = pairs[metric]
    value, reference = s.evidence["metrics"][metric], s.evidence["metrics"][theirs]
    direction = str(task.direction(metric))
    word = _change(direction, value - reference)
    fields = dict(ref=_ref(s), metric=_label(task, metric, lang), m=metric, b=theirs, baseline=_label(task, theirs, lang),
                  word=_w(word, lang), interval=_delta_interval(s, metric, lang))
    resume = _piece(_LINES["r_own"][lang].format(**fields), s.evidence, s.version) if word == "better" else None
    return {"version": s.version, "role": "own_baseline", "reference": theirs, "metric": metric, "direction": direction,
            "value": value, "reference_value": reference, "abs": None, "rel": None, "improved": word == "better",
            "change": word, "sha256": s.sha256, "interval": _stats(s.evidence, f"replicates.metrics.{metric}"),
            "_piece": _piece(_LINES["own"][lang].format(**fields), s.evidence, s.version), "_resume": resume}


def _delta_interval(s: Source, metric: str, lang: str) -> str:
    base = f"replicates.metrics.{metric}"
    if all(_has(s.evidence, f"{base}.{k}") for k in ("ci_low", "ci_high", "n")):
        return _LINES["delta_interval"][lang].format(base=base)
    return ""


def _hypotheses(sources: list[Source], lang: str) -> dict[str, list[dict[str, Any]]]:
    """Every verdict of the counted records (a group's own verdicts too), by kind."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in VERDICTS}
    labels = results.VERDICT_LABELS[lang]
    for s in sources:
        lists = [("verdicts", s.evidence.get("verdicts") or [])]
        group = s.evidence.get("group")
        if isinstance(group, dict):
            lists.append(("group.verdicts", group.get("verdicts") or []))
        for base, found in lists:
            for i, v in enumerate(found):
                if not isinstance(v, dict) or not v.get("verdict"):
                    continue
                kind = verdict_kind(str(v["verdict"]))
                if kind not in out:
                    continue
                p = f"{base}.{i}"
                label = md_text(labels.get(str(v["verdict"]), str(v["verdict"])))
                fields = dict(ref=_ref(s), claim=_code(v.get("claim") or v.get("metric") or "?"), label=label, p=p)
                if _has(s.evidence, f"{p}.observed") and _has(s.evidence, f"{p}.reference"):
                    stats = ""
                    if all(_has(s.evidence, f"{p}.{k}") for k in ("mean", "ci_low", "ci_high", "n")):
                        stats = _LINES["verdict_stats"][lang].format(p=p)
                    piece = _piece(_LINES["verdict"][lang].format(stats=stats, **fields), s.evidence, s.version)
                    resume = (_piece(_LINES[f"r_{kind}"][lang].format(**fields), s.evidence, s.version)
                              if kind in ("confirmed", "refuted") else None)
                else:
                    piece, resume = _piece(_LINES["verdict_bare"][lang].format(**fields), s.evidence, s.version), None
                out[kind].append({"version": s.version, "claim": v.get("claim"), "metric": v.get("metric"),
                                  "verdict": v["verdict"], "observed": v.get("observed"), "reference": v.get("reference"),
                                  "sha256": s.sha256, "_piece": piece, "_resume": resume})
    return out


def _groups(ws: Workspace, sources: list[Source], lang: str) -> list[dict[str, Any]]:
    out = []
    for s in sources:
        if not s.members:
            continue
        group = s.evidence.get("group") if isinstance(s.evidence.get("group"), dict) else None
        members = ", ".join(f"[{m}]({_link(ws, m)})" for m in s.members)
        ev = s.evidence if group is not None else {**s.evidence, "group": {"size": len(s.members)}}
        line = _LINES["group"][lang].format(ref=_ref(s), desc=_quoted(s.meta.get("description")), members=members)
        best = (group or {}).get("best") or {}
        resume = None
        if best.get("version") and _has(ev, "group.best.mean") and _has(ev, "group.best.runner_up_mean"):
            fields = dict(best=md_text(best["version"]), metric=_code(best.get("metric", "?")),
                          runner=md_text(best.get("runner_up", "?")), ref=_ref(s))
            line += _LINES["group_best"][lang].format(**fields)
            if _has(ev, "group.best.diff_ci_low") and _has(ev, "group.best.diff_ci_high"):
                line += _LINES["group_diff"][lang]
            resume = _piece(_LINES["r_group"][lang].format(**fields), ev, s.version)
        out.append({"version": s.version, "members": s.members, "best": best.get("version"), "metric": best.get("metric"),
                    "sha256": s.sha256, "_piece": _piece(line, ev, s.version), "_resume": resume})
    return out


def _extra_metrics(best: list[dict[str, Any]], lang: str) -> list[Piece]:
    """Resume fill-ins: the other key metrics of each task's best record."""
    out = []
    for b in best:
        s, task = b["_source"], b["_task"]
        for metric in task.key_metrics:
            if metric == b["metric"] or not _has(s.evidence, f"metrics.{metric}") or task.direction(metric) not in tasks.DIRECTIONS:
                continue
            fields = dict(metric=_label(task, metric, lang), m=metric, direction=_w(str(task.direction(metric)), lang), ref=_ref(s))
            out.append(_piece(_LINES["r_metric"][lang].format(**fields), s.evidence, s.version))
    return out


def _resume(best: list[dict[str, Any]], improvements: list[dict[str, Any]], hypotheses: dict[str, list[dict[str, Any]]],
            groups: list[dict[str, Any]], lang: str) -> list[Piece]:
    """3–6 bullets: the best result of each task, the largest improvements, a refuted and a
    confirmed expectation, a group's winner, taken in turn; other key metrics fill up to 3."""
    improved = sorted((i for i in improvements if i["_resume"] is not None),
                      key=lambda i: -abs(i["rel"]) if is_finite_number(i.get("rel")) else 0.0)
    queues = [[b["_resume"] for b in best], [i["_resume"] for i in improved],
              [h["_resume"] for h in hypotheses["refuted"] if h["_resume"]],
              [h["_resume"] for h in hypotheses["confirmed"] if h["_resume"]],
              [g["_resume"] for g in groups if g["_resume"]]]
    out: list[Piece] = []
    while len(out) < RESUME_MAX and any(queues):
        for q in queues:
            if q and len(out) < RESUME_MAX:
                out.append(q.pop(0))
    for extra in _extra_metrics(best, lang):
        if len(out) >= RESUME_MIN:
            break
        out.append(extra)
    return out


# -- the document ----------------------------------------------------------------------------------
def _counts(sources: list[Source], pending: list[dict[str, Any]], total: int,
            hypotheses: dict[str, list[dict[str, Any]]], improvements: list[dict[str, Any]], n_tasks: int) -> dict[str, Any]:
    return {"records": total, "counted": len(sources),
            "approved": sum(s.status == "approved" for s in sources),
            "committed": sum(s.status == "committed" for s in sources),
            "pending": len(pending), "groups": sum(bool(s.members) for s in sources), "tasks": n_tasks,
            **{k: len(v) for k, v in hypotheses.items()},
            "improved": sum(i["improved"] for i in improvements), "confidence": CONFIDENCE}


def _sources_table(sources: list[Source], lang: str) -> list[str]:
    rows = [_w("sources_cols", lang), "|---|---|---|---|---|---|"]
    for s in sources:
        rows.append(_LINES["source"][lang].format(ref=f"[{s.version}]({s.link})", desc=_quoted(s.meta.get("description")).strip() or "—", status=_w(s.status, lang),
                                                  by=_code(s.by).replace("|", "\\|") if s.by else "—",
                                                  at=_code(s.at).replace("|", "\\|") if s.at else "—",
                                                  sha=_code(s.sha256)))
    return rows


def _pending_lines(pending: list[dict[str, Any]], lang: str) -> list[str]:
    if not pending:
        return [_w("no_pending", lang)]
    return [_LINES["pending"][lang].format(ref=f"[{p['version']}]({p['link']})", desc=_quoted(p["description"]),
                                           reason=p["_why"]) for p in pending]


def _intervals_cited(pieces: list[Piece]) -> bool:
    return any(c["path"].endswith(("ci_low", "ci_high")) for p in pieces for c in p.citations)


def write_summary(ws: Workspace, lang: str | None = None, style: str = "bullets") -> dict[str, Any]:
    """``exp summary``: write experiment/SUMMARY.md and return what it says (see the module docstring)."""
    lang = lang or ws.default_lang
    if lang not in LANGS:
        raise UsageError(f"--lang must be zh or en, not {lang!r}")
    if style not in STYLES:
        raise UsageError(f"--style must be bullets or resume, not {style!r}")
    sources, pending, total = gather(ws, lang)
    kinds = _Tasks(ws)
    best = _best(sources, kinds, lang)
    improvements = _improvements(ws, sources, kinds, lang)
    hypotheses = _hypotheses(sources, lang)
    groups = _groups(ws, sources, lang)
    task_names = list(dict.fromkeys(s.task for s in sources))
    counts = _counts(sources, pending, total, hypotheses, improvements, len(task_names))

    def project(template: str) -> Piece:
        return _piece(template, counts, None)

    lines: list[str] = []
    bullets: list[Piece] = []
    overview = [project(_w("counted", lang))]
    if style == "resume":
        lines += [f"# {_w('title_resume', lang)}", "", _w("intro", lang), "", overview[0].text, ""]
        if sources:
            bullets = _resume(best, improvements, hypotheses, groups, lang)
            lines += [f"## {_w('highlights', lang)}", "", *(b.text for b in bullets), ""]
            if _intervals_cited(bullets):
                overview.append(project(_w("intervals", lang)))
                lines += [overview[-1].text, ""]
        else:
            lines += [_w("nothing", lang), ""]
    else:
        if sources:
            overview.append(project(_w("groups_tasks", lang).format(tasks=", ".join(md_text(t) for t in task_names))))
            overview.append(project(_w("claims", lang)))
            findings = [b["_row"] for b in best] + [i["_piece"] for i in improvements] + [
                h["_piece"] for k in VERDICTS for h in hypotheses[k]] + [g["_piece"] for g in groups]
            if _intervals_cited(findings):
                overview.append(project(_w("intervals", lang)))
        lines += [f"# {_w('title', lang)}", "", _w("intro", lang), "", f"## {_w('overview', lang)}", "",
                  *(p.text for p in overview), ""]
        if not sources:
            lines += [_w("nothing", lang), ""]
        if best:
            lines += [f"## {_w('best', lang)}", "", _w("best_cols", lang), "|---|---|---|---|",
                      *(b["_row"].text for b in best), ""]
            bullets += [b["_row"] for b in best]
        if improvements:
            lines += [f"## {_w('improvements', lang)}", "", *(i["_piece"].text for i in improvements), ""]
            bullets += [i["_piece"] for i in improvements]
        if any(hypotheses.values()):
            lines += [f"## {_w('hypotheses', lang)}", ""]
            for kind in VERDICTS:
                if hypotheses[kind]:
                    lines += [f"### {_w(kind, lang)}", "", *(h["_piece"].text for h in hypotheses[kind]), ""]
                    bullets += [h["_piece"] for h in hypotheses[kind]]
        if groups:
            lines += [f"## {_w('groups', lang)}", "", *(g["_piece"].text for g in groups), ""]
            bullets += [g["_piece"] for g in groups]
    lines += [f"## {_w('pending', lang)}", "", *_pending_lines(pending, lang), ""]
    if sources:
        lines += [f"## {_w('sources', lang)}", "", *_sources_table(sources, lang), ""]
    path = ws.experiment_dir / SUMMARY_MD
    ws.experiment_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines).rstrip("\n") + "\n")

    def public(items: list[dict[str, Any]], piece: str = "_piece") -> list[dict[str, Any]]:
        return [{**{k: v for k, v in i.items() if not k.startswith("_")}, **i[piece].to_dict()} for i in items]

    return {
        "path": ws.rel(path),
        "lang": lang,
        "style": style,
        "counts": counts,
        "overview": [p.to_dict() for p in overview],
        "counted": [{"version": s.version, "status": s.status, "task": s.task, "description": s.meta.get("description") or "",
                     "record": ws.rel(ws.record_path(s.version)), "sha256": s.sha256, "short": s.short,
                     "approved_by": s.by, "approved_at": s.at, "members": s.members} for s in sources],
        "best": public(best, "_row"),
        "improvements": public(improvements),
        "hypotheses": {k: public(v) for k, v in hypotheses.items()},
        "groups": public(groups),
        "pending": [{k: v for k, v in p.items() if not k.startswith("_") and k != "link"} for p in pending],
        "bullets": [b.to_dict() for b in bullets],
    }

