"""exp review: the human gate, driven through a real pseudo-terminal; approval bound to hashes."""

from __future__ import annotations

import copy

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import fill, run_exp

from expkit import review
from expkit import record as rec_mod
from expkit.record import Record
from expkit.version import Version
from expkit import approval, store, lifecycle, records, view

EXP_BIN = str(Path(sys.executable).parent / "exp")  # the console script, as a person starts it
V = Version.parse("1.0.0")
REVIEWER = ("Ada Tester", "ada@example.com")

VERDICTS = [
    {"claim": "val_loss < 6.5", "verdict": "confirmed", "observed": 6.1, "reference": 6.5},
    {"claim": "tokens_per_s >= 100", "verdict": "confirmed", "observed": 250.0, "reference": 100},
    {"claim": "val_loss <= baseline - 0.1", "verdict": "refuted", "observed": 6.1, "reference": 6.0},
]


# -- shared set-up (test_commit.py imports these) ---------------------------------------------------
def git_identity(monkeypatch, tmp_path: Path, name: str | None = REVIEWER[0], email: str | None = REVIEWER[1]) -> None:
    """A private git config (no system or user files) and an environment without agent variables."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    for var in review.AGENT_ENV:
        monkeypatch.delenv(var, raising=False)
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n", encoding="utf-8")
    if name:
        subprocess.run(["git", "config", "--global", "user.name", name], check=True)
    if email:
        subprocess.run(["git", "config", "--global", "user.email", email], check=True)


def make_analyzed(ws, version: Version = V, description: str = "学习率减半", anomalies: list | None = None) -> Path:
    """An analyzed record with a plausible analysis, a run script and small outputs."""
    rec = lifecycle.create(ws, version, description=description)
    fill(rec.path)
    with records.update(ws, version) as r:
        r.meta["run"] = {
            "started": "2025-01-01T10:00:00+00:00", "ended": "2025-01-01T10:05:00+00:00", "duration_s": 300.0,
            "exit_code": 0, "status": "finished", "backend": "local", "host": "testhost",
            "command": f"bash run_file/experiment_{version}.sh", "git_sha": "0" * 40, "git_dirty": False,
            "env": {"python": "3.11.9", "torch": "2.5.0"},
        }
        r.meta["prereg"] = {"at": "2025-01-01T10:00:00+00:00", "sections": {n: rec_mod.sha256(r.human(n)) for n in rec_mod.PREREGISTERED}}
        r.meta["analysis"] = {
            "verdicts": VERDICTS,
            "anomalies": anomalies if anomalies is not None else [],
            "plots": [f"out/experiment_{version}/plots/loss.png"],
            "metrics": {"val_loss": 6.1, "tokens_per_s": 250.0},
        }
        r.require_block("ai", "analysis").set_text("验证集损失 6.1，低于预期的 6.5，比基线低 5.93。")
        r.require_block("ai", "diagnosis").set_text("损失平稳下降，未见尖峰。")
        r.require_block("ai", "suggestions").set_text(f"下一步：`exp new 1.0.1 --from {version}` 试更长的预热。")
        r.meta["status"] = "analyzed"
        view.regenerate(ws, r, ("execution", "environment", "metrics"))
    script = ws.run_script_path(version)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!/usr/bin/env bash\n# experiment {version}\necho train\n", encoding="utf-8")
    script.chmod(0o755)
    out = ws.out_dir(version)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (out / "summary.json").write_text('{"val_loss": 6.1}\n', encoding="utf-8")
    (out / "analysis.json").write_text('{"verdicts": 3}\n', encoding="utf-8")
    (out / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": {6.0 - s / 10}}}\n' for s in range(10)), encoding="utf-8")
    (out / "train.log").write_text("step 9 loss 5.1\n", encoding="utf-8")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "step_10.pt").write_bytes(bytes(4096))
    return rec.path


def approve(ws, version: Version = V) -> dict:
    return review.record_decision(ws, version, "approve", "", REVIEWER)


# -- a pseudo-terminal -----------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """``exp ARGS`` with a pty as its controlling terminal, stdin, stdout and stderr."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path):
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes `exp` at once
            try:
                os.chdir(cwd)
                os.execve(EXP_BIN, [EXP_BIN, *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
        self.raw = b""
        self.seen = 0  # expect() looks only past what it already matched
        self.code: int | None = None

    @property
    def screen(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.raw += data
        return bool(data)

    def expect(self, text: str, guard_s: float = 60.0) -> None:
        """Read until ``text`` shows (the guard only stops a hung child; nothing is timed)."""
        deadline = time.monotonic() + guard_s
        while text not in self.screen[self.seen :]:
            if not self._read(0.2):
                raise AssertionError(f"exp ended before {text!r} appeared; screen:\n{self.screen}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen}")
        self.seen = self.screen.index(text, self.seen) + len(text)

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode("utf-8"))

    def send_eof(self) -> None:
        os.write(self.fd, b"\x04")

    def wait(self, guard_s: float = 60.0) -> int:
        deadline = time.monotonic() + guard_s
        while self._read(0.2):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                raise AssertionError(f"exp did not end; screen:\n{self.screen}")
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(status)
        return self.code


def child_env(ws, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in review.AGENT_ENV}
    env.update({"EXP_ROOT": str(ws.root), "NO_COLOR": "1", "TERM": "xterm", "COLUMNS": "200", "LINES": "60"}, **extra)
    return env


def terminal(ws, *args: str, **extra: str) -> Terminal:
    return Terminal(["review", *args], child_env(ws, **extra), ws.root)


@pytest.fixture
def rws(ws, tmp_path, monkeypatch):
    """A workspace with an analyzed record 1.0.0 and a reviewer configured in git."""
    git_identity(monkeypatch, tmp_path)
    make_analyzed(ws)
    return ws


# -- the terminal flows ------------------------------------------------------------------------------
def test_approve_at_a_terminal_shows_the_evidence_and_binds_the_hashes(rws):
    t = terminal(rws, "1.0.0")
    t.expect(review.PROMPT.strip())
    screen = t.screen
    for shown in (
        "学习率减半", "检验学习率减半", "val_loss < 6.5",  # description, goal, expected
        "val_loss <= baseline - 0.1", "refuted", "6.1",  # a verdict with observed and reference
        "(analysis): 5.93",  # untraceable number, found when the review opens
        "unchanged since the run started",  # pre-registration
        "out/experiment_1.0.0/plots/loss.png",  # plot path
        "目标明确", "参数完整", "训练稳定收敛", "记录详细", "问题分析", "改进建议",  # checklist
        "reviewer: Ada Tester <ada@example.com>",
    ):
        assert shown in screen, shown
    assert "✗" not in screen.split("审核清单")[1]  # a complete record passes every item
    t.send("a")
    t.expect("approved")
    assert t.wait() == 0

    record = records.load(rws, V)
    assert record.status == "approved"
    (entry,) = record.meta["review"]["history"]
    assert entry["decision"] == "approve" and entry["reviewer"] == "Ada Tester" and entry["email"] == "ada@example.com"
    assert entry["record_sha256"] == approval.current_hashes(rws, record)["record"] == record.meta["review"]["approved"]["record_sha256"]
    assert entry["script_sha256"] == approval.file_sha256(rws.run_script_path(V))
    assert "✅ 通过" in record.require_block("generated", "review").text
    state = approval.approval_state(rws, record)
    assert state["valid"] and not state["stale"]
    assert approval.stale_approval_problem(rws, record) is None
    # approved and unchanged: another review is refused, naming the next step
    t = terminal(rws, "1.0.0")
    assert t.wait() == 1 and "exp commit 1.0.0" in t.screen


def test_changes_with_multiline_comments_then_approval_keeps_every_round(rws):
    comments = ["第一点：分析没有引用基线。", "  second | line, indented", "<!-- exp:human goal -->", "---"]
    t = terminal(rws, "1.0.0")
    t.expect(review.PROMPT.strip())
    t.send("maybe")  # unknown answers are asked again
    t.expect("unknown answer")
    t.send("c")
    t.expect("comments (end with an empty line)")
    t.send("")  # no comments: refused, asked again
    t.expect("comments are required")
    t.send("changes")
    for line in comments:
        t.send(line)
    t.send("")
    t.expect("changes_requested")
    assert t.wait() == 0

    record = records.load(rws, V)  # the marker-like and '---' lines did not break the file
    assert record.status == "changes_requested"
    (entry,) = record.meta["review"]["history"]
    assert entry["decision"] == "changes" and entry["comments"] == "\n".join(comments)
    assert "approved" not in record.meta["review"]
    block = record.require_block("generated", "review").text
    assert "✏️ 需要修改" in block and "> 第一点：分析没有引用基线。" in block and "> <!-- exp:human goal -->" in block

    t = terminal(rws, "1.0.0")
    t.expect("asked for changes")  # the last round's comments are shown again
    t.expect(review.PROMPT.strip())
    t.send("approve")
    assert t.wait() == 0
    record = records.load(rws, V)
    assert record.status == "approved"
    assert [h["decision"] for h in record.meta["review"]["history"]] == ["changes", "approve"]
    assert [h["round"] for h in record.meta["review"]["history"]] == [1, 2]
    assert record.meta["review"]["approved"]["round"] == 2


def test_quit_and_end_of_input_write_nothing(rws):
    path = rws.record_path(V)
    before = path.read_bytes()
    t = terminal(rws, "1.0.0")
    t.expect(review.PROMPT.strip())
    t.send("q")
    assert t.wait() == 0 and "nothing written" in t.screen
    assert path.read_bytes() == before

    t = terminal(rws, "1.0.0")
    t.expect(review.PROMPT.strip())
    t.send("c")
    t.expect("comments (end with an empty line)")
    t.send("half a thought")
    t.send_eof()  # Ctrl-D in the middle of the comments
    assert t.wait() == 0
    assert path.read_bytes() == before


def test_refuses_pipes_agents_and_the_wrong_status(rws, ws):
    path = rws.record_path(V)
    before = path.read_bytes()

    piped = run_exp("review", "1.0.0", input="a\n", env=child_env(rws))
    assert piped.returncode == 1
    assert "not a terminal" in piped.stderr and "a person runs `exp review 1.0.0`" in piped.stderr

    t = terminal(rws, "1.0.0", CLAUDECODE="1")
    assert t.wait() == 1
    assert "not an AI agent (CLAUDECODE set)" in t.screen and review.PROMPT.strip() not in t.screen
    assert path.read_bytes() == before

    lifecycle.create(rws, Version.parse("2.0.0"))
    t = terminal(rws, "2.0.0")
    assert t.wait() == 1
    assert "status is draft" in t.screen and "exp check 2.0.0" in t.screen


def test_agent_variables_are_configurable_and_match_prefixes(rws):
    from expkit.workspace import Workspace

    assert review.detect_agent({"CLAUDECODE": "1", "GEMINI_CLI": "", "PATH": "/bin"}) == ["CLAUDECODE"]
    assert review.detect_agent({"AIDER_MODEL": "x", "AIDER_CHAT": "1"}, ("AIDER_*",)) == ["AIDER_CHAT", "AIDER_MODEL"]
    custom = Workspace(rws.root, {"agent_env": ["MY_BOT"]})
    with pytest.raises(review.NotHumanError, match="MY_BOT"):
        review.require_human(custom, "1.0.0", environ={"MY_BOT": "1"})
    with pytest.raises(review.NotHumanError, match="not a terminal"):  # CLAUDECODE is not in this lab's list
        review.require_human(custom, "1.0.0", stdin=open(os.devnull), stdout=open(os.devnull, "w"), environ={"CLAUDECODE": "1"})
    with pytest.raises(Exception, match="agent_env"):
        review.agent_env_names(Workspace(rws.root, {"agent_env": "CLAUDECODE"}))


def test_reviewer_identity_comes_from_git_config(tmp_path, monkeypatch):
    from expkit import gitops

    git_identity(monkeypatch, tmp_path, name=None, email=None)
    with pytest.raises(gitops.IdentityError, match=r"git config --global user.name .* git config --global user.email"):
        gitops.identity(tmp_path)
    subprocess.run(["git", "config", "--global", "user.name", "Grace"], check=True)
    subprocess.run(["git", "config", "--global", "user.email", "grace@example.com"], check=True)
    assert gitops.identity(tmp_path) == ("Grace", "grace@example.com")


# -- the hash and staleness ---------------------------------------------------------------------------
def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_bytes().decode("utf-8")
    assert text.count(old) >= 1, old
    path.write_bytes(text.replace(old, new, 1).encode("utf-8"))


def test_the_hash_ignores_only_what_review_and_commit_write(rws):
    text = rws.record_path(V).read_text(encoding="utf-8")
    meta = store.read_meta(rws, V)
    base = approval.text_sha256(text, meta)
    record = Record.parse(text, meta=copy.deepcopy(meta))
    # what a review or a commit writes does not count
    record.meta["status"] = "committed"
    record.meta["review"] = {"history": [{"decision": "approve", "comments": "x\n---\ny"}]}
    record.meta["commit"] = {"time": "now", "paths": ["a"]}
    record.set_generated("review", "anything at all\n")
    assert approval.text_sha256(record.render(), record.meta) == base
    # every other byte of the markdown does, wherever it is
    for old, new in (
        ("检验", "检査"),  # a human section
        ("未见尖峰", "未见尖峯"),  # an AI section
        ("| `hidden_size` | 128 |", "| `hidden_size` | 129 |"),  # a generated block
        ("## ⚙️ 配置参数", "## ⚙️ 配置参数 "),  # text between sections
        ("\n## ⚙️", "\r\n## ⚙️"),  # a line ending
    ):
        assert old in text, old
        assert approval.text_sha256(text.replace(old, new, 1), meta) != base, old
    # and every value of the state but those three
    for key, value in (("description", meta["description"] + " "), ("config", {**meta["config"], "learning_rate": 0.0031})):
        assert approval.text_sha256(text, {**meta, key: value}) != base, key
    # the front matter is a view of the state: its bytes alone are not the content
    assert approval.text_sha256(text.replace("learning_rate: 0.003", "learning_rate: 0.0030", 1), meta) == base


def test_a_one_byte_edit_of_the_record_makes_the_approval_stale(rws):
    approve(rws)
    path = rws.record_path(V)
    _replace_once(path, "未见尖峰", "未见尖峯")  # one character of the diagnosis
    record = records.load(rws, V)
    state = approval.approval_state(rws, record)
    assert state["approved"] and state["stale"] and state["changed"] == ["record"]
    message = approval.stale_approval_problem(rws, record)
    assert "stale" in message and "experiment/experiment_1.0.0.md" in message
    (problem,) = approval.review_problems(rws, record)
    assert problem.level == "error" and "exp review 1.0.0" in problem.fix

    with records.update(rws, V) as record:
        assert review.refresh_status(rws, record)
    record = records.load(rws, V)
    assert record.status == "analyzed" and "approved" not in record.meta["review"]
    assert record.meta["review"]["stale"]["changed"] == ["record"]
    assert len(record.meta["review"]["history"]) == 1  # the round itself is kept
    assert "round 1 went stale" in approval.stale_approval_problem(rws, record)
    assert "已失效" in record.require_block("generated", "review").text
    review.require_reviewable(rws, record)  # a person may review it again
    with records.update(rws, V) as record:
        assert not review.refresh_status(rws, record)  # nothing left to refresh


def test_a_one_byte_edit_of_the_script_makes_the_approval_stale(rws):
    approve(rws)
    script = rws.run_script_path(V)
    script.write_bytes(script.read_bytes().replace(b"echo train", b"echo trains"))
    record = records.load(rws, V)
    state = approval.approval_state(rws, record)
    assert state["stale"] and state["changed"] == ["script"]
    assert "run_file/experiment_1.0.0.sh" in approval.stale_approval_problem(rws, record)
    review.require_reviewable(rws, record)  # approved-but-stale may be reviewed
    with records.update(rws, V) as record:
        assert review.refresh_status(rws, record)
    assert records.load(rws, V).status == "analyzed"


def test_checklist_says_why_an_item_fails(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    make_analyzed(ws, anomalies=[{"kind": "spike", "message": "loss jumped 4x", "steps": [40]}])
    with records.update(ws, V) as r:
        r.require_block("ai", "diagnosis").set_text("> 💡 运行结束后由 AI 填写")
        r.set_human("expected", "预期损失会更低。")
    items = {c.key: c for c in review.checklist(ws, records.load(ws, V))}
    assert items["goal"].mark == "✗" and "machine-checkable" in items["goal"].reason
    assert items["params"].mark == "✓"
    assert items["stable"].mark == "✗" and "spike" in items["stable"].reason
    assert items["recorded"].mark == "✓"
    assert items["diagnosis"].mark == "✗" and "hint" in items["diagnosis"].reason
    assert items["suggestions"].mark == "✓"
    shutil.rmtree(ws.out_dir(V))  # no loss curve, no anomalies: convergence cannot be judged
    with records.update(ws, V) as r:
        r.meta["analysis"]["anomalies"] = []
    assert {c.key: c.mark for c in review.checklist(ws, records.load(ws, V))}["stable"] == "?"


def test_english_records_render_every_round_of_the_history(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    lifecycle.create(ws, Version.parse("0.9.0"), lang="en")
    v = Version.parse("0.9.0")
    path = ws.record_path(v)
    fill(path)
    with records.update(ws, v) as r:
        r.meta["status"] = "analyzed"
    review.record_decision(ws, v, "changes", "cite the baseline\nand | pipes", REVIEWER)
    with records.update(ws, v) as r:
        r.meta["status"] = "analyzed"  # as `exp analyze` would after the fixes
    review.record_decision(ws, v, "approve", "", REVIEWER)
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with records.update(ws, v) as r:
        assert review.refresh_status(ws, r)
    block = records.load(ws, v).require_block("generated", "review").text
    assert "| 1 | ✏️ changes requested | Ada Tester |" in block and "| 2 | ✅ approved | Ada Tester |" in block
    assert "Round 1 comments (Ada Tester," in block and "> cite the baseline\n> and | pipes" in block
    assert "The approval of round 2 is void (record changed" in block
