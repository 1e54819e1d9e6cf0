"""Records as every command sees them: the markdown reconciled with the tool's state.

People keep a record open in an editor while the tool changes it (a detached run finishes,
``exp analyze`` writes its section). A save from that stale buffer brings back an older front
matter and older generated or ai sections. The tool's state (``store``) is the truth for those
parts, so ``load`` and ``update`` first *reconcile* the file with it:

- the front matter is the tool's view of its state: when the file's differs from what the tool
  last wrote, it is rendered again — except the ``description``, which a person may edit there
  and which is then taken into the state;
- a generated block or an ai section holding one of the tool's *earlier* texts (a stale save)
  gets the current text back; a text the tool never wrote is a person's edit: in a generated
  block it is kept and reported (``exp check``), in an ai section it becomes the section's text;
- human sections are never touched.

Whatever was restored is said in one line (``take_notices``; the CLI prints them) and written
back at once. Layer 4, the bottom of the services: everything that changes a record goes
through ``update`` (the lock, reconcile, the change, one atomic write of state and markdown).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from . import store
from .errors import RecordError
from .record import STATE_ONLY, Record, lf, parse_front_matter, sha256, with_newline
from .version import Version
from .workspace import Workspace

_notices: list[str] = []
_UNWRITTEN = object()  # a generated block the tool has not written yet


def note(text: str) -> None:
    """A one-line notice for the person at the terminal (the CLI prints it after the command)."""
    _notices.append(text)


def take_notices() -> list[str]:
    """The reconciliation notices since the last call (each one line), and forget them."""
    out = list(_notices)
    _notices.clear()
    return out


def reconcile(ws: Workspace, record: Record) -> str | None:
    """Bring the parts of the file the tool owns back to its state; None when nothing changed,
    else the one line that says what was restored (and what of the person's was kept)."""
    restored: list[str] = []
    kept: list[str] = []
    view = record.view
    front_sha = view.get("front_sha256")
    if front_sha is not None and sha256(lf(record.front_raw)) != front_sha:
        record.front_stale = True
        try:
            theirs = parse_front_matter(record.front_raw, ws.rel(record.path) if record.path else "record")
        except RecordError as err:
            restored.append(f"the front matter ({str(err).split(': ', 1)[-1]})")
        else:
            differing = [k for k in sorted(set(theirs) | set(record.meta))
                         if theirs.get(k) != record.meta.get(k) and k not in STATE_ONLY]  # not in a front matter
            desc = theirs.get("description")
            if isinstance(desc, str) and desc != record.meta.get("description"):
                record.meta["description"] = desc
                kept.append("your description")
                differing.remove("description")
            if differing:
                restored.append(f"the front matter's {', '.join(differing)}")
    for b in record.blocks("generated"):
        stored = (view.get("generated") or {}).get(b.name, _UNWRITTEN)
        if stored is _UNWRITTEN:  # a block new to the tool (a newer template): its text is the tool's now
            view.setdefault("generated", {})[b.name] = lf(b.content)
        elif stored is not None and lf(b.content) != stored and record.was_seen(f"generated:{b.name}", b.content):
            b.content = with_newline(stored, record.newline)
            restored.append(f"the {b.name} section")
    for b in record.blocks("ai"):
        entry = (view.get("ai") or {}).get(b.name)
        if entry is None:
            view.setdefault("ai", {})[b.name] = {"text": b.text}
        elif b.text != entry.get("text"):
            if record.was_seen(f"ai:{b.name}", b.text):
                b.set_text(entry["text"])
                restored.append(f"the {b.name} section")
            else:  # written in the file itself (a person, or an assistant in an editor): now the section's text
                record.remember(f"ai:{b.name}", entry.get("text"))
                view["ai"][b.name] = {"text": b.text}
    if not restored and not kept:
        return None
    where = ws.rel(record.path) if record.path else str(record.meta.get("version"))
    parts = [f"restored {', '.join(restored)} from exp's state (the file held an older or broken copy)"] if restored else []
    parts.append(f"kept {', '.join(kept + ['your text in the human sections'])}" if kept else "your text in the human sections is kept")
    return f"{where}: " + "; ".join(parts)


def _fingerprint(record: Record) -> str:
    return json.dumps([record.meta, record.view], sort_keys=True, default=str)


def load(ws: Workspace, version: Version, locked: bool = False) -> Record:
    """A record, reconciled; a restoration is written back and noted. ``locked``: the caller
    holds the record's lock already (``store.locked``)."""
    if not locked:
        with store.locked(ws, version):
            return load(ws, version, locked=True)
    record = store.load(ws, version)
    restored = reconcile(ws, record)
    if restored:
        store.save(ws, record)
        note(restored)
    return record


@contextmanager
def update(ws: Workspace, version: Version) -> Iterator[Record]:
    """Load under the lock, reconcile, let the caller change the record, write it back
    atomically (state, then markdown). Nothing of the caller's is written when the body raises."""
    with store.locked(ws, version):
        record = store.load(ws, version)
        restored = reconcile(ws, record)
        before_text, before = record.render(), _fingerprint(record)
        yield record
        if restored or record.front_stale or _fingerprint(record) != before or record.render() != before_text:
            store.save(ws, record)
        if restored:
            note(restored)
