"""What an approval binds, and whether it still holds.

An approval (``exp review``) binds two SHA-256 hashes:

- the record: ``record_sha256`` of its markdown body and its state's ``meta`` — the exact text
  people wrote and read (line endings included) and every value the tool keeps — leaving out
  only what reviewing and committing themselves write: the ``status``, ``review`` and
  ``commit`` entries of the state and the content of the generated ``review`` section. The
  front matter is not hashed as text: it is rendered from ``meta``, which is;
- the run script ``run_file/experiment_X.Y.Z.sh``, byte for byte.

A group's approval (``exp review PARENT``) binds the same two hashes of every member too
(``approved.members``): a member edited after it, or one that joined or left the group, makes
it stale, and the message names the member.

A later change to either makes the approval stale (``approval_state``): ``exp commit``
refuses, ``exp check`` sets the record back to ``analyzed``, and ``approval_issue`` reports it.
A committed record keeps its approval, so the same hashes show that it was edited after the
commit. Layer 4, read side: hashes and checks only, nothing written.
"""

from __future__ import annotations

import json
from typing import Any

from . import groups, store
from .errors import RecordError
from .problem import Problem
from .record import Record, sha256, split_front_matter
from .version import Version
from .workspace import Workspace

#: State entries that reviewing and committing write: outside the approved content.
UNHASHED_KEYS = ("status", "review", "commit")


def record_sha256(body: str, meta: dict[str, Any]) -> str:
    """SHA-256 of a record's markdown body and meta, minus what a review or a commit writes."""
    try:
        parsed = Record.parse("---\n---\n" + body, meta=meta)
    except RecordError:  # not a record any more: hash it whole, which never matches an approval
        return sha256("exp-unparsed\x00" + body)
    kept = "".join(
        p if isinstance(p, str) else (p.open_line + p.close_line if (p.kind, p.name) == ("generated", "review") else p.render())
        for p in parsed.parts
    )
    facts = json.dumps({k: v for k, v in meta.items() if k not in UNHASHED_KEYS}, sort_keys=True, ensure_ascii=False, default=str)
    return sha256("exp-record-2\x00" + kept + "\x00" + facts)


def text_sha256(text: str, meta: dict[str, Any]) -> str:
    """``record_sha256`` of a whole record file's text."""
    try:
        _, body = split_front_matter(text)
    except RecordError:
        return sha256("exp-unparsed\x00" + text)
    return record_sha256(body, meta)


def file_sha256(path: Any) -> str | None:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def current_hashes(ws: Workspace, record: Record) -> dict[str, str | None]:
    """The hashes an approval would bind now, from the files on disk."""
    return hashes_of(ws, str(record.meta.get("version")))


def group_hashes(ws: Workspace, parent: str) -> dict[str, dict[str, str | None]]:
    """{member version: its ``hashes_of``} for every member of the group ``parent`` leads: what a
    group's approval binds besides the parent's own hashes."""
    return {str(v): hashes_of(ws, str(v)) for v in groups.member_versions(ws, Version.parse(parent))}


def hashes_of(ws: Workspace, v: str) -> dict[str, str | None]:
    """``current_hashes`` of the record ``v`` (record and run script), from the files on disk."""
    path = ws.record_path(v)
    try:
        text = path.read_bytes().decode("utf-8")
        state = store.read_state(ws, v)
    except (FileNotFoundError, UnicodeDecodeError, RecordError):
        text, state = None, None
    return {
        "record": text_sha256(text, state["meta"]) if text is not None and state is not None else None,
        "script": file_sha256(ws.run_script_path(v)),
    }


def review_of(record: Record) -> dict[str, Any]:
    review = record.meta.get("review")
    return review if isinstance(review, dict) else {}


