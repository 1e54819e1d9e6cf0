"""Where records are kept: the markdown and the tool's state beside it, read and written whole.

A record ``X.Y.Z`` is two files in ``experiment/``:

- ``experiment_X.Y.Z.md`` — the document people read, edit, review and commit;
- ``experiment_X.Y.Z.state.json`` — what the tool owns: ``meta`` (status, config, run,
  analysis, review ... — what the front matter shows) and ``view`` (what the tool last wrote
  into the markdown, to recognise a stale editor buffer). Only ``exp`` writes it.

Writes go through ``files.atomic_write`` under the record's lock (``locked``): the state first,
then the markdown, so a crash in between leaves a state that is newer than its view, which the
next command renders again. A record made before the state file existed is read from its front
matter (``load``) and gets its state file at its first write. Layer 2: persistence only; what
the files mean is decided above (``records``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecordError
from .files import atomic_write, file_lock
from .record import Record, digest, empty_view, lf, sha256
from .version import Version
from .workspace import Workspace

STATE_SCHEMA = 1


@contextmanager
def locked(ws: Workspace, version: Any) -> Iterator[None]:
    with file_lock(ws.lock_path(version)):
        yield


def read_state(ws: Workspace, version: Any) -> dict[str, Any] | None:
    """The state file's content, or None when the record has none yet."""
    path = ws.state_path(version)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{ws.rel(path)} cannot be read ({err}); restore it from git (`git checkout -- {ws.rel(path)}`)") from None
    try:
        state = json.loads(raw)
    except ValueError as err:
        raise RecordError(
            f"{ws.rel(path)} is not valid JSON ({err}); it is written only by exp: restore it from git "
            f"(`git checkout -- {ws.rel(path)}`)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict):
        raise RecordError(f"{ws.rel(path)} has no 'meta' object; restore it from git (`git checkout -- {ws.rel(path)}`)")
    return state


def load(ws: Workspace, version: Version) -> Record:
    """The record as the files hold it, not yet reconciled (``records.load`` does that)."""
    path = ws.record_path(version)
    state = read_state(ws, version)
    if not path.exists():
        if state is not None:
            raise RecordError(
                f"{ws.rel(path)} is missing while its state {ws.rel(ws.state_path(version))} is there; "
                f"restore the markdown from git (`git checkout -- {ws.rel(path)}`)"
            )
        raise RecordError(f"no experiment {version} (expected {ws.rel(path)}); create it with `exp new {version}`")
    if state is None:
        record = _from_front_matter(path)
    else:
        record = Record.read(path, meta=state["meta"])
        view = state.get("view")
        record.view = view if isinstance(view, dict) else empty_view()
    if str(record.meta.get("version")) != str(version):
        raise RecordError(
            f"{ws.rel(ws.state_path(version) if state else path)} says version {record.meta.get('version')!r}; "
            f"it belongs to {version}: restore it from git"
        )
    return record


def _from_front_matter(path: Path) -> Record:
    """A record written before state files: its front matter becomes the state. Generated
    blocks whose digest (kept then in the front matter) no longer matches were edited by hand."""
    record = Record.read(path)
    digests = record.meta.pop("digests", None) or {}
    view = empty_view()
    for b in record.blocks("generated"):
        same = digests.get(b.name) in (None, sha256(b.content)[:16], digest(b.content))
        view["generated"][b.name] = lf(b.content) if same else None
    for b in record.blocks("ai"):
        view["ai"][b.name] = {"text": b.text}
    record.view = view
    record.front_stale = True  # written anew, without the digests, at the first write
    return record


def serialize(record: Record) -> tuple[str, str]:
    """(the state file's text, the markdown's text) that ``save`` would write."""
    text = record.render()
    record.view["front_sha256"] = sha256(lf(record.front_text()))
    state = {"schema": STATE_SCHEMA, "meta": record.meta, "view": record.view}
    return json.dumps(state, ensure_ascii=False, indent=1) + "\n", text


def save(ws: Workspace, record: Record, serialized: tuple[str, str] | None = None) -> None:
    """Write the state, then the markdown; afterwards the record's view is what the file holds."""
    assert record.path is not None
    state_text, text = serialized or serialize(record)
    atomic_write(ws.state_path(record.meta["version"]), state_text)
    atomic_write(record.path, text)
    record.mark_written()


def read_meta(ws: Workspace, version: Any) -> dict[str, Any]:
    """Another record's meta, for comparisons and reports: from its state, else its front matter."""
    state = read_state(ws, version)
    if state is not None:
        return state["meta"]
    path = ws.record_path(version)
    if not path.exists():
        raise RecordError(f"no experiment {version} ({ws.rel(path)}); `exp list` shows the records")
    return _from_front_matter(path).meta


# -- listing -------------------------------------------------------------------------------
def record_files(ws: Workspace) -> list[tuple[Version, Path]]:
    """Every ``experiment/experiment_X.Y.Z.md`` with its version, sorted by version."""
    if not ws.experiment_dir.is_dir():
        return []
    found = []
    for path in ws.experiment_dir.glob("experiment_*.md"):
        stem = path.name[len("experiment_"): -len(".md")]
        if Version.is_valid(stem):
            found.append((Version.parse(stem), path))
    return sorted(found, key=lambda item: item[0])


@dataclass
class Entry:
    version: Version
    path: Path
    meta: dict[str, Any]
    error: str | None = None

    @property
    def status(self) -> str:
        return "broken" if self.error else str(self.meta.get("status", "?"))


def entries(ws: Workspace) -> list[Entry]:
    """Every record's meta, sorted by version; a broken record is listed, not fatal."""
    out = []
    for version, path in record_files(ws):
        try:
            out.append(Entry(version, path, read_meta(ws, version)))
        except RecordError as err:
            out.append(Entry(version, path, {}, str(err)))
    return out

