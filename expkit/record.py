"""The experiment record: one markdown file with a YAML front matter and marked sections.

::

    ---
    schema: 1
    version: 1.4.1
    ...
    ---
    # 🧪 实验 1.4.1
    <!-- exp:human goal -->
    ...the human's words, kept byte for byte...
    <!-- /exp -->
    <!-- exp:generated config -->
    ...rendered from data by the tool...
    <!-- /exp -->

Parsing keeps every byte: the body is a list of literal text parts and blocks, and a block
keeps its marker lines verbatim; the front matter's original text is reused unless the
metadata changed. So parse → render of an unchanged record gives identical bytes.

The front matter is a plain dict checked by hand-written rules rather than a pydantic model:
``exp list`` reads a thousand of these and must not pay pydantic's import cost.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import RecordError
from .version import Version

try:  # libyaml is ~10x faster at reading; writing always uses the pure dumper (stable bytes)
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

SCHEMA = 1

HUMAN = ("goal", "hypothesis", "expected", "focus")
AI = ("analysis", "diagnosis", "suggestions")
#: Sections whose hash is stored at run start (pre-registration): the claims themselves.
PREREGISTERED = ("goal", "hypothesis", "expected")

#: Front-matter keys in the order they are written.
META_ORDER = (
    "schema", "version", "parent", "baseline", "status", "description", "lang", "created",
    "config", "digests", "run", "prereg", "analysis", "review", "commit",
)
REQUIRED_META = ("schema", "version", "parent", "baseline", "status", "description", "config")

# -- the status machine -----------------------------------------------------------------
STATUSES = (
    "draft", "ready", "running", "finished", "failed", "interrupted",
    "analyzed", "approved", "changes_requested", "committed",
)
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "draft": ("ready",),
    "ready": ("draft", "running"),
    "running": ("finished", "failed", "interrupted"),
    "finished": ("analyzed", "running"),
    "failed": ("running", "analyzed"),
    "interrupted": ("running", "analyzed"),
    "analyzed": ("analyzed", "approved", "changes_requested", "running"),
    "approved": ("analyzed", "committed"),
    "changes_requested": ("analyzed", "approved", "changes_requested", "running"),
    "committed": (),
}
NEXT_STEP = {
    "draft": "fill the human sections, then `exp check {v}`",
    "ready": "`exp run {v}`",
    "running": "wait for it (`exp status {v}`, `exp logs {v} -f`) or `exp stop {v}`",
    "finished": "`exp analyze {v}`",
    "failed": "read `exp logs {v}`, fix, then `exp run {v}`",
    "interrupted": "`exp run {v} --resume`",
    "analyzed": "a person runs `exp review {v}`",
    "approved": "`exp commit {v}`",
    "changes_requested": "address the review comments, `exp analyze {v}`, then `exp review {v}`",
    "committed": "the record is final; start the next one with `exp new NEXT --from {v}`",
}

# -- markers ------------------------------------------------------------------------------
# Markers are whole lines. A block runs from its opener to the LAST closer before the next
# opener, so a human may even write a closer line inside their text; only an opener line is
# impossible to hold inside a block (set_text refuses it).
OPEN_RE = re.compile(r"^<!-- exp:(human|generated|ai) ([a-z][a-z0-9_]*) -->[ \t\r]*$", re.M)
CLOSE_RE = re.compile(r"^<!-- /exp -->[ \t\r]*$", re.M)
CLOSE_LINE = "<!-- /exp -->"
#: Lines of template guidance inside a human or ai block; check reports any left in place.
HINT_RE = re.compile(r"^> 💡")


@dataclass
class Block:
    kind: str  # human | generated | ai
    name: str
    open_line: str  # the opener exactly as in the file, with its newline
    content: str  # everything between the opener's newline and the closer line
    close_line: str  # the closer exactly as in the file (its newline, if any)
    line: int = 0  # 1-based line of the opener in the whole file

    @property
    def text(self) -> str:
        """The block's text; the newline before the closer belongs to the marker."""
        return self.content[:-1] if self.content.endswith("\n") else self.content

    def set_text(self, text: str) -> None:
        for n, line in enumerate(text.split("\n"), 1):
            if OPEN_RE.match(line):
                raise RecordError(
                    f"text for section {self.name!r} has a line that is a section marker (line {n} of the text: "
                    f"{line.strip()!r}); change that line"
                )
        self.content = text + "\n"

    def render(self) -> str:
        return self.open_line + self.content + self.close_line

    @property
    def first_content_line(self) -> int:
        return self.line + 1


def block_markers(kind: str, name: str) -> tuple[str, str]:
    return f"<!-- exp:{kind} {name} -->\n", CLOSE_LINE + "\n"


def sha256(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def digest(content: str) -> str:
    """Short fingerprint of a generated block: enough to notice a hand edit, short to read."""
    return sha256(content)[:16]


# YAML refuses these characters even inside quotes; JSON leaves them raw, so escape them.
_YAML_UNPRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\ufffe\uffff]")


