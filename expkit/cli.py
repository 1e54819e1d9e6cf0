"""The ``exp`` command line: parse, call one core function, print.

Core modules raise ``ExpError``; ``main`` alone turns one into a one-line message and an exit
code (validation 1, usage 2). Core modules are imported inside the commands so that
``exp --help`` pays only for typer.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Optional

import typer

from .errors import ExpError

app = typer.Typer(
    help="exp — versioned, reviewed experiment records for pretraining small language models.\n\n"
    "Loop: exp new → (human fills goal/hypothesis/expected/focus) → exp set → exp check → exp run → "
    "exp analyze → exp review (a person) → exp commit.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

VERSION_HELP = "experiment version X.Y.Z"


def command(name: str | None = None):
    """Register a command whose ExpError becomes one line on stderr and an exit code.

    This wrapper is the one place where errors turn into exit codes, so the same behaviour
    holds under ``CliRunner`` in tests and in the console script.
    """

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ExpError as err:
                typer.echo(f"exp: error: {err}", err=True)
                raise typer.Exit(err.exit_code) from None
            except OSError as err:  # permissions, full disk: the user can act on these too
                where = f": {err.filename}" if err.filename else ""
                typer.echo(f"exp: error: {err.strerror or err}{where}", err=True)
                raise typer.Exit(1) from None

        return app.command(name)(wrapper)

    return register
JSON_HELP = "print JSON instead of text"


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _ws():
    from .workspace import Workspace

    return Workspace.find()


def _v(text: str):
    from .version import Version

    return Version.parse(text)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (no rich: listings must start fast)."""
    from unicodedata import east_asian_width

    def width(s: str) -> int:
        return sum(2 if east_asian_width(c) in "WF" else 1 for c in s)

    cols = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c + " " * (cols[i] - width(c)) for i, c in enumerate(cells)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * c for c in cols])] + [line(r) for r in rows])


# -- workspace -------------------------------------------------------------------------------
@command()
def init(
    directory: str = typer.Argument(..., metavar="DIR", help="directory for the new workspace"),
    force: bool = typer.Option(False, "--force", help="allow a non-empty DIR (existing files are never overwritten)"),
) -> None:
    """Create a new workspace: experiment/, run_file/, out/, templates/, CLAUDE.md, pyproject.toml."""
    from pathlib import Path

    from .workspace import scaffold

    created, kept = scaffold(Path(directory), force=force)
    for path in created:
        typer.echo(f"created {path}")
    for path in kept:
        typer.echo(f"kept    {path} (exists)")
    typer.echo(f"\nworkspace ready: cd {directory} && exp new 0.1.0 --desc '...'")


