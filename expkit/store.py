"""The records of a workspace: create, load, save (atomically, under a lock), list, lineage.

Every write goes through ``update``: take the record's lock, read the file fresh, change it,
write a temp file, fsync, ``os.replace``. Two ``exp set`` at once therefore serialise instead
of losing one update or leaving half a file.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import record as rec_mod
from .errors import HandEditError, RecordError
from .record import Record
from .version import Version
from .workspace import Workspace

GENERATED = ("info", "config", "execution", "environment", "metrics", "review")


# -- files ---------------------------------------------------------------------------------
def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def locked(ws: Workspace, version: Version) -> Iterator[None]:
    lock = ws.lock_path(version)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(ws: Workspace, version: Version) -> Record:
    path = ws.record_path(version)
    if not path.exists():
        raise RecordError(f"no experiment {version} (expected {_rel(ws, path)}); create it with `exp new {version}`")
    record = Record.read(path)
    if str(record.meta.get("version")) != str(version):
        raise RecordError(
            f"{_rel(ws, path)} says version {record.meta.get('version')!r} in its front matter; set it back to {version}"
        )
    return record


def save(ws: Workspace, record: Record) -> None:
    assert record.path is not None
    atomic_write(record.path, record.render())


@contextmanager
def update(ws: Workspace, version: Version) -> Iterator[Record]:
    """Load under the lock, let the caller change the record, write it back atomically.

    Nothing is written when the body of the ``with`` raises.
    """
    with locked(ws, version):
        record = load(ws, version)
        before = record.render()
        yield record
        after = record.render()  # rendered once: dumping a large front matter costs ~25 ms
        if after != before:
            assert record.path is not None
            atomic_write(record.path, after)


def _rel(ws: Workspace, path: Path) -> str:
    try:
        return str(path.relative_to(ws.root))
    except ValueError:
        return str(path)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# -- generated blocks ------------------------------------------------------------------------
def block_context(ws: Workspace, record: Record, names: tuple[str, ...] = GENERATED) -> dict[str, Any]:
    """What the generated blocks' templates see. The parameter table (which needs the config
    module, pydantic and all) is built only when ``names`` includes the config block."""
    meta = record.meta
    version = Version.parse(str(meta["version"]))
    lang = meta.get("lang", "zh")
    config = meta.get("config") or {}
    rows: list[dict[str, Any]] = []
    if "config" in names:
        from . import config as cfg_mod

        parent_cfg = None
        if meta.get("parent"):
            parent_path = ws.record_path(meta["parent"])
            if parent_path.exists():
                parent_cfg = rec_mod.read_meta(parent_path).get("config") or {}
        rows = cfg_mod.table_rows(config, parent_cfg, lang)
    last_group = None
    for row in rows:
        row["first"] = row["group"] != last_group
        last_group = row["group"]
    return {
        "version": str(version),
        "stem": version.stem,
        "category": version.category,
        "description": meta.get("description", ""),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "created": meta.get("created", ""),
        "lang": lang,
        "script": _rel(ws, ws.run_script_path(version)),
        "out": _rel(ws, ws.out_dir(version)) + "/",
        "rows": rows,
        "changed": [r["key"] for r in rows if r["changed"]],
        "run": meta.get("run") or {},
        "analysis": meta.get("analysis") or {},
        "plots": _plot_links(ws, record),
        # samples.json is read (and its quality computed) only for the section that shows it
        "samples": _samples(ws, record) if "metrics" in names else [],
        "review": meta.get("review") or {},
    }


def _samples(ws: Workspace, record: Record) -> list[dict[str, Any]]:
    if not record.meta.get("analysis"):
        return []
    from .results import sample_rows

    return sample_rows(ws, record.meta["version"])


def _plot_links(ws: Workspace, record: Record) -> list[dict[str, str]]:
    plots = (record.meta.get("analysis") or {}).get("plots") or []
    if not plots or record.path is None:
        return []
    from .results import plot_links

    return plot_links(ws, record.path, [str(p) for p in plots])


def render_block(ws: Workspace, record: Record, name: str, context: dict[str, Any] | None = None) -> str:
    from .render import render

    ctx = context or block_context(ws, record)
    text = render(ws.templates_dir, f"{ctx['lang']}/blocks/{name}.md.j2", r=ctx)
    return text if text.endswith("\n") else text + "\n"


def hand_edit_error(ws: Workspace, record: Record, block: rec_mod.Block) -> HandEditError:
    v = record.meta.get("version")
    return HandEditError(
        f"{_rel(ws, record.path) if record.path else 'record'}:{block.line}: the generated section "
        f"'{block.name}' was edited by hand and would be overwritten; make the change with "
        f"`exp set {v} KEY=VALUE` instead (to drop the hand edit, `exp set {v} --regenerate` saves it under out/.discarded/ first)"
    )


def regenerate_blocks(ws: Workspace, record: Record, names: tuple[str, ...] = GENERATED, discard: bool = False) -> list[Path]:
    """Re-render generated blocks from data. Refuses (HandEditError) if one was hand-edited,
    unless ``discard``, in which case the edited text is saved first; returns those files."""
    saved: list[Path] = []
    edited = {b.name: b for b in record.edited_generated()}
    for name in names:
        if name in edited:
            if not discard:
                raise hand_edit_error(ws, record, edited[name])
            saved.append(_save_discarded(ws, record, edited[name]))
    ctx = block_context(ws, record, names)
    for name in names:
        if record.block("generated", name) is not None:
            record.set_generated(name, render_block(ws, record, name, ctx))
    return saved


def _save_discarded(ws: Workspace, record: Record, block: rec_mod.Block) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = ws.discarded_dir() / f"experiment_{record.meta.get('version')}.{block.name}.{stamp}.md"
    atomic_write(path, block.content)
    return path


# -- creation ------------------------------------------------------------------------------
def create(
    ws: Workspace,
    version: Version,
    parent: Version | None = None,
    baseline: Version | None = None,
    description: str = "",
    lang: str | None = None,
) -> Record:
    from . import config as cfg_mod
    from .render import render

    path = ws.record_path(version)
    if path.exists():
        raise RecordError(
            f"experiment {version} already exists ({_rel(ws, path)}); nothing was changed — pick another version, "
            f"e.g. {version.bump('patch')}"
        )
    config: dict[str, Any] = cfg_mod.TrainConfig().model_dump()
    if parent is not None:
        if parent == version:
            raise RecordError(f"an experiment cannot be its own parent ({version})")
        parent_meta = _existing_meta(ws, parent, "--from")
        try:
            config = cfg_mod.validate(parent_meta.get("config") or {}).model_dump()
        except Exception as err:  # ConfigError: the parent's own config is broken
            raise RecordError(f"parent {parent} has an invalid config ({err}); fix it with `exp set {parent}` first") from None
        lang = lang or parent_meta.get("lang")
        if baseline is None and parent_meta.get("baseline"):
            baseline = Version.parse(str(parent_meta["baseline"]))
    if baseline is not None and baseline != version:
        _existing_meta(ws, baseline, "--baseline")
    lang = lang or ws.default_lang
    if lang not in ("zh", "en"):
        raise RecordError(f"language {lang!r} is not zh or en")
    meta: dict[str, Any] = {
        "schema": rec_mod.SCHEMA,
        "version": str(version),
        "parent": str(parent) if parent else None,
        "baseline": str(baseline) if baseline else None,
        "status": "draft",
        "description": description,
        "lang": lang,
        "created": now(),
        "config": config,
    }
    skeleton = Record(meta=meta, parts=[], path=path)
    ctx = block_context(ws, skeleton)
    blocks = {name: render_block(ws, skeleton, name, ctx) for name in GENERATED}
    body = render(ws.templates_dir, f"{lang}/record.md.j2", version=str(version), blocks=blocks)
    record = Record.parse("---\n" + rec_mod._dump_yaml(meta) + "---\n" + body, path)
    record.meta["digests"] = {b.name: rec_mod.digest(b.content) for b in record.blocks("generated")}
    with locked(ws, version):
        if path.exists():  # lost a race with another `exp new`
            raise RecordError(f"experiment {version} already exists ({_rel(ws, path)}); nothing was changed")
        save(ws, record)
    return Record.read(path)


def _existing_meta(ws: Workspace, version: Version, flag: str) -> dict[str, Any]:
    path = ws.record_path(version)
    if not path.exists():
        raise RecordError(f"{flag} {version}: no such experiment ({_rel(ws, path)}); create it first or drop {flag}")
    return rec_mod.read_meta(path)


# -- listing -------------------------------------------------------------------------------
@dataclass
class Entry:
    version: Version
    path: Path
    meta: dict[str, Any]
    error: str | None = None

    @property
    def status(self) -> str:
        return "broken" if self.error else str(self.meta.get("status", "?"))


#: Front-matter keys a listing needs (parsing only these keeps `exp list` fast).
LISTED = ("parent", "baseline", "status", "description")


def record_files(ws: Workspace) -> list[tuple[Version, Path]]:
    """Every ``experiment/experiment_X.Y.Z.md`` with its version, sorted by version."""
    if not ws.experiment_dir.is_dir():
        return []
    found = []
    for path in ws.experiment_dir.glob("experiment_*.md"):
        stem = path.name[len("experiment_") : -len(".md")]
        if Version.is_valid(stem):
            found.append((Version.parse(stem), path))
    return sorted(found, key=lambda item: item[0])


def entries(ws: Workspace) -> list[Entry]:
    """Every record's listing keys (LISTED), sorted by version; a broken file is listed, not fatal."""
    out = []
    for version, path in record_files(ws):
        try:
            out.append(Entry(version, path, rec_mod.read_meta(path, LISTED)))
        except RecordError as err:
            out.append(Entry(version, path, {}, str(err)))
    return out


