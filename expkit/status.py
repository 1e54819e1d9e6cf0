"""The one state machine of a record: its statuses, the moves between them, the next step.

::

    draft → ready → running → finished ─────────┐
      ↑       │        │  └→ failed ──┐         ↓
      └───────┘        └──→ interrupted ──→ analyzed ⇄ changes_requested
                               ↑  (partial)    │  ↑          │
                               └── --resume ───┘  └ approved ┘ → committed

Every status change goes through ``transition``; a move the table does not allow is refused
with the command that comes next. A run that ended ``interrupted`` or ``failed`` may be
analysed (a *partial* analysis, which says so) and then resumed: ``analyzed → running``; the
runner alone decides whether a resume is possible (the run did not finish, a checkpoint
exists). A group's parent (``X.Y.0`` with members) that did not run itself moves ``ready →
analyzed`` when its group is analysed (``grouping.analyze``), so the group can be reviewed.
Layer 1: data and two functions.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import RecordError

STATUSES = (
    "draft", "ready", "running", "finished", "failed", "interrupted",
    "analyzed", "approved", "changes_requested", "committed",
)

#: status → the statuses it may move to. Staying in a status is always allowed (a re-analysis,
#: a check that finds nothing new) and is not a move.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("ready",),
    "ready": ("draft", "running", "analyzed"),  # analyzed: a group's parent that did not run, once its group is
    "running": ("finished", "failed", "interrupted"),
    "finished": ("analyzed",),
    "failed": ("running", "analyzed", "draft"),
    "interrupted": ("running", "analyzed"),
    "analyzed": ("approved", "changes_requested", "running"),
    "approved": ("analyzed", "committed"),
    "changes_requested": ("analyzed", "approved", "running"),
    "committed": (),
}

NEXT_STEP = {
    "draft": "fill the human sections, then `exp check {v}`",
    "ready": "`exp run {v}`",
    "running": "wait for it (`exp status {v}`, `exp logs {v} -f`) or `exp stop {v}`",
    "finished": "`exp analyze {v}`",
    "failed": "read `exp logs {v}`, fix, then `exp run {v}`",
    "interrupted": "`exp run {v} --resume` (or `exp analyze {v}` for a partial analysis first)",
    "analyzed": "a person runs `exp review {v}`",
    "approved": "`exp commit {v}`",
    "changes_requested": "address the review comments, `exp analyze {v}`, then `exp review {v}`",
    "committed": "the record is final; start the next one with `exp new NEXT --from {v}`",
}


class TransitionError(RecordError):
    """A status change the state machine does not allow."""


class HasMeta(Protocol):
    meta: dict[str, Any]


def next_step(status: str, version: str) -> str:
    return NEXT_STEP.get(status, "`exp check {v}`").format(v=version)


def allowed(old: str, new: str) -> bool:
    return old == new or new in TRANSITIONS.get(old, ())


def transition(record: HasMeta, new: str) -> None:
    """Move ``record`` to ``new``, or refuse naming the next step."""
    if new not in STATUSES:
        raise TransitionError(f"unknown status {new!r}")
    old = str(record.meta.get("status", "draft"))
    if not allowed(old, new):
        v = str(record.meta.get("version"))
        raise TransitionError(f"{v} cannot go from {old} to {new}; next: {next_step(old, v)}")
    record.meta["status"] = new


def require_status(record: HasMeta, allowed_statuses: tuple[str, ...], action: str) -> None:
    """Refuse ``action`` unless the record is in one of ``allowed_statuses``, naming the next step."""
    status = str(record.meta.get("status", "draft"))
    if status not in allowed_statuses:
        v = str(record.meta.get("version"))
        raise RecordError(
            f"cannot {action} {v}: its status is {status} (needs {' or '.join(allowed_statuses)}); next: {next_step(status, v)}"
        )
