"""``exp summary``: its own module, so ``exp tree`` and ``exp list`` never load what the summary
reads (results, config schemas, pydantic)."""

from __future__ import annotations

from typing import Optional

import typer

from ..summary import write_summary
from . import JSON_HELP, command, current_workspace, echo_json, typer_app

app = typer_app()


@command(app)
def summary(
    lang: Optional[str] = typer.Option(None, "--lang", metavar="zh|en", help="language (default: the workspace's)"),
    style: str = typer.Option("bullets", "--style", metavar="bullets|resume",
                              help="bullets: the full summary; resume: 3-6 short bullets for a report or CV"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/SUMMARY.md: what the approved and committed records showed, every number cited."""
    r = write_summary(current_workspace(), lang=lang, style=style)
    if json_out:
        echo_json(r)
        return
    c = r["counts"]
    typer.echo(f"{c['counted']} of {c['records']} record(s) counted ({c['approved']} approved, {c['committed']} committed); "
               f"{c['pending']} pending")
    for line in r["bullets"] if r["style"] == "resume" else ():
        typer.echo(line["text"])
    typer.echo(f"wrote {r['path']}")
