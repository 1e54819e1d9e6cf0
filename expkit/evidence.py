"""The run's evidence: every value the AI's prose may cite, and the names of each quantity.

``build(analysis, config, run, summary, rows) -> dict`` is the **evidence object**, as nested
JSON-safe data (``exp context V --json`` prints it under ``evidence``); ``paths(evidence)`` lists
its leaves. ``citations`` resolves ``[[path]]`` citations of it and checks the prose.

Pure (layer 3): no files, no printing; standard library and ``numbers`` only.

The evidence object
-------------------
No key of the inputs holds a dot; a path is the keys joined by dots, list indices and curve steps as
numbers. Values are strings, booleans or finite numbers (None, NaN and Inf are left out). Every
top-level key is always present, possibly empty::

    metrics         {steps, final_loss, best_train_loss, val_loss, best_val_loss, val_ppl,
                     tokens_seen, tokens_per_s, wall_s (trainer time), peak_mem_mb, params, mfu,
                     grad_norm, distinct_1, distinct_2, repetition_rate, ...}: the analysis'
                     table, completed by summary.json's numbers it lacks (peak_mem_mb, mfu, ...)
    params          summary.json's param_counts {total, embedding, memory, experts,
                     non_embedding, active}, else {total: metrics.params}
    curve           {steps: [the steps below], val_loss: {step: v} at every evaluation,
                     loss: {step: v} (train loss) at those steps and at the first and last line,
                     tokens_per_s: {min, p10, median, p90, max} over the log lines (not the
                     first: start-up), when the caller adds it; evaluations: how many}
    verdicts        [{claim, metric, verdict, label (the verdict in the record's language),
                     observed, reference (the threshold), margin (observed − reference: negative
                     below the threshold, whatever the claim's direction), method, and over the
                     replicates n, mean, sd, ci_low, ci_high (the 95 % interval judged against
                     the reference), df (verdicts.Verdict)}]
    verdict_counts  {confirmed, refuted, inconclusive, total}
    references      {parent|baseline: {version, has_run,
                     deltas: {metric: {value, reference, abs, rel, ratio (= value/reference)}},
                     config: {key: the reference's value, for the keys that differ},
                     curve: the reference run's own curve, shaped as ``curve`` below,
                     curve_deltas: {val_loss: {step: this run's − the reference's}} at the
                     steps both evaluated}}
    samples         {distinct_1, distinct_2, repetition_rate}
    anomaly_counts  {total, <kind>: n}
    anomalies       [{kind, metric, step, end_step, <the anomaly's evidence: loss, jump, ...>}]
    config          the TrainConfig
    run             the run's record: status, exit_code, duration_s (the script's wall time),
                     backend, processes, last_step, gpus, resumes, ... (no timestamps, token,
                     log tail, hashes or environment versions: a version is not a quantity)

For example ``metrics.val_loss`` 5.2318, ``params.embedding`` 819200, ``curve.val_loss.60``
5.2318, ``verdicts.0.reference`` 2.5, ``references.parent.deltas.val_loss.rel`` -0.0313,
``anomaly_counts.spike`` 3, ``config.learning_rate`` 0.003, ``run.duration_s`` 254.0.

The names of a quantity (``names_of``) are its key's own forms (``val_loss``, "val loss",
"val-loss") and the aliases of ``_NAMES`` in English and Chinese; see ``citations`` for the rule.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .numbers import is_finite_number


# -- the evidence object ---------------------------------------------------------------------------

#: summary.json entries that are not quantities of the metrics table.
_SUMMARY_NOT_METRICS = frozenset({"status", "device", "param_sha256", "param_counts", "params"})
#: Parts of the run's record that are not evidence: clocks (their digits would let unrelated
#: numbers such as "47%" pass), secrets and hashes, the log tail, versions of the environment,
#: paths, process ids, and ``final`` (a copy of summary.json, already in ``metrics``).
_RUN_NOT_EVIDENCE = frozenset({
    "started", "ended", "token", "log_tail", "env", "git_sha", "script_sha256", "pid", "job_id",
    "final", "resumed", "command", "script", "out_dir", "swanlab_dir",
})


def build(analysis: Mapping[str, Any] | None, config: Mapping[str, Any] | None, run: Mapping[str, Any] | None,
          summary: Mapping[str, Any] | None = None, rows: Iterable[Mapping[str, Any]] | None = None,
          curve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every citable value of a run (structure in the module docstring).

    ``analysis``: the stored analysis (``results.compute()``'s shape); ``config``: the TrainConfig
    dict; ``run``: the record's run dict; ``summary``: the trainer's summary.json; ``rows``: the
    metrics.jsonl lines, or ``curve``: what ``curve_of(rows)`` made of them earlier."""
    analysis = analysis or {}
    summary = summary if isinstance(summary, Mapping) else {}
    metrics = _metrics(analysis, summary)
    verdicts = _verdicts(analysis.get("verdicts"))
    anomalies = _anomalies(analysis.get("anomalies"))
    own = dict(curve) if curve is not None else curve_of(rows)
    if isinstance(own.get("val_loss"), Mapping):
        own["evaluations"] = len(own["val_loss"])
    references = _references(analysis.get("references"))
    for entry in references.values():
        theirs = (entry.get("curve") or {}).get("val_loss")
        if isinstance(theirs, Mapping) and isinstance(own.get("val_loss"), Mapping):
            # "lower than the parent at every evaluation": this run minus the reference, step by step
            entry["curve_deltas"] = {"val_loss": {s: own["val_loss"][s] - theirs[s] for s in own["val_loss"]
                                                  if s in theirs and is_finite_number(theirs[s])}}
    return {
        "metrics": metrics,
        "params": _params(summary, metrics),
        "curve": own,
        "verdicts": verdicts,
        "verdict_counts": _verdict_counts(analysis.get("verdict_counts"), verdicts),
        "references": references,
        "samples": _scalars(analysis.get("samples")),
        "anomaly_counts": _anomaly_counts(anomalies, analysis.get("anomalies_total")),
        "anomalies": anomalies,
        "config": _scalars(config),
        "run": _run(run),
    }


