"""Several records at once: ``exp diff``, ``exp compare``, ``exp report``, ``exp tree``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .. import reporting
from ..numbers import format_number, format_percent
from . import JSON_HELP, command, current_workspace, echo_json, table, typer_app, version

app = typer_app()


@command(app)
def diff(
    a: str = typer.Argument(..., metavar="A", help="first version"),
    b: str = typer.Argument(..., metavar="B", help="second version"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """How two experiments differ: config, environment, run script, code (git), metrics."""
    r = reporting.diff_records(current_workspace(), version(a), version(b))
    if json_out:
        echo_json(r)
        return
    typer.echo(f"[config] {len(r['config'])} key(s) differ")
    if r["config"]:
        typer.echo(table(["KEY", a, b], [[k, str(x), str(y)] for k, (x, y) in r["config"].items()]))
    typer.echo(f"\n[environment] {len(r['environment'])} difference(s)")
    if r["environment"]:
        typer.echo(table(["KEY", a, b], [[k, str(x), str(y)] for k, (x, y) in r["environment"].items()]))
    code = r["code"]
    typer.echo("\n[code]")
    if code.get("note"):
        typer.echo(f"  {code['note']}")
    else:
        dirty = lambda d: " (+ uncommitted changes)" if d else ""  # noqa: E731
        typer.echo(f"  workspace  {a}: {code['a']}{dirty(code['a_dirty'])}\n             {b}: {code['b']}{dirty(code['b_dirty'])}")
        if code.get("same"):
            typer.echo("  same workspace revision")
        elif code.get("error"):
            typer.echo(f"  {code['error']}")
        else:
            typer.echo(f"  {code.get('files', 0)} file(s) changed\n{code.get('stat', '')}")
    trainer = code["trainer"]
    typer.echo(f"  trainer code  {a}: {trainer['a'] or 'not recorded'}\n                {b}: {trainer['b'] or 'not recorded'}")
    if trainer.get("same"):
        typer.echo("  same trainer code")
    elif trainer.get("note"):
        typer.echo(f"  ⚠ {trainer['note']}")
    typer.echo("\n[metrics]")
    if r["metrics"]:
        rows = [[k, format_number(d["reference"]), format_number(d["value"]), format_number(d["abs"], signed=True), format_percent(d["rel"], signed=True)]
                for k, d in r["metrics"].items()]
        typer.echo(table(["METRIC", a, b, "Δ", "Δ%"], rows))
    else:
        typer.echo(f"  {r['metrics_note']}")
    typer.echo("\n[script]")
    typer.echo(r["script"]["diff"].rstrip("\n") if r["script"]["diff"] else "  " + r["script"].get("note", "identical"))


@command(app)
def compare(
    versions: list[str] = typer.Argument(..., metavar="V1 V2 ...", help="the experiments; deltas are against the first"),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE", help="write their loss curves overlaid to this PNG"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare runs: the config keys that differ, a metric table with deltas, overlaid curves."""
    r = reporting.compare_records(current_workspace(), [version(x) for x in versions], Path(plot) if plot else None)
    if json_out:
        echo_json(r)
        return
    labels = r["labels"]
    if r["config_diff"]:
        typer.echo(table(["CONFIG", *labels], [[k, *(str(vals.get(x)) for x in labels)] for k, vals in r["config_diff"].items()]))
    else:
        typer.echo("same config")
    ref = r["reference"]

    def cell(metric: str, label: str) -> str:
        value = r["metrics"][metric].get(label)
        if label == ref or metric not in r["deltas"].get(label, {}):
            return format_number(value)
        d = r["deltas"][label][metric]
        way = {True: ", better", False: ", worse"}.get(r["better"].get(label, {}).get(metric), "")
        return f"{format_number(value)} ({format_number(d['abs'], signed=True)}, {format_percent(d['rel'], signed=True)}{way})"

    typer.echo("")
    typer.echo(table(["METRIC", *(x + (" (ref)" if x == ref else "") for x in labels)],
                      [[m, *(cell(m, x) for x in labels)] for m in r["metrics"]]))
    if r.get("plot"):
        typer.echo(f"\nplot: {r['plot']}" + (f" (no curve for {', '.join(r['not_plotted'])})" if r["not_plotted"] else ""))


@command(app)
def tree(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show the lineage of experiments by parent, with verdicts and the best loss of each."""
    nodes = reporting.tree(current_workspace())
    if json_out:
        echo_json(nodes)
        return
    if not nodes:
        typer.echo("no experiments; create one with `exp new 0.1.0`")

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        parts = [f"{node['version']} [{node['status']}]" + (f" {node['task']}" if node.get("task") not in (None, reporting.PRETRAIN) else "")]
        if node["verdicts"] is not None:
            v = node["verdicts"]
            parts.append(f"✓{v['confirmed']} ✗{v['refuted']} ?{v['inconclusive']}")
        if node["metric"]:
            parts.append(f"{node['metric']['name']} {format_number(node['metric']['value'])}" + (" ★" if node["best"] else ""))
        if node["description"]:
            parts.append(node["description"])
        if node.get("init_from"):
            parts.append(f"← init_from {node['init_from']}")
        typer.echo(f"{prefix}{branch}" + "  ".join(parts))
        child_prefix = prefix if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(node["children"]):
            walk(child, child_prefix, i == len(node["children"]) - 1, False)

    for node in nodes:
        walk(node, "", True, True)


@command(app)
def report(
    no_plots: bool = typer.Option(False, "--no-plots", help="skip the PNGs (the markdown and CSV only)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/EXPERIMENT_REPORT.md, experiment/experiment_tracker.csv and comparison PNGs."""
    r = reporting.report(current_workspace(), plots=not no_plots)
    if json_out:
        echo_json(r)
        return
    by = ", ".join(f"{n} {s}" for s, n in sorted(r["by_status"].items()))
    typer.echo(f"{r['records']} experiment(s){': ' + by if by else ''}")
    typer.echo(f"wrote {r['report']}\nwrote {r['tracker']}")
    for p in r["plots"]:
        typer.echo(f"wrote {p}")
