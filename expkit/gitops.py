"""Everything that touches git. The only module that imports GitPython (lazily).

A run records the revision it ran on (SHA, dirty flag, the uncommitted diff) so that a result
can be traced to the code that produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RepoState:
    sha: str | None  # None: a repository with no commit yet
    dirty: bool
    branch: str | None  # None: detached HEAD
    root: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _repo(path: Path):
    import git  # GitPython: ~0.1 s to import, so only where a command needs it

    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def state(path: Path) -> RepoState | None:
    """The repository holding ``path``, or None when it is not in one."""
    repo = _repo(path)
    if repo is None:
        return None
    try:
        sha = repo.head.commit.hexsha
    except ValueError:  # no commits yet
        sha = None
    branch = None if repo.head.is_detached else repo.active_branch.name
    return RepoState(sha=sha, dirty=repo.is_dirty(untracked_files=False), branch=branch, root=str(repo.working_tree_dir))


def diff(path: Path) -> str:
    """Uncommitted changes to tracked files (staged and unstaged) against HEAD, as a patch."""
    repo = _repo(path)
    if repo is None:
        return ""
    try:
        repo.head.commit
    except ValueError:
        return ""
    return repo.git.diff("HEAD")
