"""Where things live. The only module that builds paths.

A workspace is a directory holding a ``pyproject.toml`` with a ``[tool.exp]`` table; commands
find it by walking up from the current directory, or take ``EXP_ROOT`` when set, so tests can
redirect everything to a temporary directory.

What expkit ships (the templates, the embedded corpus and tokenizer, CLAUDE.md, the manual) is
package data under ``expkit/_data``, found through ``importlib.resources`` by ``shipped_path``
alone. In the repository ``expkit/_data`` holds only symlinks to the top-level ``templates/``,
``dataset/``, ``CLAUDE.md`` and ``experiment/README.md``, the one source of each: an editable
install reads them through the links, and building a wheel copies the files they point at.
``exp init`` copies the templates, CLAUDE.md and the manual into a new workspace.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import WorkspaceError

EMBEDDED = "embedded"


def shipped_path(rel: str) -> Path:
    """A file or directory expkit ships, by its path in the repository (``templates``,
    ``dataset``, ``CLAUDE.md``, ``experiment/README.md``), wherever expkit is installed."""
    root = resources.files(__package__) / "_data"
    if not isinstance(root, Path):  # a zipped install: Jinja, torch and tokenizers need real files
        raise WorkspaceError(f"expkit is installed inside an archive ({root}); install it as files (`pip install .` in its checkout)")
    # resolved: in a checkout, messages and scripts/build_corpus.py then name the real file, not the link
    return (root / rel).resolve()


def package_templates_dir() -> Path:
    return shipped_path("templates")


def dataset_dir() -> Path:
    """The embedded corpus and tokenizer (``dataset/`` of the repository)."""
    return shipped_path("dataset")


def embedded_train_path() -> Path:
    return dataset_dir() / "pretrain_train.jsonl.gz"


def embedded_val_path() -> Path:
    return dataset_dir() / "pretrain_val.jsonl.gz"


def embedded_tokenizer_dir() -> Path:
    return dataset_dir() / "tokenizer"


def resolve_data_path(value: str, kind: str = "train", base: Path | None = None) -> Path | None:
    """Turn a config's ``data_path`` / ``val_data_path`` / ``tokenizer_path`` into a path.

    ``embedded`` means the shipped files; a relative path is taken from ``base`` (the
    workspace root, else the current directory); ``''`` (only for val) means "no file".
    """
    if value == EMBEDDED:
        return {"train": embedded_train_path, "val": embedded_val_path, "tokenizer": embedded_tokenizer_dir}[kind]()
    if value == "":
        return None
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return path


def _has_exp_table(pyproject: Path) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    table = data.get("tool", {}).get("exp")
    return table if isinstance(table, dict) else None


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def find(cls, start: Path | None = None) -> Workspace:
        env = os.environ.get("EXP_ROOT")
        if env:
            root = Path(env).expanduser().resolve()
            if not root.is_dir():
                raise WorkspaceError(f"EXP_ROOT={env} is not a directory; unset it or point it at a workspace")
            return cls(root, _has_exp_table(root / "pyproject.toml") or {})
        here = (start or Path.cwd()).resolve()
        for candidate in (here, *here.parents):
            table = _has_exp_table(candidate / "pyproject.toml")
            if table is not None:
                return cls(candidate, table)
        raise WorkspaceError(
            f"no exp workspace at or above {here} (no pyproject.toml with a [tool.exp] table); "
            "run `exp init DIR` or set EXP_ROOT"
        )

    # -- directories -----------------------------------------------------------------------
    @property
    def experiment_dir(self) -> Path:
        return self.root / "experiment"

    @property
    def run_file_dir(self) -> Path:
        return self.root / "run_file"

    @property
    def out_root(self) -> Path:
        return self.root / "out"

    @property
    def templates_dir(self) -> Path:
        """The workspace's own templates, falling back to the ones expkit ships when it has none."""
        local = self.root / "templates"
        return local if local.is_dir() else package_templates_dir()

    @property
    def locks_dir(self) -> Path:
        return self.out_root / ".locks"

    # -- per record ------------------------------------------------------------------------
    def record_path(self, version: Any) -> Path:
        return self.experiment_dir / f"experiment_{version}.md"

    def run_script_path(self, version: Any) -> Path:
        return self.run_file_dir / f"experiment_{version}.sh"

    def out_dir(self, version: Any) -> Path:
        return self.out_root / f"experiment_{version}"

    def lock_path(self, version: Any) -> Path:
        return self.locks_dir / f"experiment_{version}.lock"

    def discarded_dir(self) -> Path:
        return self.out_root / ".discarded"

    def cache_dir(self) -> Path:
        """Derived data that can always be rebuilt from the records (never committed)."""
        return self.out_root / ".cache"

    def resolve(self, value: str, kind: str = "train") -> Path | None:
        return resolve_data_path(value, kind, base=self.root)

    # -- settings from [tool.exp] ----------------------------------------------------------
    @property
    def default_lang(self) -> str:
        lang = self.settings.get("lang", "zh")
        return lang if lang in ("zh", "en") else "zh"


def scaffold(directory: Path, force: bool = False) -> tuple[list[Path], list[Path]]:
    """Create a workspace in ``directory``; returns (created, kept) paths.

    Refuses a non-empty directory unless ``force``; never overwrites an existing file.
    """
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(f"{directory} exists and is not a directory; pick another DIR")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise WorkspaceError(f"{directory} is not empty; use --force to add a workspace to it (existing files are kept)")
    src = package_templates_dir()
    if not src.is_dir():
        raise WorkspaceError(f"expkit's templates are missing at {src}; reinstall expkit (`pip install .` in its checkout)")
    files: list[tuple[Path, Path]] = [
        (shipped_path("experiment/README.md"), Path("experiment/README.md")),
        (shipped_path("CLAUDE.md"), Path("CLAUDE.md")),
        (src / "workspace" / "pyproject.toml", Path("pyproject.toml")),
        (src / "workspace" / "gitignore", Path(".gitignore")),
    ]
    files += [(p, Path("templates") / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    created: list[Path] = []
    kept: list[Path] = []
    for sub in ("experiment", "run_file", "out"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for source, rel in files:
        target = directory / rel
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "x", encoding="utf-8") as fh:  # "x": never clobber, even in a race
                fh.write(source.read_text(encoding="utf-8"))
        except FileExistsError:
            kept.append(target)
            continue
        os.chmod(target, stat.S_IMODE(source.stat().st_mode) | 0o200)  # an installed package may be read-only
        created.append(target)
    return created, kept
