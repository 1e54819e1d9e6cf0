"""The whole loop in a temporary git repository, every step a real `exp` process:

exp new → the human sections typed into the file → exp check → exp run (a tiny real training,
which analyses itself) → exp analyze (rerun) → exp fill (the assistant's prose, its number
traceable) → exp review, refused when piped or with an agent's variable, approved by a person
at a pseudo-terminal → exp commit → `git log -1` shows one commit with its trailers and exactly the
expected paths (never a checkpoint), the user's own staged and unstaged changes untouched.
Then a second record, approved, edited by one byte: its commit is refused, HEAD stays, and
`exp show` / `exp check` say the approval is stale.

Two tiny runs in all (hidden 64, 20 steps; about 30 s each on a 2-core CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections import Counter

from conftest import REPO, fill, run_exp
from test_review import REVIEWER, Terminal, git_identity
from test_runner import TINY

from expkit import review
from expkit import commit

HUMAN = {
    "goal": "确认微型模型在 20 步内能学到东西，整个流程可以走通。",
    "hypothesis": "隐藏层 64 的模型在 20 步内把训练损失降到 9 以下。",
    "expected": "预期：\n- final_loss < 9\n- val_loss < 9\n- tokens_per_s >= 1\n",
    "focus": "损失曲线是否单调下降。",
}
CLAIMS = ["final_loss < 9", "val_loss < 9", "tokens_per_s >= 1"]


# -- helpers -----------------------------------------------------------------------------------------
def git(ws, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws.root, check=True, capture_output=True, text=True).stdout


def exp_ok(ws, *args: str, input: str | None = None):
    r = run_exp(*args, cwd=ws.root, env={"EXP_ROOT": str(ws.root)}, input=input)
    assert r.returncode == 0, f"exp {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def exp_json(ws, *args: str) -> dict:
    return json.loads(exp_ok(ws, *args, "--json").stdout)


def human_env(ws, **extra: str) -> dict[str, str]:
    """The environment of a person's shell: no AI-agent variable (prefix names included)."""
    agents = set(review.detect_agent(os.environ, review.AGENT_ENV)) | set(review.AGENT_ENV)
    env = {k: v for k, v in os.environ.items() if k not in agents}
    env.update({"EXP_ROOT": str(ws.root), "NO_COLOR": "1", "TERM": "xterm", "COLUMNS": "200", "LINES": "60"})
    env.update(extra)
    assert extra or not review.detect_agent(env, review.AGENT_ENV)
    return env


def approve_at_terminal(ws, version: str) -> str:
    """A person runs `exp review VERSION` in a terminal, reads it and types `a`."""
    t = Terminal(["review", version], human_env(ws), ws.root)
    t.expect(review.PROMPT.strip())
    screen = t.screen
    t.send("a")
    t.expect("approved")
    assert t.wait() == 0, t.screen
    return screen


def porcelain(ws) -> list[str]:
    return git(ws, "status", "--porcelain=v1", "--untracked-files=all").splitlines()


def trailers(ws) -> dict[str, str]:
    """The trailers of HEAD's message as git itself parses them."""
    text = git(ws, "log", "-1", "--format=%(trailers:only,unfold)")
    return dict(line.split(": ", 1) for line in text.splitlines() if line.strip())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_record(ws, version: str, *, parent: str | None = None, settings: tuple[str, ...] = ()) -> None:
    """exp new; the human's sections written into the file; the assistant's settings; exp check."""
    exp_ok(ws, "new", version, *(("--from", parent) if parent else ()), "--desc", f"tiny loop {version}")
    fill(ws.record_path(version), HUMAN)
    exp_ok(ws, "set", version, *settings)
    assert exp_json(ws, "check", version)["status"] == "ready"


def run_and_analyze(ws, version: str) -> dict:
    exp_ok(ws, "run", version)
    assert exp_json(ws, "show", version)["status"] == "analyzed"  # a finished run analyses itself
    analyzed = exp_json(ws, "analyze", version)  # rerun, as the loop does
    assert analyzed["status"] == "analyzed"
    assert [v["claim"] for v in analyzed["verdicts"]] == CLAIMS
    assert all(v["verdict"] in ("confirmed", "refuted") for v in analyzed["verdicts"])  # a finished run decides
    return analyzed


