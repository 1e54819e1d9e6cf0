"""Verdicts on the expected-result claims: confirmed, refuted or inconclusive, from the
metrics table of the run and of its references. Layer 3 (pure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .claims import Claim
from .numbers import format_number as _num
from .numbers import json_safe

# -- verdicts on expected-result claims --------------------------------------------------------------

VERDICTS = ("confirmed", "refuted", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """A claim judged against the evidence. ``reference`` is the threshold the observed value
    was compared with (the claim's number, or parent/baseline with its offset applied).
    ``reason_code`` (not in ``to_dict``) lets ``diagnose`` word the reason in either language."""

    claim: str
    verdict: str
    observed: float | None
    reference: float | None
    reason: str | None
    metric: str
    line: int
    reason_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"claim": self.claim, "verdict": self.verdict, "observed": self.observed,
                           "reference": self.reference, "reason": self.reason, "metric": self.metric, "line": self.line})


def _number_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def verdicts(claims: Sequence[Claim], observed: Mapping[str, Any], parent: Mapping[str, Any] | None,
             baseline: Mapping[str, Any] | None, run_ok: bool) -> list[Verdict]:
    """Confirmed / refuted / inconclusive for each claim. ``observed``, ``parent`` and ``baseline``
    are metric tables (``summarize()``); parent/baseline None = that record has no run."""
    out = []
    for c in claims:
        obs = _number_or_none(observed.get(c.metric))
        ref_table = {"parent": parent, "baseline": baseline}.get(c.reference)
        ref_value = None
        code = reason = None
        if c.reference in ("parent", "baseline"):
            if ref_table is None:
                code, reason = "reference_no_run", f"the {c.reference} has no run"
            else:
                ref_value = _number_or_none(ref_table.get(c.metric))
                if ref_value is None:
                    code, reason = "reference_lacks_metric", f"the {c.reference} run has no {c.metric}"
                elif not math.isfinite(ref_value):
                    code, reason = "reference_nonfinite", f"the {c.reference}'s {c.metric} is {_num(ref_value)}"
        threshold = c.threshold(ref_value) if code is None else None
        if not run_ok:
            code, reason = "run_not_ok", "the run did not finish"
        elif obs is None:
            code, reason = "metric_missing", f"the run did not log {c.metric}"
        elif not math.isfinite(obs):
            code, reason = "observed_nonfinite", f"{c.metric} is {_num(obs)}"
        elif code is None and (threshold is None or not math.isfinite(threshold)):
            code, reason = "reference_nonfinite", f"the threshold of {c.text!r} is not a finite number"
        held = c.holds(obs, ref_value) if code is None and obs is not None else None
        verdict = "inconclusive" if held is None else "confirmed" if held else "refuted"
        out.append(Verdict(c.text, verdict, obs, threshold, reason, c.metric, c.line, code))
    return out
