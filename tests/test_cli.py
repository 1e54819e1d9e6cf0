"""`exp` as a user runs it: real subprocesses for the flow and the error paths, CliRunner for the rest."""

from __future__ import annotations

import json
import os

import pytest
from conftest import fill, run_exp

HOSTILE_VERSIONS = ["1.4", "v1.4.1", "../x", "1.4.1;rm -rf /", "01.2.3", "$(touch PWNED)"]


def tree_of(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_foundation_loop_through_real_processes(tmp_path):
    root = tmp_path / "lab"
    r = run_exp("init", str(root))
    assert r.returncode == 0, r.stderr
    for rel in ["experiment/README.md", "run_file", "out", "templates/zh/record.md.j2", "templates/en/record.md.j2", "CLAUDE.md", "pyproject.toml", ".gitignore"]:
        assert (root / rel).exists(), rel
    assert "[tool.exp]" in (root / "pyproject.toml").read_text()
    assert "out/**/checkpoints/" in (root / ".gitignore").read_text()

    env = {"EXP_ROOT": ""}  # found by walking up from the working directory
    sub = root / "experiment"
    assert run_exp("new", "1.0.0", "--desc", "baseline", cwd=sub, env=env).returncode == 0
    r = run_exp("new", "1.0.1", "--from", "1.0.0", "--desc", "lr 1e-3", cwd=sub, env=env)
    assert r.returncode == 0 and "experiment_1.0.1.md" in r.stdout
    r = run_exp("check", "1.0.1", cwd=root, env=env)
    assert r.returncode == 1 and "hint" in r.stdout and "experiment/experiment_1.0.1.md:" in r.stdout
    fill(root / "experiment/experiment_1.0.1.md")
    r = run_exp("set", "1.0.1", "learning_rate=1e-3", cwd=root, env=env)
    assert r.returncode == 0 and "learning_rate: 0.003 → 0.001" in r.stdout
    r = run_exp("check", "1.0.1", cwd=root, env=env)
    assert r.returncode == 0, r.stdout
    assert "ready" in r.stdout
    shown = json.loads(run_exp("show", "1.0.1", "--json", cwd=root, env=env).stdout)
    assert {"schema", "version", "parent", "baseline", "status", "description", "config"} <= set(shown)
    assert shown["status"] == "ready" and shown["category"] == "validation" and shown["parent"] == "1.0.0"
    listed = json.loads(run_exp("list", "--status", "ready", "--json", cwd=root, env=env).stdout)
    assert [row["version"] for row in listed] == ["1.0.1"]
    tree = run_exp("tree", cwd=root, env=env).stdout
    assert "1.0.0 [draft]" in tree and "└── 1.0.1 [ready]" in tree
    diff = run_exp("diff", "1.0.0", "1.0.1", cwd=root, env=env).stdout
    assert "learning_rate" in diff and "0.001" in diff


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_malformed_versions_exit_2_and_touch_nothing(ws, version):
    before = tree_of(ws.root)
    for args in (["new", version], ["set", version, "seed=1"], ["show", version], ["check", version]):
        r = run_exp(*args, cwd=ws.root)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert "X.Y.Z" in r.stderr
    assert tree_of(ws.root) == before


def test_user_errors_are_one_line_without_traceback(ws, tmp_path):
    run_exp("new", "1.0.0", cwd=ws.root)
    cases = [
        (["new", "1.0.0"], 1, "already exists"),
        (["new", "1.0.1", "--from", "9.9.9"], 1, "no such experiment"),
        (["set", "1.0.0", "lerning_rate=1"], 1, "did you mean learning_rate"),
        (["set", "1.0.0", "learning_rate=-1"], 1, "learning_rate"),
        (["set", "1.0.0", "learning_rate"], 2, "KEY=VALUE"),
        (["set", "1.0.0"], 2, "KEY=VALUE"),
        (["show", "3.3.3"], 1, "exp new 3.3.3"),
        (["list", "--status", "bogus"], 2, "--status"),
        (["new", "1.0.2", "--lang", "fr"], 2, "--lang"),
    ]
    for args, code, needle in cases:
        r = run_exp(*args, cwd=ws.root)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = run_exp("list", cwd=outside, env={"EXP_ROOT": ""})
    assert r.returncode == 1 and "exp init" in r.stderr


def test_init_refuses_non_empty_and_force_never_overwrites(tmp_path, cli):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "CLAUDE.md").write_text("my own guide")
    code, _, err = cli("init", str(target))
    assert code == 1 and "--force" in err
    assert sorted(os.listdir(target)) == ["CLAUDE.md"]
    code, out, _ = cli("init", str(target), "--force")
    assert code == 0 and "kept" in out
    assert (target / "CLAUDE.md").read_text() == "my own guide"
    assert (target / "templates/zh/record.md.j2").exists()


