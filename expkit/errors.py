"""The one exception family of expkit.

Core code raises these; only ``cli.py`` turns them into a message and an exit code, so that
every user error is one line and never a traceback.
"""

from __future__ import annotations


class ExpError(Exception):
    """A problem the user can act on. The message says what is wrong and what to do."""

    exit_code = 1


class UsageError(ExpError):
    """The command line itself is malformed (bad version form, bad KEY=VALUE)."""

    exit_code = 2


class WorkspaceError(ExpError):
    """No workspace here, or a workspace file is missing."""


class RecordError(ExpError):
    """A record is missing, already exists, malformed, or in the wrong state."""


class ConfigError(ExpError):
    """A TrainConfig value is unknown, mistyped or out of range."""


class HandEditError(RecordError):
    """A generated block was edited by hand; rewriting it would lose that text."""


class DataError(ExpError):
    """A corpus or tokenizer file is missing or malformed."""
