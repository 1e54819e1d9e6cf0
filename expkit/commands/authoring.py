"""Writing records: ``exp new``, ``exp check``, ``exp set``, ``exp sweep``, ``exp tasks``."""

from __future__ import annotations

from typing import Optional

import typer

from .. import lifecycle, tasks as tasks_mod
from .. import sweep as sweep_mod
from . import JSON_HELP, VERSION_HELP, command, echo_json, typer_app, usage, version, current_workspace

app = typer_app()


@command(app)
def new(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    parent: Optional[str] = typer.Option(None, "--from", metavar="PARENT", help="copy the config of this experiment"),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="VERSION", help="the experiment to compare against"),
    desc: str = typer.Option("", "--desc", metavar="TEXT", help="one-line description"),
    lang: Optional[str] = typer.Option(None, "--lang", metavar="zh|en", help="record language (default: workspace's, zh)"),
    task: Optional[str] = typer.Option(None, "--task", metavar="NAME",
                                       help="what it trains: pretrain (default), classify, or a task pyproject.toml declares; --from inherits it"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/experiment_VERSION.md from the templates."""
    v = version(version_)
    p = version(parent) if parent else None
    b = version(baseline) if baseline else None
    if lang is not None and lang not in ("zh", "en"):
        raise usage(f"--lang must be zh or en, not {lang!r}")
    ws = current_workspace()
    record = lifecycle.create(ws, v, parent=p, baseline=b, description=desc, lang=lang, task=task)
    if json_out:
        echo_json({"version": str(v), "path": str(record.path), "state": str(ws.state_path(v)), "status": record.status,
                   "task": record.meta.get("task") or "pretrain"})
        return
    typer.echo(f"created {ws.rel(ws.record_path(v))} (and its state {ws.rel(ws.state_path(v))})")
    nxt = f"`exp check {v}`"
    if p is not None and v.category == "validation":
        nxt = f"set the variable under test (`exp set {v} KEY=VALUE`), then `exp check {v}`"
    typer.echo(f"next: fill the 🧑‍🔬 human sections (goal, hypothesis, expected, focus), then {nxt}")


@command(app)
def check(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List every problem of a record with its line and fix; a clean draft becomes ready."""
    result = lifecycle.check_record(current_workspace(), version(version_))
    if json_out:
        echo_json(result)
    else:
        for p in result["problems"]:
            typer.echo(f"{result['path']}:{p['line']}: {p['level']}: {p['message']} — fix: {p['fix']}")
        n_err = sum(p["level"] == "error" for p in result["problems"])
        n_warn = len(result["problems"]) - n_err
        verdict = "ok" if n_err == 0 else ("not ready" if result["status"] in ("draft", "ready") else "problems")
        typer.echo(f"{version_}: {verdict} ({n_err} error(s), {n_warn} warning(s)); status {result['status']}")
    if not result["ok"]:
        raise typer.Exit(1)


@command(app, "set")
def set_(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    assignments: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE...", help="config values, e.g. learning_rate=8e-5"),
    regenerate: bool = typer.Option(
        False, "--regenerate", help="rewrite hand-edited generated sections (their text is saved under out/.discarded/)"
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set config values (typed and range-checked) and regenerate the parameter table."""
    if not assignments and not regenerate:
        raise usage("give at least one KEY=VALUE (e.g. learning_rate=8e-5), or --regenerate")
    result = lifecycle.set_config(current_workspace(), version(version_), assignments or [], regenerate=regenerate)
    if json_out:
        echo_json(result)
        return
    for key, (old, new) in result["changed"].items():
        typer.echo(f"{key}: {old} → {new}")
    for path in result["discarded"]:
        typer.echo(f"saved the hand-edited text to {path}")
    if not result["changed"] and not result["discarded"]:
        typer.echo("nothing changed")


@command(app)
def sweep(
    parent: str = typer.Argument(..., metavar="PARENT", help="the group: an exploratory X.Y.0 record whose human sections state the question"),
    axes: Optional[list[str]] = typer.Argument(
        None, metavar="KEY=V1,V2,...", help="a config key and its values, comma-separated (typed and checked as by `exp set`)"
    ),
    grid: bool = typer.Option(False, "--grid", help="one member per combination of the keys' values, not one per key-value"),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="N", help="replicates=N on every member (seeds seed, seed+1, ...)"),
    desc: Optional[str] = typer.Option(
        None, "--desc", metavar="TEXT", help="members' description: 'TEXT — KEY=VALUE' (default: the parent's description in place of TEXT)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the members that would be made; write nothing"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make a group's members from an X.Y.0 record: one record X.Y.k per swept value.

    Each member is `exp new X.Y.k --from PARENT` at the next free patch versions, changing only
    the swept key (with several keys, one member per key-value; with --grid, one per combination,
    which `exp check` then warns changes several keys). Its front matter says `group: PARENT` and
    `changes: {KEY: VALUE}`; its human sections are PARENT's by reference until a person writes
    one of its own. Every member is validated first: one bad value and nothing is created.
    A member's description is "DESC — KEY=VALUE", DESC being --desc or else PARENT's description.
    """
    result = sweep_mod.sweep(current_workspace(), version(parent), axes or [], grid=grid, seeds=seeds, desc=desc,
                             dry_run=dry_run)
    if json_out:
        echo_json(result)
        return
    verb = "would create" if dry_run else "created"
    typer.echo(f"{verb} {len(result['members'])} member(s) of group {parent}:")
    for m in result["members"]:
        changes = ", ".join(f"{k}={v}" for k, v in m["changes"].items())
        seeds_note = f"  replicates={m['replicates']}" if seeds is not None else ""
        typer.echo(f"  {m['version']}  {changes}{seeds_note}  {m['path']}")
    if result.get("warning"):
        typer.echo(f"warning: {result['warning']}")
    if dry_run:
        typer.echo("dry run: nothing was written")
    else:
        typer.echo(f"next: `exp check` each member (a filled {parent} satisfies their human sections), then run them")


@command(app)
def tasks(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the tasks a record may have: built-in and declared, with command, config and metrics.

    A workspace declares its own trainer in pyproject.toml as [tool.exp.tasks.NAME] with
    `command` (placeholders {config} and {out_dir}), `metrics` (name = "lower" | "higher")
    and optionally `config` ("module:Class", a pydantic model) and `artifacts`.
    """
    ws = current_workspace()
    found = [t.to_dict() for t in tasks_mod.available(ws.settings).values()]
    if json_out:
        echo_json({"tasks": found})
        return
    for t in found:
        typer.echo(f"{t['name']}  ({t['source']})")
        typer.echo(f"  command  {' '.join(t['command'])}")
        typer.echo(f"  config   {t['config']}")
        typer.echo("  metrics  " + ", ".join(f"{m['name']} ({m['direction']})" for m in t["metrics"]))
