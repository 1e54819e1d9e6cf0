"""``exp init``: a new workspace."""

from __future__ import annotations

from pathlib import Path

import typer

from ..workspace import scaffold
from . import command, typer_app

app = typer_app()


@command(app)
def init(
    directory: str = typer.Argument(..., metavar="DIR", help="directory for the new workspace"),
    force: bool = typer.Option(
        False, "--force",
        help="allow a non-empty DIR: existing files are kept; an existing pyproject.toml / .gitignore gets what it lacks appended",
    ),
) -> None:
    """Create a new workspace: experiment/, run_file/, out/, templates/, CLAUDE.md, pyproject.toml."""
    done = scaffold(Path(directory), force=force)
    for path in done.created:
        typer.echo(f"created {path}")
    for path in done.kept:
        typer.echo(f"kept    {path} (exists)")
    for added in done.appended:
        typer.echo(f"added to {added.path}:")
        for line in added.lines:
            typer.echo(f"  + {line}".rstrip())
    if not done.changed:
        typer.echo(f"\nnothing changed: {directory} already holds everything exp init adds")
    typer.echo(f"\nworkspace ready: cd {directory} && exp new 0.1.0 --desc '...'")
