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
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import WorkspaceError
from .names import EMBEDDED
from .files import atomic_write



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


def data_cache_dir(base: Path | None = None) -> Path:
    """Where a JSONL ``data_path`` is prepared once into token shards: ``out/.data/`` under
    ``base`` (the workspace root, else the current directory), or ``EXP_DATA_CACHE`` when set."""
    env = os.environ.get("EXP_DATA_CACHE")
    if env:
        return Path(env).expanduser()
    return (base or Path.cwd()) / "out" / ".data"


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

    def state_path(self, version: Any) -> Path:
        """The tool's state of a record (status, run, analysis, approval), beside its markdown."""
        return self.experiment_dir / f"experiment_{version}.state.json"

    def run_script_path(self, version: Any) -> Path:
        return self.run_file_dir / f"experiment_{version}.sh"

    def out_dir(self, version: Any) -> Path:
        return self.out_root / f"experiment_{version}"

    def replicate_dir(self, version: Any, index: int) -> Path:
        """Replicate ``index`` of a record's run (seed ``seed + index``): ``out/experiment_V/r{index}/``."""
        return self.out_dir(version) / f"r{index}"

    def queue_dir(self) -> Path:
        """The run queues' plans and supervisor state (``exp run V1 V2 ...``, ``--members``)."""
        return self.out_root / ".queue"

    def lock_path(self, version: Any) -> Path:
        return self.locks_dir / f"experiment_{version}.lock"

    def group_lock_path(self, parent: Any) -> Path:
        """Held while a group's end is judged and its analysis written (members may end at once)."""
        return self.locks_dir / f"group_{parent}.lock"

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

    def data_cache_dir(self) -> Path:
        return data_cache_dir(self.root)

    def resolve(self, value: str, kind: str = "train") -> Path | None:
        return resolve_data_path(value, kind, base=self.root)

    # -- settings from [tool.exp] ----------------------------------------------------------
    @property
    def default_lang(self) -> str:
        lang = self.settings.get("lang", "zh")
        return lang if lang in ("zh", "en") else "zh"


# -- exp init --------------------------------------------------------------------------------
#: What ``exp init`` copies from expkit into a workspace, besides ``templates/``.
_SHIPPED_DOCS = ("CLAUDE.md", "experiment/README.md")
_WORKSPACE_DIRS = ("experiment", "run_file", "out")


@dataclass(frozen=True)
class Appended:
    """Lines ``exp init --force`` added at the end of a file that was already there."""

    path: Path
    lines: list[str]


@dataclass(frozen=True)
class Scaffolded:
    """What ``scaffold`` did: paths it created, files it left as they were, lines it appended."""

    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    appended: list[Appended] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.appended)