PROJECT_TOML = '[project]\nname = "mine"\nversion = "1.0"\n\n[tool.black]\nline-length = 100'  # no final newline
PROJECT_IGNORE = "*.pyc\n.venv/\nout/**/checkpoints/\n"


def added_lines(stdout: str, path) -> list[str]:
    """The `  + LINE` lines `exp init` printed under `added to PATH:`."""
    lines = stdout.splitlines()
    start = lines.index(f"added to {path}:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("  +"):
            break
        block.append(line[4:])
    return block


def test_init_force_adds_the_exp_table_and_ignore_rules_to_an_existing_project(tmp_path):
    import tomllib

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PROJECT_TOML)
    (project / ".gitignore").write_text(PROJECT_IGNORE)
    r = run_exp("init", str(project), "--force", env={"EXP_ROOT": ""})
    assert r.returncode == 0, r.stderr
    text = (project / "pyproject.toml").read_text()
    assert text.startswith(PROJECT_TOML + "\n")
    data = tomllib.loads(text)
    assert data["tool"] == {"black": {"line-length": 100}, "exp": {"lang": "zh"}}
    assert data["project"] == {"name": "mine", "version": "1.0"}
    shown = added_lines(r.stdout, project / "pyproject.toml")
    assert shown[:1] == ["[tool.exp]"] and 'lang = "zh"' in shown
    assert text.rstrip("\n").endswith("\n".join(shown))  # what it printed is what it wrote
    ignore = (project / ".gitignore").read_text()
    assert ignore.startswith(PROJECT_IGNORE)
    shown = added_lines(r.stdout, project / ".gitignore")
    assert ignore.rstrip("\n").endswith("\n".join(shown))
    assert "out/**/final/" in shown and "*.pt" in shown
    assert ".venv/" not in shown and "out/**/checkpoints/" not in shown  # only what was missing
    assert (project / "templates/zh/record.md.j2").is_file() and (project / "CLAUDE.md").is_file()

    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    again = run_exp("init", str(project), "--force", env={"EXP_ROOT": ""})
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert "added to" not in again.stdout and "created" not in again.stdout
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before

    r = run_exp("new", "0.1.0", cwd=project, env={"EXP_ROOT": ""})
    assert r.returncode == 0, r.stderr
    assert (project / "experiment/experiment_0.1.0.md").is_file()


@pytest.mark.parametrize("content, paste", [
    ('[project\nname = "mine"\n', ["`[tool.exp]`", '`lang = "zh"`', "not valid TOML"]),
    ('name = "mine"\ntool = { black = { line-length = 100 } }\n', ['`exp = { lang = "zh" }`', "inline table"]),
    ('[tool]\nexp = "yes"\n', ["`[tool.exp]`", '`lang = "zh"`', "not a table"]),
])
def test_init_force_refuses_a_pyproject_it_cannot_extend_safely(tmp_path, content, paste):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(content)
    (project / ".gitignore").write_text(PROJECT_IGNORE)
    r = run_exp("init", str(project), "--force", env={"EXP_ROOT": ""})
    assert r.returncode == 1, r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    for needle in [str(project / "pyproject.toml"), *paste, "nothing was written"]:
        assert needle in r.stderr, (needle, r.stderr)
    assert sorted(os.listdir(project)) == [".gitignore", "pyproject.toml"]
    assert (project / "pyproject.toml").read_text() == content
    assert (project / ".gitignore").read_text() == PROJECT_IGNORE


def test_every_command_has_help(cli):
    from expkit.cli import COMMANDS

    for name in COMMANDS:
        code, out, _ = cli(name, "--help")
        assert code == 0 and "Usage" in out, name


def test_show_text_mentions_next_step(ws, cli):
    cli("new", "0.1.0", "--desc", "demo")
    code, out, _ = cli("show", "0.1.0")
    assert code == 0 and "next: fill the human sections" in out and "exploratory" in out
