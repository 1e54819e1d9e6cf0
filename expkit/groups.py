"""Experiment groups: an exploratory record ``X.Y.0`` and its members ``X.Y.k``.

A group's question lives in its parent's human sections; each member changes one thing (the
swept key) and says so in its front matter. This module is the one definition of membership
that ``exp sweep``, the run queue, the group's analysis, review and commit, reports and the
site share:

- a member's meta has ``group: "X.Y.0"`` (its parent record, also its ``parent``) and
  ``changes: {key: value, ...}`` (what it changes against the parent's config: one key, or
  several for a ``--grid`` product);
- the members of ``X.Y.0`` are the records whose ``group`` names it, by version;
- a record's replicates (config ``replicates``, seeds ``seed, seed+1, ...``) run in
  ``Workspace.replicate_dir(V, i)`` = ``out/experiment_V/r{i}/``.

Layer 4 (reads records through ``store``).
"""

from __future__ import annotations

from typing import Any

from . import store
from .errors import RecordError
from .record import HINT_RE, HUMAN, PREREGISTERED, Record, sha256
from .version import Version
from .workspace import Workspace

#: The front matter keys of a member.
GROUP_KEY = "group"
CHANGES_KEY = "changes"


def group_of(meta: dict[str, Any]) -> Version | None:
    """The group a record belongs to (its ``X.Y.0``), or None."""
    value = meta.get(GROUP_KEY)
    if not value or not Version.is_valid(str(value)):
        return None
    return Version.parse(str(value))


def changes_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What a member changes against its group's parent ({} for a record outside a group)."""
    value = meta.get(CHANGES_KEY)
    return dict(value) if isinstance(value, dict) else {}


def can_lead(version: Version) -> bool:
    """Only an exploratory ``X.Y.0`` record (Y ≥ 1) may lead a group."""
    return version.category == "exploratory"


def members(ws: Workspace, parent: Version) -> list[store.Entry]:
    """The member records of ``parent`` by version ([] when it leads none)."""
    return [e for e in store.entries(ws) if not e.error and group_of(e.meta) == parent]


def member_versions(ws: Workspace, parent: Version) -> list[Version]:
    return [e.version for e in members(ws, parent)]


def require_group(ws: Workspace, parent: Version) -> list[store.Entry]:
    """The members of a group, or an error that says how to make one."""
    if not ws.record_path(parent).exists():
        raise RecordError(f"no experiment {parent} ({ws.rel(ws.record_path(parent))}); `exp list` shows the records")
    found = members(ws, parent)
    if not found:
        hint = (f"make members with `exp sweep {parent} KEY=V1,V2`" if can_lead(parent)
                else f"a group is led by an X.Y.0 record (e.g. {parent.major}.{parent.minor}.0)")
        raise RecordError(f"{parent} has no members; {hint}")
    return found


def is_filled(text: str) -> bool:
    """A human section a person wrote: some text, and no template hint (``> 💡``) left."""
    lines = text.split("\n")
    return any(line.strip() for line in lines) and not any(HINT_RE.match(line) for line in lines)


def effective_human(ws: Workspace, record: Record) -> dict[str, dict[str, str]]:
    """The human sections that hold for a record: {name: {"text", "from"}}. A member's section
    that it left unfilled is its group parent's (by reference: the parent's file is read now),
    ``from`` names the record the text comes from; a filled member section is the member's own."""
    out: dict[str, dict[str, str]] = {}
    parent = group_of(record.meta)
    if parent is not None and not ws.record_path(parent).exists():
        parent = None  # a lost parent: `exp check` says so; the member's own text is all there is
    parent_record = None
    for name in HUMAN:
        block = record.block("human", name)
        own = block.text if block is not None else ""
        if is_filled(own) or parent is None or (block is not None and _own_words(own)):
            out[name] = {"text": own, "from": str(record.version)}
            continue
        if parent_record is None:
            parent_record = store.load(ws, parent)
        theirs = parent_record.block("human", name)
        out[name] = {"text": theirs.text if theirs is not None else "", "from": str(parent)}
    return out


def _own_words(text: str) -> bool:
    """Text of a person's beside template hints: the section is the member's own (and `exp
    check` reports the hint lines left in it), never silently replaced by the parent's."""
    return any(line.strip() and not HINT_RE.match(line) for line in text.split("\n"))


def inherited(ws: Workspace, record: Record) -> dict[str, str]:
    """{section: parent version} for each human section a member takes from its group's parent."""
    if group_of(record.meta) is None:
        return {}
    own = str(record.version)
    return {n: e["from"] for n, e in effective_human(ws, record).items() if e["from"] != own}


def prereg_sections(ws: Workspace, record: Record) -> dict[str, str]:
    """What ``exp run`` pre-registers: the hash of each PREREGISTERED section's text as it holds
    for the record (a member's inherited sections: its parent's text)."""
    effective = effective_human(ws, record) if group_of(record.meta) is not None else None
    out = {}
    for name in PREREGISTERED:
        if effective is not None:
            out[name] = sha256(effective[name]["text"])
        else:
            block = record.block("human", name)
            out[name] = sha256(block.text if block is not None else "")
    return out


def prereg_changed(ws: Workspace, record: Record) -> list[str]:
    """The pre-registered sections whose text (as it holds now) is not what the run started with."""
    stored = (record.meta.get("prereg") or {}).get("sections") or {}
    if not stored:
        return []
    now = prereg_sections(ws, record)
    return [n for n, d in stored.items() if n in now and now[n] != d]


def sync_changes(meta: dict[str, Any]) -> None:
    """After ``exp set`` on a member: its ``changes`` follow its config (the swept keys only)."""
    changes = changes_of(meta)
    config = meta.get("config") or {}
    if changes:
        meta[CHANGES_KEY] = {k: config.get(k) for k in changes}


def next_patches(ws: Workspace, parent: Version, n: int) -> list[Version]:
    """The next ``n`` free patch versions after the highest ``X.Y.k`` the workspace holds (a record
    or a state file left behind), so a group's members stay in the order they were made."""
    taken = [parent.patch]
    for path in ws.experiment_dir.glob(f"experiment_{parent.major}.{parent.minor}.*"):
        stem = path.name[len("experiment_"):].split(".md")[0].split(".state.json")[0]
        if Version.is_valid(stem):
            v = Version.parse(stem)
            if (v.major, v.minor) == (parent.major, parent.minor):
                taken.append(v.patch)
    start = max(taken) + 1
    return [Version(parent.major, parent.minor, start + i) for i in range(n)]


def replicate_seeds(config: dict[str, Any]) -> list[int]:
    """The seeds of a record's replicates: ``seed, seed+1, ...`` (one when ``replicates`` is 1)."""
    seed = int(config.get("seed", 0) or 0)
    n = config.get("replicates", 1)
    n = n if isinstance(n, int) and n >= 1 else 1
    return [seed + i for i in range(n)]
