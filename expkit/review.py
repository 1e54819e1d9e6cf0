"""The human gate: the review checklist, approval bound to content hashes, who may approve,
and the gated commit.

``exp review VERSION`` shows a person what the run found (claims and their verdicts,
anomalies, untraceable numbers, pre-registration changes, plots, the manual's quality
checklist) and asks for a decision. It runs only for a person at a terminal: stdin and stdout
must be terminals, and no AI-agent environment variable may be set (``AGENT_ENV``, or the
workspace's ``[tool.exp] agent_env``). There is deliberately no flag that approves without a
terminal.

Every decision is appended to ``review.history`` in the front matter and shown in the
record's generated ``review`` block. An approval binds two SHA-256 hashes:

- the record, normalised by ``record_sha256``: the file's exact text with the front-matter
  entries ``status:``, ``review:`` and ``commit:``, the ``review:`` line of ``digests:``, and
  the content of the generated ``review`` block left out — exactly what writing a review or a
  commit changes, so writing them keeps the hash while any other byte change (line endings
  included) breaks it;
- the run script ``run_file/experiment_X.Y.Z.sh``, byte for byte.

A later change to either makes the approval stale (``approval_state``): ``exp commit``
refuses, ``refresh_status`` sets the record back to ``analyzed``, and
``stale_approval_problem`` / ``review_problems`` report it. A committed record keeps its
approval, so the same hashes show that it was edited after the commit.

``exp commit VERSION`` commits the record (with ``status: committed``), the run script and
the small artifacts (``ARTIFACTS`` under ``out/experiment_X.Y.Z/``, each at most
``[tool.exp] artifact_max_bytes``) through ``gitops.commit_paths``, which leaves the user's
other staged and unstaged changes alone. The commit SHA cannot be inside the commit it names,
so it is written afterwards to ``out/experiment_X.Y.Z/commit.json`` (untracked, like the
other run outputs) — writing it into the record would leave the record modified in git right
after every commit. ``commit_info`` gives ``meta["commit"]`` merged with that file.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from . import record as rec_mod
from . import store
from .errors import ExpError, HandEditError, RecordError, WorkspaceError
from .record import Record
from .version import Version
from .workspace import Workspace


class ReviewError(ExpError):
    """A review or a commit cannot go ahead as asked."""


class NotHumanError(ReviewError):
    """``exp review`` was started without a terminal or from an AI agent's environment."""


class StaleApprovalError(ReviewError):
    """The approval does not cover the files as they are now."""


#: Environment variables that AI coding agents set in the shells they run commands in. A name
#: ending in ``*`` matches every variable with that prefix. A variable counts when it is set
#: to a non-empty value. ``[tool.exp] agent_env = [...]`` in the workspace replaces the list.
#: Deliberately left out: names a person sets in their own shell (``AIDER_*`` options,
#: ``CODEX_HOME``, ``CURSOR_TRACE_ID`` of Cursor's integrated terminal, ``REPL_ID``).
AGENT_ENV: tuple[str, ...] = (
    "CLAUDECODE",  # Claude Code (=1)
    "CLAUDE_CODE_ENTRYPOINT",  # Claude Code, its SDK and GitHub action (cli, sdk-py, ...)
    "CURSOR_AGENT",  # Cursor's agent / cursor-agent CLI (=1)
    "GEMINI_CLI",  # Gemini CLI (=1)
    "CODEX_SANDBOX",  # OpenAI Codex CLI (seatbelt, ...)
    "CODEX_SANDBOX_NETWORK_DISABLED",  # Codex CLI
    "CODEX_THREAD_ID",  # Codex CLI
    "CODEX_CI",  # Codex CLI (non-interactive exec)
    "OPENCODE",  # OpenCode (=1)
    "GOOSE_TERMINAL",  # Goose (=1)
    "AGENT",  # the emerging generic marker: AGENT=amp / goose / gemini / 1 (OpenCode)
    "AI_AGENT",  # Vercel's proposed generic marker
)

#: Small artifacts committed with the record, relative to out/experiment_X.Y.Z/.
ARTIFACTS = ("summary.json", "analysis.json", "metrics_summary.json", "plots/*.png")
DEFAULT_ARTIFACT_MAX_BYTES = 1024 * 1024
COMMIT_FILE = "commit.json"

#: Statuses from which a review may start (``approved`` too, once its approval is stale).
REVIEWABLE = ("analyzed", "changes_requested")
DECISIONS = ("approve", "changes")
#: Anomaly kinds that mean the training was not stable (checklist item 训练稳定收敛):
#: nonfinite / nan / inf values, divergence, spikes, explosions (``loss_spike``, ``nan_loss``, ...).
UNSTABLE = re.compile(r"(?:^|_)(?:nan|inf)(?:_|$)|non_?finite|diverg|spike|explod", re.I)

