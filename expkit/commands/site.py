"""``exp site``: the workspace as a static web site; ``--serve`` keeps it up to date on 127.0.0.1."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Any, Optional

import typer

from .. import site as site_service
from . import JSON_HELP, command, current_workspace, echo_json, typer_app, usage

app = typer_app()


@command(app)
def site(
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="the site's folder (default out/site/)"),
    open_: bool = typer.Option(False, "--open", help="open the index in a web browser"),
    serve: bool = typer.Option(False, "--serve", help="serve it on 127.0.0.1 and rebuild when a record or a run changes"),
    port: int = typer.Option(8000, "--port", metavar="P", help="the port --serve listens on (default 8000)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Build a static web site of the workspace (out/site/): records, verdicts, curves, comparisons."""
    if not 0 < port < 65536:
        raise usage(f"--port must be between 1 and 65535, not {port}")
    ws = current_workspace()
    if serve:
        if json_out:
            raise usage("--serve prints a line per rebuild; leave out --json")
        opened = False

        def report(result: dict[str, Any]) -> None:
            nonlocal opened
            typer.echo(f"{result['url']}  {len(result['written'])} file(s) written, {result['records']} record(s), "
                       f"{result['seconds']} s  (Ctrl-C stops)")
            if open_ and not opened:
                opened = True
                webbrowser.open(result["url"])

        try:
            site_service.serve(ws, out, port, report)
        except KeyboardInterrupt:
            typer.echo("stopped")
        return
    result = site_service.build(ws, out)
    if open_:
        webbrowser.open(result["index"])
    if json_out:
        echo_json(result)
        return
    groups = f", {result['groups']} group(s)" if result.get("groups") else ""
    typer.echo(f"site      {result['site']}/  ({result['records']} record(s){groups}; {len(result['written'])} file(s) written, "
               f"{result['unchanged']} unchanged, {len(result['removed'])} removed; {result['seconds']} s)")
    typer.echo(f"open      {result['index']}")
