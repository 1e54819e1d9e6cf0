"""The strict Jinja environment and its shell-quoting filters, checked by a real bash."""

import subprocess

import pytest

from expkit.errors import WorkspaceError
from expkit.render import comment, environment, fmt, render, sh

HOSTILE = ["$(touch PWNED)", "`touch PWNED`", "a'b\"c", "x; touch PWNED", "line1\nline2", "\\", "", "*", "$HOME", "--flag", "🧪 中文"]


@pytest.mark.parametrize("value", HOSTILE)
def test_sh_quoting_survives_bash_and_executes_nothing(tmp_path, value):
    script = f"printf '%s' {sh(value)}\n"
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == value
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("value", HOSTILE + ["a\rtouch PWNED", "end\n touch PWNED\n"])
def test_comment_cannot_break_out(tmp_path, value):
    script = f"# description: {comment(value)}\necho ok\n"
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == "ok\n"
    assert not (tmp_path / "PWNED").exists()


def test_strict_undefined_is_an_error(tmp_path):
    (tmp_path / "t.j2").write_text("{{ missing }}")
    environment.cache_clear()
    with pytest.raises(WorkspaceError, match="unknown value"):
        render(tmp_path, "t.j2")
    (tmp_path / "bad.j2").write_text("{% if %}")
    with pytest.raises(WorkspaceError, match="syntax error"):
        render(tmp_path, "bad.j2")
    with pytest.raises(WorkspaceError, match="not found"):
        render(tmp_path, "nope.j2")


def test_fmt_is_compact():
    assert [fmt(x) for x in (3e-3, 8e-5, 16384, 1e6, 0.1, None, True)] == ["0.003", "8e-5", "16384", "1e6", "0.1", "—", "true"]
