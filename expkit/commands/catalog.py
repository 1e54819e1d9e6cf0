"""Reading records: ``exp show``, ``exp list`` (fast: no schema, templates or YAML loaded)."""

from __future__ import annotations

from typing import Optional

import typer

from .. import catalog
from ..numbers import fmt, format_number
from . import JSON_HELP, VERSION_HELP, command, echo_json, table, typer_app, version, current_workspace

app = typer_app()

#: How `exp show` labels the run's entries; the two durations are not the same clock.
RUN_LABELS = {
    "status": "status", "backend": "backend", "started": "started", "ended": "ended",
    "duration_s": "duration_s (script wall time, s)", "exit_code": "exit_code", "job_id": "job_id",
    "git_sha": "git_sha", "error": "error",
}


@command(app)
def show(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a record: state, human sections, expected-result claims, config changes."""
    info = catalog.describe(current_workspace(), version(version_))
    if json_out:
        echo_json(info)
        return
    typer.echo(f"experiment {info['version']} — {info['description'] or '(no description)'}")
    typer.echo(f"  status    {info['status']}    next: {info['next']}")
    if info.get("commit"):
        c = info["commit"]
        typer.echo(f"  commit    {c.get('sha') or 'SHA not recorded here; find it: ' + str(c.get('find'))}    {c.get('time', '')}")
    typer.echo(f"  category  {info['category']}")
    typer.echo(f"  parent    {info['parent'] or '—'}    baseline {info['baseline'] or '—'}")
    typer.echo(f"  record    {info['path']}  (state {info['state']})")
    if info.get("group"):
        typer.echo(f"  group     {info['group']}    changes {_changes(info['changes'])}")
    if info.get("members"):
        typer.echo(f"  members   {len(info['members'])}")
        for m in info["members"]:
            typer.echo(f"    {m['version']:10} {m['status']:10} {_changes(m['changes'])}")
    for warn in info["warnings"]:
        typer.echo(f"  ⚠ {warn}")
    inherited = info.get("inherited") or {}
    for name, text in info["sections"].items():
        source = f" (from {inherited[name]}, the group's parent)" if name in inherited else ""
        typer.echo(f"\n[{name}]{source}\n{text.strip() or '(empty)'}")
    if info["claims"]:
        typer.echo("\n[checkable expected results]")
        for c in info["claims"]:
            where = f"{c['from']} line" if c.get("from") else "line"
            typer.echo(f"  {where} {c['line']}: {c['text']}")
    if info["changed_from_parent"]:
        typer.echo(f"\n[config changed from {info['parent']}]")
        for key, (old, new) in info["changed_from_parent"].items():
            typer.echo(f"  {key}: {old} → {new}")
    if info["verdicts"]:
        typer.echo("\n[verdicts]" + (" — partial analysis: the run did not finish" if info.get("partial") else ""))
        for x in info["verdicts"]:
            why = f"  ({x['reason']})" if x.get("reason") else ""
            typer.echo(f"  {x['verdict']:12} {x['claim']}  observed {format_number(x['observed'])}, "
                       f"reference {format_number(x['reference'])}{why}")
    run_info = info.get("run") or {}
    if run_info:
        typer.echo("\n[run]")
        for key, label in RUN_LABELS.items():
            if run_info.get(key) is not None:
                typer.echo(f"  {label:34} {run_info[key]}")
        for key, value in (run_info.get("final") or {}).items():
            label = "wall_s (trainer time, s)" if key == "wall_s" else key
            typer.echo(f"  {label:34} {fmt(round(value, 4) if isinstance(value, float) else value)}")
    _show_group(info)


def _show_group(info: dict) -> None:
    """A group parent's analysis (`exp analyze PARENT`), member by member (the members and what
    they change are listed at the top)."""
    if not info.get("members"):
        return
    ga = info.get("group_analysis") or {}
    rows = {str(m.get("version")): m for m in ga.get("members") or []}
    typer.echo("\n[group]" + (f" — partial: pending {', '.join(ga['pending'])}" if ga.get("partial") else "")
               + ("" if ga else f" — not analysed yet: `exp analyze {info['version']}`"))
    for member in info["members"]:
        v = member["version"]
        m = rows.get(v) or {}
        shown = "  ".join(f"{k} {format_number(s.get('mean'))}" + (f" ± {format_number(s['ci_high'] - s['mean'])}"
                          if s.get("ci_high") is not None else "") for k, s in (m.get("stats") or {}).items())
        typer.echo(f"  {v:10} {m.get('label', ''):24} {m.get('state', member['status']):9} {shown}")
    if ga.get("best"):
        typer.echo(f"  best: {ga['best']['version']} by {ga['best']['metric']} — {ga['best'].get('text', '')}")
    for x in ga.get("verdicts") or []:
        why = f"  ({x['reason']})" if x.get("reason") else ""
        typer.echo(f"  {x['verdict']:12} {x['claim']}  observed {format_number(x.get('observed'))}, "
                   f"reference {format_number(x.get('reference'))}{why}")


@command(app, "list")
def list_(
    status: Optional[str] = typer.Option(None, "--status", metavar="S", help="only records with this status"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the records with status, category, parent and description."""
    rows = catalog.list_records(current_workspace(), status)
    if json_out:
        echo_json(rows)
        return
    if not rows:
        typer.echo("no experiments" + (f" with status {status}" if status else "") + "; create one with `exp new 0.1.0`")
        return
    if any(r.get("group") or r.get("members") for r in rows):  # the GROUP column only where there are groups
        typer.echo(table(
            ["VERSION", "STATUS", "CATEGORY", "PARENT", "GROUP", "DESCRIPTION"],
            [[r["version"], r["status"], r["category"], r["parent"] or "—", _group_cell(r), (r["description"] or "")[:60]]
             for r in rows],
        ))
        return
    typer.echo(table(
        ["VERSION", "STATUS", "CATEGORY", "PARENT", "DESCRIPTION"],
        [[r["version"], r["status"], r["category"], r["parent"] or "—", (r["description"] or "")[:60]] for r in rows],
    ))


def _changes(changes: dict) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in changes.items()) or "—"


def _group_cell(row: dict) -> str:
    """A member: its group and what it changes; a group's parent: how many members it has."""
    if row.get("group"):
        return f"{row['group']}: {_changes(row.get('changes') or {})}"
    if row.get("members"):
        return f"{len(row['members'])} members"
    return "—"
