"""Traceable numbers (the evidence check of the AI's prose). Layer 3 (pure)."""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

# -- traceable numbers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """The absolute values of every number in a run's evidence, sorted for bisection."""

    values: tuple[float, ...]

    def __contains__(self, x: float) -> bool:
        return self.matches(x, 0.0)

    def __len__(self) -> int:
        return len(self.values)

    def matches(self, written: float, tolerance: float) -> bool:
        """Whether some evidence value lies within ``tolerance`` of |written| (both ends included)."""
        w = abs(written)
        slack = tolerance * (1 + 1e-9) + 1e-12 * w  # the written decimal is itself a binary float
        i = bisect.bisect_left(self.values, w - slack)
        return i < len(self.values) and self.values[i] <= w + slack


_NUM_IN_STR = r"(?<![A-Za-z0-9_.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def evidence_values(*sources: Any) -> Evidence:
    """Every number in ``sources`` (dicts, lists, dataclasses with to_dict — summaries, configs,
    environment, verdicts, deltas, anomalies, findings), recursively: numeric values, numbers
    inside strings (a claim's "baseline - 0.1" gives 0.1), and each list's length (a text may
    say "3 spikes"). Booleans are not numbers."""
    found: set[float] = set()
    stack: list[Any] = list(sources)
    while stack:
        x = stack.pop()
        if x is None or isinstance(x, bool):
            continue
        if isinstance(x, (int, float)):
            if math.isfinite(x):
                found.add(abs(float(x)))
        elif isinstance(x, str):
            found.update(abs(float(m)) for m in re.findall(_NUM_IN_STR, x))
        elif isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            found.add(float(len(x)))
            stack.extend(x)
        elif hasattr(x, "to_dict"):
            stack.append(x.to_dict())
        elif is_dataclass(x) and not isinstance(x, type):
            stack.append(asdict(x))
        elif hasattr(x, "tolist"):  # a numpy array or scalar
            stack.append(x.tolist())
    return Evidence(tuple(sorted(found)))


# Spans whose digits are not claims about the run: masked before numbers are read.
_EXCEPT = (
    r"""https?://\S+                                          # URLs
    | `[^`\n]*(?:/|\\|\d+\.\d+\.\d+|\.[A-Za-z]\w{0,5}\b)[^`\n]*`  # inline code holding a path, file or version
    | (?<![\d.])v?\d+(?:\.\d+){2,}(?![\d])                     # versions X.Y.Z
    | \d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T\s]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?  # dates
    | \d{4}\s*年(?:\s*\d{1,2}\s*月)?(?:\s*\d{1,2}\s*日)? | \d{1,2}\s*月\s*\d{1,2}\s*日   # 2026年11月22日
    | (?<![\d.])\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?![\d])      # times
    """
)
# List numbering ("1.", "2)", "3、") and numbered headings at the start of a line.
_LIST_NUMBER = r"^\s*(?:#+\s*)?(?:[-*+]\s+)?\d+(?:\.\d+)*[.)、](?=\s|$)|^\s*#+\s*\d+(?:\.\d+)*(?=\s)"
_TEXT_NUMBER = (
    r"""(?<![A-Za-z0-9_.])                    # not the tail of an identifier (H100, bf16, distinct_2) or 1.2.
    (?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:[eE](?P<exp>[-+]?\d+))?
    (?P<suffix>%|[x×]|(?:[KMGT]i?B|ms|min|s|h)(?![A-Za-z])|[kKMBG](?![A-Za-z]))?   # a unit (MB, s) or a scale (k, M)
    (?![A-Za-z0-9_])                          # not the head of a word or hash (3rd, 4f9a2c, 2M_tokens)
    """
)
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def untraceable_numbers(text: str, evidence: Evidence) -> list[tuple[int, str]]:
    """(line number, the number as written) for each number in ``text`` that no evidence value
    explains at the precision written.

    Rule: a number written with d decimals (in the mantissa, for 3e-3 / 8.0e-05) matches a value
    v when |v| rounds to it: ||v| − w| ≤ ½·10^(−d)·10^exp (so "5.23" and "5.2" match 5.2318,
    "5.24" and "5.20" do not; halves count either way). Signs are ignored (a text says "lower by
    0.12" for a delta of −0.12). "12.5%" also matches the ratio 0.125; "1,234" is 1234; "1.2k",
    "3.4M", "2B" scale by 10³/10⁶/10⁹ with the precision scaled alike; "1.5x" is 1.5.
    Not checked: versions (1.4.1), list and heading numbering at a line start, dates and times,
    URLs, inline code holding a path, file name or version, and digits inside identifiers."""
    def blank(m: re.Match[str]) -> str:  # keep the columns: only the line number is reported, but cheap
        return " " * len(m.group())

    bad = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        masked = re.sub(_EXCEPT, blank, line, flags=re.X)
        masked = re.sub(_LIST_NUMBER, blank, masked)
        for m in re.finditer(_TEXT_NUMBER, masked, flags=re.X):
            mant = m["mant"].replace(",", "")
            decimals = len(mant.split(".")[1]) if "." in mant else 0
            exp = int(m["exp"] or 0)
            scale = _SUFFIX.get(m["suffix"] or "", 1.0)
            # decimal strings through float(): exact to the last bit, also for 1e-320-sized values
            written = float(f"{mant}e{exp}") * scale
            tol = float(f"5e{exp - decimals - 1}") * scale  # half a unit of the last written digit
            ok = evidence.matches(written, tol)
            if not ok and m["suffix"] == "%":
                ok = evidence.matches(written / 100.0, tol / 100.0)
            if not ok:
                bad.append((line_no, m.group()))
    return bad
