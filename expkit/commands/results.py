"""A record's results: ``exp analyze``, ``exp context``, ``exp fill``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from .. import grouping
from .. import results as results_mod
from ..verdicts import verdict_kind
from ..numbers import format_number
from . import GROUP_VERSION_HELP, JSON_HELP, VERSION_HELP, command, counts, echo_json, typer_app, usage, version, current_workspace

app = typer_app()


@command(app)
def analyze(
    version_: str = typer.Argument(..., metavar="VERSION", help=GROUP_VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Metrics, verdicts on the expected results, anomalies, plots and drafts of the AI sections."""
    result = grouping.analyze_any(current_workspace(), version(version_))
    if json_out:
        echo_json(result)
        return
    if result.get("group"):
        _print_group(result)
        return
    _print_analysis(result)


def _print_group(result: dict[str, Any]) -> None:
    v = result["version"]
    typer.echo(f"{v}: group analyzed ({result['status']}) — {result['path']}" + (" — PARTIAL" if result["partial"] else ""))
    for m in result["members"]:
        shown = "  ".join(f"{k} {format_number(s['mean'])}" + (f" ± {format_number(s['half'])}" if s.get("half") is not None else "")
                          for k, s in m["stats"].items())
        typer.echo(f"  {m['version']:10} {m['label']:24} {m['state']:9} n={m['n']}  {shown}")
    if result["pending"]:
        typer.echo(f"pending   {', '.join(result['pending'])} (not finished: the analysis is partial)")
    if result["failed"]:
        typer.echo(f"no results {', '.join(result['failed'])}")
    if result["best"]:
        b = result["best"]
        typer.echo(f"best      {b['version']} by {b['metric']} {format_number(b['mean'])}: {b['text']}")
    marks = {"confirmed": "✓", "refuted": "✗", "inconclusive": "?"}
    typer.echo(f"group verdicts  {counts(result['verdict_counts'])}; members' own {counts(result['member_verdict_counts'])}")
    for x in result["verdicts"]:
        why = f"  ({x['reason']})" if x.get("reason") else ""
        typer.echo(f"  {marks.get(verdict_kind(x['verdict']), '?')} {x['claim']}{why}")
    for p in result["plots"]:
        typer.echo(f"plot      {p}")
    for n in result["notes"]:
        typer.echo(f"note      {n}")
    if result["drafted"]:
        typer.echo(f"drafted   {', '.join(result['drafted'])} (refine with `exp fill {v} SECTION --file F`)")
    for u in result["untraceable"]:
        typer.echo(f"  ⚠ line {u['line']} ({u['section']}): {u['number']} is not traceable: {u['reason']}")
    if result["pending"]:
        typer.echo(f"next      wait for {', '.join(result['pending'])}, then `exp analyze {v}` again")
    else:
        typer.echo(f"next      check the AI sections (`exp context {v} --json`, `exp fill`), then a person runs "
                   f"`exp review {v}` (the group and every member)")


def _print_analysis(result: dict[str, Any]) -> None:
    v = result["version"]
    m = result["metrics"]
    typer.echo(f"{v}: analyzed — {result['path']}")
    shown = [k for k in ("steps", "final_loss", "val_loss", "best_val_loss", "val_ppl", "tokens_per_s", "wall_s") if k in m]
    typer.echo("  " + "  ".join(f"{k} {format_number(m[k])}" for k in shown))
    marks = {"confirmed": "✓", "refuted": "✗", "inconclusive": "?"}
    c = result["verdict_counts"]
    typer.echo(f"verdicts  {counts(c)}")
    for x in result["verdicts"]:
        why = f"  ({x['reason']})" if x.get("reason") else ""
        typer.echo(f"  {marks.get(verdict_kind(x['verdict']), '?')} {x['claim']:30} observed {format_number(x['observed'])}  reference {format_number(x['reference'])}{why}")
    typer.echo(f"anomalies {len(result['anomalies']) or 'none'}")
    for a in result["anomalies"][:10]:
        typer.echo(f"  ! {a['kind']}: {a['message']}")
    for p in result["plots"]:
        typer.echo(f"plot      {p}")
    if result["drafted"]:
        typer.echo(f"drafted   {', '.join(result['drafted'])} (refine with `exp fill {v} SECTION --file F`)")
    if result["kept"]:
        typer.echo(f"kept      {', '.join(result['kept'])} (already written; not redrafted)")
    for u in result["untraceable"]:
        typer.echo(f"  ⚠ line {u['line']} ({u['section']}): {u['number']} is not traceable: {u['reason']}")
    for n in result["notes"]:
        typer.echo(f"note      {n}")
    typer.echo(f"next      check the AI sections (`exp context {v} --json`, `exp fill`), then a person runs `exp review {v}`")


@command(app)
def context(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What an AI assistant needs to write the analysis: the evidence to cite, sections, verdicts, samples."""
    data = results_mod.context(current_workspace(), version(version_))
    if json_out:
        echo_json(data)
        return
    typer.echo(f"experiment {data['version']} [{data['status']}] — {data['description'] or '(no description)'}")
    for key, value in data["paths"].items():
        typer.echo(f"  {key:9} {value}")
    if data["metrics"]:
        typer.echo("metrics   " + "  ".join(f"{k} {format_number(x)}" for k, x in data["metrics"].items()))
    for x in data["verdicts"]:
        typer.echo(f"verdict   {x['claim']}: {x['verdict']} (observed {format_number(x['observed'])}, reference {format_number(x['reference'])})")
    for a in data["anomalies"]:
        typer.echo(f"anomaly   {a['message']}")
    for s in data["samples"][:4]:
        typer.echo(f"sample    {s.get('prompt')!r} → {str(s.get('completion'))[:80]!r}")
    typer.echo(f"write     {data['rules']['write']}\n(--json gives everything, section texts included)")


@command(app)
def fill(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    section: str = typer.Argument(..., metavar="SECTION", help="analysis, diagnosis or suggestions"),
    file: str = typer.Option(..., "--file", metavar="F", help="the text (markdown); - reads standard input"),
    allow_untraceable: bool = typer.Option(
        False, "--allow-untraceable", help="write the text even when a number in it is not traceable (exp check lists them)"
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the AI's prose into an AI section, resolving [[citations]]; refuses untraceable numbers."""
    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise usage(f"--file {file}: no such file") from None
        except UnicodeDecodeError:
            raise usage(f"--file {file}: not UTF-8 text") from None
    result = results_mod.fill(current_workspace(), version(version_), section, text, allow_untraceable=allow_untraceable)
    if json_out:
        echo_json(result)
        return
    cited = len(result["citations"])
    typer.echo(f"wrote the {section} of {version_} ({result['path']}); {cited} cited number(s)")
    for u in result["untraceable"]:
        typer.echo(f"warning: line {u['line']}: {u['number']} is not traceable: {u['reason']}", err=True)
