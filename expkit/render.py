"""The one Jinja environment.

Strict (``StrictUndefined``: a missing variable is an error, never an empty string), keeps
trailing newlines, and offers the filters every template needs:

- ``sh``: ``shlex.quote`` — every value that enters a shell script goes through it;
- ``comment``: text made safe for a ``#`` comment line (newlines cannot end the comment);
- ``oneline``: newlines folded to spaces (titles, table cells);
- ``cell``: a markdown table cell (pipes escaped, one line);
- ``fmt``: numbers printed compactly (3e-3, 16384, 0.1);
- ``num`` / ``pct``: the analysis' number format (``analysis.format_number``), whose output the
  evidence check traces back to the value.

Templates are read from the workspace's ``templates/`` (or the expkit checkout's), so a lab
can edit its own copy.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WorkspaceError
from .numbers import fmt, format_number, format_percent


def sh(value: Any) -> str:
    if value is None:
        return "''"
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def comment(value: Any) -> str:
    # A newline (or carriage return) would end the comment and turn the rest into commands.
    return " ".join(str(value if value is not None else "").replace("\r", "\n").split("\n"))


def oneline(value: Any) -> str:
    return " ".join(str(value if value is not None else "").split())


def cell(value: Any) -> str:
    return oneline(fmt(value)).replace("|", "\\|")


@lru_cache(maxsize=8)
def environment(templates_dir: Path) -> Any:
    """The Jinja environment of a templates directory (jinja2 costs ~65 ms to import: only here)."""
    import jinja2

    if not templates_dir.is_dir():
        raise WorkspaceError(f"templates directory {templates_dir} is missing; copy it with `exp init DIR --force`")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # markdown and shell, not HTML; shell values are quoted by |sh instead
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(sh=sh, comment=comment, oneline=oneline, cell=cell, fmt=fmt, num=format_number, pct=format_percent)
    return env


def render(templates_dir: Path, name: str, /, **context: Any) -> str:
    import jinja2

    try:
        return environment(templates_dir).get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise WorkspaceError(f"template {name} not found in {templates_dir}; restore it from the expkit checkout") from None
    except jinja2.TemplateSyntaxError as err:
        raise WorkspaceError(f"template {err.filename}:{err.lineno} has a syntax error: {err.message}") from None
    except jinja2.UndefinedError as err:
        raise WorkspaceError(f"template {templates_dir / name} uses an unknown value: {err.message}") from None
