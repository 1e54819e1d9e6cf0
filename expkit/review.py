"""The human gate: who may review, the review checklist, the overview, the decision.

``exp review VERSION`` shows a person what the run found (claims and their verdicts,
anomalies, untraceable numbers, pre-registration changes, plots, the manual's quality
checklist) and asks for a decision. It runs only for a person at a terminal: stdin and stdout
must be terminals, and no AI-agent environment variable may be set (``AGENT_ENV``, or the
workspace's ``[tool.exp] agent_env``). There is deliberately no flag that approves without a
terminal.

Every decision is appended to ``review.history`` in the record's state and shown in its
generated ``review`` section; an approval binds the hashes of ``approval``. ``refresh_status``
sets an ``approved`` record whose approval went stale back to ``analyzed``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from . import approval, gitops, groups, records, results, tasks, times, view
from . import claims as claims_mod
from . import config as cfg_mod
from .verdicts import verdict_kind
from .comparison import config_changes
from .errors import ConfigError, ExpError, WorkspaceError
from .groups import prereg_changed
from .numbers import fmt
from .record import AI, HINT_RE, Record, digest
from .status import next_step, require_status, transition
from .store import read_meta
from .tracking import read_metrics
from .version import Version
from .workspace import Workspace


class ReviewError(ExpError):
    """A review cannot go ahead as asked."""


class NotHumanError(ReviewError):
    """``exp review`` was started without a terminal or from an AI agent's environment."""




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

REVIEWABLE = ("analyzed", "changes_requested")
DECISIONS = ("approve", "changes")
#: Anomaly kinds that mean the training was not stable (checklist item 训练稳定收敛):
#: nonfinite / nan / inf values, divergence, spikes, explosions (``loss_spike``, ``nan_loss``, ...).
UNSTABLE = re.compile(r"(?:^|_)(?:nan|inf)(?:_|$)|non_?finite|diverg|spike|explod", re.I)


def refresh_status(ws: Workspace, record: Record) -> bool:
    """An ``approved`` record whose approval no longer holds goes back to ``analyzed``.

    Call it on a record loaded inside ``records.update`` before changing it (it hashes the
    files on disk). The stale approval is dropped and noted in ``review.stale``; the history
    keeps every round. A committed record is never demoted (it is flagged instead). Returns
    True when the record changed.
    """
    if record.status != "approved":
        return False
    state = approval.approval_state(ws, record)
    if state["valid"]:
        return False
    review = dict(approval.review_of(record))
    review.pop("approved", None)
    review["stale"] = {"time": times.now(), "round": state.get("round"), "changed": state["changed"] or ["approval missing"]}
    record.meta["review"] = review
    transition(record, "analyzed")
    view.regenerate_quietly(ws, record, ("review",))  # a hand edit is reported by `exp check`; the status must change anyway
    return True


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
    v = str(record.meta.get("version"))
    if record.status == "approved":
        state = approval.approval_state(ws, record)
        if state["valid"]:
            raise ReviewError(f"cannot review {v}: it is approved and unchanged since ({state['by']}, {state['at']}); next: `exp commit {v}`")
        return
    require_status(record, REVIEWABLE, "review")


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
    if any(HINT_RE.match(x) for x in lines):
        return False, f"the {name} still holds the template's hint"
    own = [x for x in lines if x.strip()]
    if not own:
        return False, f"the {name} is empty"
    return True, f"{len(own)} line(s)"


def _loss_trend(ws: Workspace, version: str) -> tuple[float, float] | None:
    losses = [
        float(row["loss"]) for row in read_metrics(ws.out_dir(version) / "metrics.jsonl")
        if isinstance(row.get("loss"), (int, float)) and not isinstance(row.get("loss"), bool) and math.isfinite(row["loss"])
    ]
    return (losses[0], losses[-1]) if len(losses) >= 2 else None


