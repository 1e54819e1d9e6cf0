"""Everything that touches git. The only module that imports GitPython (lazily).

A run records the revision it ran on (SHA, dirty flag, the uncommitted diff) so that a result
can be traced to the code that produced it. ``exp review`` reads who the reviewer is from git's
config (``identity``); ``exp commit`` commits exactly the paths it is given (``commit_paths``)
and leaves every other staged or unstaged change of the user as it was.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExpError


class GitError(ExpError):
    """git refused, or the repository is not in a state to commit to."""


class NotARepositoryError(GitError):
    """The workspace is not inside a git working tree."""


class IdentityError(GitError):
    """git's user.name / user.email are not configured."""


class NothingToCommitError(GitError):
    """The given paths are already in HEAD exactly as they would be committed."""


class SignError(GitError):
    """git could not sign the commit (no key, gpg/ssh failure)."""


@dataclass(frozen=True)
class RepoState:
    sha: str | None  # None: a repository with no commit yet
    dirty: bool
    branch: str | None  # None: detached HEAD
    root: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _repo(path: Path, read_only: bool = False):
    import git  # GitPython: ~0.1 s to import, so only where a command needs it

    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    if read_only:  # a read (status, diff) must not write: `git status` would refresh .git/index
        repo.git.set_persistent_git_options(no_optional_locks=True)
    return repo


def _pathspecs(repo: Any, only: tuple[Path, ...], exclude: tuple[Path, ...]) -> list[str]:
    """git pathspecs, relative to the repository's root, for ``only`` minus ``exclude``."""
    root = Path(repo.working_tree_dir).resolve()

    def rel(p: Path) -> str | None:
        try:
            return Path(p).resolve().relative_to(root).as_posix() or "."
        except ValueError:
            return None

    specs = [r for r in (rel(p) for p in only) if r is not None] or (["."] if not only else [])
    specs += [f":(exclude){r}" for r in (rel(p) for p in exclude) if r is not None and r != "."]
    return specs


def state(path: Path, only: tuple[Path, ...] = (), exclude: tuple[Path, ...] = ()) -> RepoState | None:
    """The repository holding ``path``, or None when it is not in one. ``dirty`` counts the
    uncommitted changes to tracked files and the untracked files (ignored ones aside) under
    ``only`` (default: everywhere) outside ``exclude`` — a run's code, not exp's own records."""
    repo = _repo(path, read_only=True)
    if repo is None:
        return None
    try:
        sha = repo.head.commit.hexsha
    except ValueError:  # no commits yet
        sha = None
    branch = None if repo.head.is_detached else repo.active_branch.name
    specs = _pathspecs(repo, only, exclude)
    dirty = bool(specs) and bool(repo.git.status("--porcelain", "--untracked-files=normal", "--", *specs).strip())
    return RepoState(sha=sha, dirty=dirty, branch=branch, root=str(repo.working_tree_dir))


def diff(path: Path, only: tuple[Path, ...] = (), exclude: tuple[Path, ...] = ()) -> str:
    """Uncommitted changes against HEAD under ``only`` outside ``exclude``, as a patch: the
    tracked files' changes (staged and unstaged), then each untracked file as a new file."""
    repo = _repo(path, read_only=True)
    if repo is None:
        return ""
    specs = _pathspecs(repo, only, exclude)
    if not specs:
        return ""
    try:
        repo.head.commit
    except ValueError:
        tracked = ""
    else:
        tracked = repo.git.diff("HEAD", "--", *specs)
    parts = [tracked.rstrip("\n") + "\n"] if tracked.strip() else []
    root = Path(repo.working_tree_dir)
    for name in repo.git.ls_files("--others", "--exclude-standard", "--", *specs).splitlines():
        try:
            lines = (root / name).read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            parts.append(f"diff --git a/{name} b/{name}\nnew file (binary or unreadable): {name}\n")
            continue
        body = "".join(difflib.unified_diff([], lines, "/dev/null", f"b/{name}"))
        parts.append(f"diff --git a/{name} b/{name}\nnew file mode 100644\n{body}" + ("" if body.endswith("\n") else "\n"))
    return "".join(parts)


# -- identity ------------------------------------------------------------------------------------
def _config(path: Path, key: str) -> str | None:
    """``git config --get KEY`` as git itself resolves it (system, global, local, includes, env)."""
    import git

    cwd = path if path.is_dir() else path.parent
    try:
        value = git.Git(str(cwd)).config("--get", key)
    except git.GitCommandError:  # exit 1: not set
        return None
    except git.GitCommandNotFound:
        raise GitError("git is not installed (or not on PATH); install git") from None
    return value.strip() or None