# -- records ---------------------------------------------------------------------------------
@command()
def new(
    version: str = typer.Argument(..., help=VERSION_HELP),
    parent: Optional[str] = typer.Option(None, "--from", metavar="PARENT", help="copy the config of this experiment"),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="VERSION", help="the experiment to compare against"),
    desc: str = typer.Option("", "--desc", metavar="TEXT", help="one-line description"),
    lang: Optional[str] = typer.Option(None, "--lang", metavar="zh|en", help="record language (default: workspace's, zh)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/experiment_VERSION.md from the templates."""
    from . import store

    v = _v(version)
    p = _v(parent) if parent else None
    b = _v(baseline) if baseline else None
    if lang is not None and lang not in ("zh", "en"):
        raise _usage(f"--lang must be zh or en, not {lang!r}")
    ws = _ws()
    record = store.create(ws, v, parent=p, baseline=b, description=desc, lang=lang)
    if json_out:
        _echo_json({"version": str(v), "path": str(record.path), "status": record.status})
        return
    typer.echo(f"created {record.path.relative_to(ws.root)}")
    typer.echo("next: fill the 🧑‍🔬 human sections (goal, hypothesis, expected, focus), then "
               f"`exp check {v}`")


@command()
def check(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List every problem of a record with its line and fix; a clean draft becomes ready."""
    from .problems import check_record

    result = check_record(_ws(), _v(version))
    if json_out:
        _echo_json(result)
    else:
        for p in result["problems"]:
            typer.echo(f"{result['path']}:{p['line']}: {p['level']}: {p['message']} — fix: {p['fix']}")
        n_err = sum(p["level"] == "error" for p in result["problems"])
        n_warn = len(result["problems"]) - n_err
        verdict = "ok" if n_err == 0 else "not ready"
        typer.echo(f"{version}: {verdict} ({n_err} error(s), {n_warn} warning(s)); status {result['status']}")
    if not result["ok"]:
        raise typer.Exit(1)


@command("set")
def set_(
    version: str = typer.Argument(..., help=VERSION_HELP),
    assignments: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE...", help="config values, e.g. learning_rate=8e-5"),
    regenerate: bool = typer.Option(
        False, "--regenerate", help="rewrite hand-edited generated sections (their text is saved under out/.discarded/)"
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set config values (typed and range-checked) and regenerate the parameter table."""
    from .store import set_config

    if not assignments and not regenerate:
        raise _usage("give at least one KEY=VALUE (e.g. learning_rate=8e-5), or --regenerate")
    result = set_config(_ws(), _v(version), assignments or [], regenerate=regenerate)
    if json_out:
        _echo_json(result)
        return
    for key, (old, new) in result["changed"].items():
        typer.echo(f"{key}: {old} → {new}")
    for path in result["discarded"]:
        typer.echo(f"saved the hand-edited text to {path}")
    if not result["changed"] and not result["discarded"]:
        typer.echo("nothing changed")


@command()
def show(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a record: state, human sections, expected-result claims, config changes."""
    from .store import describe

    info = describe(_ws(), _v(version))
    if json_out:
        _echo_json(info)
        return
    typer.echo(f"experiment {info['version']} — {info['description'] or '(no description)'}")
    typer.echo(f"  status    {info['status']}    next: {info['next']}")
    typer.echo(f"  category  {info['category']}")
    typer.echo(f"  parent    {info['parent'] or '—'}    baseline {info['baseline'] or '—'}")
    typer.echo(f"  record    {info['path']}")
    for warn in info["warnings"]:
        typer.echo(f"  ⚠ {warn}")
    for name, text in info["sections"].items():
        typer.echo(f"\n[{name}]\n{text.strip() or '(empty)'}")
    if info["claims"]:
        typer.echo("\n[checkable expected results]")
        for c in info["claims"]:
            typer.echo(f"  line {c['line']}: {c['text']}")
    if info["changed_from_parent"]:
        typer.echo(f"\n[config changed from {info['parent']}]")
        for key, (old, new) in info["changed_from_parent"].items():
            typer.echo(f"  {key}: {old} → {new}")


@command("list")
def list_(
    status: Optional[str] = typer.Option(None, "--status", metavar="S", help="only records with this status"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the records with status, category, parent and description."""
    from .store import list_records

    rows = list_records(_ws(), status)
    if json_out:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no experiments" + (f" with status {status}" if status else "") + "; create one with `exp new 0.1.0`")
        return
    typer.echo(
        _table(
            ["VERSION", "STATUS", "CATEGORY", "PARENT", "DESCRIPTION"],
            [[r["version"], r["status"], r["category"], r["parent"] or "—", (r["description"] or "")[:60]] for r in rows],
        )
    )


@command()
def diff(
    a: str = typer.Argument(..., metavar="A", help="first version"),
    b: str = typer.Argument(..., metavar="B", help="second version"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show how two experiments differ (config keys that differ)."""
    from .store import diff_records

    result = diff_records(_ws(), _v(a), _v(b))
    if json_out:
        _echo_json(result)
        return
    if not result["config"]:
        typer.echo(f"{a} and {b} have the same config")
        return
    typer.echo(_table(["KEY", a, b], [[k, str(x), str(y)] for k, (x, y) in result["config"].items()]))


@command()
def tree(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show the lineage of experiments by parent."""
    from .store import lineage_tree

    nodes = lineage_tree(_ws())
    if json_out:
        _echo_json(nodes)
        return
    if not nodes:
        typer.echo("no experiments; create one with `exp new 0.1.0`")

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        desc = f"  {node['description']}" if node["description"] else ""
        typer.echo(f"{prefix}{branch}{node['version']} [{node['status']}]{desc}")
        child_prefix = prefix if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(node["children"]):
            walk(child, child_prefix, i == len(node["children"]) - 1, False)

    for node in nodes:
        walk(node, "", True, True)


def _usage(message: str) -> ExpError:
    from .errors import UsageError

    return UsageError(message)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("exp: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
