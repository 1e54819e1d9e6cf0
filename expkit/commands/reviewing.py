"""The human gate: ``exp review`` (a person at a terminal) and ``exp commit``."""

from __future__ import annotations

import typer

from .. import commit as commit_mod
from .. import review as review_mod
from . import GROUP_VERSION_HELP, JSON_HELP, command, echo_json, typer_app, version, current_workspace

app = typer_app()


@command(app)
def review(version_: str = typer.Argument(..., metavar="VERSION", help=GROUP_VERSION_HELP)) -> None:
    """A person reviews an analyzed record at a terminal: approve, request changes, or quit."""
    result = review_mod.session(current_workspace(), version(version_))
    if not result["written"]:
        typer.echo(f"quit: nothing written; {version_} stays {result['status']}")
        return
    typer.echo(f"{version_}: {result['status']} (round {result['round']}, {result['reviewer']}); next: {result['next']}")


@command(app)
def commit(
    version_: str = typer.Argument(..., metavar="VERSION", help=GROUP_VERSION_HELP),
    sign: bool = typer.Option(False, "--sign", help="sign the commit with git's configured key (git commit -S)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """git-commit an approved, unchanged record with its state, run script and small artifacts."""
    result = commit_mod.commit(current_workspace(), version(version_), sign=sign)
    if json_out:
        echo_json(result)
        return
    typer.echo(f"committed {version_} as {result['sha'][:12]} on {result['branch']}" + (" (signed)" if result["signed"] else ""))
    for path in result["paths"]:
        typer.echo(f"  {path}")
    for s in result["skipped"]:
        typer.echo(f"  not committed: {s['path']} ({s['bytes']} bytes > {s['limit']}, [tool.exp] artifact_max_bytes)")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