def identity(path: Path) -> tuple[str, str]:
    """The person git would name for a commit made at ``path``: (user.name, user.email)."""
    name, email = _config(path, "user.name"), _config(path, "user.email")
    missing = [k for k, v in (("user.name", name), ("user.email", email)) if not v]
    if missing:
        example = {"user.name": '"Your Name"', "user.email": "you@example.com"}
        fix = " && ".join(f"git config --global {k} {example[k]}" for k in missing)
        raise IdentityError(f"git {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; set {'it' if len(missing) == 1 else 'them'}: {fix}")
    return name, email  # type: ignore[return-value]


# -- the commit ------------------------------------------------------------------------------------
@dataclass
class CommitResult:
    sha: str
    branch: str
    parent: str | None
    paths: list[str]  # relative to the repository root, in commit order
    signed: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Files in the git directory that mean an operation is half done, and how to finish it.
_IN_PROGRESS = (
    ("MERGE_HEAD", "a merge is in progress; finish it (`git commit`) or abort it (`git merge --abort`) first"),
    ("rebase-merge", "a rebase is in progress; finish it (`git rebase --continue`) or abort it (`git rebase --abort`) first"),
    ("rebase-apply", "a rebase or `git am` is in progress; finish or abort it (`git rebase --abort` / `git am --abort`) first"),
    ("CHERRY_PICK_HEAD", "a cherry-pick is in progress; finish it or abort it (`git cherry-pick --abort`) first"),
    ("REVERT_HEAD", "a revert is in progress; finish it or abort it (`git revert --abort`) first"),
)


def _open_for_commit(path: Path):
    repo = _repo(path)
    if repo is None:
        raise NotARepositoryError(f"{path} is not in a git repository; create one first: cd {path} && git init")
    if repo.bare or repo.working_tree_dir is None:
        raise NotARepositoryError(f"{repo.git_dir} is a bare repository; exp commit needs a working tree")
    git_dir = Path(repo.git_dir)
    for name, message in _IN_PROGRESS:
        if (git_dir / name).exists():
            raise GitError(message)
    if repo.head.is_detached:
        raise GitError("HEAD is detached (no branch checked out); switch to a branch first: git switch BRANCH (or git switch -c NEW)")
    if (git_dir / "index.lock").exists():
        raise GitError(f"another git process holds the index ({git_dir / 'index.lock'}); wait for it, or remove the stale lock file")
    return repo


def _rel_to(repo, path: Path) -> str:
    root = Path(repo.working_tree_dir).resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise GitError(f"{path} is outside the repository at {root}; nothing was committed") from None


def _mode(path: Path) -> str:
    return "100755" if os.access(path, os.X_OK) else "100644"


def _stderr(err: Exception) -> str:
    """git's own message out of a GitCommandError, on one line."""
    text = str(getattr(err, "stderr", "") or "").strip()
    if text.startswith("stderr:"):
        text = text[len("stderr:") :].strip().strip("'")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines) if lines else f"exit code {getattr(err, 'status', '?')}"