def is_scalar(x: Any) -> bool:
    return isinstance(x, (str, bool, int)) or is_finite_number(x)


def _scalars(d: Any) -> dict[str, Any]:
    return {str(k): v for k, v in d.items() if is_scalar(v)} if isinstance(d, Mapping) else {}


def _numbers(d: Any) -> dict[str, Any]:
    return {str(k): v for k, v in d.items() if is_finite_number(v)} if isinstance(d, Mapping) else {}


def _metrics(analysis: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The analysis' table; summary.json fills what it lacks (the stored table keeps only
    SUMMARY_KEYS, summary.json may have more, and an old analysis may lack peak_mem_mb)."""
    out = _numbers(analysis.get("metrics"))
    for key, value in summary.items():
        if key not in out and key not in _SUMMARY_NOT_METRICS and is_finite_number(value):
            out[key] = value
    if "params" not in out and is_finite_number(summary.get("params")):
        out["params"] = summary["params"]
    return out


def _params(summary: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter breakdown (model.param_counts), else the total alone."""
    counts = summary.get("param_counts")
    counts = counts if isinstance(counts, Mapping) else summary.get("params")
    out = _numbers(counts)
    if "total" not in out and is_finite_number(metrics.get("params")):
        out["total"] = metrics["params"]
    return out


def _step(row: Mapping[str, Any]) -> int | None:
    s = row.get("step")
    if is_finite_number(s) and float(s).is_integer():
        return int(s)
    return None