def _scalar(value: Any) -> str:
    """A top-level scalar as JSON, which is also valid YAML: listings read it back with
    json.loads instead of the much slower YAML constructor."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases: an object met twice is written out twice. An alias would tie the
    two places together for YAML and break readers that take one part of the front matter."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_yaml(meta: dict[str, Any]) -> str:
    ordered = {k: meta[k] for k in META_ORDER if k in meta}
    ordered.update({k: v for k, v in meta.items() if k not in ordered})
    out = []
    for key, value in ordered.items():
        if value is None or isinstance(value, (str, int, float, bool)):
            out.append(f"{key}: {_scalar(value)}\n")
        else:
            out.append(
                yaml.dump(
                    {key: value}, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                    default_flow_style=False, width=1000,
                )
            )
    return "".join(out)


def split_front_matter(text: str, where: str = "record") -> tuple[str, str]:
    """Return (front matter YAML text, body). Raises RecordError naming the fix."""
    if not text.startswith("---\n"):
        raise RecordError(f"{where}: line 1 must be '---' opening the YAML front matter (recreate with `exp new`)")
    end = text.find("\n---\n", 3)
    if end < 0:
        raise RecordError(f"{where}: the YAML front matter is not closed by a '---' line")
    return text[4 : end + 1], text[end + 5 :]


def load_meta(front: str, where: str = "record") -> dict[str, Any]:
    try:
        meta = yaml.load(front, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 2}" if mark is not None else ""
        raise RecordError(f"{where}: the YAML front matter does not parse{line}: {getattr(err, 'problem', err)}") from None
    if not isinstance(meta, dict):
        raise RecordError(f"{where}: the YAML front matter must be a mapping of keys")
    return meta


_TOP_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
_SUB_KEY = re.compile(r"  ([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")


def read_meta(path: Path, keys: tuple[str, ...] | None = None,
              parts: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Only the front matter, without parsing the body: the fast path for listings.

    With ``keys``, only those top-level entries are read, each with ``json.loads`` when it is
    the one-line JSON scalar the tool writes, falling back to YAML otherwise: the YAML
    constructor costs ~0.3 ms per record, which a listing of 1,000 records cannot pay.
    ``parts`` narrows a mapping key further to some of its entries (``{"analysis":
    ("metrics", "verdicts")}``): the tool's dumper writes block style with two-space indents,
    and list items at their key's indent, so an entry runs until the next ``  name:`` line.
    """
    parts = parts or {}
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
        if first != "---\n":
            raise RecordError(f"{path}: line 1 must be '---' opening the YAML front matter")
        lines = []
        keep = True
        sub: tuple[str, ...] | None = None  # the entries wanted of the current key, when narrowed
        keep_sub = True
        wanted = set(keys) if keys is not None else set()
        for line in fh:
            if line == "---\n":
                break
            if keys is not None:
                m = _TOP_KEY.match(line)
                if m:  # a new top-level key; lines that don't start one continue the previous
                    if not wanted:
                        break  # every wanted key read (the tool writes them first)
                    keep = m.group(1) in wanted
                    wanted.discard(m.group(1))
                    sub = parts.get(m.group(1)) if keep else None
                    keep_sub = True
                elif sub is not None:
                    n = _SUB_KEY.match(line)
                    if n:
                        keep_sub = n.group(1) in sub
                    if not keep_sub:
                        continue
                if not keep:
                    continue
            lines.append(line)
        else:
            raise RecordError(f"{path}: the YAML front matter is not closed by a '---' line")
    if keys is not None:
        fast: dict[str, Any] = {}
        for line in lines:
            key, _, value = line.partition(": ")
            try:
                fast[key] = json.loads(value)
            except ValueError:
                break
        else:
            return fast
    return load_meta("".join(lines), str(path))


