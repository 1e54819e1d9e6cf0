"""``exp commit``: the approved, unchanged record goes into git with its run script and small
artifacts; nothing else of the user's is touched.

The record's markdown (with ``status: committed``) and state, the run script and the small
artifacts (``ARTIFACTS`` under ``out/experiment_X.Y.Z/``, each at most ``[tool.exp]
artifact_max_bytes``) are committed through ``gitops.commit_paths``, which leaves the user's
other staged and unstaged changes alone. The commit SHA cannot be inside the commit it names,
so it is written afterwards to ``out/experiment_X.Y.Z/commit.json`` (untracked, like the other
run outputs); ``commit_info`` gives the record's ``commit`` entry merged with that file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from . import approval, gitops, groups, records, store, tasks, times
from .verdicts import verdict_kind
from .errors import ConfigError, ExpError, RecordError, WorkspaceError
from .files import read_json, write_json
from .record import Record, sha256
from .render import oneline
from .status import next_step, require_status, transition
from .version import Version
from .workspace import Workspace


class StaleApprovalError(ExpError):
    """The approval does not cover the files as they are now."""


ARTIFACTS = ("summary.json", "analysis.json", "metrics_summary.json", "group_analysis.json", "plots/*.png", "r*/summary.json")
DEFAULT_ARTIFACT_MAX_BYTES = 1024 * 1024
COMMIT_FILE = "commit.json"


def commit_info(ws: Workspace, record: Record) -> dict[str, Any] | None:
    """The commit of a committed record: ``meta["commit"]`` (time, paths, reviewed_by) merged
    with ``out/experiment_X.Y.Z/commit.json`` (sha, branch, ...); None when never committed."""
    v = str(record.meta.get("version"))
    info: dict[str, Any] = {}
    if isinstance(record.meta.get("commit"), dict):
        info.update(record.meta["commit"])
    saved = read_json(ws.out_dir(v) / COMMIT_FILE)
    if isinstance(saved, dict):
        info.update(saved)
    if not info:
        return None
    if not info.get("sha"):
        info["sha"] = None
        info["find"] = f"git log -1 --format=%H --grep='^exp({v}):'"
    return info


def artifact_max_bytes(ws: Workspace) -> int:
    limit = ws.settings.get("artifact_max_bytes", DEFAULT_ARTIFACT_MAX_BYTES)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise WorkspaceError("[tool.exp] artifact_max_bytes in pyproject.toml must be a whole number of bytes, e.g. 1048576")
    return limit


def artifacts(ws: Workspace, version: Version) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The small artifacts to commit (``ARTIFACTS`` that exist), and those over the size cap."""
    out = ws.out_dir(version)
    limit = artifact_max_bytes(ws)
    kept: list[Path] = []
    skipped: list[tuple[Path, int]] = []
    try:  # the record's task names its own (classify: classification_report.txt, samples.json)
        own = tasks.of(ws, store.read_meta(ws, version)).artifacts
    except ConfigError:
        own = ()
    for pattern in dict.fromkeys([*ARTIFACTS, *own]):
        for path in sorted(out.glob(pattern)):
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            (skipped.append((path, size)) if size > limit else kept.append(path))
    return kept, skipped


def verdict_counts(record: Record) -> str:
    """``2 confirmed, 1 refuted`` from the analysis' verdicts (zero kinds left out), or ``none``."""
    verdicts = (record.meta.get("analysis") or {}).get("verdicts") or []
    counts = Counter(verdict_kind(str(x.get("verdict"))) for x in verdicts if isinstance(x, dict))
    order = ["confirmed", "refuted", "inconclusive"] + sorted(k for k in counts if k not in ("confirmed", "refuted", "inconclusive"))
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "none"


def _counted(verdicts: list[Any]) -> Counter[str]:
    return Counter(verdict_kind(str(x.get("verdict"))) for x in verdicts if isinstance(x, dict))


def _said(counts: Counter[str]) -> str:
    order = ["confirmed", "refuted", "inconclusive"] + sorted(k for k in counts if k not in ("confirmed", "refuted", "inconclusive"))
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "none"


