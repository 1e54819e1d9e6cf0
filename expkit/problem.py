"""A problem ``exp check`` reports: its level, the record line it is on, what is wrong, the fix.

Errors make a record not ready (``exp run`` refuses it); warnings are advice and never change
an exit code. Layer 1: a value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning"
    line: int
    message: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_clean(problems: list[Problem]) -> bool:
    return not any(p.level == "error" for p in problems)