def curve_of(rows: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Every validation loss, and the train loss at those steps and at the first and last line
    (a text says "from 8.7 at step 1 to 5.1"); other lines are too many to be evidence."""
    val: dict[int, float] = {}
    loss: dict[int, float] = {}
    first = last = None
    for row in rows or ():
        step = _step(row) if isinstance(row, Mapping) else None
        if step is None:
            continue
        first = (step, row) if first is None else first
        last = (step, row)
        if is_finite_number(row.get("val_loss")):
            val[step] = row["val_loss"]
            if is_finite_number(row.get("loss")):
                loss[step] = row["loss"]
    for end in (first, last):
        if end is not None and is_finite_number(end[1].get("loss")):
            loss[end[0]] = end[1]["loss"]
    if not (val or loss):
        return {}
    return {
        "steps": sorted(set(val) | set(loss)),
        "val_loss": {str(s): val[s] for s in sorted(val)},
        "loss": {str(s): loss[s] for s in sorted(loss)},
    }


#: A verdict's statistics over the replicates (verdicts.Verdict), citable as verdicts.N.ci_low etc.
VERDICT_STATISTICS = ("n", "mean", "sd", "ci_low", "ci_high", "df")


def _verdicts(items: Any) -> list[dict[str, Any]]:
    out = []
    for v in items if isinstance(items, list) else ():
        if not isinstance(v, Mapping):
            continue
        entry = {k: v[k] for k in ("claim", "metric", "verdict", "label", "method") if isinstance(v.get(k), str)}
        entry.update({k: v[k] for k in ("observed", "reference", "margin", *VERDICT_STATISTICS) if is_finite_number(v.get(k))})
        if "margin" not in entry and "observed" in entry and "reference" in entry:
            entry["margin"] = entry["observed"] - entry["reference"]
        out.append(entry)
    return out


def _verdict_counts(counts: Any, verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    out = _numbers(counts)
    if out or verdicts:
        out["total"] = len(verdicts)
    return out


def _references(refs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, ref in (refs or {}).items() if isinstance(refs, Mapping) else ():
        if not isinstance(ref, Mapping):
            continue
        entry = {k: ref[k] for k in ("version", "has_run") if is_scalar(ref.get(k))}
        entry["deltas"] = {str(m): _delta(d) for m, d in (ref.get("deltas") or {}).items() if isinstance(d, Mapping)}
        diff = ref.get("config_diff") or {}
        # config_diff is {key: [theirs, ours]}; ours is config.<key> already
        entry["config"] = {str(k): v[0] for k, v in diff.items()
                           if isinstance(v, (list, tuple)) and len(v) == 2 and is_scalar(v[0])}
        if isinstance(ref.get("curve"), Mapping):  # the reference's own evaluations ("lower at every step")
            entry["curve"] = dict(ref["curve"])
        out[str(role)] = entry
    return out


def _delta(d: Mapping[str, Any]) -> dict[str, Any]:
    """metric_deltas' entry, with ``ratio`` = value/reference ("3.2x the parent's throughput")."""
    out = _numbers({k: d.get(k) for k in ("value", "reference", "abs", "rel")})
    if "value" in out and out.get("reference"):
        ratio = out["value"] / out["reference"]
        if math.isfinite(ratio):
            out["ratio"] = ratio
    return out


def _anomalies(items: Any) -> list[dict[str, Any]]:
    """Each anomaly flat: kind, metric, step, end_step and its evidence's numbers (the message
    is prose, not a value)."""
    out = []
    for a in items if isinstance(items, list) else ():
        if not isinstance(a, Mapping):
            continue
        entry = {k: a[k] for k in ("kind", "metric") if isinstance(a.get(k), str)}
        entry.update({k: a[k] for k in ("step", "end_step") if is_finite_number(a.get(k))})
        nested = a.get("evidence") if isinstance(a.get("evidence"), Mapping) else {}
        flat = {k: v for k, v in a.items() if k not in ("kind", "metric", "step", "end_step", "evidence", "message")}
        for key, value in {**flat, **nested}.items():
            if key not in entry and is_finite_number(value):
                entry[str(key)] = value
        out.append(entry)
    return out


def _anomaly_counts(anomalies: list[dict[str, Any]], total: Any) -> dict[str, Any]:
    """Per kind, and the total: the stored analysis keeps the first anomalies only and says how
    many there were (``anomalies_total``); the per-kind counts are of those kept."""
    out: dict[str, Any] = {"total": int(total) if is_finite_number(total) else len(anomalies)}
    for a in anomalies:
        kind = a.get("kind")
        if kind:
            out[kind] = out.get(kind, 0) + 1
    return out


def _run(run: Any) -> dict[str, Any]:
    out = {k: v for k, v in _scalars(run).items() if k not in _RUN_NOT_EVIDENCE}
    if isinstance(run, Mapping) and isinstance(run.get("resumed"), list):
        out["resumes"] = len(run["resumed"])
    env = run.get("env") if isinstance(run, Mapping) else None
    if isinstance(env, Mapping) and is_finite_number(env.get("cpus")):
        out["cpus"] = env["cpus"]  # the machine's CPU count ("on this 2-core CPU"); versions are not quantities
    return out


def leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from leaves(value, (*prefix, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, (*prefix, str(i)))
    elif is_scalar(node):
        yield prefix, node


def paths(evidence: Mapping[str, Any]) -> list[str]:
    """Every leaf's dotted path, in the evidence's order."""
    return [".".join(p) for p, _ in leaves(evidence)]


# -- names of the quantities -------------------------------------------------------------------------

_TRAIN_LOSS = ("loss", "train loss", "training loss", "final loss", "训练损失", "损失", "最终损失", "训练 loss")
_VAL_LOSS = ("val loss", "validation loss", "eval loss", "valid loss", "验证损失", "验证集损失", "验证 loss",
             "验证集 loss")
_STEPS = ("step", "iteration", "iter", "步", "步数", "迭代")
_TIME = ("second", "sec", "s", "time", "took", "耗时", "用时", "秒", "时间")
_PARAMS = ("parameter", "param", "参数", "参数量", "model size", "模型大小")
_LR = ("learning rate", "lr", "学习率")
_GPUS = ("process", "rank", "gpu", "进程")
_OBSERVED = ("observed", "actual", "measured", "实际", "实测", "观测")
_THRESHOLD = ("threshold", "expected", "expectation", "target", "claim", "预期", "阈值", "目标")
_MARGIN_WORDS = ("margin", "above", "below", "exceed", "short of", "余量", "差距", "高出", "超出", "超过", "低于", "高于")
_CLAIMS = ("claim", "expected result", "expectation", "预期", "预期结果")
_ANOMALY = ("anomaly", "anomalies", "异常")
_RATIO = ("x", "×", "times", "ratio", "倍")
_INTERVAL = ("interval", "confidence interval", "ci", "95% ci", "区间", "置信区间")
_ROLES = {"parent": ("parent", "父实验", "父版本"), "baseline": ("baseline", "基线", "基准")}

#: Names of a quantity by the key that holds it, besides the key's own forms. Lower case; an
#: English plural needs no entry. The metrics (analysis.SUMMARY_KEYS), the parameter breakdown
#: (model.param_counts), TrainConfig, the run's record, the verdicts and the anomaly kinds.
_NAMES: dict[str, tuple[str, ...]] = {
    "cpus": ("cpu", "cpus", "core", "cores", "核", "CPU 核"),
    "evaluations": ("evaluation", "evaluations", "eval", "evals", "validation point", "验证点", "验证次数", "评估"),
    "short": ("short", "stopped", "sample", "样本", "只生成", "过短"), "measured": ("sample", "样本"),
    "steps": _STEPS, "step": _STEPS, "end_step": _STEPS, "min_step": _STEPS, "last_step": _STEPS,
    "max_steps": _STEPS + ("max steps", "total steps", "总步数"),
    "loss": _TRAIN_LOSS, "final_loss": _TRAIN_LOSS, "train_loss": _TRAIN_LOSS,
    "best_train_loss": ("best train loss", "lowest train loss", "最佳训练损失", "最低训练损失") + _TRAIN_LOSS,
    "val_loss": _VAL_LOSS,
    "best_val_loss": ("best val loss", "best validation loss", "lowest val loss", "最佳验证损失", "最低验证损失")
    + _VAL_LOSS,
    "val_ppl": ("perplexity", "ppl", "困惑度"),
    "tokens_seen": ("token", "tokens seen", "词元"),
    "tokens_per_s": ("throughput", "tokens/s", "token/s", "tok/s", "tokens per second", "speed", "faster",
                     "slower", "吞吐", "吞吐量", "速度"),
    "wall_s": ("wall", "wall time", "wall-clock", "training time", "trainer time", "训练耗时", "训练时间", "训练用时")
    + _TIME,
    "duration_s": ("duration", "run time", "runtime", "script time", "总耗时", "运行时间", "运行耗时", "脚本耗时")
    + _TIME,
    "peak_mem_mb": ("peak memory", "memory", "mem", "mb", "mib", "显存", "内存", "峰值", "峰值显存"),
    "params": _PARAMS,
    "total": _PARAMS,
    "mfu": ("model flops utilization", "utilization", "利用率"),
    "grad_norm": ("grad norm", "gradient norm", "梯度范数", "梯度"),
    "distinct_1": ("distinct-1", "dist-1", "多样性"),
    "distinct_2": ("distinct-2", "dist-2", "多样性"),
    "repetition_rate": ("repetition", "repetition rate", "repeat", "重复率", "重复"),
    "world_size": ("world size",) + _GPUS,
    "embedding": ("embedding", "embed", "嵌入", "词嵌入"),
    "non_embedding": ("non-embedding", "非嵌入"),
    "memory": ("memory", "knowledge", "知识库", "记忆", "记忆层"),
    "experts": ("expert", "专家"),
    "active": ("active", "activated", "激活", "活跃"),
    "learning_rate": _LR, "lr": _LR,
    "min_lr_ratio": ("min lr", "minimum learning rate", "最小学习率", "最低学习率"),
    "warmup_steps": ("warmup", "预热"),
    "batch_size": ("batch", "batch size", "批", "批大小", "批量"),
    "accumulation_steps": ("accumulation", "gradient accumulation", "累积", "梯度累积"),
    "hidden_size": ("hidden", "hidden size", "width", "d_model", "dim", "隐藏", "隐藏层", "宽度", "维度"),
    "num_hidden_layers": ("layer", "depth", "层", "层数", "深度"),
    "num_attention_heads": ("head", "attention head", "注意力头", "头"),
    "num_key_value_heads": ("head", "kv head", "key/value head", "kv 头", "键值头"),
    "intermediate_size": ("intermediate", "ffn", "mlp", "中间层", "前馈"),
    "vocab_size": ("vocab", "vocabulary", "词表"),
    "max_seq_len": ("sequence length", "seq len", "context", "context length", "block", "序列长度", "上下文", "序列"),
    "knowledge_num": ("knowledge", "memory", "entries", "知识库", "知识", "记忆", "条目"),
    "knowledge_topk": ("top-k", "topk", "top k"),
    "num_experts": ("expert", "专家"),
    "num_experts_per_tok": ("expert", "experts per token", "专家"),
    "aux_loss_coef": ("aux", "aux loss", "balance loss", "辅助损失", "负载均衡"),
    "dropout": ("丢弃",),
    "weight_decay": ("weight decay", "wd", "权重衰减"),
    "grad_clip": ("clip", "clipping", "gradient clipping", "梯度裁剪", "裁剪"),
    "seed": ("种子", "随机种子"),
    "rope_theta": ("rope", "theta", "rope base"),
    "log_interval": ("log", "logging", "日志"),
    "eval_interval": ("eval", "evaluation", "评估", "验证"),
    "eval_batches": ("eval", "evaluation", "评估"),
    "save_interval": ("save", "checkpoint", "保存", "检查点"),
    "keep_top_k": ("checkpoint", "keep", "检查点"),
    "sample_max_new_tokens": ("new token", "generated token", "生成"),
    "exit_code": ("exit code", "exit", "return code", "退出码", "返回码"),
    "processes": _GPUS,
    "resumes": ("resume", "resumed", "恢复", "续训"),
    "confirmed": ("confirmed", "hold", "held", "成立", "证实"),
    "refuted": ("refuted", "failed", "不成立", "推翻", "否定"),
    "inconclusive": ("inconclusive", "undecided", "无法判定", "不确定"),
    "spike": ("spike", "尖峰", "突刺", "跳变"),
    "nonfinite": ("nan", "inf", "non-finite", "非有限", "溢出"),
    "divergence": ("diverge", "diverged", "发散"),
    "overfitting": ("overfit", "过拟合"),
    "plateau": ("stagnation", "停滞", "平台期"),
    "throughput_drop": ("throughput drop", "throughput", "slowdown", "tokens/s", "吞吐下降", "吞吐"),
    "throughput_shift": ("throughput shift", "throughput", "tokens/s", "load", "吞吐突变", "吞吐", "负载"),
    "stall": ("stalled", "停顿", "卡顿"),
    "mean": ("mean", "average", "均值", "平均"),
    "sd": ("standard deviation", "std", "spread", "noise", "标准差", "噪声"),
    "ci_low": _INTERVAL + ("lower", "low", "下限", "下界"),
    "ci_high": _INTERVAL + ("upper", "high", "上限", "上界"),
    "n": ("replicate", "seed", "sample size", "重复", "种子"),
    "df": ("degrees of freedom", "自由度"),
    "early_stop": ("early stop", "stopped early", "ended", "提前停止", "提前结束", "停在"),
}
#: An anomaly's evidence keys (analysis._ANOMALY_TEXT) where a key means something else elsewhere
#: (a spike's ``baseline`` is the recent median, not the baseline record).
_ANOMALY_KEYS: dict[str, tuple[str, ...]] = {
    "baseline": ("median", "中位数"), "median": ("median", "中位数"), "jump": ("jump", "跳"), "mads": ("mad",),
    "count": ("count", "occurrence", "line", "次", "处", "行"), "factor": _RATIO, "gap_s": ("gap", "相隔") + _TIME,
    "extra_s": _TIME, "min": ("min", "lowest", "最低", "低至"), "ratio": ("ratio",),
}


def _key_names(key: str) -> tuple[str, ...]:
    """A key's own forms and aliases: ``val_loss`` → val_loss, "val loss", "val-loss", ...
    The spaced form is left out when a part is a number ("distinct 2" would read as a number)."""
    forms = [key.lower(), key.lower().replace("_", "-")]
    if not any(part.isdigit() for part in key.split("_")):
        forms.append(key.lower().replace("_", " "))
    return tuple(forms) + _NAMES.get(key, ())


def _roles_in(claim: Any) -> tuple[str, ...]:
    return tuple(r for r in _ROLES if isinstance(claim, str) and re.search(rf"\b{r}\b", claim))


def _shape(parts: tuple[str, ...], evidence: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a leaf's names depend on: its path without list indices and curve steps, and for a
    verdict or an anomaly the metric, kind and references of its item."""
    section = parts[0]
    if section in ("verdicts", "anomalies") and not isinstance(evidence.get(section), list):
        return parts  # not build()'s evidence: names from the path alone
    if section == "verdicts" and len(parts) == 3:
        item = evidence["verdicts"][int(parts[1])]
        return section, parts[2], item.get("metric"), _roles_in(item.get("claim"))
    if section == "anomalies" and len(parts) == 3:
        item = evidence["anomalies"][int(parts[1])]
        return section, parts[2], item.get("kind"), item.get("metric")
    if section == "curve" and len(parts) == 3:
        return section, parts[1]
    if section == "references" and len(parts) == 5 and parts[2] in ("curve", "curve_deltas"):
        return section, parts[1], "curve", parts[3]  # the reference's own curve: its metric, and the reference
    return parts


@functools.lru_cache(maxsize=4096)
def _names(shape: tuple[Any, ...]) -> frozenset[str]:
    """The names of the leaves of one shape (see the module docstring)."""
    section, key = shape[0], shape[-1]
    if section == "params":
        return frozenset(_key_names("params" if key == "total" else key))
    if section == "curve":
        return frozenset(_key_names(shape[1]))
    if section == "verdicts":
        _, part, metric, roles = shape
        metric_names = _key_names(metric) if metric else ()
        role_names = tuple(n for r in roles for n in _ROLES[r])
        return frozenset({
            "observed": metric_names + _OBSERVED,
            "reference": metric_names + _THRESHOLD + role_names,
            "margin": _MARGIN_WORDS + _THRESHOLD + role_names,
        }.get(part, _key_names(part) + (metric_names if part in ("mean", "ci_low", "ci_high") else ())))
    if section == "verdict_counts":
        return frozenset((() if key == "total" else _key_names(key)) + _CLAIMS)
    if section == "references" and len(shape) == 4 and shape[2] == "curve":
        _, role, _, metric = shape
        return frozenset(_key_names(metric) + _ROLES.get(role, (role,)))
    if section == "references" and len(shape) == 5 and shape[2] == "deltas":
        _, role, _, metric, part = shape
        if part in ("value", "reference"):  # a side of the comparison: the quantity itself
            return frozenset(_key_names(metric))
        return frozenset(_key_names(metric) + _ROLES.get(role, (role,)) + (_RATIO if part == "ratio" else ()))
    if section == "anomaly_counts":
        return frozenset(_ANOMALY if key == "total" else _key_names(key))
    if section == "anomalies":
        _, part, kind, metric = shape
        kind_names = _key_names(kind) if kind else ()
        metric_names = _key_names(metric) if metric else ()
        return frozenset(kind_names + metric_names + _ANOMALY + _ANOMALY_KEYS.get(part, _key_names(part)))
    return frozenset(_key_names(key))


def names_of(parts: tuple[str, ...], evidence: Mapping[str, Any]) -> frozenset[str]:
    """The names that mention the leaf at ``parts`` (its key's forms, aliases, its place)."""
    return _names(_shape(parts, evidence))