def commit_message(record: Record, state: dict[str, Any], members: list[Record] | None = None) -> str:
    """The subject ``exp(V): description`` and the trailers; a group's commit counts every
    member's verdicts and the group's own in ``Verdicts``, and names each member."""
    v = str(record.meta.get("version"))
    description = oneline(record.meta.get("description", ""))
    subject = f"exp({v}): {description}" if description else f"exp({v})"
    trailers = [
        f"Reviewed-by: {state['by']}",
        f"Record-SHA256: {state['approved_sha256']['record']}",
        f"Script-SHA256: {state['approved_sha256']['script']}",
    ]
    if members is None:
        trailers.append(f"Verdicts: {verdict_counts(record)}")
        return subject + "\n\n" + "\n".join(trailers) + "\n"
    own = _counted((record.meta.get("analysis") or {}).get("verdicts") or [])
    group = _counted((record.meta.get("group_analysis") or {}).get("verdicts") or [])
    each = [(m, _counted((m.meta.get("analysis") or {}).get("verdicts") or [])) for m in members]
    total = own + group + sum((c for _, c in each), Counter())
    trailers.append(f"Verdicts: {_said(total)}")
    trailers.append(f"Group-Verdicts: {_said(group)}")
    trailers += [f"Member: {m.version} {oneline(', '.join(f'{k}={x}' for k, x in (m.meta.get('changes') or {}).items()))} "
                 f"({_said(c)})".replace("  ", " ") for m, c in each]
    return subject + "\n\n" + "\n".join(trailers) + "\n"


def commit(ws: Workspace, version: Version, sign: bool = False) -> dict[str, Any]:
    """``exp commit``: commit the approved, unchanged record (markdown and state), its run script
    and its small artifacts; then the record says ``committed`` and ``commit.json`` holds the SHA.
    A group's parent approved with its members (``exp review PARENT``) commits them all in one commit."""
    v = str(version)
    with store.locked(ws, version):
        record = records.load(ws, version, locked=True)
        if isinstance((approval.review_of(record).get("approved") or {}).get("members"), dict) and record.status != "committed":
            return _commit_group(ws, version, record, sign)
    with store.locked(ws, version):
        record = records.load(ws, version, locked=True)
        if record.status == "committed":
            sha = (commit_info(ws, record) or {}).get("sha") or "see git log"
            raise RecordError(f"{v} is already committed ({sha}); next: {next_step('committed', v)}")
        require_status(record, ("approved",), "commit")
        state = approval.approval_state(ws, record)
        if not state["approved"]:
            raise StaleApprovalError(f"cannot commit {v}: its status says approved but no approval is on record; a person runs `exp review {v}`")
        if state["stale"]:
            raise StaleApprovalError(
                f"cannot commit {v}: {approval.changed_files(state)} changed since {state['by']} approved it ({state['at']}); "
                f"a person runs `exp review {v}` again (`exp check {v}` sets the status back to analyzed)"
            )
        script = ws.run_script_path(version)
        script_bytes = script.read_bytes() if script.is_file() else None
        if script_bytes is None or sha256(script_bytes) != state["approved_sha256"]["script"]:
            raise StaleApprovalError(f"cannot commit {v}: the run script {ws.rel(script)} is missing or changed; restore it, or rerun and review again")
        kept, skipped = artifacts(ws, version)
        record_path, state_path = ws.record_path(version), ws.state_path(version)
        paths = [record_path, state_path, script, *kept]
        transition(record, "committed")
        record.meta["commit"] = {"time": times.now(), "reviewed_by": state["by"], "paths": [ws.rel(p) for p in paths]}
        state_text, text = store.serialize(record)
        if approval.text_sha256(text, record.meta) != state["approved_sha256"]["record"]:  # pragma: no cover - a normalisation bug
            raise StaleApprovalError("internal error: committing would change the approved content; nothing was committed")
        message = commit_message(record, state)
        files: dict[Path, bytes | None] = {record_path: text.encode("utf-8"), state_path: state_text.encode("utf-8"), script: script_bytes}
        files.update({p: None for p in kept})
        result = gitops.commit_paths(ws.root, files, message, sign=sign)
        store.save(ws, record, (state_text, text))
        info = {
            "version": v,
            "sha": result.sha,
            "branch": result.branch,
            "parent": result.parent,
            "time": record.meta["commit"]["time"],
            "signed": result.signed,
            "paths": result.paths,
            "skipped": [{"path": ws.rel(p), "bytes": size, "limit": artifact_max_bytes(ws)} for p, size in skipped],
            "reviewed_by": state["by"],
            "record_sha256": state["approved_sha256"]["record"],
            "message": message,
            "warnings": result.warnings,
        }
        write_json(ws.out_dir(version) / COMMIT_FILE, info)
    return info


