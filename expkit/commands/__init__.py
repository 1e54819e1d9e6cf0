"""The commands of ``exp``, by concept; this package's root holds what they share.

Each module defines its commands on its own typer app (``typer_app``); ``expkit.cli`` loads a
module only when one of its commands runs, so ``exp --help`` and ``exp list`` do not pay for
the modules they do not use. A command body parses, calls one service, prints.

``command`` is the one place where errors turn into exit codes: an ``ExpError`` (or an
``OSError``: permissions, a full disk) becomes one line on stderr and its exit code (1 for
validation, 2 for usage), never a traceback. The records' notices (a stale editor buffer put
right) are printed after every command, one line each.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any
from unicodedata import east_asian_width

import typer

from .. import records
from ..errors import ExpError, UsageError
from ..version import Version
from ..workspace import Workspace

VERSION_HELP = "experiment version X.Y.Z"
GROUP_VERSION_HELP = "experiment version X.Y.Z, or a group's X.Y.0: the group and all its members"
JSON_HELP = "print JSON instead of text"


def typer_app() -> typer.Typer:
    return typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


def command(app: typer.Typer, name: str | None = None, hidden: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Register a command whose ExpError becomes one line on stderr and an exit code."""

    def register(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ExpError as err:
                typer.echo(f"exp: error: {err}", err=True)
                raise typer.Exit(err.exit_code) from None
            except BrokenPipeError:  # `exp show V | head`: the reader has all it wanted; stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(141) from None  # 128 + SIGPIPE, as a shell reports a piped command cut short
            except OSError as err:
                where = f": {err.filename}" if err.filename else ""
                typer.echo(f"exp: error: {err.strerror or err}{where}", err=True)
                raise typer.Exit(1) from None
            finally:
                for note in records.take_notices():
                    typer.echo(f"exp: note: {note}", err=True)

        return app.command(name, hidden=hidden)(wrapper)

    return register


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def current_workspace() -> Workspace:
    return Workspace.find()


def version(text: str) -> Version:
    return Version.parse(text)


def usage(message: str) -> UsageError:
    return UsageError(message)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (no rich: listings must start fast); CJK characters count double."""

    def width(s: str) -> int:
        return sum(2 if east_asian_width(c) in "WF" else 1 for c in s)

    cols = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c + " " * (cols[i] - width(c)) for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(headers), line(["-" * c for c in cols])] + [line(r) for r in rows])


def counts(verdict_counts: dict[str, int]) -> str:
    """"1 confirmed, 2 refuted, 0 inconclusive" from an analysis' verdict_counts."""
    return ", ".join(f"{verdict_counts.get(k, 0)} {k}" for k in ("confirmed", "refuted", "inconclusive"))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
