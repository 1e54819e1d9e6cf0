"""The whole loop, end to end, as a person and an assistant run it, every step a real `exp`:

exp new → the human fills the record → exp check → exp run (a tiny real training) → exp analyze
→ exp fill (the assistant's prose) → exp review, approved at a pseudo-terminal → exp commit →
git log shows one commit with the trailers and exactly the expected paths, the user's own
staged and unstaged changes untouched. Then a second record, approved and edited by one byte:
its commit is refused and HEAD does not move.
"""

from __future__ import annotations

import json
import subprocess

from conftest import fill, run_exp
from test_review import REVIEWER, Terminal, child_env, git_identity
from test_runner import TINY

from expkit import review
from expkit.version import Version

HUMAN = {
    "goal": "确认微型模型在 20 步内损失下降。",
    "hypothesis": "隐藏层 64 的模型在 20 步内把训练损失降到 9 以下。",
    "expected": "- final_loss < 9\n- val_loss < 9\n- tokens_per_s >= 1\n",
    "focus": "损失曲线。",
}


def git(ws, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws.root, check=True, capture_output=True, text=True).stdout


def exp_ok(ws, *args: str, input: str | None = None):
    r = run_exp(*args, cwd=ws.root, input=input, env={"EXP_ROOT": str(ws.root)})
    assert r.returncode == 0, f"exp {' '.join(args)}: {r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def approve(ws, version: str) -> None:
    t = Terminal(["review", version], child_env(ws), ws.root)
    t.expect(review.PROMPT.strip())
    t.send("a")
    t.expect("approved")
    assert t.wait() == 0, t.screen


def run_record(ws, version: str, parent: str | None = None) -> None:
    """exp new, the human's sections typed into the file, the assistant's settings, check, run."""
    exp_ok(ws, "new", version, *(("--from", parent) if parent else ()), "--desc", f"tiny loop {version}")
    fill(ws.record_path(version), HUMAN)
    if parent is None:
        exp_ok(ws, "set", version, *TINY, "max_steps=20")
    else:
        exp_ok(ws, "set", version, "learning_rate=0.002")
    assert json.loads(exp_ok(ws, "check", version, "--json").stdout)["status"] == "ready"
    exp_ok(ws, "run", version)


def test_the_whole_loop_from_new_to_a_reviewed_commit(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace")

    # -- record 0.1.0: new → human → run (which analyses) → analyze again → the assistant writes
    run_record(ws, "0.1.0")
    analyzed = json.loads(exp_ok(ws, "analyze", "0.1.0", "--json").stdout)
    assert analyzed["status"] == "analyzed"
    assert [v["claim"] for v in analyzed["verdicts"]] == ["final_loss < 9", "val_loss < 9", "tokens_per_s >= 1"]
    assert all(v["verdict"] in ("confirmed", "refuted") for v in analyzed["verdicts"])  # a finished run decides
    assert analyzed["plots"] == ["out/experiment_0.1.0/plots/loss.png"]
    context = json.loads(exp_ok(ws, "context", "0.1.0", "--json").stdout)
    val_loss = context["metrics"]["val_loss"]
    prose = f"验证集损失为 {val_loss:.2f}，三条预期均已检验（见上表）。\n"
    filled = exp_ok(ws, "fill", "0.1.0", "analysis", "--file", "-", input=prose)
    assert "warning" not in filled.stderr  # the number is traceable at the precision written
    assert json.loads(exp_ok(ws, "check", "0.1.0", "--json").stdout)["ok"]
    shown = json.loads(exp_ok(ws, "show", "0.1.0", "--json").stdout)
    assert [set(v) >= {"claim", "verdict", "observed", "reference"} for v in shown["verdicts"]] == [True] * 3

    # -- the person reviews at a terminal and approves
    approve(ws, "0.1.0")
    assert json.loads(exp_ok(ws, "show", "0.1.0", "--json").stdout)["status"] == "approved"

    # -- the user's own work in progress, staged and unstaged, must survive the commit
    (ws.root / "notes.txt").write_text("staged idea\n", encoding="utf-8")
    git(ws, "add", "notes.txt")
    (ws.root / "CLAUDE.md").write_text((ws.root / "CLAUDE.md").read_text(encoding="utf-8") + "\nlocal note\n", encoding="utf-8")
    before = git(ws, "status", "--porcelain", "--", "notes.txt", "CLAUDE.md")

    committed = json.loads(exp_ok(ws, "commit", "0.1.0", "--json").stdout)
    message = git(ws, "log", "-1", "--format=%B")
    assert message.startswith("exp(0.1.0): tiny loop 0.1.0")
    assert f"Reviewed-by: {REVIEWER[0]} <{REVIEWER[1]}>" in message
    record_sha = next(line.split(": ", 1)[1] for line in message.splitlines() if line.startswith("Record-SHA256: "))
    assert len(record_sha) == 64
    counts = {v: sum(x["verdict"] == v for x in analyzed["verdicts"]) for v in ("confirmed", "refuted")}
    verdicts_line = next(line for line in message.splitlines() if line.startswith("Verdicts: "))
    for kind, n in counts.items():
        if n:
            assert f"{n} {kind}" in verdicts_line
    paths = set(git(ws, "show", "--name-only", "--format=", "HEAD").split())
    assert paths == set(committed["paths"])
    assert {"experiment/experiment_0.1.0.md", "run_file/experiment_0.1.0.sh", "out/experiment_0.1.0/plots/loss.png",
            "out/experiment_0.1.0/summary.json", "out/experiment_0.1.0/analysis.json"} <= paths
    assert all(p.startswith(("experiment/experiment_0.1.0.md", "run_file/experiment_0.1.0.sh", "out/experiment_0.1.0/"))
               for p in paths)
    assert not [p for p in paths if "checkpoint" in p or p.endswith((".pt", ".safetensors"))]
    assert git(ws, "status", "--porcelain", "--", "notes.txt", "CLAUDE.md") == before  # still staged / unstaged
    assert json.loads(exp_ok(ws, "show", "0.1.0", "--json").stdout)["commit"]["sha"] == git(ws, "rev-parse", "HEAD").strip()

    # -- record 0.1.1: approved, then one byte of it changes: no commit
    run_record(ws, "0.1.1", parent="0.1.0")
    approve(ws, "0.1.1")
    head = git(ws, "rev-parse", "HEAD")
    path = ws.record_path("0.1.1")
    data = path.read_bytes()
    i = data.index(b"<!-- exp:ai analysis -->\n") + len(b"<!-- exp:ai analysis -->\n")
    assert data[i:i + 2] == b"- "  # the draft's first bullet
    path.write_bytes(data[:i] + b"*" + data[i + 1:])  # one byte, still a markdown bullet
    refused = run_exp("commit", "0.1.1", cwd=ws.root, env={"EXP_ROOT": str(ws.root)})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "experiment/experiment_0.1.1.md" in refused.stderr
    assert git(ws, "rev-parse", "HEAD") == head
    shown = json.loads(exp_ok(ws, "show", "0.1.1", "--json").stdout)
    assert any("stale" in w and "experiment/experiment_0.1.1.md" in w for w in shown["warnings"])
    check = exp_ok(ws, "check", "0.1.1")  # lapses the approval: back to analyzed, a person reviews again
    assert "stale" in check.stdout
    assert json.loads(exp_ok(ws, "show", "0.1.1", "--json").stdout)["status"] == "analyzed"