def scaffold(directory: Path, force: bool = False) -> Scaffolded:
    """Create a workspace in ``directory``, or (``force``) add one to an existing project.

    Refuses a non-empty directory unless ``force``; never overwrites what a file holds. A
    ``pyproject.toml`` or ``.gitignore`` already there gets what it lacks appended (the
    ``[tool.exp]`` table, the ignore rules); when that cannot be done safely nothing at all is
    written and the ``WorkspaceError`` names the lines to add by hand.
    """
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(f"{directory} exists and is not a directory; pick another DIR")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise WorkspaceError(f"{directory} is not empty; use --force to add a workspace to it (existing files are kept)")
    src = package_templates_dir()
    if not src.is_dir():
        raise WorkspaceError(f"expkit's templates are missing at {src}; reinstall expkit (`pip install .` in its checkout)")
    copies: list[tuple[Path, Path]] = [(shipped_path(rel), Path(rel)) for rel in _SHIPPED_DOCS]
    copies += [(p, Path("templates") / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    # Plan the appends before writing anything: a refusal must leave the directory as it was.
    appends: list[tuple[Appended, str]] = []
    kept: list[Path] = []
    for template, rel, plan in (
        (src / "workspace" / "pyproject.toml", Path("pyproject.toml"), _pyproject_addition),
        (src / "workspace" / "gitignore", Path(".gitignore"), _gitignore_addition),
    ):
        target = directory / rel
        if not target.exists():
            copies.append((template, rel))
            continue
        planned = plan(target, template.read_text(encoding="utf-8"))
        if planned is None:
            kept.append(target)
        else:
            appends.append(planned)

    created: list[Path] = []
    for sub in _WORKSPACE_DIRS:
        if not (directory / sub).is_dir():
            (directory / sub).mkdir(parents=True, exist_ok=True)
            created.append(directory / sub)
    for source, rel in copies:
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
    for added, text in appends:
        real = added.path.resolve()  # a symlinked pyproject.toml stays a symlink
        atomic_write(real, text, chmod=stat.S_IMODE(real.stat().st_mode))
    return Scaffolded(created, kept, [added for added, _ in appends])


def _append(text: str, lines: list[str]) -> str:
    """``text`` with ``lines`` at its end, after a blank line, in the file's own line ending."""
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith("\n"):
        text += newline
    if text.strip():
        text += newline
    return text + newline.join(lines) + newline


def _pyproject_addition(target: Path, template: str) -> tuple[Appended, str] | None:
    """The ``[tool.exp]`` table to append to an existing ``pyproject.toml`` and the text that
    results, None when it has one already. The result is parsed before it is accepted: it must
    hold the template's table and, apart from it, exactly what the file held before."""
    lines = template.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "[tool.exp]")
    table = lines[start:]
    while table and not table[-1].strip():
        table.pop()
    wanted = tomllib.loads(template)["tool"]["exp"]
    keys = [line.strip() for line in table[1:] if line.strip() and not line.lstrip().startswith("#")]
    paste = " and ".join(f"`{line}`" for line in ["[tool.exp]", *keys])

    def refuse(why: str, what: str) -> WorkspaceError:
        return WorkspaceError(f"cannot add the exp settings to {target} safely: {why}; {what}, "
                              "then run `exp init --force` again (nothing was written)")

    try:
        text = target.read_bytes().decode("utf-8")  # not read_text: keep \r\n line endings as they are
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise refuse(f"it is not valid TOML ({err})", f"fix it and add the lines {paste} at its end") from None
    tool = data.get("tool")
    if isinstance(tool, dict) and isinstance(tool.get("exp"), dict):
        return None
    if isinstance(tool, dict) and "exp" in tool:
        raise refuse(f"its tool.exp is {tool['exp']!r}, not a table", f"remove that key and add the lines {paste} at its end")
    new_text = _append(text, table)
    try:
        new_data = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as err:
        new_data, reason = {}, str(err)
    else:
        reason = "the table does not read back as written"
    new_tool = new_data.get("tool")
    if isinstance(new_tool, dict) and new_tool.get("exp") == wanted and _without_exp(new_data) == _without_exp(data):
        return Appended(target, table), new_text
    if isinstance(tool, dict) and re.search(r"(?m)^\s*tool\s*=", text):  # a [tool.exp] header cannot extend an inline table
        raise refuse("its `tool` is an inline table", f"add `exp = {{ {', '.join(keys)} }}` inside that `tool = {{...}}` table")
    raise refuse(f"appending a [tool.exp] table would not give valid TOML ({reason})", f"add the lines {paste} by hand")


def _without_exp(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without ``tool.exp`` (and without a ``tool`` table left empty by that)."""
    rest = {k: v for k, v in data.items() if k != "tool"}
    tool = data.get("tool")
    if isinstance(tool, dict):
        tool = {k: v for k, v in tool.items() if k != "exp"}
    if tool:
        rest["tool"] = tool
    return rest


def _gitignore_addition(target: Path, template: str) -> tuple[Appended, str] | None:
    """The workspace's ignore rules that an existing ``.gitignore`` lacks, None when it has them all."""
    rules = [line.strip() for line in template.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        text = target.read_bytes().decode("utf-8")  # not read_text: keep \r\n line endings as they are
    except UnicodeDecodeError:
        raise WorkspaceError(
            f"cannot add exp's ignore rules to {target} safely: it is not UTF-8; add the lines "
            + " ".join(f"`{rule}`" for rule in rules)
            + " at its end, then run `exp init --force` again (nothing was written)"
        ) from None
    present = {line.strip() for line in text.splitlines()}
    missing = [rule for rule in rules if rule not in present]
    if not missing:
        return None
    lines = ["# exp workspace: run outputs and caches stay out of git (added by exp init)", *missing]
    return Appended(target, lines), _append(text, lines)
