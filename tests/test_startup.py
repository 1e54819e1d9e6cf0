"""The CLI's start-up path stays light: no torch, transformers, swanlab, numpy, Pillow or git."""

from __future__ import annotations

import re

import pytest
from conftest import run_exp

from expkit.version import Version
from expkit import lifecycle

HEAVY = ("torch", "transformers", "swanlab", "matplotlib", "PIL", "numpy", "git", "pydantic", "jinja2")


def imported_modules(*args, cwd):
    r = run_exp(*args, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr
    return {m.group(1).split(".")[0] for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", r.stderr)}


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["show", "0.1.0"], ["tree"]])
def test_fast_commands_import_nothing_heavy(ws, args):
    lifecycle.create(ws, Version.parse("0.1.0"), description="x")
    mods = imported_modules(*args, cwd=ws.root)
    assert "expkit" in mods  # the measurement itself works
    allowed = {"pydantic", "jinja2"} if args[0] == "show" else set()  # show validates the config diff lazily
    assert not (set(HEAVY) - allowed) & mods, sorted((set(HEAVY) - allowed) & mods)
