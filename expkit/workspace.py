"""Where things live. The only module that builds paths.

A workspace is a directory holding a ``pyproject.toml`` with a ``[tool.exp]`` table; commands
find it by walking up from the current directory, or take ``EXP_ROOT`` when set, so tests can
redirect everything to a temporary directory.

The embedded corpus, tokenizer and templates live beside the installed ``expkit`` package, in
the source checkout (``pip install -e .``): ``dataset/`` and ``templates/``. That checkout is
the single source of both; ``exp init`` copies the templates into a new workspace.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkspaceError

#: The checkout expkit was installed from (editable install): holds templates/ and dataset/.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

EMBEDDED = "embedded"


def source_templates_dir() -> Path:
    return SOURCE_ROOT / "templates"


def dataset_dir() -> Path:
    """The embedded corpus and tokenizer (``dataset/`` of the expkit checkout)."""
    return SOURCE_ROOT / "dataset"


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
        """The workspace's own templates, falling back to the checkout's when it has none."""
        local = self.root / "templates"
        return local if local.is_dir() else source_templates_dir()

    @property
    def locks_dir(self) -> Path:
        return self.out_root / ".locks"

    # -- per record ------------------------------------------------------------------------
    def record_path(self, version: Any) -> Path:
        return self.experiment_dir / f"experiment_{version}.md"

    def state_path(self, version: Any) -> Path:
        """The tool's state of a record (status, run, analysis, approval), beside its markdown."""
        return self.experiment_dir / f"experiment_{version}.state.json"

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

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace root when it is inside it (for messages)."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

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
    import shutil

    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(f"{directory} exists and is not a directory; pick another DIR")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise WorkspaceError(f"{directory} is not empty; use --force to add a workspace to it (existing files are kept)")
    src = source_templates_dir()
    if not src.is_dir():
        raise WorkspaceError(f"expkit's templates are missing at {src}; reinstall expkit from its checkout (pip install -e .)")
    files: list[tuple[Path, Path]] = [
        (SOURCE_ROOT / "experiment" / "README.md", Path("experiment/README.md")),
        (SOURCE_ROOT / "CLAUDE.md", Path("CLAUDE.md")),
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
        shutil.copymode(source, target)
        created.append(target)
    return created, kept