def commit_paths(
    where: Path,
    files: dict[Path, bytes | None],
    message: str,
    sign: bool = False,
) -> CommitResult:
    """Commit exactly ``files`` on the current branch, leaving the rest of the index alone.

    ``files`` maps a path in the working tree to the bytes to commit for it, or None to take
    the file as it is on disk. The commit is built in a temporary index seeded from HEAD
    (``GIT_INDEX_FILE``), so the user's staged changes to other paths are neither committed
    nor disturbed; after HEAD moves, the real index is updated for these paths only (as
    ``git commit --only PATHS`` would). Ignored files (small run artifacts under ``out/``)
    are taken all the same: the caller chose them. Nothing changes unless the commit is made:
    every failure before ``update-ref`` leaves HEAD, the index and the working tree as they
    were. ``sign`` asks git to sign (``commit-tree -S``) with its configured key and program;
    ``commit.gpgSign = true`` in git's config has the same effect, as for ``git commit``.
    Hooks are not run: the content was gated by a person's review instead.
    """
    import git

    repo = _open_for_commit(where)
    branch = repo.active_branch.name
    try:
        parent: str | None = repo.head.commit.hexsha
    except ValueError:  # unborn branch: this is the first commit
        parent = None
    entries: list[tuple[str, Path, bytes | None]] = []
    for path, data in files.items():
        rel = _rel_to(repo, path)
        if data is None and not path.is_file():
            raise GitError(f"{rel} is missing; nothing was committed")
        entries.append((rel, path, data))
    if not entries:
        raise NothingToCommitError("nothing to commit: no paths given")
    if not sign:
        sign = (_config(Path(repo.working_tree_dir), "commit.gpgsign") or "").lower() in ("true", "yes", "on", "1")

    git_dir = Path(repo.git_dir)
    fd, index = tempfile.mkstemp(prefix="exp-index-", dir=git_dir)
    os.close(fd)
    os.unlink(index)  # git creates it; an empty file is not a valid index
    temps: list[str] = [index]
    tmp_env = {"GIT_INDEX_FILE": index}
    g = repo.git
    try:
        if parent:
            g.read_tree(parent, env=tmp_env)
        else:
            g.read_tree("--empty", env=tmp_env)
        cacheinfo: list[str] = []
        for rel, path, data in entries:
            if data is None:
                blob = g.hash_object("-w", "--", rel)
                mode = _mode(path)
            else:
                fd, tmp = tempfile.mkstemp(prefix="exp-blob-", dir=git_dir)
                temps.append(tmp)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                blob = g.hash_object("-w", "--path", rel, tmp)  # --path: same filters as `git add`
                mode = _mode(path) if path.exists() else "100644"
            cacheinfo.append(f"{mode},{blob},{rel}")
            g.update_index("--add", "--cacheinfo", cacheinfo[-1], env=tmp_env)
        tree = g.write_tree(env=tmp_env)
        if parent and tree == repo.head.commit.tree.hexsha:
            raise NothingToCommitError("nothing to commit: these files are already in HEAD exactly as they are")

        fd, msg_file = tempfile.mkstemp(prefix="exp-msg-", dir=git_dir)
        temps.append(msg_file)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(message if message.endswith("\n") else message + "\n")
        args = [tree] + (["-p", parent] if parent else []) + (["-S"] if sign else []) + ["-F", msg_file]
        try:
            sha = g.commit_tree(*args).strip()
        except git.GitCommandError as err:
            if sign:
                raise SignError(
                    f"git could not sign the commit ({_stderr(err)}); configure a key (git config user.signingkey KEY; "
                    "for SSH keys also gpg.format ssh) or commit without --sign; nothing was committed"
                ) from None
            raise GitError(f"git commit-tree failed: {_stderr(err)}; nothing was committed") from None

        try:
            g.update_ref("-m", f"exp commit: {message.splitlines()[0]}", "HEAD", sha, parent or "")  # "": HEAD's branch must not exist yet
        except git.GitCommandError as err:
            raise GitError(f"could not move {branch} to the new commit ({_stderr(err)}); nothing was committed — try again") from None
    except git.GitCommandNotFound:
        raise GitError("git is not installed (or not on PATH); install git") from None
    except git.GitCommandError as err:
        raise GitError(f"git failed: {_stderr(err)}; nothing was committed") from None
    finally:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    # HEAD has moved: from here on nothing may undo the commit; problems become warnings.
    warnings: list[str] = []
    try:
        for info in cacheinfo:
            g.update_index("--add", "--cacheinfo", info)
    except git.GitCommandError as err:
        rels = " ".join(rel for rel, _, _ in entries)
        warnings.append(f"committed, but the index was not updated for these paths ({_stderr(err)}); run: git reset -q -- {rels}")
    else:
        try:  # only stat information changes: other entries keep their staged content
            g.update_index("-q", "--refresh", "--ignore-missing")
        except git.GitCommandError:
            pass
    return CommitResult(sha=sha, branch=branch, parent=parent, paths=[rel for rel, _, _ in entries], signed=sign, warnings=warnings)


# -- code differences between two runs --------------------------------------------------------------
def diffstat(path: Path, a: str, b: str) -> dict[str, Any]:
    """``git diff --stat A B`` of two recorded revisions: {"stat": text, "files": n} or
    {"error": why} when a revision is unknown here (a run made in another clone)."""
    import git

    repo = _repo(path)
    if repo is None:
        return {"error": "not a git repository"}
    try:
        stat = repo.git.diff("--stat", a, b)
        names = repo.git.diff("--name-only", a, b)
    except git.GitCommandError as err:
        return {"error": f"git cannot compare {a[:12]} and {b[:12]}: {_stderr(err)}"}
    return {"stat": stat, "files": len([n for n in names.splitlines() if n.strip()])}
