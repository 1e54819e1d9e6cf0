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
    force: bool = typer.Option(False, "--force", help="allow a non-empty DIR (existing files are never overwritten)"),
) -> None:
    """Create a new workspace: experiment/, run_file/, out/, templates/, CLAUDE.md, pyproject.toml."""
    created, kept = scaffold(Path(directory), force=force)
    for path in created:
        typer.echo(f"created {path}")
    for path in kept:
        typer.echo(f"kept    {path} (exists)")
    typer.echo(f"\nworkspace ready: cd {directory} && exp new 0.1.0 --desc '...'")