#: Front-matter entries that reviewing and committing write: outside the approved content.
UNHASHED_KEYS = ("status", "review", "commit")
_TOP_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?:[ \t\r\n]|$)")
_DIGEST_OF_REVIEW = re.compile(r"[ \t]+review:[ \t]")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")


# -- hashes ------------------------------------------------------------------------------------
def record_sha256(text: str) -> str:
    """SHA-256 of a record's text minus what a review or a commit writes (see the module doc)."""
    try:
        front, _ = rec_mod.split_front_matter(text)
        parsed = Record.parse(text)
    except RecordError:  # not a record any more (or CRLF): hash it whole, which never matches
        return rec_mod.sha256("exp-unparsed\x00" + text)
    kept = []
    key = None
    for line in _LINE.findall(front):
        top = _TOP_KEY.match(line)
        if top:
            key = top.group(1)
        if key in UNHASHED_KEYS or (key == "digests" and not top and _DIGEST_OF_REVIEW.match(line)):
            continue
        kept.append(line)
    body = "".join(
        p if isinstance(p, str) else (p.open_line + p.close_line if (p.kind, p.name) == ("generated", "review") else p.render())
        for p in parsed.parts
    )
    return rec_mod.sha256("---\n" + "".join(kept) + "---\n" + body)


def file_record_sha256(path: Path) -> str | None:
    """``record_sha256`` of the file as it is on disk, line endings as they are (None: missing)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return record_sha256(data.decode("utf-8"))
    except UnicodeDecodeError:
        return rec_mod.sha256(b"exp-undecodable\x00" + data)


def file_sha256(path: Path) -> str | None:
    try:
        return rec_mod.sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def _version(record: Record) -> str:
    return str(record.meta.get("version"))


def _record_path(ws: Workspace, record: Record) -> Path:
    return record.path or ws.record_path(_version(record))


def current_hashes(ws: Workspace, record: Record) -> dict[str, str | None]:
    """The hashes an approval would bind now, from the files on disk."""
    return {
        "record": file_record_sha256(_record_path(ws, record)),
        "script": file_sha256(ws.run_script_path(_version(record))),
    }


# -- approval state ------------------------------------------------------------------------------
def _review(record: Record) -> dict[str, Any]:
    review = record.meta.get("review")
    return review if isinstance(review, dict) else {}


def approval_state(ws: Workspace, record: Record) -> dict[str, Any]:
    """Whether an approval is on record and whether it still covers the files on disk.

    Returns ``approved`` (an approval is on record), ``valid`` (approved and both hashes
    match), ``stale`` (approved but a hash differs), ``changed`` (``record`` and/or
    ``script``), ``files`` (their paths), ``current`` and ``approved_sha256`` (the hashes),
    and ``by`` / ``at`` / ``round`` of the approval.
    """
    v = _version(record)
    files = {"record": store._rel(ws, _record_path(ws, record)), "script": store._rel(ws, ws.run_script_path(v))}
    current = current_hashes(ws, record)
    approved = _review(record).get("approved")
    state: dict[str, Any] = {"approved": False, "valid": False, "stale": False, "changed": [], "files": files, "current": current}
    if not isinstance(approved, dict):
        return state
    bound = {"record": approved.get("record_sha256"), "script": approved.get("script_sha256")}
    changed = [k for k in ("record", "script") if bound[k] != current[k]]
    state.update(
        approved=True,
        valid=not changed,
        stale=bool(changed),
        changed=changed,
        approved_sha256=bound,
        by=f"{approved.get('reviewer', '?')} <{approved.get('email', '?')}>",
        at=approved.get("time"),
        round=approved.get("round"),
    )
    return state


def _changed_files(state: dict[str, Any]) -> str:
    return " and ".join(f"the {k} {state['files'][k]}" for k in state["changed"]) or "the approval"


def refresh_status(ws: Workspace, record: Record) -> bool:
    """An ``approved`` record whose approval no longer holds goes back to ``analyzed``.

    Call it on a record loaded inside ``store.update`` before changing it (it hashes the
    files on disk). The stale approval is dropped and noted in ``review.stale``; the history
    keeps every round. A committed record is never demoted (it is flagged instead). Returns
    True when the record changed.
    """
    if record.status != "approved":
        return False
    state = approval_state(ws, record)
    if state["valid"]:
        return False
    review = dict(_review(record))
    review.pop("approved", None)
    review["stale"] = {"time": store.now(), "round": state.get("round"), "changed": state["changed"] or ["approval missing"]}
    record.meta["review"] = review
    record.set_status("analyzed")
    try:
        store.regenerate_blocks(ws, record, ("review",))
    except HandEditError:  # the hand edit is reported by `exp check`; the status must change anyway
        pass
    return True


def approval_issue(ws: Workspace, record: Record) -> tuple[str, str, str] | None:
    """(level, message, fix) when an approval does not hold, a committed record was edited, or
    an approval went stale earlier; None when all is well."""
    v = _version(record)
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
                f"the approval of {v} is stale: {_changed_files(state)} changed since {state['by']} approved it ({state['at']})",
                f"`exp check {v}` sets it back to analyzed; then a person runs `exp review {v}` again",
            )
        paths = " ".join(state["files"][k] for k in state["changed"])
        return (
            "error",
            f"{v} is committed and must not change, but {_changed_files(state)} changed since the commit",
            f"restore with `git checkout -- {paths}`; record new work as `exp new NEXT --from {v}`",
        )
    stale = _review(record).get("stale")
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


def review_problems(ws: Workspace, record: Record) -> list:
    """``approval_issue`` as ``problems.Problem`` objects for ``exp check``: an error for an
    approved or committed record that changed, a warning for an approval that went stale."""
    from .problems import Problem

    issue = approval_issue(ws, record)
    if issue is None:
        return []
    line = next((i + 2 for i, x in enumerate(record.front_raw.split("\n")) if x.startswith("status:")), 1)
    return [Problem(issue[0], line, issue[1], issue[2])]


def commit_info(ws: Workspace, record: Record) -> dict[str, Any] | None:
    """The commit of a committed record: ``meta["commit"]`` (time, paths, reviewed_by) merged
    with ``out/experiment_X.Y.Z/commit.json`` (sha, branch, ...); None when never committed."""
    v = _version(record)
    info: dict[str, Any] = {}
    if isinstance(record.meta.get("commit"), dict):
        info.update(record.meta["commit"])
    path = ws.out_dir(v) / COMMIT_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict):
            info.update(saved)
    if not info:
        return None
    if not info.get("sha"):
        info["sha"] = None
        info["find"] = f"git log -1 --format=%H --grep='^exp({v}):'"
    return info


# -- who may review -------------------------------------------------------------------------------
def agent_env_names(ws: Workspace) -> tuple[str, ...]:
    names = ws.settings.get("agent_env", AGENT_ENV)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise WorkspaceError("[tool.exp] agent_env in pyproject.toml must be a list of environment variable names, e.g. [\"CLAUDECODE\"]")
    return tuple(names)


def detect_agent(environ: Mapping[str, str], names: tuple[str, ...] = AGENT_ENV) -> list[str]:
    """The agent variables set (non-empty) in ``environ``; ``NAME*`` matches a prefix."""
    found = []
    for name in names:
        if name.endswith("*"):
            found += sorted(k for k, v in environ.items() if k.startswith(name[:-1]) and v)
        elif environ.get(name):
            found.append(name)
    return found


def _isatty(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False


def require_human(ws: Workspace, version: str, stdin: Any = None, stdout: Any = None, environ: Any = None) -> None:
    """Refuse unless a person is at a terminal: no agent variable set, stdin and stdout ttys."""
    found = detect_agent(os.environ if environ is None else environ, agent_env_names(ws))
    if found:
        raise NotHumanError(
            f"exp review must be run by a person, not an AI agent ({', '.join(found)} set); "
            f"a person runs `exp review {version}` in their own terminal (agent variables: [tool.exp] agent_env)"
        )
    streams = {"stdin": sys.stdin if stdin is None else stdin, "stdout": sys.stdout if stdout is None else stdout}
    off = [name for name, s in streams.items() if not _isatty(s)]
    if off:
        raise NotHumanError(
            f"exp review needs a person at a terminal, but {' and '.join(off)} {'is' if len(off) == 1 else 'are'} not a terminal "
            f"(piped or redirected); a person runs `exp review {version}` in their own terminal"
        )


def require_reviewable(ws: Workspace, record: Record) -> None:
    """Reviewable: analyzed, changes_requested, or approved with an approval that went stale."""
    v = _version(record)
    if record.status == "approved":
        state = approval_state(ws, record)
        if state["valid"]:
            raise ReviewError(f"cannot review {v}: it is approved and unchanged since ({state['by']}, {state['at']}); next: `exp commit {v}`")
        return
    rec_mod.require_status(record, REVIEWABLE, "review")


# -- the checklist --------------------------------------------------------------------------------
CHECKLIST = (
    ("goal", "目标明确", "clear goal"),
    ("params", "参数完整", "complete parameters"),
    ("stable", "训练稳定收敛", "stable convergence"),
    ("recorded", "记录详细", "detailed record"),
    ("diagnosis", "问题分析", "problem analysis"),
    ("suggestions", "改进建议", "improvement suggestions"),
)
OK, FAIL, UNKNOWN = "✓", "✗", "?"


@dataclass(frozen=True)
class ChecklistItem:
    key: str
    label: str
    mark: str  # ✓ / ✗ / ?
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _filled(record: Record, kind: str, name: str) -> tuple[bool, str]:
    block = record.block(kind, name)
    if block is None:
        return False, f"the {name} section is missing"
    lines = block.text.split("\n")
    if any(rec_mod.HINT_RE.match(x) for x in lines):
        return False, f"the {name} still holds the template's hint"
    own = [x for x in lines if x.strip()]
    if not own:
        return False, f"the {name} is empty"
    return True, f"{len(own)} line(s)"


def _loss_trend(ws: Workspace, version: str) -> tuple[float, float] | None:
    from .tracking import read_metrics

    losses = [
        float(row["loss"]) for row in read_metrics(ws.out_dir(version) / "metrics.jsonl")
        if isinstance(row.get("loss"), (int, float)) and not isinstance(row.get("loss"), bool) and math.isfinite(row["loss"])
    ]
    return (losses[0], losses[-1]) if len(losses) >= 2 else None


def _check_goal(record: Record) -> tuple[str, str]:
    from . import claims as claims_mod

    for name in ("goal", "hypothesis"):
        ok, why = _filled(record, "human", name)
        if not ok:
            return FAIL, why
    expected = record.block("human", "expected")
    if expected is None:
        return FAIL, "the expected section is missing"
    found, bad = claims_mod.parse_claims(expected.text, expected.first_content_line)
    if bad:
        return FAIL, f"expected result `{bad[0].text}` (line {bad[0].line}) does not parse"
    if not found:
        return FAIL, "no machine-checkable expected result (a line such as `- val_loss < 2.5`)"
    return OK, f"goal and hypothesis written; {len(found)} checkable expected result(s)"


def _check_params(ws: Workspace, record: Record) -> tuple[str, str]:
    from . import config as cfg_mod
    from .errors import ConfigError

    config = record.meta.get("config")
    if not isinstance(config, dict):
        return FAIL, "the front matter has no config"
    try:
        cfg_mod.validate(config)
    except ConfigError as err:
        return FAIL, str(err)
    if any(b.name == "config" for b in record.edited_generated()):
        return FAIL, "the parameter table was edited by hand"
    parent = record.meta.get("parent")
    if parent and ws.record_path(parent).exists():
        changed = cfg_mod.diff(rec_mod.read_meta(ws.record_path(parent)).get("config") or {}, config)
        keys = ", ".join(changed) or "none"
        return OK, f"config valid; differs from parent {parent} in: {keys}"
    return OK, "config valid"


def _check_stable(ws: Workspace, record: Record) -> tuple[str, str]:
    run = record.meta.get("run") or {}
    analysis = record.meta.get("analysis") or {}
    if not run:
        return UNKNOWN, "no run is recorded"
    status, code = run.get("status"), run.get("exit_code")
    if status not in (None, "finished") or code not in (None, 0):
        return FAIL, f"the run ended {status or 'badly'} (exit {code})"
    anomalies = [a for a in analysis.get("anomalies") or [] if isinstance(a, dict)]
    bad = [a for a in anomalies if UNSTABLE.search(str(a.get("kind", "")))]
    if bad:
        return FAIL, "; ".join(f"{a.get('kind')}: {a.get('message', '')}".strip() for a in bad[:3]) + (" …" if len(bad) > 3 else "")
    trend = _loss_trend(ws, _version(record))
    if trend and trend[1] >= trend[0]:
        return FAIL, f"the loss did not fall ({trend[0]:.4g} → {trend[1]:.4g})"
    if "anomalies" not in analysis:
        return UNKNOWN, "the analysis has no anomaly scan (`exp analyze` writes one)"
    if trend is None:
        return UNKNOWN, "finished without NaN, divergence or spikes, but metrics.jsonl has no loss curve to judge convergence"
    fell = f"loss {trend[0]:.4g} → {trend[1]:.4g}"
    others = sorted({str(a.get("kind")) for a in anomalies})
    if others:
        return UNKNOWN, f"finished, {fell}; judge the other anomalies: {', '.join(others)}"
    return OK, f"finished; no NaN, divergence or spikes; {fell}"


def _check_recorded(record: Record) -> tuple[str, str]:
    run = record.meta.get("run") or {}
    if not run:
        return FAIL, "no execution record (the record has no run)"
    missing = [k for k in ("started", "ended", "exit_code", "command", "git_sha") if run.get(k) in (None, "")]
    if not (run.get("env") or {}).get("python"):
        missing.append("environment")
    if not (record.meta.get("analysis") or {}).get("metrics"):
        missing.append("metrics")
    edited = [b.name for b in record.edited_generated() if b.name in ("execution", "environment", "metrics")]
    if edited:
        return FAIL, f"generated sections edited by hand: {', '.join(edited)}"
    if missing:
        return FAIL, f"missing: {', '.join(missing)}"
    return OK, f"execution, environment and {len(record.meta['analysis']['metrics'])} metric(s) recorded"


def checklist(ws: Workspace, record: Record) -> list[ChecklistItem]:
    """The manual's quality checklist (experiment/README.md, 质量标准), each item evaluated
    from the record and the run's outputs where the data allows:

    - 目标明确: goal and hypothesis written (no hint), ≥1 machine-checkable expected result;
    - 参数完整: the config validates and its table was not hand-edited;
    - 训练稳定收敛: the run finished, no nonfinite / divergence / spike anomaly, the loss in
      metrics.jsonl fell (? when there is no loss curve, no anomaly scan, or other anomalies);
    - 记录详细: start, end, exit code, command, git revision, environment and metrics recorded;
    - 问题分析: the diagnosis section written (not the template's hint);
    - 改进建议: the suggestions section written.
    """
    zh = record.meta.get("lang", "zh") != "en"
    results = {
        "goal": _check_goal(record),
        "params": _check_params(ws, record),
        "stable": _check_stable(ws, record),
        "recorded": _check_recorded(record),
    }
    drafts = (record.meta.get("analysis") or {}).get("drafts") or {}
    for name in ("diagnosis", "suggestions"):
        ok, why = _filled(record, "ai", name)
        block = record.block("ai", name)
        if ok and block is not None and drafts.get(name) == rec_mod.digest(block.text):
            why += "; the rule-based draft of `exp analyze`, not refined by the AI"  # the reviewer should know
        results[name] = (OK, f"written ({why})") if ok else (FAIL, why)
    return [ChecklistItem(key, zh_label if zh else en_label, *results[key]) for key, zh_label, en_label in CHECKLIST]


# -- what the reviewer sees -------------------------------------------------------------------------
def overview(ws: Workspace, record: Record) -> dict[str, Any]:
    """Everything ``exp review`` shows, as data."""
    from . import results

    meta = record.meta
    v = _version(record)
    analysis = meta.get("analysis") or {}
    prereg = meta.get("prereg") or {}
    changed = [
        n for n, d in (prereg.get("sections") or {}).items()
        if record.block("human", n) is not None and rec_mod.sha256(record.human(n)) != d
    ]
    plots = []
    for p in analysis.get("plots") or []:
        candidates = [ws.root / str(p), ws.out_dir(v) / str(p)]
        found = next((c for c in candidates if c.is_file()), None)
        plots.append({"path": store._rel(ws, found) if found else str(p), "exists": found is not None})
    text = lambda kind, name: record.block(kind, name).text if record.block(kind, name) else ""  # noqa: E731
    return {
        "version": v,
        "description": meta.get("description", ""),
        "status": record.status,
        "lang": meta.get("lang", "zh"),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "path": store._rel(ws, _record_path(ws, record)),
        "script": store._rel(ws, ws.run_script_path(v)),
        "human": {n: text("human", n) for n in ("goal", "hypothesis", "expected")},
        "ai": {n: text("ai", n) for n in rec_mod.AI},
        "verdicts": [x for x in analysis.get("verdicts") or [] if isinstance(x, dict)],
        "anomalies": [x for x in analysis.get("anomalies") or [] if isinstance(x, dict)],
        # computed now, not read from meta.analysis: the ai text may have been edited since
        "untraceable": results.untraceable(record) if analysis else [],
        "prereg": {"recorded": bool(prereg.get("sections")), "at": prereg.get("at"), "changed": changed},
        "plots": plots,
        "checklist": [c.to_dict() for c in checklist(ws, record)],
        "approval": approval_state(ws, record),
        "history": list(_review(record).get("history") or []),
    }


_HEAD = {
    "zh": {
        "goal": "实验目的", "hypothesis": "研究假设", "expected": "预期结果", "verdicts": "预期检验",
        "anomalies": "异常", "untraceable": "无法溯源的数字", "prereg": "预注册", "analysis": "结果分析",
        "diagnosis": "问题诊断", "suggestions": "改进建议", "plots": "图表", "checklist": "审核清单",
    },
    "en": {
        "goal": "Goal", "hypothesis": "Hypothesis", "expected": "Expected results", "verdicts": "Verdicts",
        "anomalies": "Anomalies", "untraceable": "Untraceable numbers", "prereg": "Pre-registration",
        "analysis": "Results analysis", "diagnosis": "Problem diagnosis", "suggestions": "Improvement suggestions",
        "plots": "Plots", "checklist": "Quality checklist",
    },
}
_VERDICT_STYLE = {"confirmed": ("✓", "green"), "refuted": ("✗", "red"), "inconclusive": ("?", "yellow")}
_MARK_STYLE = {OK: "green", FAIL: "red", UNKNOWN: "yellow"}


def show(console: Any, view: dict[str, Any]) -> None:
    """Print ``overview`` on a rich console."""
    from rich.markup import escape
    from rich.table import Table

    head = _HEAD["en" if view["lang"] == "en" else "zh"]
    heading = lambda key: console.print(f"\n[bold]{head[key]}[/bold] [dim]({key})[/dim]")  # noqa: E731
    plain = lambda text: console.print(escape(text.strip()) or "[dim](empty)[/dim]")  # noqa: E731

    console.rule(f"[bold]exp review {view['version']}[/bold] — {escape(view['description'] or '(no description)')}")
    console.print(
        f"status [bold]{view['status']}[/bold] · parent {view['parent'] or '—'} · baseline {view['baseline'] or '—'} · "
        f"record {escape(view['path'])} · script {escape(view['script'])}"
    )
    approval = view["approval"]
    if approval["stale"]:
        console.print(f"[yellow]⚠ the approval by {escape(approval['by'])} is stale: {', '.join(approval['changed'])} changed since[/yellow]")
    last = view["history"][-1] if view["history"] else {}
    if last.get("decision") == "changes":
        console.print(f"[yellow]round {last.get('round')} ({escape(str(last.get('reviewer')))}, {last.get('time')}) asked for changes:[/yellow]")
        plain(str(last.get("comments", "")))
    for key in ("goal", "hypothesis", "expected"):
        heading(key)
        plain(view["human"][key])

    heading("verdicts")
    if view["verdicts"]:
        table = Table(show_edge=False, pad_edge=False)
        for col in ("claim", "verdict", "observed", "reference"):
            table.add_column(col)
        for x in view["verdicts"]:
            mark, style = _VERDICT_STYLE.get(str(x.get("verdict")), ("·", "white"))
            table.add_row(
                escape(str(x.get("claim", ""))), f"[{style}]{mark} {escape(str(x.get('verdict')))}[/{style}]",
                escape(_fmt(x.get("observed"))), escape(_fmt(x.get("reference"))),
            )
        console.print(table)
    else:
        console.print("[dim]none (no checkable expected result, or not analysed)[/dim]")

    heading("anomalies")
    for a in view["anomalies"]:
        extra = ", ".join(f"{k} {_fmt(v)}" for k, v in a.items() if k not in ("kind", "message"))
        console.print(f"• [bold]{escape(str(a.get('kind')))}[/bold]: {escape(str(a.get('message', '')))}" + (f" [dim]({escape(extra)})[/dim]" if extra else ""))
    if not view["anomalies"]:
        console.print("[dim]none[/dim]")

    heading("untraceable")
    for u in view["untraceable"]:
        console.print(f"• line {u.get('line')} ({escape(str(u.get('section')))}): {escape(_fmt(u.get('number')))} [dim]— not found in the run's evidence[/dim]")
    if not view["untraceable"]:
        console.print("[dim]none: every number in the AI sections traces to the evidence[/dim]")

    heading("prereg")
    prereg = view["prereg"]
    if prereg["changed"]:
        console.print(f"[red]✗ changed after the run started ({prereg['at']}): {', '.join(prereg['changed'])}[/red]")
    elif prereg["recorded"]:
        console.print(f"✓ goal, hypothesis and expected result unchanged since the run started ({prereg['at']})")
    else:
        console.print("[yellow]? no pre-registration hash recorded[/yellow]")

    for key in rec_mod.AI:
        heading(key)
        plain(view["ai"][key])

    heading("plots")
    for p in view["plots"]:
        console.print(f"• {escape(p['path'])}" + ("" if p["exists"] else " [red](missing)[/red]"))
    if not view["plots"]:
        console.print("[dim]none[/dim]")

    heading("checklist")
    for c in view["checklist"]:
        style = _MARK_STYLE[c["mark"]]
        console.print(f"[{style}]{c['mark']}[/{style}] [bold]{c['label']}[/bold] — {escape(c['reason'])}")

    cur = approval["current"]
    console.print(
        f"\nApproving binds record sha256 [bold]{(cur['record'] or '—')[:16]}[/bold] and script sha256 "
        f"[bold]{(cur['script'] or 'missing')[:16]}[/bold]; any later change to either voids it."
    )


def _fmt(value: Any) -> str:
    from .render import fmt

    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return fmt(value)


# -- the decision ---------------------------------------------------------------------------------
PROMPT = "[a]pprove, request [c]hanges, [q]uit: "


def _readline(stdin: TextIO) -> str | None:
    line = stdin.readline()
    return None if line == "" else line.rstrip("\r\n")


def _ask(stdout: TextIO, stdin: TextIO, prompt: str) -> str | None:
    stdout.write(prompt)
    stdout.flush()
    return _readline(stdin)


def session(ws: Workspace, version: Version, stdin: TextIO | None = None, stdout: TextIO | None = None, environ: Any = None) -> dict[str, Any]:
    """``exp review``: check that a person is at a terminal, show the overview, ask, record.

    Answers: ``a``/``approve``; ``c``/``changes`` then comments ending with an empty line;
    ``q``/``quit``. Anything else asks again; end of input quits. Quitting writes nothing.
    """
    from rich.console import Console

    from . import gitops

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    require_human(ws, str(version), stdin, stdout, environ)
    reviewer = gitops.identity(ws.root)
    record = store.load(ws, version)
    require_reviewable(ws, record)
    edited = [b for b in record.edited_generated() if b.name == "review"]
    if edited:  # found now, not after the person has typed their comments
        raise store.hand_edit_error(ws, record, edited[0])
    seen = current_hashes(ws, record)
    console = Console(file=stdout, highlight=False)
    show(console, overview(ws, record))
    console.print(f"\nreviewer: {reviewer[0]} <{reviewer[1]}>")
    quit_result = {"version": str(version), "decision": "quit", "status": record.status, "written": False}
    while True:
        answer = _ask(stdout, stdin, PROMPT)
        if answer is None:
            return quit_result
        answer = answer.strip().lower()
        if answer in ("q", "quit"):
            return quit_result
        if answer in ("a", "approve"):
            return record_decision(ws, version, "approve", "", reviewer, seen)
        if answer in ("c", "changes"):
            stdout.write("comments (end with an empty line):\n")
            stdout.flush()
            lines: list[str] = []
            while True:
                line = _readline(stdin)
                if line is None:
                    return quit_result
                if not line.strip():
                    break
                lines.append(line)
            if not lines:
                stdout.write("comments are required to request changes\n")
                continue
            return record_decision(ws, version, "changes", "\n".join(lines), reviewer, seen)
        stdout.write(f"unknown answer {answer!r}: type a (approve), c (request changes) or q (quit)\n")


def record_decision(
    ws: Workspace,
    version: Version,
    decision: str,
    comments: str,
    reviewer: tuple[str, str],
    seen: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Append one review round and set the status (approved / changes_requested).

    The write half of ``session``, which alone checks that a person is at a terminal; the CLI
    reaches this only through it. ``seen``: the hashes of what the reviewer was shown — if
    the record or the script changed meanwhile, nothing is written.
    """
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "changes" and not comments.strip():
        raise ReviewError("comments are required to request changes")
    with store.update(ws, version) as record:
        require_reviewable(ws, record)
        now_hashes = current_hashes(ws, record)
        if seen is not None and seen != now_hashes:
            changed = " and ".join(k for k in ("record", "script") if seen.get(k) != now_hashes.get(k))
            raise ReviewError(f"the {changed} changed while you were reviewing; nothing was written — run `exp review {version}` again")
        review = dict(_review(record))
        history = list(review.get("history") or [])
        entry: dict[str, Any] = {
            "round": len(history) + 1,
            "decision": decision,
            "reviewer": reviewer[0],
            "email": reviewer[1],
            "time": store.now(),
            "record_sha256": "",
            "script_sha256": now_hashes["script"],
        }
        if comments.strip():
            entry["comments"] = comments.strip("\n")
        history.append(entry)
        review["history"] = history
        review.pop("stale", None)
        review.pop("approved", None)
        if decision == "approve":
            review["approved"] = {k: entry[k] for k in ("round", "reviewer", "email", "time", "record_sha256", "script_sha256")}
        record.meta["review"] = review
        record.set_status("approved" if decision == "approve" else "changes_requested")
        # The hash is taken of the text as it will be written (a changed front matter is
        # re-serialised), then stored where it is itself outside the hash.
        store.regenerate_blocks(ws, record, ("review",))
        digest = record_sha256(record.render())
        entry["record_sha256"] = digest
        if decision == "approve":
            review["approved"]["record_sha256"] = digest
        store.regenerate_blocks(ws, record, ("review",))
        if record_sha256(record.render()) != digest:  # pragma: no cover - a bug in the normalisation
            raise ReviewError("internal error: writing the review would change the approved content; nothing was written")
    v = str(version)
    return {
        "version": v,
        "decision": decision,
        "status": record.status,
        "round": entry["round"],
        "reviewer": f"{reviewer[0]} <{reviewer[1]}>",
        "time": entry["time"],
        "record_sha256": digest,
        "script_sha256": entry["script_sha256"],
        "written": True,
        "next": rec_mod.next_step(record.status, v),
    }


# -- the commit -----------------------------------------------------------------------------------
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
    for pattern in ARTIFACTS:
        for path in sorted(out.glob(pattern)):
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            (skipped.append((path, size)) if size > limit else kept.append(path))
    return kept, skipped


def verdict_counts(record: Record) -> str:
    """``2 confirmed, 1 refuted`` from the analysis' verdicts (zero kinds left out), or ``none``."""
    verdicts = (record.meta.get("analysis") or {}).get("verdicts") or []
    counts = Counter(str(x.get("verdict")) for x in verdicts if isinstance(x, dict))
    order = ["confirmed", "refuted", "inconclusive"] + sorted(k for k in counts if k not in ("confirmed", "refuted", "inconclusive"))
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "none"


def commit_message(record: Record, state: dict[str, Any]) -> str:
    from .render import oneline

    v = _version(record)
    description = oneline(record.meta.get("description", ""))
    subject = f"exp({v}): {description}" if description else f"exp({v})"
    trailers = [
        f"Reviewed-by: {state['by']}",
        f"Record-SHA256: {state['approved_sha256']['record']}",
        f"Script-SHA256: {state['approved_sha256']['script']}",
        f"Verdicts: {verdict_counts(record)}",
    ]
    return subject + "\n\n" + "\n".join(trailers) + "\n"


def commit(ws: Workspace, version: Version, sign: bool = False) -> dict[str, Any]:
    """``exp commit``: commit the approved, unchanged record, its run script and its small
    artifacts; then the record says ``committed`` and ``commit.json`` holds the SHA."""
    from . import gitops

    v = str(version)
    with store.locked(ws, version):
        record = store.load(ws, version)
        if record.status == "committed":
            sha = (commit_info(ws, record) or {}).get("sha") or "see git log"
            raise RecordError(f"{v} is already committed ({sha}); next: {rec_mod.next_step('committed', v)}")
        rec_mod.require_status(record, ("approved",), "commit")
        state = approval_state(ws, record)
        if not state["approved"]:
            raise StaleApprovalError(f"cannot commit {v}: its status says approved but no approval is on record; a person runs `exp review {v}`")
        if state["stale"]:
            raise StaleApprovalError(
                f"cannot commit {v}: {_changed_files(state)} changed since {state['by']} approved it ({state['at']}); "
                f"a person runs `exp review {v}` again (`exp check {v}` sets the status back to analyzed)"
            )
        script = ws.run_script_path(version)
        script_bytes = script.read_bytes() if script.is_file() else None
        if script_bytes is None or rec_mod.sha256(script_bytes) != state["approved_sha256"]["script"]:
            raise StaleApprovalError(f"cannot commit {v}: the run script {store._rel(ws, script)} is missing or changed; restore it, or rerun and review again")
        kept, skipped = artifacts(ws, version)
        record_path = _record_path(ws, record)
        paths = [record_path, script, *kept]
        record.set_status("committed")
        record.meta["commit"] = {"time": store.now(), "reviewed_by": state["by"], "paths": [store._rel(ws, p) for p in paths]}
        text = record.render()
        if record_sha256(text) != state["approved_sha256"]["record"]:  # pragma: no cover - a bug in the normalisation
            raise ReviewError("internal error: committing would change the approved content; nothing was committed")
        message = commit_message(record, state)
        files: dict[Path, bytes | None] = {record_path: text.encode("utf-8"), script: script_bytes}
        files.update({p: None for p in kept})
        result = gitops.commit_paths(ws.root, files, message, sign=sign)
        store.atomic_write(record_path, text)
        info = {
            "version": v,
            "sha": result.sha,
            "branch": result.branch,
            "parent": result.parent,
            "time": record.meta["commit"]["time"],
            "signed": result.signed,
            "paths": result.paths,
            "skipped": [{"path": store._rel(ws, p), "bytes": size, "limit": artifact_max_bytes(ws)} for p, size in skipped],
            "reviewed_by": state["by"],
            "record_sha256": state["approved_sha256"]["record"],
            "message": message,
            "warnings": result.warnings,
        }
        store.atomic_write(ws.out_dir(version) / COMMIT_FILE, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info
