"""exp commit: only an approved, unchanged record, exactly its files, the user's changes untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import run_exp
from test_review import REVIEWER, V, approve, git_identity, make_analyzed

from expkit import gitops, review
from expkit import approval, commit, records

RECORD = "experiment/experiment_1.0.0.md"
SCRIPT = "run_file/experiment_1.0.0.sh"
STATE = "experiment/experiment_1.0.0.state.json"
OUT = "out/experiment_1.0.0"


def git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(ws, tmp_path, monkeypatch):
    """A workspace in a git repository with one commit, and an approved record 1.0.0."""
    git_identity(monkeypatch, tmp_path)
    git(ws.root, "init", "-q", "-b", "main")
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-q", "-m", "workspace")
    make_analyzed(ws)
    approve(ws)
    return ws


def test_commit_holds_exactly_the_record_script_and_small_artifacts(repo):
    root = repo.root
    out = repo.out_dir(V)
    (out / "plots" / "huge.png").write_bytes(bytes(commit.DEFAULT_ARTIFACT_MAX_BYTES + 1))  # over the cap
    # the user's own work elsewhere: staged, unstaged, staged-new and untracked
    (root / "CLAUDE.md").write_text((root / "CLAUDE.md").read_text() + "\nstaged line\n")
    git(root, "add", "CLAUDE.md")
    (root / "experiment" / "README.md").write_text((root / "experiment" / "README.md").read_text() + "\nunstaged line\n")
    (root / "staged_new.txt").write_text("new and staged\n")
    git(root, "add", "staged_new.txt")
    (root / "CLAUDE.md").write_text((root / "CLAUDE.md").read_text() + "unstaged on top of staged\n")
    (root / "notes.txt").write_text("untracked\n")
    user_paths = ["CLAUDE.md", "experiment/README.md", "staged_new.txt", "notes.txt"]
    cached, unstaged = git(root, "diff", "--cached"), git(root, "diff")
    status = git(root, "status", "--porcelain", "--", *user_paths)
    before = head(root)
    approved_sha = records.load(repo, V).meta["review"]["approved"]["record_sha256"]

    done = run_exp("commit", "1.0.0")
    assert done.returncode == 0, done.stderr
    assert "not committed: out/experiment_1.0.0/plots/huge.png" in done.stdout

    sha = head(root)
    assert git(root, "rev-parse", "HEAD~1").strip() == before
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").split()) == sorted(
        [RECORD, STATE, SCRIPT, f"{OUT}/analysis.json", f"{OUT}/plots/loss.png", f"{OUT}/summary.json"]
    )
    assert git(root, "ls-tree", "HEAD", SCRIPT).split()[0] == "100755"
    message = git(root, "log", "-1", "--format=%B")
    assert message.startswith("exp(1.0.0): 学习率减半\n\n")
    assert f"Reviewed-by: {REVIEWER[0]} <{REVIEWER[1]}>\n" in message
    assert f"Record-SHA256: {approved_sha}\n" in message
    assert "Verdicts: 2 confirmed, 1 refuted\n" in message

    # the user's changes are exactly as they were, staged or not
    assert git(root, "diff", "--cached") == cached
    assert git(root, "diff") == unstaged
    assert git(root, "status", "--porcelain", "--", *user_paths) == status
    # the committed files are clean; checkpoints and other outputs stay out of git
    assert git(root, "status", "--porcelain", "--", RECORD, STATE, SCRIPT, f"{OUT}/plots/loss.png") == ""
    assert git(root, "ls-files", OUT).split() == [f"{OUT}/analysis.json", f"{OUT}/plots/loss.png", f"{OUT}/summary.json"]

    # the record says committed, in the commit and on disk alike, and `exp show` finds the SHA
    record = records.load(repo, V)
    assert record.status == "committed"
    assert git(root, "show", f"HEAD:{RECORD}") == record.path.read_text(encoding="utf-8")
    assert record.meta["commit"]["paths"][0] == RECORD
    info = commit.commit_info(repo, record)
    assert info["sha"] == sha and info["branch"] == "main"
    assert json.loads((repo.out_dir(V) / "commit.json").read_text())["sha"] == sha
    shown = json.loads(run_exp("show", "1.0.0", "--json").stdout)
    assert shown["status"] == "committed"

    # a committed record is final: a second commit is refused, an edit is flagged
    again = run_exp("commit", "1.0.0")
    assert again.returncode == 1 and sha[:7] in again.stderr and "exp new NEXT --from 1.0.0" in again.stderr
    assert approval.stale_approval_problem(repo, record) is None
    text = record.path.read_text(encoding="utf-8")
    record.path.write_text(text.replace("未见尖峰", "未见尖峯"), encoding="utf-8")
    edited = records.load(repo, V)
    assert "committed and must not change" in approval.stale_approval_problem(repo, edited)
    (problem,) = approval.review_problems(repo, edited)
    assert problem.level == "error" and "exp new NEXT --from 1.0.0" in problem.fix
    with records.update(repo, V) as r:
        assert not review.refresh_status(repo, r)  # never demoted; flagged instead


def test_artifact_cap_is_configurable(repo):
    from expkit.workspace import Workspace

    small = Workspace(repo.root, {"artifact_max_bytes": 100})
    kept, skipped = commit.artifacts(small, V)
    assert [p.name for p in kept] == ["summary.json", "analysis.json"]
    assert [(p.name, size) for p, size in skipped] == [("loss.png", 208)]
    with pytest.raises(Exception, match="artifact_max_bytes"):
        commit.artifacts(Workspace(repo.root, {"artifact_max_bytes": "1MB"}), V)


def test_refuses_a_record_that_is_not_approved(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    git(ws.root, "init", "-q", "-b", "main")
    make_analyzed(ws)
    done = run_exp("commit", "1.0.0")
    assert done.returncode == 1
    assert "status is analyzed (needs approved)" in done.stderr and "exp review 1.0.0" in done.stderr
    assert git(ws.root, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""  # still no commit


@pytest.mark.parametrize(
    "changed, path",
    [("record", RECORD), ("script", SCRIPT)],
)
def test_refuses_a_stale_approval_naming_the_changed_file(repo, changed, path):
    target = repo.root / path
    data = target.read_bytes()
    target.write_bytes(data.replace("未见尖峰".encode(), "未见尖峯".encode()) if changed == "record" else data + b"#")
    before = head(repo.root)
    done = run_exp("commit", "1.0.0")
    assert done.returncode == 1
    assert f"the {changed} {path} changed since" in done.stderr and "exp review 1.0.0" in done.stderr
    assert head(repo.root) == before and records.load(repo, V).status == "approved"


def test_refuses_outside_a_repository(ws, tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    make_analyzed(ws)
    approve(ws)
    done = run_exp("commit", "1.0.0")
    assert done.returncode == 1 and "not in a git repository" in done.stderr and "git init" in done.stderr
    assert records.load(ws, V).status == "approved"


def test_refuses_a_detached_head_and_a_merge_in_progress(repo):
    root = repo.root
    record = repo.record_path(V).read_bytes()
    git(root, "checkout", "-q", "--detach")
    done = run_exp("commit", "1.0.0")
    assert done.returncode == 1 and "HEAD is detached" in done.stderr and "git switch" in done.stderr
    git(root, "checkout", "-q", "main")

    git(root, "checkout", "-q", "-b", "other")
    (root / "other.txt").write_text("other\n")
    git(root, "add", "other.txt")
    git(root, "commit", "-q", "-m", "other")
    git(root, "checkout", "-q", "main")
    (root / "mainline.txt").write_text("main\n")
    git(root, "add", "mainline.txt")
    git(root, "commit", "-q", "-m", "main")
    git(root, "merge", "-q", "--no-commit", "--no-ff", "other")
    before = head(root)
    done = run_exp("commit", "1.0.0")
    assert done.returncode == 1 and "a merge is in progress" in done.stderr and "git merge --abort" in done.stderr
    assert head(root) == before and repo.record_path(V).read_bytes() == record
    assert "other.txt" in git(root, "diff", "--cached", "--name-only")  # the merge's index is untouched


def test_commit_paths_on_an_unborn_branch_then_nothing_to_commit(tmp_path, monkeypatch):
    git_identity(monkeypatch, tmp_path)
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b, staged by the user\n")
    git(root, "add", "b.txt")
    first = gitops.commit_paths(root, {root / "a.txt": None, root / "c.txt": b"given bytes\n"}, "first\n")
    assert first.parent is None and first.paths == ["a.txt", "c.txt"]
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").split()) == ["a.txt", "c.txt"]
    assert git(root, "show", "HEAD:c.txt") == "given bytes\n"
    assert git(root, "diff", "--cached", "--name-only").split() == ["b.txt"]  # still staged, not committed
    with pytest.raises(gitops.NothingToCommitError):
        gitops.commit_paths(root, {root / "a.txt": None}, "again\n")
    assert head(root) == first.sha


FAKE_GPG = """#!/bin/sh
echo "$@" > "$(dirname "$0")/gpg-args"
cat > /dev/null
printf '\\n[GNUPG:] SIG_CREATED D 1 8 00 0 0\\n' >&2
printf -- '-----BEGIN PGP SIGNATURE-----\\n\\nZmFrZQ==\\n-----END PGP SIGNATURE-----\\n'
"""


def test_sign_passes_through_to_git_and_fails_clearly_without_a_key(repo, tmp_path):
    root = repo.root
    git(root, "config", "gpg.program", "false")  # a signer that always fails, like gpg without a key
    before, status = head(root), git(root, "status", "--porcelain")
    done = run_exp("commit", "1.0.0", "--sign")
    assert done.returncode == 1
    assert "could not sign" in done.stderr and "gpg failed to sign" in done.stderr and "nothing was committed" in done.stderr
    assert head(root) == before and git(root, "status", "--porcelain") == status
    assert records.load(repo, V).status == "approved"

    gpg = tmp_path / "fake-gpg"
    gpg.write_text(FAKE_GPG)
    gpg.chmod(0o755)
    git(root, "config", "gpg.program", str(gpg))
    done = run_exp("commit", "1.0.0", "--sign")
    assert done.returncode == 0, done.stderr
    assert "(signed)" in done.stdout
    assert "gpgsig -----BEGIN PGP SIGNATURE-----" in git(root, "cat-file", "commit", "HEAD")
    assert "-bsau" in (tmp_path / "gpg-args").read_text()
