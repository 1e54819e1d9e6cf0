"""Experiment versions ``X.Y.Z``.

The version is the record's identity and becomes part of file names and shell scripts, so it
is parsed strictly before any file is touched: three non-negative integers, no leading zeros,
nothing else (``1.4``, ``v1.4.1``, ``../x``, ``1.4.1;rm -rf /`` and ``01.2.3`` are refused).

Categories follow the experiment manual: ``X.0.0`` production, ``X.Y.0`` exploratory,
``X.Y.Z`` (Z ≥ 1) validation of the exploratory ``X.Y.0``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import UsageError

_FORM = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")

CATEGORIES = {
    "production": "X.0.0 — a production baseline",
    "exploratory": "X.Y.0 — a new direction",
    "validation": "X.Y.Z — validates or tunes X.Y.0",
}


class Version(NamedTuple):
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _FORM.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise UsageError(
                f"invalid version {text!r}: use X.Y.Z with non-negative integers and no leading zeros, e.g. 1.4.1"
            )
        return cls(*(int(g) for g in match.groups()))

    @classmethod
    def is_valid(cls, text: str) -> bool:
        return bool(isinstance(text, str) and _FORM.fullmatch(text))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def category(self) -> str:
        if self.minor == 0 and self.patch == 0:
            return "production"
        if self.patch == 0:
            return "exploratory"
        return "validation"

    def bump(self, part: str = "patch") -> Version:
        if part == "major":
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            return Version(self.major, self.minor + 1, 0)
        if part == "patch":
            return Version(self.major, self.minor, self.patch + 1)
        raise ValueError(f"unknown part {part!r}")

    @property
    def stem(self) -> str:
        """File stem shared by the record, the run script and the output directory."""
        return f"experiment_{self}"
