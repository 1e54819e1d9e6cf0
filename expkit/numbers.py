"""Numbers as texts write them: the one format of every number the tool prints or cites.

``format_number`` and ``format_percent`` are the analysis' format: every output rounds the value
(never truncates), so the evidence check traces a written number back to it. ``fmt`` is the
compact form of tables (3e-3, 16384, 0.1). Layer 1: standard library only.
"""

from __future__ import annotations

import math
from typing import Any


def format_number(x: float | int | None, signed: bool = False) -> str:
    """The one way analysis writes a number, so a text's numbers trace back to the evidence.

    Integers as they are; |x| ≥ 1000 rounded to an integer; 0.001 ≤ |x| < 1000 to 4 significant
    digits without trailing zeros; smaller in %.4g scientific form. Every output rounds ``x``
    (never truncates), so ``untraceable_numbers`` accepts it against ``x``.
    """
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    sign = "+" if signed and x > 0 else ""
    if isinstance(x, int):
        return f"{sign}{x}"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return f"{sign}Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{sign}{round(x)}"
    if a >= 1e-3:
        s = f"{x:.{max(0, 3 - math.floor(math.log10(a)))}f}"
        return sign + (s.rstrip("0").rstrip(".") if "." in s else s)
    return sign + f"{x:.4g}"


def format_percent(ratio: float | None, signed: bool = False) -> str:
    """A ratio as a percentage: 0.0163 → "1.63%" (traceable to the ratio 0.0163)."""
    if ratio is None or not math.isfinite(ratio):
        return format_number(ratio)
    return format_number(ratio * 100.0, signed=signed) + "%"


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(value: Any) -> str:
    """Compact: None as a dash, booleans lower-case, floats to 6 significant digits (1e-3 → 0.001, 3e-6 → 3e-6)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            mantissa, exp = f"{value:.4g}".split("e") if "e" in f"{value:.4g}" else (f"{value:.4g}", "")
            return f"{mantissa}e{int(exp)}" if exp else mantissa
        return f"{value:.6g}"
    return str(value)


def json_safe(x: Any) -> Any:
    """NaN/Inf become None, recursively: these values go to JSON and YAML, which have no NaN."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
