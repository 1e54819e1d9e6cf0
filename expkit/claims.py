"""Machine-checkable expected results.

A human writes the expected result as prose and, among it, bullet lines the tool can check
after the run::

    - val_loss < 2.5
    - val_loss <= baseline - 0.1      # better than the baseline by a margin
    - tokens_per_s >= parent * 1.1

A group's parent (``X.Y.0``) may compare its members, each side named ``METRIC@VERSION``::

    - val_loss@1.5.2 < val_loss@1.5.1
    - tokens_per_s@1.5.3 >= tokens_per_s@1.5.1 * 0.9
    - val_loss@1.5.2 < 2.5

Such a claim belongs to the group (the group's analysis judges it), not to a member's own run.

Each such line becomes a ``Claim`` (metric, operator, reference). A bullet that starts like a
claim (a metric name and a comparison) but does not parse is reported by ``exp check`` with
its line, rather than silently treated as prose.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import asdict, dataclass
from typing import Any

#: Metrics the run produces (summary.json and metrics.jsonl); others give a warning.
KNOWN_METRICS = (
    "val_loss", "best_val_loss", "final_loss", "train_loss", "loss", "val_ppl", "tokens_per_s",
    "tokens_seen", "wall_s", "steps", "params", "peak_mem_mb", "mfu", "grad_norm",
    "distinct_1", "distinct_2", "repetition_rate",
)

#: Metrics that count things (integers): the only ones ``==`` and ``!=`` may compare. On a
#: real-valued metric equality never holds exactly and noise moves the value; a claim says a
#: range instead (``parse_claims`` refuses ``==``/``!=`` there, with the range to write).
INTEGER_METRICS = ("steps", "params", "tokens_seen")
#: The tolerance an equality's suggested range uses as an example.
EXAMPLE_TOLERANCE = "0.02"

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_UNICODE_OPS = {"≤": "<=", "≥": ">=", "≠": "!="}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?"
_VERSION = r"\d+\.\d+\.\d+"
_CLAIM = re.compile(
    rf"""^\s*[-*]\s+
    (?P<metric>[A-Za-z_][A-Za-z0-9_./]*)(?:@(?P<at>{_VERSION}))?\s*
    (?P<op><=|>=|==|!=|<|>|≤|≥|≠)\s*
    (?:(?:(?P<refmetric>[A-Za-z_][A-Za-z0-9_]*)@(?P<refat>{_VERSION})|(?P<ref>parent|baseline))
       \s*(?:(?P<refop>[-+*/])\s*(?P<refnum>{_NUM}))?|(?P<num>{_NUM}))
    \s*(?P<rest>(?:[#(（—,，;；:：]|--).*)?$""",
    re.X,
)
# A bullet that *tries* to be a claim: an identifier (maybe @VERSION) then a comparison operator.
_ATTEMPT = re.compile(r"^\s*[-*]\s+[A-Za-z_][A-Za-z0-9_./]*(?:@[0-9.]*)?\s*(<|>|=|≤|≥|≠|!)")


@dataclass(frozen=True)
class Claim:
    metric: str
    op: str
    reference: str  # "value" | "parent" | "baseline" | "member"
    value: float | None  # the number (for "value"), or the operand applied to the reference
    ref_op: str | None  # "+", "-", "*", "/" applied to parent/baseline, or None
    text: str  # the claim as written, without the bullet
    line: int  # 1-based line in the record (0 when parsed from loose text)
    percent: bool = False
    at: str | None = None  # METRIC@VERSION on the left: the group member whose metric is judged
    ref_metric: str | None = None  # reference "member": the metric of ...
    ref_version: str | None = None  # ... this member (METRIC@VERSION on the right)

    @property
    def names_member(self) -> bool:
        """A group's claim (a side names a member, ``METRIC@VERSION``), judged by the group's analysis."""
        return self.at is not None or self.reference == "member"

    @property
    def ref_key(self) -> str | None:
        """Which run the threshold comes from: parent, baseline, a member's version; None for a number."""
        return self.ref_version if self.reference == "member" else None if self.reference == "value" else self.reference

    def threshold(self, reference_value: float | None = None) -> float | None:
        """The number the metric is compared with; None when the reference is missing."""
        if self.reference == "value":
            return self.value
        if reference_value is None:
            return None
        if self.ref_op is None or self.value is None:
            return reference_value
        v = self.value
        if self.percent:  # "parent * 110%" reads as parent * 1.1; "parent - 5%" as 5% of parent
            v = v / 100.0 if self.ref_op in "*/" else reference_value * v / 100.0
        return {"+": reference_value + v, "-": reference_value - v, "*": reference_value * v, "/": reference_value / v}[
            self.ref_op
        ]

    def holds(self, observed: float, reference_value: float | None = None) -> bool | None:
        t = self.threshold(reference_value)
        return None if t is None else OPS[self.op](observed, t)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClaimProblem:
    line: int
    text: str
    message: str
    fix: str


def _number(text: str) -> tuple[float, bool]:
    pct = text.endswith("%")
    return float(text.rstrip("%")), pct


def parse_claims(text: str, first_line: int = 1) -> tuple[list[Claim], list[ClaimProblem]]:
    """Claims and malformed claim-like bullets in ``text`` (prose lines are ignored)."""
    claims: list[Claim] = []
    problems: list[ClaimProblem] = []
    in_fence = False
    for i, raw in enumerate(text.split("\n")):
        line_no = first_line + i
        if raw.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = _CLAIM.match(raw)
        if m:
            op = _UNICODE_OPS.get(m["op"], m["op"])
            if op in ("==", "!=") and m["metric"] not in INTEGER_METRICS:
                problems.append(_equality_problem(line_no, raw.strip(), m, op))
                continue
            if m["refat"] and not m["at"]:
                problems.append(ClaimProblem(line_no, raw.strip(), "names a member on the right only",
                                             f"name the member on the left too, e.g. `- {m['metric']}@X.Y.K {op} "
                                             f"{m['refmetric']}@{m['refat']}`"))
                continue
            if m["at"] and m["ref"]:
                problems.append(ClaimProblem(line_no, raw.strip(), f"compares a member with the {m['ref']}",
                                             f"compare members by name, e.g. `- {m['metric']}@{m['at']} {op} "
                                             f"{m['metric']}@X.Y.0` (the group's parent), or with a number"))
                continue
            if m["ref"] or m["refat"]:
                value, pct = _number(m["refnum"]) if m["refnum"] else (None, False)
                if m["refop"] == "/" and value == 0:
                    problems.append(ClaimProblem(line_no, raw.strip(), "divides the reference by zero", "divide by a non-zero number"))
                    continue
                claims.append(Claim(m["metric"], op, "member" if m["refat"] else m["ref"], value, m["refop"],
                                    _claim_text(raw, m), line_no, pct, at=m["at"], ref_metric=m["refmetric"],
                                    ref_version=m["refat"]))
            else:
                value, pct = _number(m["num"])
                if pct:
                    problems.append(
                        ClaimProblem(line_no, raw.strip(), "is a bare percentage with no base", "write e.g. `parent * 1.1`")
                    )
                    continue
                claims.append(Claim(m["metric"], op, "value", value, None, _claim_text(raw, m), line_no, at=m["at"]))
        elif _ATTEMPT.match(raw):
            problems.append(
                ClaimProblem(
                    line_no,
                    raw.strip(),
                    "does not parse as a claim",
                    "write `- METRIC OP NUMBER` or `- METRIC OP parent|baseline [+-*/ NUMBER]`, e.g. `- val_loss <= baseline - 0.1` "
                    "(in a group's parent: `- METRIC@X.Y.K OP METRIC@X.Y.J [+-*/ NUMBER]`)",
                )
            )
    return claims, problems


def _equality_problem(line_no: int, text: str, m: re.Match[str], op: str) -> ClaimProblem:
    """``==`` / ``!=`` on a real-valued metric, refused with the range to write instead."""
    metric, tol = m["metric"] + (f"@{m['at']}" if m["at"] else ""), EXAMPLE_TOLERANCE
    member_ref = f"{m['refmetric']}@{m['refat']}" if m["refat"] else None
    if m["ref"] or member_ref:
        ref = m["ref"] or member_ref
        target = ref + (f" {m['refop']} {m['refnum']}" if m["refop"] else "")
        refop, t = m["refop"], float(tol)
        gap = f"abs({metric} - ({target}))" if refop else f"abs({metric} - {target})"
        if refop and refop in "*/" and not m["refnum"].endswith("%"):
            gap, tol = f"{metric} / ({target}) - 1", f"{t:.0%}"  # a ratio: the tolerance is relative
        if not refop or m["refnum"].endswith("%"):
            low, high = f"{target} - {tol}", f"{target} + {tol}"
        elif refop in "+-":  # baseline - 0.1 ± 0.02: baseline - 0.12 ... baseline - 0.08
            offset = float(m["refnum"]) * (1 if refop == "+" else -1)
            low, high = (f"{ref} {'+' if x >= 0 else '-'} {abs(x):g}" for x in (offset - t, offset + t))
        else:  # parent * 1.1 within a relative tolerance: parent * 1.078 ... parent * 1.122
            k = float(m["refnum"]) if refop == "*" else 1 / float(m["refnum"])
            low, high = f"{ref} * {k * (1 - t):g}", f"{ref} * {k * (1 + t):g}"
    else:
        target = m["num"]
        gap = f"abs({metric} - {target})"
        value = float(target)
        low, high = f"{value - float(tol):g}", f"{value + float(tol):g}"
    if op == "==":
        fix = (f"say the tolerance: {gap} within {tol} is written as two lines, "
               f"`- {metric} >= {low}` and `- {metric} <= {high}` (pick the tolerance the noise allows)")
    else:
        fix = (f"say the direction and the margin: `- {metric} < {low}` or `- {metric} > {high}` "
               f"({gap} beyond {tol}; pick the margin the noise allows)")
    return ClaimProblem(line_no, text, f"uses `{op}` on the real-valued metric {metric}, which never holds exactly "
                        "(noise moves it); `==`/`!=` compare only counts (" + ", ".join(INTEGER_METRICS) + ")", fix)


def _claim_text(raw: str, m: re.Match[str]) -> str:
    body = raw.strip().lstrip("-*").strip()
    rest = m["rest"]
    return body[: len(body) - len(rest)].strip() if rest else body


def unknown_metric_hint(metric: str, known: tuple[str, ...] | None = None) -> str | None:
    """A warning for a claim on a metric the run does not report (``known``: the record's
    task's metrics; by default the pretraining run's)."""
    known = known or KNOWN_METRICS
    if metric in known:
        return None
    close = difflib.get_close_matches(metric, known, n=2, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the run reports {', '.join(known[:8])}{', …' if len(known) > 8 else ''}"
    return f"metric {metric!r} is not one the run reports{hint}"