# -- the loop -------------------------------------------------------------------------------------------
def test_loop_new_run_analyze_review_commit_then_a_one_byte_edit_refuses(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)  # private git config with the reviewer; agent variables removed
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "workspace")
    initial = git(ws, "rev-parse", "HEAD").strip()

    # -- 0.1.0: new → human sections → check → tiny run → analyze
    new_record(ws, "0.1.0", settings=(*TINY, "max_steps=20"))
    analyzed = run_and_analyze(ws, "0.1.0")
    out = ws.out_dir("0.1.0")
    assert analyzed["plots"] == ["out/experiment_0.1.0/plots/loss.png"]
    assert [p.name for p in (out / "checkpoints").iterdir()], "the run saved no checkpoint (save_interval=10)"

    # -- the assistant refines the analysis from `exp context`, then stops for the human (CLAUDE.md)
    claude = (ws.root / "CLAUDE.md").read_text(encoding="utf-8")  # the scaffold's copy, what the assistant reads
    stop = claude.index("**stop**")
    assert claude.index("exp analyze") < stop < claude.index("exp review X.Y.Z", stop)
    val_loss = exp_json(ws, "context", "0.1.0")["metrics"]["val_loss"]
    filled = exp_ok(ws, "fill", "0.1.0", "analysis", "--file", "-", input=f"验证集损失为 {val_loss:.2f}，三条预期均已检验（见上表）。\n")
    assert "warning" not in filled.stderr  # the number traces to the run's evidence at the precision written
    assert exp_json(ws, "check", "0.1.0")["ok"]

    # -- the review is a person's: refused when piped and when an agent's variable is set
    record_path = ws.record_path("0.1.0")
    untouched = record_path.read_bytes()
    piped = run_exp("review", "0.1.0", cwd=ws.root, env=human_env(ws), input="a\n")
    assert piped.returncode != 0 and "terminal" in piped.stderr and "Traceback" not in piped.stderr
    agent = Terminal(["review", "0.1.0"], human_env(ws, CLAUDECODE="1"), ws.root)
    assert agent.wait() != 0 and "not an AI agent" in agent.screen and "CLAUDECODE" in agent.screen
    assert record_path.read_bytes() == untouched

    # -- a person approves at a terminal
    screen = approve_at_terminal(ws, "0.1.0")
    for shown_text in (*CLAIMS, f"{val_loss:.2f}", "训练稳定收敛"):  # verdicts, the prose, the checklist
        assert shown_text in screen, shown_text
    assert f"reviewer: {REVIEWER[0]} <{REVIEWER[1]}>" in screen
    shown = exp_json(ws, "show", "0.1.0")
    assert shown["status"] == "approved"
    assert shown["approval"]["valid"] and shown["approval"]["by"] == f"{REVIEWER[0]} <{REVIEWER[1]}>"
    approved_record_sha = shown["approval"]["approved_sha256"]["record"]
    script = ws.run_script_path("0.1.0")
    script_bytes = script.read_bytes()

    # -- the user's own work in progress: one staged change, one unstaged change
    (ws.root / "notes.txt").write_text("an idea, staged\n", encoding="utf-8")
    git(ws, "add", "notes.txt")
    guide = ws.root / "CLAUDE.md"
    guide.write_text(guide.read_text(encoding="utf-8") + "\nmy local note, not staged\n", encoding="utf-8")
    status_before = porcelain(ws)
    staged_before, unstaged_before = git(ws, "diff", "--cached"), git(ws, "diff")
    assert "A  notes.txt" in status_before and " M CLAUDE.md" in status_before

    # -- exp commit
    committed = exp_json(ws, "commit", "0.1.0")
    head = git(ws, "rev-parse", "HEAD").strip()
    assert committed["sha"] == head and git(ws, "rev-parse", "HEAD~1").strip() == initial  # exactly one commit

    message = git(ws, "log", "-1", "--format=%B")
    assert message.splitlines()[0] == "exp(0.1.0): tiny loop 0.1.0"
    counts = Counter(v["verdict"] for v in analyzed["verdicts"])
    verdicts = ", ".join(f"{counts[k]} {k}" for k in ("confirmed", "refuted", "inconclusive") if counts[k])
    assert trailers(ws) == {
        "Reviewed-by": f"{REVIEWER[0]} <{REVIEWER[1]}>",
        "Record-SHA256": approved_record_sha,
        "Script-SHA256": sha256(script_bytes),
        "Verdicts": verdicts,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", approved_record_sha)

    paths = set(git(ws, "show", "--name-only", "--format=", "HEAD").split())
    assert paths == {
        "experiment/experiment_0.1.0.md",
        "experiment/experiment_0.1.0.state.json",
        "run_file/experiment_0.1.0.sh",
        "out/experiment_0.1.0/summary.json",
        "out/experiment_0.1.0/analysis.json",
        "out/experiment_0.1.0/metrics_summary.json",
        "out/experiment_0.1.0/plots/loss.png",
    }
    assert paths == set(committed["paths"])
    tree = git(ws, "ls-tree", "-r", "--name-only", "HEAD").split()
    assert not [p for p in tree if "checkpoint" in p or "/final/" in p or p.endswith((".pt", ".safetensors", ".bin"))]
    # what was committed is what is on disk: the record (now `committed`) and the script, byte for byte
    assert git(ws, "show", "HEAD:experiment/experiment_0.1.0.md").encode("utf-8") == record_path.read_bytes()
    assert subprocess.run(["git", "show", "HEAD:run_file/experiment_0.1.0.sh"], cwd=ws.root, capture_output=True).stdout == script_bytes

    # the user's changes: still staged / unstaged, exactly; the only new untracked file is commit.json
    status_after = porcelain(ws)
    expected_after = [line for line in status_before if line[3:] not in paths] + ["?? out/experiment_0.1.0/commit.json"]
    assert sorted(status_after) == sorted(expected_after)
    assert git(ws, "diff", "--cached") == staged_before and git(ws, "diff") == unstaged_before
    shown = exp_json(ws, "show", "0.1.0")
    assert shown["status"] == "committed" and shown["commit"]["sha"] == head
    assert not shown["warnings"]

    # -- 0.1.1 from 0.1.0: filled, run, analysed, approved ...
    new_record(ws, "0.1.1", parent="0.1.0", settings=("learning_rate=0.002",))
    run_and_analyze(ws, "0.1.1")
    approve_at_terminal(ws, "0.1.1")
    assert exp_json(ws, "show", "0.1.1")["status"] == "approved"

    # ... then one byte of its record changes (in the AI's analysis text)
    path = ws.record_path("0.1.1")
    data = path.read_bytes()
    start = data.index(b"<!-- exp:ai analysis -->") + len(b"<!-- exp:ai analysis -->")
    i = next(k for k in range(start, data.index(b"<!-- /exp -->", start)) if 0x21 <= data[k] <= 0x7E)
    new = b"*" if data[i : i + 1] == b"-" else (b"-" if data[i : i + 1] == b"*" else b"~")
    edited = data[:i] + new + data[i + 1 :]
    assert len(edited) == len(data) and sum(a != b for a, b in zip(data, edited)) == 1
    path.write_bytes(edited)
    status_before = porcelain(ws)

    refused = run_exp("commit", "0.1.1", cwd=ws.root, env={"EXP_ROOT": str(ws.root)})
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiment/experiment_0.1.1.md" in lines[0], refused.stderr
    assert git(ws, "rev-parse", "HEAD").strip() == head  # no commit
    assert porcelain(ws) == status_before and path.read_bytes() == edited  # nothing touched
    assert not (ws.out_dir("0.1.1") / commit.COMMIT_FILE).exists()

    shown = exp_json(ws, "show", "0.1.1")
    assert shown["approval"]["stale"] and shown["approval"]["changed"] == ["record"]
    assert any("stale" in w and "experiment/experiment_0.1.1.md" in w for w in shown["warnings"])
    checked = exp_json(ws, "check", "0.1.1")  # lapses the approval: back to analyzed
    assert checked["status"] == "analyzed"
    assert any("stale" in p["message"] for p in checked["problems"])
    assert exp_json(ws, "show", "0.1.1")["status"] == "analyzed"
    assert run_exp("commit", "0.1.1", cwd=ws.root, env={"EXP_ROOT": str(ws.root)}).returncode != 0
    assert git(ws, "rev-parse", "HEAD").strip() == head


# -- what hands the loop over to a person --------------------------------------------------------------
def test_the_demo_ends_by_printing_exp_review():
    """scripts/demo.sh's last output is the closing heredoc; its last printed line is the command
    only a person may run. The heredoc is expanded by bash as the script would print it."""
    text = (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8")
    heredoc = list(re.finditer(r"^cat <<'?EOF'?\n(.*?)^EOF\n?", text, re.S | re.M))
    assert heredoc, "scripts/demo.sh prints no closing heredoc"
    last = heredoc[-1]
    assert not text[last.end() :].strip(), "scripts/demo.sh prints something after its closing text"
    printed = subprocess.run(
        ["bash", "-c", last.group(0)], env={"PATH": os.environ["PATH"], "demo": "/tmp/demo"},
        capture_output=True, text=True, check=True,
    ).stdout
    final = [line for line in printed.splitlines() if line.strip()][-1]
    assert re.search(r"(^|\s|&&\s*)exp review 0\.1\.0\s*$", final), final
