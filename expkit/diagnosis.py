"""Diagnosis and suggestions by explicit rules, from anomalies, verdicts and deltas.

``diagnose(anomalies, verdicts, deltas, lang) -> (diagnosis, suggestions)`` as lists of
``Finding``, each one markdown bullet whose numbers come from its evidence. Layer 3 (pure).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .anomalies import ANOMALY_KINDS, Anomaly
from .numbers import format_number as _num
from .numbers import format_percent as _pct
from .numbers import json_safe
from .verdicts import Verdict, verdict_kind

# -- diagnosis and suggestions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One diagnosis or suggestion: the rule that fired, the numbers it fired on, and its text
    (one markdown bullet whose every number comes from ``evidence``, written by format_number)."""

    rule: str
    evidence: dict[str, Any]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "evidence": json_safe(dict(self.evidence)), "text": self.text}


_RULE_TITLE = {
    "nonfinite": ("NaN/Inf", "数值溢出"), "divergence": ("divergence", "损失发散"), "spike": ("loss spikes", "损失尖峰"),
    "overfitting": ("overfitting", "过拟合"), "plateau": ("plateau", "损失停滞"),
    "throughput_drop": ("throughput drop", "吞吐下降"), "stall": ("stall", "训练停顿"),
    "throughput_shift": ("throughput shift", "吞吐突变"),
    "early_stop": ("stopped early", "提前停止"), "claim_refuted": ("claim refuted", "预期被推翻"),
    "claim_inconclusive": ("claim inconclusive", "预期无法判定"), "claims_confirmed": ("claims confirmed", "预期成立"),
    "delta_better": ("better than reference", "优于参照"), "delta_worse": ("worse than reference", "劣于参照"),
    "delta_slower": ("slower than reference", "慢于参照"), "healthy": ("healthy run", "运行正常"),
}