def config_diff(ws: Workspace, reference: Any, config: dict[str, Any]) -> dict[str, list[Any]] | None:
    """The config keys that differ from the record ``reference``'s ({key: [theirs, ours]}), or
    None when that record does not exist."""
    path = ws.record_path(reference)
    if not path.exists():
        return None
    from . import config as cfg_mod  # pydantic: only when there is something to diff

    return {k: list(v) for k, v in cfg_mod.diff(rec_mod.read_meta(path).get("config") or {}, config).items()}


# -- the commands' core ----------------------------------------------------------------------
#: Statuses in which the config may still change: once a run started, the config is what ran.
EDITABLE = ("draft", "ready", "failed")


def set_config(ws: Workspace, version: Version, assignments: list[str], regenerate: bool = False) -> dict[str, Any]:
    """Apply KEY=VALUE strings and rewrite the parameter table; ``regenerate`` rewrites every
    generated section, saving hand edits under out/.discarded/ first."""
    from . import config as cfg_mod

    changed: dict[str, tuple[Any, Any]] = {}
    with update(ws, version) as record:
        if assignments:
            rec_mod.require_status(record, EDITABLE, "change the config of")
            new, changed = cfg_mod.apply(record.meta.get("config") or {}, assignments)
            if changed:
                record.meta["config"] = new.model_dump()
                if record.status == "failed":
                    record.set_status("draft")  # a changed config needs `exp check` before a rerun
        names = GENERATED if regenerate else (("config",) if changed else ())
        discarded = regenerate_blocks(ws, record, names, discard=regenerate)
    return {
        "version": str(version),
        "changed": {k: list(v) for k, v in changed.items()},
        "discarded": [str(p) for p in discarded],
        "status": record.status,
    }