@dataclass
class Record:
    meta: dict[str, Any]
    parts: list[str | Block]
    path: Path | None = None
    front_raw: str = ""
    _meta_at_parse: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- parse / render ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> Record:
        where = str(path) if path else "record"
        front, body = split_front_matter(text, where)
        meta = load_meta(front, where)
        offset = front.count("\n") + 2  # lines before the body: '---', the YAML, '---'
        parts: list[str | Block] = []
        openers = list(OPEN_RE.finditer(body))
        pos = 0
        for i, m in enumerate(openers):
            parts.append(body[pos : m.start()])
            start = m.end() + 1 if body[m.end() : m.end() + 1] == "\n" else m.end()
            region_end = openers[i + 1].start() if i + 1 < len(openers) else len(body)
            closers = list(CLOSE_RE.finditer(body, start, region_end))
            line = offset + body.count("\n", 0, m.start()) + 1
            if not closers:
                raise RecordError(
                    f"{where}:{line}: section '{m.group(1)} {m.group(2)}' is not closed; add a line '{CLOSE_LINE}' after it"
                )
            close = closers[-1]
            close_end = close.end() + 1 if body[close.end() : close.end() + 1] == "\n" else close.end()
            parts.append(
                Block(
                    kind=m.group(1),
                    name=m.group(2),
                    open_line=body[m.start() : start],
                    content=body[start : close.start()],
                    close_line=body[close.start() : close_end],
                    line=line,
                )
            )
            pos = close_end
        parts.append(body[pos:])
        rec = cls(meta=meta, parts=[p for p in parts if p != ""], path=path, front_raw=front)
        rec._meta_at_parse = copy.deepcopy(meta)
        return rec

    @classmethod
    def read(cls, path: Path) -> Record:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecordError(f"no record at {path}; create it with `exp new`") from None
        except UnicodeDecodeError as err:
            raise RecordError(f"{path} is not UTF-8 text (byte {err.start}); restore it from git") from None
        return cls.parse(text, path)

    def render(self) -> str:
        front = self.front_raw if self.meta == self._meta_at_parse and self.front_raw else _dump_yaml(self.meta)
        return "---\n" + front + "---\n" + "".join(p if isinstance(p, str) else p.render() for p in self.parts)

    def body(self) -> str:
        return "".join(p if isinstance(p, str) else p.render() for p in self.parts)

    def refresh_lines(self) -> None:
        """Recompute block line numbers after an edit (for messages that cite lines)."""
        text = self.render()
        fresh = Record.parse(text, self.path)
        for mine, theirs in zip(self.blocks(), fresh.blocks()):
            mine.line = theirs.line

    # -- sections ----------------------------------------------------------------------------
    def blocks(self, kind: str | None = None) -> Iterator[Block]:
        for p in self.parts:
            if isinstance(p, Block) and (kind is None or p.kind == kind):
                yield p

    def block(self, kind: str, name: str) -> Block | None:
        return next((b for b in self.blocks(kind) if b.name == name), None)

    def require_block(self, kind: str, name: str) -> Block:
        b = self.block(kind, name)
        if b is None:
            raise RecordError(
                f"{self.path or 'record'} has no '{kind} {name}' section; restore its markers "
                f"'<!-- exp:{kind} {name} -->' … '{CLOSE_LINE}' from the template"
            )
        return b

    def human(self, name: str) -> str:
        return self.require_block("human", name).text

    def set_human(self, name: str, text: str) -> None:
        """For tools that write on a person's behalf (tests, the demo); the CLI never does."""
        self.require_block("human", name).set_text(text)

    def human_sha256(self, names: tuple[str, ...] = PREREGISTERED) -> str:
        """Hash of the human sections' exact text: what pre-registration freezes."""
        return sha256("\x00".join(f"{n}\x01{self.human(n) if self.block('human', n) else ''}" for n in names))

    # -- generated blocks and hand-edit detection ----------------------------------------------
    def edited_generated(self) -> list[Block]:
        """Generated blocks whose bytes differ from what the tool last wrote there."""
        digests = self.meta.get("digests") or {}
        return [b for b in self.blocks("generated") if b.name in digests and digests[b.name] != digest(b.content)]

    def set_generated(self, name: str, text: str) -> None:
        b = self.require_block("generated", name)
        b.content = text if text.endswith("\n") or not text else text + "\n"
        self.meta.setdefault("digests", {})[name] = digest(b.content)

    # -- metadata ----------------------------------------------------------------------------
    @property
    def version(self) -> Version:
        return Version.parse(str(self.meta.get("version")))

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "draft"))

    def set_status(self, new: str) -> None:
        if new not in STATUSES:
            raise RecordError(f"unknown status {new!r}")
        self.meta["status"] = new

    def content_sha256(self) -> str:
        return sha256(self.render())


def next_step(status: str, version: str) -> str:
    return NEXT_STEP.get(status, "`exp check {v}`").format(v=version)


def require_status(record: Record, allowed: tuple[str, ...], action: str) -> None:
    """Refuse ``action`` unless the record is in one of ``allowed``, naming the next step."""
    if record.status not in allowed:
        v = str(record.meta.get("version"))
        raise RecordError(
            f"cannot {action} {v}: its status is {record.status} (needs {' or '.join(allowed)}); next: {next_step(record.status, v)}"
        )


def meta_problems(meta: dict[str, Any]) -> list[str]:
    """Structural problems of the front matter, as messages."""
    out = [f"front matter lacks '{k}'" for k in REQUIRED_META if k not in meta]
    if meta.get("schema", SCHEMA) != SCHEMA:
        out.append(f"schema {meta.get('schema')!r} is not {SCHEMA}; this expkit reads schema {SCHEMA}")
    if "version" in meta and not Version.is_valid(str(meta["version"])):
        out.append(f"version {meta['version']!r} is not X.Y.Z")
    for key in ("parent", "baseline"):
        if meta.get(key) is not None and not Version.is_valid(str(meta[key])):
            out.append(f"{key} {meta[key]!r} is not X.Y.Z or null")
    if meta.get("status") not in STATUSES:
        out.append(f"status {meta.get('status')!r} is not one of {', '.join(STATUSES)}")
    if "config" in meta and not isinstance(meta["config"], dict):
        out.append("config must be a mapping")
    return out
