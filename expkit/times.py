"""Timestamps as records write them: ISO 8601, seconds, with the local offset. Layer 0."""

from __future__ import annotations

import datetime as _dt
import time


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def parse(text: str) -> float:
    """Seconds since the epoch of an ISO timestamp (ValueError/TypeError when it is not one)."""
    return _dt.datetime.fromisoformat(text).timestamp()


def age_s(text: str) -> float:
    """Seconds since an ISO timestamp."""
    return time.time() - parse(text)


def stamp() -> str:
    """A compact local time for file names: 20261203T081500."""
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