def _prepared(ws: Workspace, record: Record, state: dict[str, Any]) -> tuple[dict[Path, bytes | None], list[tuple[Path, int]],
                                                                              tuple[str, str]]:
    """The files one approved record contributes to a commit (its markdown and state as they will
    be, committed; its script; its artifacts), after moving it to ``committed`` in memory."""
    v = str(record.meta.get("version"))
    version = record.version
    script = ws.run_script_path(version)
    script_bytes = script.read_bytes() if script.is_file() else None
    bound_script = state["approved_sha256"]["script"]
    if (script_bytes is None and bound_script is not None) or (script_bytes is not None and sha256(script_bytes) != bound_script):
        raise StaleApprovalError(f"cannot commit {v}: the run script {ws.rel(script)} is missing or changed; restore it, or rerun and review again")
    kept, skipped = artifacts(ws, version)
    record_path, state_path = ws.record_path(version), ws.state_path(version)
    paths = [record_path, state_path, *([script] if script_bytes is not None else []), *kept]
    transition(record, "committed")
    record.meta["commit"] = {"time": times.now(), "reviewed_by": state["by"], "paths": [ws.rel(p) for p in paths]}
    state_text, text = store.serialize(record)
    if approval.text_sha256(text, record.meta) != state["approved_sha256"]["record"]:  # pragma: no cover - a normalisation bug
        raise StaleApprovalError("internal error: committing would change the approved content; nothing was committed")
    files: dict[Path, bytes | None] = {record_path: text.encode("utf-8"), state_path: state_text.encode("utf-8")}
    if script_bytes is not None:
        files[script] = script_bytes
    files.update({p: None for p in kept})
    return files, skipped, (state_text, text)


def _commit_group(ws: Workspace, version: Version, record: Record, sign: bool) -> dict[str, Any]:
    """One commit of a group: the parent and every member, each approved and unchanged since the
    group's approval; the trailers count every member's verdicts. Called under the parent's lock."""
    v = str(version)
    require_status(record, ("approved",), "commit")
    state = approval.approval_state(ws, record)
    if state["stale"]:
        raise StaleApprovalError(
            f"cannot commit the group {v}: {approval.changed_files(state)} changed since {state['by']} approved it "
            f"({state['at']}); a person runs `exp review {v}` again (`exp check {v}` sets the status back to analyzed)"
        )
    members = [records.load(ws, m) for m in groups.member_versions(ws, version)]
    member_states = {}
    committed = [m for m in members if m.status == "committed" and not approval.approval_state(ws, m)["stale"]]
    for m in members:
        if m in committed:  # committed on its own since the group's approval: counted, not committed again
            continue
        if m.status != "approved":
            raise StaleApprovalError(f"cannot commit the group {v}: member {m.version} is {m.status}, not approved; "
                                     f"a person runs `exp review {v}` again")
        member_states[str(m.version)] = approval.approval_state(ws, m)
        if not member_states[str(m.version)]["valid"]:
            raise StaleApprovalError(f"cannot commit the group {v}: member {m.version} changed since its approval; "
                                     f"a person runs `exp review {v}` again")
    files: dict[Path, bytes | None] = {}
    skipped: list[tuple[Path, int]] = []
    prepared = []
    for r, st in [(record, state), *((m, member_states[str(m.version)]) for m in members if m not in committed)]:
        f, sk, serialized = _prepared(ws, r, st)
        files.update(f)
        skipped += sk
        prepared.append((r, serialized))
    message = commit_message(record, state, members)
    result = gitops.commit_paths(ws.root, files, message, sign=sign)
    for r, serialized in prepared:
        if r is record:
            store.save(ws, r, serialized)
        else:
            with store.locked(ws, r.version):
                store.save(ws, r, serialized)
    info = {
        "version": v, "sha": result.sha, "branch": result.branch, "parent": result.parent,
        "time": record.meta["commit"]["time"], "signed": result.signed, "paths": result.paths,
        "skipped": [{"path": ws.rel(p), "bytes": size, "limit": artifact_max_bytes(ws)} for p, size in skipped],
        "reviewed_by": state["by"], "record_sha256": state["approved_sha256"]["record"], "message": message,
        "warnings": result.warnings, "members": [str(m.version) for m in members],
    }
    for r, _ in prepared:
        write_json(ws.out_dir(r.version) / COMMIT_FILE, {**info, "version": str(r.version), "group": v})
    return info