def describe(ws: Workspace, version: Version) -> dict[str, Any]:
    from . import claims as claims_mod

    record = load(ws, version)
    meta = record.meta
    sections = {name: (record.block("human", name).text if record.block("human", name) else "") for name in rec_mod.HUMAN}
    expected = record.block("human", "expected")
    found = claims_mod.parse_claims(expected.text, expected.first_content_line)[0] if expected else []
    changed = (config_diff(ws, meta["parent"], meta.get("config") or {}) if meta.get("parent") else None) or {}
    warnings = []
    prereg = (meta.get("prereg") or {}).get("sections") or {}
    changed_sections = [n for n, d in prereg.items() if n in sections and rec_mod.sha256(sections[n]) != d]
    if changed_sections:
        warnings.append(f"changed after the run started (pre-registration): {', '.join(changed_sections)}")
    if record.edited_generated():
        warnings.append(f"hand-edited generated sections: {', '.join(b.name for b in record.edited_generated())}")
    from . import review as review_mod

    stale = review_mod.stale_approval_problem(ws, record)
    if stale:
        warnings.append(stale)
    info = {k: meta.get(k) for k in rec_mod.REQUIRED_META}
    info.update(
        {
            "category": version.category,
            "lang": meta.get("lang"),
            "created": meta.get("created"),
            "path": _rel(ws, record.path),
            "next": rec_mod.next_step(record.status, str(version)),
            "sections": sections,
            "claims": [c.to_dict() for c in found],
            "changed_from_parent": changed,
            "prereg_changed": changed_sections,
            "warnings": warnings,
        }
    )
    for key in ("run", "analysis", "review"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    found = meta.get("analysis") or {}
    info["verdicts"] = [
        {k: x.get(k) for k in ("claim", "verdict", "observed", "reference", "reason", "metric")}
        for x in found.get("verdicts") or [] if isinstance(x, dict)
    ]
    commit = review_mod.commit_info(ws, record)
    if commit:
        info["commit"] = commit
    if meta.get("review") or record.status in ("approved", "committed"):
        info["approval"] = review_mod.approval_state(ws, record)
    return info


def list_records(ws: Workspace, status: str | None = None) -> list[dict[str, Any]]:
    if status is not None and status not in rec_mod.STATUSES and status != "broken":
        from .errors import UsageError

        raise UsageError(f"--status must be one of {', '.join(rec_mod.STATUSES)}, not {status!r}")
    rows = []
    for e in entries(ws):
        if status and e.status != status:
            continue
        rows.append(
            {
                "version": str(e.version),
                "status": e.status,
                "category": e.version.category,
                "parent": e.meta.get("parent"),
                "baseline": e.meta.get("baseline"),
                "description": e.error or e.meta.get("description", ""),
                "path": _rel(ws, e.path),
            }
        )
    return rows