def _check_goal(record: Record) -> tuple[str, str]:
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
    config = record.meta.get("config")
    if not isinstance(config, dict):
        return FAIL, "the front matter has no config"
    try:
        cfg_mod.validate_for(tasks.of(ws, record.meta), config)
    except ConfigError as err:
        return FAIL, str(err)
    if any(b.name == "config" for b in record.edited_generated()):
        return FAIL, "the parameter table was edited by hand"
    parent = record.meta.get("parent")
    if parent and ws.record_path(parent).exists():
        changed = config_changes(read_meta(ws, parent).get("config") or {}, config)
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
    trend = _loss_trend(ws, str(record.meta.get("version")))
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
    drafts = (record.meta.get("analysis") or record.meta.get("group_analysis") or {}).get("drafts") or {}
    for name in ("diagnosis", "suggestions"):
        ok, why = _filled(record, "ai", name)
        block = record.block("ai", name)
        if ok and block is not None and drafts.get(name) == digest(block.text):
            why += "; the rule-based draft of `exp analyze`, not refined by the AI"  # the reviewer should know
        results[name] = (OK, f"written ({why})") if ok else (FAIL, why)
    return [ChecklistItem(key, zh_label if zh else en_label, *results[key]) for key, zh_label, en_label in CHECKLIST]


# -- what the reviewer sees -------------------------------------------------------------------------
#: A task's text artifact is shown up to this many lines.
SHOWN_LINES = 40


