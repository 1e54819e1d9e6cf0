"""Verdicts on the expected-result claims: confirmed, refuted or inconclusive, from the
metrics of the run and of its references, with the noise accounted for. Layer 3 (pure).

How a claim is judged (``verdicts``), in this order:

1. A claim that cannot be judged (the run did not finish, a metric or a reference is missing
   or not finite) is ``inconclusive`` with the reason.
2. A claim comparing a machine-bound metric (``ENV_METRICS``: throughput, wall time, memory)
   with a reference run whose recorded load differed materially (``load_differs``) is
   ``inconclusive (environment differs)``, both loads in the reason.
3. With replicates (n ≥ 2 per-replicate values of the metric) the claim is judged on the 95 %
   Student t interval of the mean: ``confirmed`` when the whole interval satisfies it,
   ``refuted`` when the whole interval violates it, ``inconclusive (within noise)`` when it
   straddles the threshold. Against a reference that has replicates too, on Welch's interval
   of the difference (metric − threshold computed per reference replicate).
4. With one value (n = 1): when other runs of the same configuration (same config but the
   seed) give a spread, the value ± t·sd of that spread; else a margin within the metric's
   default noise floor (``NOISE_FLOORS``) is ``inconclusive (within noise)``, a larger one is
   judged on the value.

``ci_low`` / ``ci_high`` are always in the metric's units and compared with ``reference``
(the threshold): the metric's own interval, or with a replicated reference its mean ± the
half-width of the Welch interval of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .claims import OPS, Claim
from .intervals import Interval, mean_sd, spread_interval, t_interval, welch_interval
from .numbers import format_number as _num
from .numbers import format_percent as _pct
from .numbers import json_safe

# -- verdicts on expected-result claims --------------------------------------------------------------

#: The three kinds of verdict (what counts and reports group by).
VERDICTS = ("confirmed", "refuted", "inconclusive")
#: The two inconclusive verdicts that say what stood in the way; ``verdict_kind`` maps them to
#: ``inconclusive``.
WITHIN_NOISE = "inconclusive (within noise)"
ENVIRONMENT_DIFFERS = "inconclusive (environment differs)"

#: Per-metric default noise floor, used for a single run (n = 1) when no replicated runs of the
#: same configuration exist: ("abs", size in the metric's units) or ("rel", fraction of the
#: threshold). A claim whose margin is within it is ``inconclusive (within noise)``. Sizes: what
#: reseeding a small pretraining run typically moves the metric by. Metrics not listed
#: (steps, params, tokens_seen) are deterministic.
NOISE_FLOORS: dict[str, tuple[str, float]] = {
    "val_loss": ("abs", 0.02), "best_val_loss": ("abs", 0.02),
    "final_loss": ("abs", 0.03), "train_loss": ("abs", 0.03), "loss": ("abs", 0.03), "best_train_loss": ("abs", 0.03),
    "val_ppl": ("rel", 0.03),
    "tokens_per_s": ("rel", 0.05), "wall_s": ("rel", 0.05), "peak_mem_mb": ("rel", 0.02), "mfu": ("rel", 0.05),
    "grad_norm": ("rel", 0.20),
    "distinct_1": ("abs", 0.01), "distinct_2": ("abs", 0.01), "repetition_rate": ("abs", 0.01),
}

#: Metrics that measure the machine as much as the experiment: compared between runs only when
#: the runs ran under similar load.
ENV_METRICS = ("tokens_per_s", "wall_s", "peak_mem_mb", "mfu")
#: "Materially" different load: other processes' mean CPU share (a fraction of the whole
#: machine) differs by at least this much ...
LOAD_SHARE_DIFFERS = 0.25
#: ... or the mean 1-minute load average per CPU differs by at least this much ...
LOAD_PER_CPU_DIFFERS = 0.5
#: ... or the machines have different CPU counts, or different numbers of other GPU processes.

#: The replicates a noise verdict's reason proposes.
SUGGESTED_REPLICATES = 3


def verdict_kind(verdict: str) -> str:
    """confirmed / refuted / inconclusive, also for the qualified inconclusive verdicts."""
    return "inconclusive" if str(verdict).startswith("inconclusive") else str(verdict)


@dataclass(frozen=True)
class Noise:
    """The spread of a metric over runs of one configuration (same config but the seed): the
    sample sd of ``runs`` values, from the records ``versions`` (this one included)."""

    sd: float
    runs: int
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """A claim judged against the evidence. ``reference`` is the threshold the observed value
    was compared with (the claim's number, or parent/baseline with its offset applied).
    ``reason_code`` and ``fields`` (not in ``to_dict``) let ``diagnose`` word the reason in
    either language. ``n``/``mean``/``sd`` describe the metric's per-replicate values,
    ``ci_low``/``ci_high`` the 95 % interval judged against ``reference``, ``method`` how."""

    claim: str
    verdict: str
    observed: float | None
    reference: float | None
    reason: str | None
    metric: str
    line: int
    reason_code: str | None = None
    n: int | None = None
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    method: str | None = None
    df: float | None = None
    noise: str | None = None  # in words: where the noise estimate came from
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"claim": self.claim, "verdict": self.verdict, "observed": self.observed,
                          "reference": self.reference, "reason": self.reason, "metric": self.metric, "line": self.line,
                          "n": self.n, "mean": self.mean, "sd": self.sd, "ci_low": self.ci_low, "ci_high": self.ci_high,
                          "method": self.method, "df": self.df, "noise": self.noise})


#: ``method`` values: how the verdict was reached.
METHODS = {
    "student_t": "95% Student t interval of the replicates' mean",
    "welch": "95% Welch interval of the difference from the replicated reference",
    "same_config_spread": "one run, ± t·sd of the runs of the same config (seed aside)",
    "noise_floor": "one run, its margin compared with the metric's default noise floor",
    "exact": "one run of a deterministic metric",
    "load_check": "the runs' recorded machine load compared before the metric",
}


def _number_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _values(tables: Sequence[Mapping[str, Any]] | None, metric: str) -> list[float]:
    """The finite values of ``metric`` across per-replicate tables."""
    out = []
    for t in tables or ():
        x = _number_or_none(t.get(metric)) if isinstance(t, Mapping) else None
        if x is not None and math.isfinite(x):
            out.append(x)
    return out


def noise_floor(metric: str, threshold: float) -> float | None:
    """The default noise floor of ``metric`` at ``threshold`` in the metric's units (None: none)."""
    kind, size = NOISE_FLOORS.get(metric, ("abs", 0.0))
    floor = size if kind == "abs" else size * abs(threshold)
    return floor if floor > 0 else None


# -- the machine's load -------------------------------------------------------------------------


def load_text(load: Mapping[str, Any] | None, lang: str = "en") -> str:
    """A run's recorded load in words: "load 1.9 on 2 CPUs, other processes 85% of the CPU"."""
    zh = lang == "zh"
    if not load:
        return "未记录" if zh else "not recorded"
    parts = []
    if _number_or_none(load.get("loadavg_mean")) is not None:
        cpus = load.get("cpus")
        if zh:
            parts.append(f"平均负载 {_num(load['loadavg_mean'])}" + (f"（{cpus} 个 CPU）" if cpus else ""))
        else:
            parts.append(f"load {_num(load['loadavg_mean'])}" + (f" on {cpus} CPUs" if cpus else ""))
    if _number_or_none(load.get("others_cpu_mean")) is not None:
        share = _pct(load["others_cpu_mean"])
        parts.append(f"其他进程占 CPU {share}" if zh else f"other processes {share} of the CPU")
    if load.get("gpu_others") is not None:
        parts.append(f"GPU 上另有 {load['gpu_others']} 个进程" if zh else f"{load['gpu_others']} other GPU process(es)")
    return ("，" if zh else ", ").join(parts) or ("未记录" if zh else "not recorded")


def load_differs(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool | None:
    """Whether two runs' loads (summary.json's ``load``) differ materially; None when either
    was not recorded (runs from before the trainer recorded it)."""
    if not a or not b:
        return None
    share_a, share_b = _number_or_none(a.get("others_cpu_mean")), _number_or_none(b.get("others_cpu_mean"))
    if share_a is not None and share_b is not None and abs(share_a - share_b) >= LOAD_SHARE_DIFFERS:
        return True
    cpus_a, cpus_b = a.get("cpus"), b.get("cpus")
    if cpus_a and cpus_b and cpus_a != cpus_b:
        return True
    la, lb = _number_or_none(a.get("loadavg_mean")), _number_or_none(b.get("loadavg_mean"))
    if la is not None and lb is not None and cpus_a and cpus_b and abs(la / cpus_a - lb / cpus_b) >= LOAD_PER_CPU_DIFFERS:
        return True
    ga, gb = a.get("gpu_others"), b.get("gpu_others")
    if isinstance(ga, int) and isinstance(gb, int) and ga != gb:
        return True
    known = (share_a is not None and share_b is not None) or (la is not None and lb is not None)
    return False if known else None


# -- judging -------------------------------------------------------------------------------------


def _judge(op: str, low: float, high: float, threshold: float) -> str:
    """confirmed when both ends satisfy ``x OP threshold``, refuted when neither does."""
    test = OPS[op]
    ends = (test(low, threshold), test(high, threshold))
    if op == "!=":  # the one operator not monotone in x: the interval must avoid the threshold
        inside = low <= threshold <= high
        return "refuted" if low == high == threshold else WITHIN_NOISE if inside else "confirmed"
    return "confirmed" if all(ends) else "refuted" if not any(ends) else WITHIN_NOISE


def verdicts(claims: Sequence[Claim], observed: Mapping[str, Any], parent: Mapping[str, Any] | None,
             baseline: Mapping[str, Any] | None, run_ok: bool, *,
             replicates: Mapping[str, Sequence[Mapping[str, Any]] | None] | None = None,
             noise: Mapping[str, Noise] | None = None, loads: Mapping[str, Mapping[str, Any] | None] | None = None,
             version: str = "VERSION", members: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[Verdict]:
    """Confirmed / refuted / inconclusive for each claim. ``observed``, ``parent`` and ``baseline``
    are metric tables (``summarize()``); parent/baseline None = that record has no run.

    ``replicates``: {"this"|"parent"|"baseline": per-replicate metric tables} (absent: the
    table itself is the one replicate); ``noise``: {metric: Noise} of this run's configuration;
    ``loads``: {"this"|"parent"|"baseline": summary.json's ``load``}; ``version`` names the
    record in the reasons' commands. ``members``: {version: metric table or None} for a group's
    claims naming a member on the right (``METRIC@VERSION``; ``replicates`` and ``loads`` are then
    keyed by that version too)."""
    replicates = replicates or {}
    tables = {**(members or {}), "parent": parent, "baseline": baseline}
    loads = loads or {}
    noise = noise or {}
    out = []
    for c in claims:
        obs = _number_or_none(observed.get(c.metric))
        key = c.ref_key
        ref_table = tables.get(key) if key is not None else None
        ref_metric = c.ref_metric or c.metric
        ref_value = None
        code = reason = None
        if key is not None:
            name = _ref_name(c)
            if ref_table is None:
                code, reason = "reference_no_run", f"{name} has no run"
            else:
                ref_value = _number_or_none(ref_table.get(ref_metric))
                if ref_value is None:
                    code, reason = "reference_lacks_metric", f"{name} run has no {ref_metric}"
                elif not math.isfinite(ref_value):
                    code, reason = "reference_nonfinite", f"{name}'s {ref_metric} is {_num(ref_value)}"
        threshold = c.threshold(ref_value) if code is None else None
        if not run_ok:
            code, reason = "run_not_ok", "the run did not finish"
        elif obs is None:
            code, reason = "metric_missing", f"the run did not log {c.metric}"
        elif not math.isfinite(obs):
            code, reason = "observed_nonfinite", f"{c.metric} is {_num(obs)}"
        elif code is None and (threshold is None or not math.isfinite(threshold)):
            code, reason = "reference_nonfinite", f"the threshold of {c.text!r} is not a finite number"
        if code is not None or obs is None or threshold is None:
            out.append(Verdict(c.text, "inconclusive", obs, threshold, reason, c.metric, c.line, code))
            continue
        this_values = _values(replicates.get("this"), c.metric) or [obs]
        ref_values = _values(replicates.get(key), ref_metric) if key is not None else []
        out.append(_judged(c, obs, threshold, this_values, ref_values, ref_value, noise.get(c.metric), loads, version))
    return out


def _ref_name(c: Claim) -> str:
    """How a reason names the run a claim compares with: "the parent", "the baseline", "1.5.1"."""
    return str(c.ref_version) if c.reference == "member" else f"the {c.reference}"


def _judged(c: Claim, obs: float, threshold: float, values: list[float], ref_values: list[float],
            ref_value: float | None, noise: Noise | None, loads: Mapping[str, Any], version: str) -> Verdict:
    n = len(values)
    mean, sd = mean_sd(values)
    base = {"claim": c.text, "observed": obs, "metric": c.metric, "line": c.line, "n": n, "mean": mean, "sd": sd}
    against_run = c.reference != "value"
    key = c.ref_key

    if against_run and c.metric in ENV_METRICS and load_differs(loads.get("this"), loads.get(key)):
        this_load, ref_load = load_text(loads.get("this")), load_text(loads.get(key))
        this_name = f"{c.at}" if c.at else "this run"
        reason = (f"{c.metric} depends on the machine, and the runs ran under different load: {this_name} {this_load}; "
                  f"{_ref_name(c)} {ref_load}; rerun both under the same load to compare")
        return Verdict(verdict=ENVIRONMENT_DIFFERS, reference=threshold, reason=reason, reason_code="environment_differs",
                       method="load_check", fields={"this_load": load_text(loads.get("this"), "zh"),
                               "ref_load": load_text(loads.get(key), "zh")}, **base)

    interval: Interval | None = None
    method = noise_words = None
    ref_thresholds = [c.threshold(x) for x in ref_values] if against_run and len(ref_values) >= 2 else []
    if n >= 2 and ref_thresholds:
        method = "welch"
        diff = welch_interval(values, [t for t in ref_thresholds if t is not None])
        threshold = mean_sd([t for t in ref_thresholds if t is not None])[0]
        interval = Interval(mean, diff.half, diff.df)
    elif n >= 2:
        method = "student_t"
        interval = t_interval(values)
    elif noise is not None and noise.runs >= 2:
        method = "same_config_spread"
        interval = spread_interval(obs, noise.sd, noise.runs, scale=math.sqrt(2.0) if against_run else 1.0)
        noise_words = (f"n=1; the noise is estimated from the spread of {noise.runs} runs of the same config "
                       f"(seed aside: {', '.join(noise.versions)}), sd {_num(noise.sd)}")

    if interval is not None:
        verdict = _judge(c.op, interval.low, interval.high, threshold)
        reason = code = None
        ci = f"[{_num(interval.low)}, {_num(interval.high)}]"
        if verdict == WITHIN_NOISE:
            code = "within_noise"
            reason = (f"the 95% interval of {c.metric}, {ci} (n={n}{', one run' if n == 1 else ''}), straddles the "
                      f"threshold {_num(threshold)}; more replicates narrow it: `exp set {version} "
                      f"replicates={max(SUGGESTED_REPLICATES, 2 * n)}`")
        return Verdict(verdict=verdict, reference=threshold, reason=reason, reason_code=code, ci_low=interval.low,
                       ci_high=interval.high, method=method, df=interval.df, noise=noise_words,
                       fields={"ci": ci, "n": n}, **base)

    # one run, no spread known: the default noise floor of the metric
    floor = noise_floor(c.metric, threshold)
    held = OPS[c.op](obs, threshold)
    margin = abs(obs - threshold)
    if floor is not None and margin <= floor:
        reason = (f"n=1: the margin {_num(margin)} is within {c.metric}'s noise floor {_num(floor)}, and no replicated "
                  f"runs of this config (same config but the seed) are in the workspace; settle it with replicates: "
                  f"`exp set {version} replicates={SUGGESTED_REPLICATES}` (then `exp run` trains them, seeds seed, seed+1, "
                  f"...), or the same config with another seed as its own record (`exp new NEXT --from "
                  f"{version}`, `exp set NEXT seed=...`), whose spread the next analysis uses")
        return Verdict(verdict=WITHIN_NOISE, reference=threshold, reason=reason, reason_code="within_noise_floor",
                       method="noise_floor", noise=f"n=1; default noise floor of {c.metric}: {_num(floor)}",
                       fields={"floor": _num(floor), "margin": _num(margin)}, **base)
    return Verdict(verdict="confirmed" if held else "refuted", reference=threshold, reason=None,
                   method="noise_floor" if floor is not None else "exact",
                   noise=f"n=1; margin beyond the default noise floor of {c.metric} ({_num(floor)})" if floor else None,
                   **base)