# Suggestions by rule: (en, zh). They name config keys, never new numbers: a number in the
# text must be evidence, and a proposed value is not.
_SUGGEST = {
    "nonfinite": ("lower learning_rate, keep grad_clip on, and prefer dtype bfloat16 or float32 over float16; "
                  "check the data around the first bad step",
                  "降低 learning_rate，保持 grad_clip 开启，dtype 优先 bfloat16 或 float32 而非 float16；"
                  "检查首个异常步附近的数据"),
    "divergence": ("lower learning_rate or lengthen warmup_steps", "降低 learning_rate 或加长 warmup_steps"),
    "spike": ("lower grad_clip or learning_rate; look at the batches at the spike steps",
              "降低 grad_clip 或 learning_rate；检查尖峰步对应的数据批次"),
    "overfitting": ("use more (or more varied) data, or raise dropout / weight_decay; stop at the best val_loss checkpoint",
                    "增加（或更多样的）数据，或提高 dropout / weight_decay；使用验证损失最佳的检查点"),
    "plateau": ("raise learning_rate or change the schedule (warmup_steps, min_lr_ratio); if that fails, the model "
                "may be too small for the data",
                "提高 learning_rate 或调整调度（warmup_steps、min_lr_ratio）；若仍无效，模型容量可能不足"),
    "throughput_drop": ("check data loading and other processes on the machine during those steps",
                        "检查这些步的数据加载以及同机其他进程"),
    "throughput_shift": ("the machine's load changed during the run: compare its tokens/s, wall time and memory with "
                         "other runs only under the same load (rerun on a quiet machine)",
                         "运行期间机器负载发生了变化：只在相同负载下比较 tokens/s、耗时和显存（在空闲的机器上重新运行）"),
    "stall": ("check the disk / network (checkpoint saves, data reads) and other processes at that time",
              "检查当时的磁盘/网络（检查点保存、数据读取）与其他进程"),
    "early_stop": ("resume the run from its last checkpoint (the trainer's --resume) and analyze again",
                   "从最后的检查点恢复运行（训练脚本的 --resume）后重新分析"),
    "claim_refuted": ("revisit the hypothesis: the evidence contradicts this expected result",
                      "重新审视研究假设：证据与该预期结果矛盾"),
    "delta_worse": ("compare the config changes against the reference one at a time", "逐项对比相对参照实验的配置改动"),
    "delta_slower": ("check what slowed the run: batch_size / max_seq_len changes, dtype, or machine load",
                     "检查变慢原因：batch_size / max_seq_len 改动、dtype 或机器负载"),
}
# The same suggestions when the config keys that differ from the reference are known.
_CHANGED = {
    "delta_worse": ("the config differs from it in {keys}: test those changes one at a time",
                    "配置与它的差别在 {keys}：逐项单独验证这些改动"),
    "delta_slower": ("the config differs from it in {keys}: the slowdown comes from those, or from the machine's load",
                     "配置与它的差别在 {keys}：变慢来自这些改动，或来自机器负载"),
}
_INCONCLUSIVE_FIX = {
    "run_not_ok": ("finish (or resume) the run, then analyze again", "完成（或恢复）运行后重新分析"),
    "metric_missing": ("log the metric, or fix the claim's metric name", "记录该指标，或修正预期中的指标名"),
    "observed_nonfinite": ("fix the non-finite metric first (see the NaN/Inf finding)", "先解决非有限值问题"),
    "reference_no_run": ("run the reference record first, or compare against a value", "先运行参照实验，或改为与具体数值比较"),
    "reference_lacks_metric": ("re-analyze the reference record so it has the metric", "重新分析参照实验以获得该指标"),
    "reference_nonfinite": ("compare against a finite reference or a value", "改为与有限的参照值或具体数值比较"),
    "within_noise": ("add replicates (`exp set VERSION replicates=N`, more than now) or runs of the same config with "
                     "other seeds, then analyze again; ask the person before spending the compute",
                     "增加重复实验（`exp set VERSION replicates=N`，多于现在）或以其他种子运行相同配置，然后重新分析；"
                     "花费算力前先征得研究者同意"),
    "within_noise_floor": ("settle it with replicates (`exp set VERSION replicates=3`) or a run of the same config "
                           "with another seed as its own record, then analyze again; ask the person before spending "
                           "the compute",
                           "用重复实验判定（`exp set VERSION replicates=3`），或把相同配置换一个种子作为单独的记录运行，"
                           "然后重新分析；花费算力前先征得研究者同意"),
    "environment_differs": ("rerun both runs under the same machine load (a quiet machine, or side by side), then "
                            "analyze again", "在相同的机器负载下重新运行两者（空闲的机器，或同时并排运行），然后重新分析"),
}
#: Why a noise or environment verdict is inconclusive, without its numbers (a drafted ai section
#: cites numbers from the evidence only; the verdict table carries them): (en, zh).
_NOISE_WHY = {
    "within_noise": ("its confidence interval straddles the threshold (see the verdict table)",
                     "置信区间跨过阈值（见结论表）"),
    "within_noise_floor": ("a single run whose margin is within the metric's default noise floor (see the verdict table)",
                           "单次运行，差距在该指标的默认噪声范围内（见结论表）"),
    "environment_differs": ("the runs ran under materially different machine load (both loads are in the verdict table)",
                            "两次运行的机器负载明显不同（两者的负载见结论表）"),
}
_REASON_ZH = {
    "run_not_ok": "运行未成功结束", "metric_missing": "运行没有记录 {metric}", "observed_nonfinite": "{metric} 为非有限值",
    "reference_no_run": "{ref}没有运行结果", "reference_lacks_metric": "{ref}的运行没有 {metric}",
    "reference_nonfinite": "{ref}的 {metric} 不是有限数",
    "within_noise": "{metric} 的 95% 区间 {ci}（n={n}）跨过阈值 {threshold}；增加重复实验可收窄区间：`{command}`",
    "within_noise_floor": "n=1：差距 {margin} 在 {metric} 的噪声下限 {floor} 以内，工作区中也没有相同配置（仅种子不同）的"
                          "重复运行；用重复实验判定：`{command}`（现在会记录，重复实验的执行器完成后才会真正运行），"
                          "或者现在就把相同配置换一个种子作为单独的记录运行（`exp new NEXT --from {version}`，"
                          "`exp set NEXT seed=...`），下次分析会使用它们的离散程度",
    "environment_differs": "{metric} 取决于机器，而两次运行的负载不同：本次 {this_load}；{ref}{ref_load}；在相同负载下重新运行两者再比较",
}