def _head(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        return f"(cannot read: {err.strerror or err})"
    return "\n".join(lines[:SHOWN_LINES] + ([f"… {len(lines) - SHOWN_LINES} more line(s)"] if len(lines) > SHOWN_LINES else []))

def overview(ws: Workspace, record: Record) -> dict[str, Any]:
    """Everything ``exp review`` shows, as data."""
    meta = record.meta
    v = str(record.meta.get("version"))
    analysis = meta.get("analysis") or {}
    prereg = meta.get("prereg") or {}
    changed = prereg_changed(ws, record)  # a group member's inherited sections: its parent's text
    plots = []
    for p in analysis.get("plots") or []:
        candidates = [ws.root / str(p), ws.out_dir(v) / str(p)]
        found = next((c for c in candidates if c.is_file()), None)
        plots.append({"path": ws.rel(found) if found else str(p), "exists": found is not None})
    text = lambda kind, name: record.block(kind, name).text if record.block(kind, name) else ""  # noqa: E731
    try:  # the files the record's task shows besides the plots (classify: classification_report.txt)
        shown = [p for pattern in tasks.of(ws, meta).artifacts if not pattern.startswith("plots/")
                 for p in sorted(ws.out_dir(v).glob(pattern)) if p.is_file() and not p.name.endswith(".json")]
    except ConfigError:
        shown = []
    return {
        "version": v,
        "description": meta.get("description", ""),
        "status": record.status,
        "lang": meta.get("lang", "zh"),
        "parent": meta.get("parent"),
        "baseline": meta.get("baseline"),
        "path": ws.rel(ws.record_path(v)),
        "script": ws.rel(ws.run_script_path(v)),
        "human": {n: text("human", n) for n in ("goal", "hypothesis", "expected")},
        "ai": {n: text("ai", n) for n in AI},
        "verdicts": [x for x in analysis.get("verdicts") or [] if isinstance(x, dict)],
        "anomalies": [x for x in analysis.get("anomalies") or [] if isinstance(x, dict)],
        # computed now, not read from meta.analysis: the ai text may have been edited since
        "untraceable": results.untraceable(ws, record) if analysis or meta.get("group_analysis") else [],
        "prereg": {"recorded": bool(prereg.get("sections")), "at": prereg.get("at"), "changed": changed},
        "plots": plots,
        "task": tasks.name_of(meta),
        "files": [{"path": ws.rel(p), "text": _head(p)} for p in shown],
        "checklist": [c.to_dict() for c in checklist(ws, record)],
        "approval": approval.approval_state(ws, record),
        "history": list(approval.review_of(record).get("history") or []),
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
            mark, style = _VERDICT_STYLE.get(verdict_kind(str(x.get("verdict"))), ("·", "white"))
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
        console.print(f"• line {u.get('line')} ({escape(str(u.get('section')))}): {escape(_fmt(u.get('number')))} [dim]— {escape(str(u.get('reason') or 'not traceable to the evidence'))}[/dim]")
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

    for key in AI:
        heading(key)
        plain(view["ai"][key])

    heading("plots")
    for p in view["plots"]:
        console.print(f"• {escape(p['path'])}" + ("" if p["exists"] else " [red](missing)[/red]"))
    if not view["plots"]:
        console.print("[dim]none[/dim]")
    for f in view.get("files") or []:  # the task's report files, shown as they are (classification_report.txt)
        console.print(f"\n• {escape(f['path'])}")
        plain(f["text"])

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

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    require_human(ws, str(version), stdin, stdout, environ)
    reviewer = gitops.identity(ws.root)
    record = records.load(ws, version)
    if groups.can_lead(version) and groups.members(ws, version):
        return _group_session(ws, version, record, reviewer, stdin, stdout)
    require_reviewable(ws, record)
    edited = [b for b in record.edited_generated() if b.name == "review"]
    if edited:  # found now, not after the person has typed their comments
        raise view.hand_edit_error(ws, record, edited[0])
    seen = approval.current_hashes(ws, record)
    console = Console(file=stdout, highlight=False)
    show(console, overview(ws, record))
    console.print(f"\nreviewer: {reviewer[0]} <{reviewer[1]}>")
    return _decide(stdin, stdout, record, lambda decision, comments: record_decision(
        ws, version, decision, comments, reviewer, seen))


def _decide(stdin: TextIO, stdout: TextIO, record: Record, write: Any) -> dict[str, Any]:
    """Ask for the decision until one is given; ``write(decision, comments)`` records it."""
    version = record.meta.get("version")
    quit_result = {"version": str(version), "decision": "quit", "status": record.status, "written": False}
    while True:
        answer = _ask(stdout, stdin, PROMPT)
        if answer is None:
            return quit_result
        answer = answer.strip().lower()
        if answer in ("q", "quit"):
            return quit_result
        if answer in ("a", "approve"):
            return write("approve", "")
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
            return write("changes", "\n".join(lines))
        stdout.write(f"unknown answer {answer!r}: type a (approve), c (request changes) or q (quit)\n")


def record_decision(
    ws: Workspace,
    version: Version,
    decision: str,
    comments: str,
    reviewer: tuple[str, str],
    seen: dict[str, str | None] | None = None,
    members: dict[str, dict[str, str | None]] | None = None,
) -> dict[str, Any]:
    """Append one review round and set the status (approved / changes_requested).

    The write half of ``session``, which alone checks that a person is at a terminal; the CLI
    reaches this only through it. ``seen``: the hashes of what the reviewer was shown — if
    the record or the script changed meanwhile, nothing is written. ``members``: a group's
    approval binds these member hashes too ({version: {record, script}}).
    """
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "changes" and not comments.strip():
        raise ReviewError("comments are required to request changes")
    with records.update(ws, version) as record:
        refresh_status(ws, record)
        require_reviewable(ws, record)
        now_hashes = approval.current_hashes(ws, record)
        if seen is not None and seen != now_hashes:
            changed = " and ".join(k for k in ("record", "script") if seen.get(k) != now_hashes.get(k))
            raise ReviewError(f"the {changed} changed while you were reviewing; nothing was written — run `exp review {version}` again")
        review = dict(approval.review_of(record))
        history = list(review.get("history") or [])
        entry: dict[str, Any] = {
            "round": len(history) + 1,
            "decision": decision,
            "reviewer": reviewer[0],
            "email": reviewer[1],
            "time": times.now(),
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
            if members is not None:
                review["approved"]["members"] = {v: {"record": h["record"], "script": h["script"]} for v, h in members.items()}
        record.meta["review"] = review
        transition(record, "approved" if decision == "approve" else "changes_requested")
        # The hash is taken of the record as it will be written, then stored where it is
        # itself outside the hash (the review entry and section).
        view.regenerate(ws, record, ("review",))
        record_hash = approval.text_sha256(record.render(), record.meta)
        entry["record_sha256"] = record_hash
        if decision == "approve":
            review["approved"]["record_sha256"] = record_hash
        view.regenerate(ws, record, ("review",))
        if approval.text_sha256(record.render(), record.meta) != record_hash:  # pragma: no cover - a normalisation bug
            raise ReviewError("internal error: writing the review would change the approved content; nothing was written")
    v = str(version)
    return {
        "version": v,
        "decision": decision,
        "status": record.status,
        "round": entry["round"],
        "reviewer": f"{reviewer[0]} <{reviewer[1]}>",
        "time": entry["time"],
        "record_sha256": record_hash,
        "script_sha256": entry["script_sha256"],
        "written": True,
        "next": next_step(record.status, v),
    }


# -- a group: the parent and every member in one review -------------------------------------------------
#: A member whose analysis the group's review can bind.
MEMBER_REVIEWABLE = ("analyzed", "changes_requested", "approved")


def require_group_reviewable(ws: Workspace, record: Record) -> list[Record]:
    """A group may be reviewed once its analysis is whole (no member pending) and every member is
    analysed; returns the members. Each refusal names the member and the next step."""
    v = str(record.meta.get("version"))
    require_reviewable(ws, record)
    ga = record.meta.get("group_analysis")
    if not isinstance(ga, dict):
        raise ReviewError(f"cannot review the group {v}: it is not analysed yet; run `exp analyze {v}` first")
    members = [records.load(ws, e.version) for e in groups.members(ws, record.version)]
    listed = {str(m.get("version")) for m in ga.get("members") or []}
    joined = [str(m.version) for m in members if str(m.version) not in listed]
    if joined:
        raise ReviewError(f"cannot review the group {v}: {', '.join(joined)} joined after its analysis; run `exp analyze {v}` again")
    for m in members:
        if m.status not in MEMBER_REVIEWABLE:
            raise ReviewError(f"cannot review the group {v}: member {m.version} is {m.status}; next: {next_step(m.status, str(m.version))}, "
                              f"then `exp analyze {v}`")
        if (m.meta.get("analysis") or {}).get("partial"):
            raise ReviewError(f"cannot review the group {v}: member {m.version}'s analysis is partial (its run did not finish); "
                              f"`exp run {m.version} --resume`, then `exp analyze {v}`")
    return members


def group_overview(ws: Workspace, record: Record, members: list[Record]) -> dict[str, Any]:
    """``overview`` of the parent, plus the group: each member with its verdicts, the group's own
    verdicts and best member, and a checklist item per member."""
    out = overview(ws, record)
    ga = record.meta.get("group_analysis") or {}
    rows = {str(r.get("version")): r for r in ga.get("members") or []}
    listed = []
    for m in members:
        v = str(m.version)
        analysis = m.meta.get("analysis") or {}
        found = [x for x in analysis.get("verdicts") or [] if isinstance(x, dict)]
        listed.append({"version": v, "status": m.status, "label": (rows.get(v) or {}).get("label", ""),
                       "verdicts": found, "verdict_counts": analysis.get("verdict_counts") or {},
                       "path": ws.rel(ws.record_path(v))})
        counts = analysis.get("verdict_counts") or {}
        said = "; ".join(f"{x.get('claim')} → {x.get('verdict')}" for x in found) or "no checkable expected result"
        mark = OK if found and not counts.get("refuted") and not counts.get("inconclusive") else UNKNOWN if found else FAIL
        out["checklist"].append(ChecklistItem(f"member {v}", f"{v} {(rows.get(v) or {}).get('label', '')}".strip(), mark,
                                              f"{m.status}; {said}").to_dict())
    if not record.meta.get("run"):  # the parent did not run itself: its run items speak of the members
        for item in out["checklist"]:
            if item["key"] in ("stable", "recorded"):
                marks = [c for c in (checklist(ws, m) for m in members) for c in c if c.key == item["key"]]
                worst = next((c for mark in (FAIL, UNKNOWN, OK) for c in marks if c.mark == mark), None)
                if worst is not None:
                    item["mark"], item["reason"] = worst.mark, f"the members' runs: {worst.reason}" + (
                        f" (and {len(marks) - 1} more member(s))" if len(marks) > 1 else "")
    out["group"] = {"members": listed, "verdicts": [x for x in ga.get("verdicts") or [] if isinstance(x, dict)],
                    "best": ga.get("best"), "swept": ga.get("swept") or []}
    out["verdicts"] = out["group"]["verdicts"] + [x for x in out["verdicts"] if x not in out["group"]["verdicts"]]
    return out


def show_group(console: Any, view_: dict[str, Any]) -> None:
    """``show`` for a group: the parent's overview, then the members and their verdicts."""
    from rich.markup import escape
    from rich.table import Table

    show(console, view_)
    group = view_["group"]
    console.print("\n[bold]Members[/bold] [dim](group)[/dim]")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("member", "changes", "status", "verdicts"):
        table.add_column(col)
    for m in group["members"]:
        said = "; ".join(f"{x.get('claim')}: {x.get('verdict')}" for x in m["verdicts"]) or "—"
        table.add_row(m["version"], escape(str(m["label"])), m["status"], escape(said))
    console.print(table)
    if group.get("best"):
        b = group["best"]
        console.print(f"best: {b.get('version')} by {b.get('metric')} — {escape(str(b.get('text', '')))}")
    members = ", ".join(m["version"] for m in group["members"])
    console.print(f"Approving binds the group record and every member ({members}); a later change to any of them voids it.")


def _group_session(ws: Workspace, version: Version, record: Record, reviewer: tuple[str, str], stdin: TextIO,
                   stdout: TextIO) -> dict[str, Any]:
    from rich.console import Console

    members = require_group_reviewable(ws, record)
    for r in [record, *members]:
        edited = [b for b in r.edited_generated() if b.name == "review"]
        if edited:
            raise view.hand_edit_error(ws, r, edited[0])
    seen = approval.current_hashes(ws, record)
    seen_members = approval.group_hashes(ws, str(version))
    console = Console(file=stdout, highlight=False)
    show_group(console, group_overview(ws, record, members))
    console.print(f"\nreviewer: {reviewer[0]} <{reviewer[1]}>")
    return _decide(stdin, stdout, record, lambda decision, comments: record_group_decision(
        ws, version, decision, comments, reviewer, seen, seen_members))


def record_group_decision(ws: Workspace, version: Version, decision: str, comments: str, reviewer: tuple[str, str],
                          seen: dict[str, str | None] | None = None,
                          seen_members: dict[str, dict[str, str | None]] | None = None) -> dict[str, Any]:
    """A group's decision: approving approves every member not yet approved (each its own round,
    which says it was the group's review) and then the parent, binding every member's hashes;
    requesting changes records the comments on the parent. Nothing is written when a member
    changed since the reviewer saw it."""
    parent = records.load(ws, version)
    members = require_group_reviewable(ws, parent)
    now = approval.group_hashes(ws, str(version))
    if seen_members is not None and now != seen_members:
        changed = [v for v in sorted(set(now) | set(seen_members)) if now.get(v) != seen_members.get(v)]
        raise ReviewError(f"member(s) {', '.join(changed)} changed while you were reviewing; nothing was written — "
                          f"run `exp review {version}` again")
    if decision == "approve":
        for m in members:
            if m.status == "approved" and approval.approval_state(ws, m)["valid"]:
                continue
            record_decision(ws, m.version, "approve", f"approved with its group {version}", reviewer, now[str(m.version)])
        now = approval.group_hashes(ws, str(version))
    result = record_decision(ws, version, decision, comments, reviewer, seen, members=now if decision == "approve" else None)
    result["members"] = sorted(now)
    return result