def approval_state(ws: Workspace, record: Record) -> dict[str, Any]:
    """Whether an approval is on record and whether it still covers the files on disk.

    Returns ``approved`` (an approval is on record), ``valid`` (approved and both hashes
    match), ``stale`` (approved but a hash differs), ``changed`` (``record`` and/or
    ``script``), ``files`` (their paths), ``current`` and ``approved_sha256`` (the hashes),
    and ``by`` / ``at`` / ``round`` of the approval.
    """
    v = str(record.meta.get("version"))
    files = {"record": ws.rel(ws.record_path(v)), "script": ws.rel(ws.run_script_path(v))}
    current = current_hashes(ws, record)
    approved = review_of(record).get("approved")
    state: dict[str, Any] = {"approved": False, "valid": False, "stale": False, "changed": [], "files": files, "current": current}
    if not isinstance(approved, dict):
        return state
    bound = {"record": approved.get("record_sha256"), "script": approved.get("script_sha256")}
    changed = [k for k in ("record", "script") if bound[k] != current[k]]
    members = approved.get("members")
    if isinstance(members, dict):  # a group's approval binds every member too
        now = group_hashes(ws, v)
        for m in sorted(set(members) | set(now), key=lambda x: [int(p) for p in x.split(".")]):
            key = f"member {m}"
            files[key] = ws.rel(ws.record_path(m))
            if m not in now:
                changed.append(key)
                files[key] += " (no longer a member)"
            elif m not in members:
                changed.append(key)
                files[key] += " (joined the group after the approval)"
            elif members[m] != {"record": now[m]["record"], "script": now[m]["script"]}:
                changed.append(key)
        state["members"] = sorted(members)
    state.update(
        approved=True, valid=not changed, stale=bool(changed), changed=changed, approved_sha256=bound,
        by=f"{approved.get('reviewer', '?')} <{approved.get('email', '?')}>", at=approved.get("time"), round=approved.get("round"),
    )
    return state


def changed_files(state: dict[str, Any]) -> str:
    return " and ".join(f"the {k} {state['files'][k]}" for k in state["changed"]) or "the approval"


def approval_issue(ws: Workspace, record: Record) -> tuple[str, str, str] | None:
    """(level, message, fix) when an approval does not hold, a committed record was edited, or
    an approval went stale earlier; None when all is well."""
    v = str(record.meta.get("version"))
    status = record.status
    if status in ("approved", "committed"):
        state = approval_state(ws, record)
        if not state["approved"]:
            return "error", f"the status is {status} but no approval is on record", f"a person runs `exp review {v}`"
        if not state["stale"]:
            return None
        if status == "approved":
            return (
                "error",
                f"the approval of {v} is stale: {changed_files(state)} changed since {state['by']} approved it ({state['at']})",
                f"`exp check {v}` sets it back to analyzed; then a person runs `exp review {v}` again",
            )
        paths = " ".join([state["files"][k] for k in state["changed"]] + [ws.rel(ws.state_path(v))])
        return (
            "error",
            f"{v} is committed and must not change, but {changed_files(state)} changed since the commit",
            f"restore with `git checkout -- {paths}`; record new work as `exp new NEXT --from {v}`",
        )
    stale = review_of(record).get("stale")
    if isinstance(stale, dict):
        changed = " and ".join(stale.get("changed") or []) or "the files"
        return (
            "warning",
            f"the approval of round {stale.get('round')} went stale ({changed} changed; noticed {stale.get('time')})",
            f"a person runs `exp review {v}` again",
        )
    return None


def stale_approval_problem(ws: Workspace, record: Record) -> str | None:
    """``approval_issue`` as one line (message; fix) for ``exp show``; None when all is well."""
    issue = approval_issue(ws, record)
    return None if issue is None else f"{issue[1]}; {issue[2]}"


def review_problems(ws: Workspace, record: Record) -> list[Problem]:
    """``approval_issue`` as problems for ``exp check``: an error for an approved or committed
    record that changed, a warning for an approval that went stale."""
    issue = approval_issue(ws, record)
    if issue is None:
        return []
    line = next((i + 2 for i, x in enumerate(record.front_raw.split("\n")) if x.startswith("status:")), 1)
    return [Problem(issue[0], line, issue[1], issue[2])]