def _bullet(rule: str, lang: str, sentence: str) -> str:
    en, zh = _RULE_TITLE.get(rule, (rule, rule))
    return f"- **{zh if lang == 'zh' else en}**: {sentence}"


def _aggregate(kind: str, items: list[Anomaly], lang: str) -> Finding:
    """One diagnosis per anomaly kind: the count and the worst instance's message."""
    zh = lang == "zh"
    worst_key = {"spike": lambda a: -a.evidence["jump"], "throughput_drop": lambda a: a.evidence["ratio"],
                 "stall": lambda a: -a.evidence["extra_s"]}.get(kind, lambda a: a.step or 0)
    worst = sorted(items, key=worst_key)[0]
    evidence = {"count": len(items), **worst.evidence}
    text = worst.message(lang)
    if len(items) > 1:
        text = (f"共 {len(items)} 处，最严重的：" if zh else f"{len(items)} occurrences; the worst: ") + text
    return Finding(kind, {**evidence, "step": worst.step, "end_step": worst.end_step}, _bullet(kind, lang, text))


#: A val_loss change against a reference smaller than this (relative) is not worth a line.
DELTA_VAL_REL = 0.005
#: tokens/s this much lower (relative) than a reference is reported as slower.
DELTA_SLOWER_REL = -0.10

# Claim and delta sentences, (en, zh); fields are written by format_number / format_percent.
_TEXT = {
    "healthy": ("no anomalies detected (NaN, spikes, divergence, plateau, overfitting, throughput, stalls, early stop)",
                "未检测到异常（NaN、尖峰、发散、停滞、过拟合、吞吐、停顿、提前停止）"),
    "claim_refuted": ("`{claim}` is refuted: observed {observed} against {reference}",
                      "`{claim}` 不成立：实际 {observed}，阈值 {reference}"),
    "claim_inconclusive": ("`{claim}` is inconclusive: {why}", "`{claim}` 无法判定：{why}"),
    "claims_confirmed": ("all {count} expected result(s) confirmed", "全部 {count} 条预期成立"),
    "delta_better": ("val_loss {value} against {reference} for {label}: {abs} ({rel})",
                     "val_loss {value}，{label} 为 {reference}：{abs}（{rel}）"),
    "delta_slower": ("tokens/s {value} against {reference} for {label} ({rel})",
                     "tokens/s {value}，{label} 为 {reference}（{rel}）"),
}
_TEXT["delta_worse"] = _TEXT["delta_better"]


def _say(rule: str, lang: str, **fields: Any) -> str:
    en, zh = _TEXT[rule]
    return _bullet(rule, lang, (zh if lang == "zh" else en).format(**fields))


def reason_text(v: Verdict, lang: str = "en") -> str:
    """Why a verdict is inconclusive, in the record's language ("" when it is not)."""
    if lang == "zh" and v.reason_code in _REASON_ZH:
        ref = re.search(r"\b(parent|baseline)\b", v.claim)
        command = re.search(r"`(exp set [^`]+)`", v.reason or "")
        fields = {"ci": "", "n": v.n, "margin": "", "floor": "", "this_load": "", "ref_load": "", **v.fields}
        fields.pop("ref", None)
        return _REASON_ZH[v.reason_code].format(metric=v.metric, ref={"parent": "父实验", "baseline": "基线"}.get(
            ref[1] if ref else "", ""), threshold=_num(v.reference), command=command[1] if command else "",
            version=command[1].split()[2] if command else "VERSION", **fields)
    return v.reason or ""


def _as_verdict(v: Verdict | Mapping[str, Any]) -> Verdict:
    """A Verdict, also from its to_dict() form (as stored in a record; no reason_code then)."""
    if isinstance(v, Verdict):
        return v
    return Verdict(str(v.get("claim")), str(v.get("verdict")), v.get("observed"), v.get("reference"), v.get("reason"),
                   str(v.get("metric", "")), int(v.get("line") or 0), v.get("reason_code"))


def diagnose(anomalies: Sequence[Anomaly], verdicts: Sequence[Verdict | Mapping[str, Any]],
             deltas: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
             lang: str = "en", changes: Mapping[str, Sequence[str]] | None = None) -> tuple[list[Finding], list[Finding]]:
    """Draft (diagnosis, suggestions) by explicit rules, as markdown bullets in ``lang`` (zh|en).

    ``deltas``: {reference label, e.g. "parent 1.4.0": metric_deltas(this run, that run)};
    ``changes``: {the same label: the config keys that differ}, named in the suggestions about
    a reference ("check `model_type`", not a generic list of suspects).
    Rules, in order: no anomaly → "healthy"; each anomaly kind → one diagnosis (count and the
    worst instance) and that kind's suggestion; refuted claim → diagnosis and "revisit the
    hypothesis"; inconclusive claim → its reason and how to make it decidable; all claims
    confirmed → one line; val_loss better / worse than a reference by ≥ DELTA_VAL_REL, tokens/s
    lower by ≥ 10% → diagnosis (and a suggestion when worse or slower). Suggestions are deduplicated.
    """
    zh = lang == "zh"
    diagnosis: list[Finding] = []
    suggestions: list[Finding] = []

    def suggest(rule: str, evidence: dict[str, Any], pair: tuple[str, str], about: str = "") -> None:
        text = _bullet(rule, lang, (pair[1] if zh else pair[0]) + (f" ({about})" if about else ""))
        if all(s.text != text for s in suggestions):
            suggestions.append(Finding(rule, evidence, text))

    if not anomalies:
        diagnosis.append(Finding("healthy", {}, _say("healthy", lang)))
    by_kind: dict[str, list[Anomaly]] = {}
    for a in anomalies:
        by_kind.setdefault(a.kind, []).append(a)
    for kind in sorted(by_kind, key=lambda k: ANOMALY_KINDS.index(k) if k in ANOMALY_KINDS else len(ANOMALY_KINDS)):
        finding = _aggregate(kind, by_kind[kind], lang)
        diagnosis.append(finding)
        if kind in _SUGGEST:
            suggest(kind, finding.evidence, _SUGGEST[kind])

    vs = [_as_verdict(v) for v in verdicts]
    for v in vs:
        ev = {"observed": v.observed, "reference": v.reference}
        if v.verdict == "refuted":
            text = _say("claim_refuted", lang, claim=v.claim, observed=_num(v.observed), reference=_num(v.reference))
            diagnosis.append(Finding("claim_refuted", ev, text))
            suggest("claim_refuted", ev, _SUGGEST["claim_refuted"], f"`{v.claim}`")
        elif verdict_kind(v.verdict) == "inconclusive":
            why = _NOISE_WHY[v.reason_code][1 if zh else 0] if v.reason_code in _NOISE_WHY else reason_text(v, lang)
            diagnosis.append(Finding("claim_inconclusive", {**ev, "reason": v.reason_code or v.reason},
                                     _say("claim_inconclusive", lang, claim=v.claim, why=why)))
            if v.reason_code in _INCONCLUSIVE_FIX:
                suggest("claim_inconclusive", ev, _INCONCLUSIVE_FIX[v.reason_code], f"`{v.claim}`")
    confirmed = sum(v.verdict == "confirmed" for v in vs)
    if vs and confirmed == len(vs):
        diagnosis.append(Finding("claims_confirmed", {"count": confirmed}, _say("claims_confirmed", lang, count=confirmed)))

    for label, table in (deltas or {}).items():
        for metric, rule in (("val_loss", None), ("tokens_per_s", "delta_slower")):
            d = table.get(metric)
            if not d or d.get("rel") is None:
                continue
            if metric == "val_loss":
                if abs(d["rel"]) < DELTA_VAL_REL:
                    continue
                rule = "delta_better" if d["abs"] < 0 else "delta_worse"
            elif d["rel"] > DELTA_SLOWER_REL:
                continue
            text = _say(rule, lang, label=label, value=_num(d["value"]), reference=_num(d["reference"]),
                        abs=_num(d["abs"], signed=True), rel=_pct(d["rel"], signed=True))
            diagnosis.append(Finding(rule, dict(d), text))
            keys = list((changes or {}).get(label) or [])
            if rule in _CHANGED and keys:
                named = ", ".join(f"`{k}`" for k in keys)
                suggest(rule, dict(d), tuple(s.format(keys=named) for s in _CHANGED[rule]), label)
            elif rule in _SUGGEST:
                suggest(rule, dict(d), _SUGGEST[rule], label)
    return diagnosis, suggestions
