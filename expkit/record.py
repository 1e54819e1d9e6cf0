"""The experiment record's markdown: a YAML front matter and marked sections, parsed losslessly.

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
    ...rendered from the tool's state...
    <!-- /exp -->

A ``Record`` is that file together with the state the tool owns: ``meta`` (what the front
matter shows: status, config, run, analysis, review ...) and ``view`` (what the tool last wrote
into the file: the front matter's hash, each generated block, each ai section, and the digests
of their earlier versions). The state lives in ``experiment_X.Y.Z.state.json`` (see
``records``); the markdown is its readable, diffable view plus the people's text.

Parsing keeps every byte: the body is a list of literal text parts and blocks, and a block keeps
its marker lines verbatim. A file written with CRLF line endings keeps them: the human's text is
never touched, and what the tool writes (front matter, generated blocks, ai sections) takes the
file's own line ending. ``Block.text`` always reads with ``\\n``.

Layer 1: no workspace, no files but the one handed in. PyYAML is imported only where a front
matter is parsed or written (~30 ms: ``exp list`` and ``exp show`` read JSON state instead).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import RecordError
from .version import Version

_SCALARS = (str, int, float, bool, type(None))


def plain_copy(value: Any) -> Any:
    """A deep copy of data as JSON and YAML give it (dicts, lists, scalars), kept to compare
    against later: ~4x faster than copy.deepcopy, which a site of a thousand records paid for
    (it keeps no memo: shared references become copies, which equality does not see). Any
    other type goes through copy.deepcopy."""
    t = type(value)
    if t is dict:
        return {k: plain_copy(v) for k, v in value.items()}
    if t is list:
        return [plain_copy(v) for v in value]
    if t in _SCALARS:
        return value
    return copy.deepcopy(value)

SCHEMA = 1

HUMAN = ("goal", "hypothesis", "expected", "focus")
AI = ("analysis", "diagnosis", "suggestions")
#: ``member`` is in a group member's record only (``exp sweep``): the parent's human sections, quoted.
GENERATED = ("info", "member", "config", "execution", "environment", "metrics", "review")
#: Sections whose hash is stored at run start (pre-registration): the claims themselves.
PREREGISTERED = ("goal", "hypothesis", "expected")

#: Front-matter keys in the order they are written.
META_ORDER = (
    "schema", "version", "parent", "group", "changes", "baseline", "status", "description", "lang", "created",
    "task", "config", "run", "prereg", "analysis", "review", "commit",
)
#: State kept out of the front matter: a group's analysis (one row per member, up to dozens)
#: is shown by the parent's generated ``group`` section and kept whole in the state file.
STATE_ONLY = ("group_analysis",)
REQUIRED_META = ("schema", "version", "parent", "baseline", "status", "description", "config")
#: How many earlier versions of a tool-written block are remembered (to tell a stale editor
#: buffer, which brings one of them back, from a person's new edit).
SEEN_MAX = 64

# -- markers ------------------------------------------------------------------------------
# Markers are whole lines. A block runs from its opener to the LAST closer before the next
# opener, so a human may even write a closer line inside their text; only an opener line is
# impossible to hold inside a block (set_text refuses it).
OPEN_RE = re.compile(r"^<!-- exp:(human|generated|ai) ([a-z][a-z0-9_]*) -->[ \t\r]*$", re.M)
CLOSE_RE = re.compile(r"^<!-- /exp -->[ \t\r]*$", re.M)
CLOSE_LINE = "<!-- /exp -->"
#: Lines of template guidance inside a human or ai block; check reports any left in place.
HINT_RE = re.compile(r"^> 💡")


def sha256(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def digest(content: str) -> str:
    """Short fingerprint of a block's text (line endings normalised): enough to recognise it."""
    return sha256(lf(content))[:16]


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def with_newline(text: str, newline: str) -> str:
    """``text`` (written with ``\\n``) in a file whose line ending is ``newline``."""
    return text if newline == "\n" else lf(text).replace("\n", newline)


@dataclass
class Block:
    kind: str  # human | generated | ai
    name: str
    open_line: str  # the opener exactly as in the file, with its line ending
    content: str  # everything between the opener's line ending and the closer line, as in the file
    close_line: str  # the closer exactly as in the file (its line ending, if any)
    line: int = 0  # 1-based line of the opener in the whole file
    newline: str = "\n"  # the file's line ending, for text the tool writes

    @property
    def text(self) -> str:
        """The block's text with ``\\n`` line endings; the line ending before the closer belongs
        to the marker."""
        return lf(self.raw_text)

    @property
    def raw_text(self) -> str:
        """The block's text exactly as in the file, without the line ending before the closer."""
        for end in dict.fromkeys((self.newline, "\n")):  # the file's line ending, else a bare \n
            if self.content.endswith(end):
                return self.content[: -len(end)]
        return self.content

    def set_text(self, text: str) -> None:
        for n, line in enumerate(lf(text).split("\n"), 1):
            if OPEN_RE.match(line):
                raise RecordError(
                    f"text for section {self.name!r} has a line that is a section marker (line {n} of the text: "
                    f"{line.strip()!r}); change that line"
                )
        # in a CRLF file the tool's line endings are CRLF too; line endings already in the text stay
        self.content = (text if self.newline == "\n" else with_newline(text, self.newline)) + self.newline

    def render(self) -> str:
        return self.open_line + self.content + self.close_line

    @property
    def first_content_line(self) -> int:
        return self.line + 1


def block_markers(kind: str, name: str) -> tuple[str, str]:
    return f"<!-- exp:{kind} {name} -->\n", CLOSE_LINE + "\n"


# -- the front matter ----------------------------------------------------------------------
# YAML refuses these characters even inside quotes; JSON leaves them raw, so escape them.
_YAML_UNPRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\ufffe\uffff]")


def _scalar(value: Any) -> str:
    """A top-level scalar as JSON, which is also valid YAML (and reads back fast)."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dump_front_matter(meta: dict[str, Any]) -> str:
    """The front matter's YAML text (``\\n`` line endings), keys in META_ORDER, no aliases."""
    import yaml

    class Dumper(yaml.SafeDumper):
        """No anchors and aliases: an object met twice is written out twice. An alias would tie
        the two places together for YAML and break readers that take one part of the front matter."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    ordered = {k: meta[k] for k in META_ORDER if k in meta}
    ordered.update({k: v for k, v in meta.items() if k not in ordered and k not in STATE_ONLY})
    out = []
    for key, value in ordered.items():
        if value is None or isinstance(value, (str, int, float, bool)):
            out.append(f"{key}: {_scalar(value)}\n")
        else:
            out.append(yaml.dump({key: value}, Dumper=Dumper, sort_keys=False, allow_unicode=True,
                                 default_flow_style=False, width=1000))
    return "".join(out)


_OPENER = re.compile(r"---[ \t]*\r?\n")
_FRONT_FENCE = re.compile(r"^---[ \t]*\r?$", re.M)


def split_front_matter(text: str, where: str = "record") -> tuple[str, str]:
    """(front matter text, body) — the front matter as in the file, its line endings kept."""
    first = _OPENER.match(text)
    if not first:
        line = text.split("\n", 1)[0].rstrip("\r")
        raise RecordError(
            f"{where}:1: the file must start with a line '---' opening the front matter (it starts with {line[:40]!r}); "
            "put that line back at the top (your text below it is kept)"
        )
    end = _FRONT_FENCE.search(text, first.end())
    if end is None:
        raise RecordError(
            f"{where}: the front matter opened on line 1 is never closed; add a line '---' after it (your text is kept)"
        )
    body_start = end.end() + (1 if text[end.end(): end.end() + 1] == "\n" else 0)
    return text[first.end(): end.start()], text[body_start:]


def parse_front_matter(front: str, where: str = "record") -> dict[str, Any]:
    """The front matter's mapping. A YAML error names its line in the file and what is wrong."""
    import yaml

    try:
        loader = yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader
        meta = yaml.load(lf(front), Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 2}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).split("\n")[0]
        raise RecordError(f"{where}{line}: the front matter does not parse as YAML ({problem})") from None
    if not isinstance(meta, dict):
        raise RecordError(f"{where}:2: the front matter must be a mapping of keys (`key: value` lines)")
    return meta


def meta_problems(meta: dict[str, Any], statuses: tuple[str, ...]) -> list[str]:
    """Structural problems of a front matter's mapping, as messages."""
    out = [f"front matter lacks '{k}'" for k in REQUIRED_META if k not in meta]
    if meta.get("schema", SCHEMA) != SCHEMA:
        out.append(f"schema {meta.get('schema')!r} is not {SCHEMA}; this expkit reads schema {SCHEMA}")
    if "version" in meta and not Version.is_valid(str(meta["version"])):
        out.append(f"version {meta['version']!r} is not X.Y.Z")
    for key in ("parent", "baseline"):
        if meta.get(key) is not None and not Version.is_valid(str(meta[key])):
            out.append(f"{key} {meta[key]!r} is not X.Y.Z or null")
    if meta.get("status") not in statuses:
        out.append(f"status {meta.get('status')!r} is not one of {', '.join(statuses)}")
    if "config" in meta and not isinstance(meta["config"], dict):
        out.append("config must be a mapping")
    return out


def empty_view() -> dict[str, Any]:
    return {"front_sha256": None, "generated": {}, "ai": {}, "seen": {}}


# -- the record ------------------------------------------------------------------------------
@dataclass
class Record:
    meta: dict[str, Any]
    parts: list[str | Block]
    path: Path | None = None
    front_raw: str = ""  # the front matter as it is in the file
    newline: str = "\n"
    view: dict[str, Any] = field(default_factory=empty_view)
    #: set when the file's front matter is not the tool's (a stale save, a hand edit): render anew
    front_stale: bool = False
    _meta_at_load: dict[str, Any] = field(default_factory=dict, repr=False)
    _front_cache: tuple[dict[str, Any], str] | None = field(default=None, repr=False)

    # -- parse / render ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, path: Path | None = None, meta: dict[str, Any] | None = None) -> Record:
        """Parse a record file. ``meta``: the tool's state, when there is one (then the front
        matter is kept as text and not parsed); without it the front matter is read as YAML."""
        where = str(path) if path else "record"
        front, body = split_front_matter(text, where)
        newline = "\r\n" if text.startswith("---\r\n") or text[: text.find("\n") + 1].endswith("\r\n") else "\n"
        if meta is None:
            meta = parse_front_matter(front, where)
        offset = text.count("\n", 0, len(text) - len(body))  # lines before the body
        parts: list[str | Block] = []
        openers = list(OPEN_RE.finditer(body))
        pos = 0
        for i, m in enumerate(openers):
            parts.append(body[pos: m.start()])
            start = m.end() + 1 if body[m.end(): m.end() + 1] == "\n" else m.end()
            region_end = openers[i + 1].start() if i + 1 < len(openers) else len(body)
            closers = list(CLOSE_RE.finditer(body, start, region_end))
            line = offset + body.count("\n", 0, m.start()) + 1
            if not closers:
                raise RecordError(
                    f"{where}:{line}: section '{m.group(1)} {m.group(2)}' is not closed; add a line '{CLOSE_LINE}' after it"
                )
            close = closers[-1]
            close_end = close.end() + 1 if body[close.end(): close.end() + 1] == "\n" else close.end()
            parts.append(Block(kind=m.group(1), name=m.group(2), open_line=body[m.start(): start],
                               content=body[start: close.start()], close_line=body[close.start(): close_end],
                               line=line, newline=newline))
            pos = close_end
        parts.append(body[pos:])
        rec = cls(meta=meta, parts=[p for p in parts if p != ""], path=path, front_raw=front, newline=newline)
        rec._meta_at_load = plain_copy(meta)
        return rec

    @classmethod
    def read(cls, path: Path, meta: dict[str, Any] | None = None) -> Record:
        try:
            text = path.read_bytes().decode("utf-8")  # bytes: universal newlines would turn CRLF into LF
        except FileNotFoundError:
            raise RecordError(f"no record at {path}; create it with `exp new`") from None
        except UnicodeDecodeError as err:
            raise RecordError(f"{path} is not UTF-8 text (byte {err.start}); restore it from git") from None
        return cls.parse(text, path, meta)

    def front_text(self) -> str:
        """The front matter to write: the file's own when it is the tool's and unchanged, else
        the state dumped as YAML (once per state: a dump of a large analysis costs ~15 ms)."""
        if self.front_raw and not self.front_stale and self.meta == self._meta_at_load:
            return self.front_raw
        if self._front_cache is None or self._front_cache[0] != self.meta:
            self._front_cache = (plain_copy(self.meta), with_newline(dump_front_matter(self.meta), self.newline))
        return self._front_cache[1]

    def render(self) -> str:
        nl = self.newline
        return "---" + nl + self.front_text() + "---" + nl + self.body()

    def body(self) -> str:
        return "".join(p if isinstance(p, str) else p.render() for p in self.parts)

    def refresh_lines(self) -> None:
        """Recompute block line numbers after an edit (for messages that cite lines)."""
        fresh = Record.parse(self.render(), self.path, self.meta)
        for mine, theirs in zip(self.blocks(), fresh.blocks()):
            mine.line = theirs.line

    def mark_written(self) -> None:
        """After the file was written: what it now holds is the tool's."""
        self.front_raw = self.front_text()
        self.front_stale = False
        self._meta_at_load = plain_copy(self.meta)
        self.view["front_sha256"] = sha256(lf(self.front_raw))

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
        """Hash of the human sections' text: what pre-registration freezes."""
        return sha256("\x00".join(f"{n}\x01{self.human(n) if self.block('human', n) else ''}" for n in names))

    # -- what the tool wrote ---------------------------------------------------------------------
    def remember(self, key: str, old_text: str | None) -> None:
        """Note an earlier version of a tool-written block (``generated:NAME`` / ``ai:NAME``)."""
        if old_text is None:
            return
        seen = self.view.setdefault("seen", {}).setdefault(key, [])
        d = digest(old_text)
        if d not in seen:
            seen.append(d)
            del seen[:-SEEN_MAX]

    def was_seen(self, key: str, text: str) -> bool:
        return digest(text) in (self.view.get("seen") or {}).get(key, ())

    def set_generated(self, name: str, text: str) -> None:
        """Write a generated block (text rendered by the tool) and remember it as the tool's."""
        b = self.require_block("generated", name)
        text = lf(text)
        text = text if text.endswith("\n") or not text else text + "\n"
        generated = self.view.setdefault("generated", {})
        if generated.get(name) != text:
            self.remember(f"generated:{name}", generated.get(name))
        generated[name] = text
        b.content = with_newline(text, self.newline)

    def edited_generated(self) -> list[Block]:
        """Generated blocks whose text is not what the tool last wrote there (a hand edit)."""
        generated = self.view.get("generated") or {}
        return [b for b in self.blocks("generated") if b.name in generated and generated[b.name] != lf(b.content)]

    def set_ai(self, name: str, text: str, source: str | None = None, citations: list[dict[str, Any]] | None = None) -> None:
        """Write an ai section through the tool (``exp analyze`` drafts, ``exp fill``): its text,
        and when numbers were cited, the source with ``[[...]]`` and where each citation is."""
        b = self.require_block("ai", name)
        ai = self.view.setdefault("ai", {})
        old = (ai.get(name) or {}).get("text")
        b.set_text(text)
        if old is not None and old != b.text:
            self.remember(f"ai:{name}", old)
        entry: dict[str, Any] = {"text": b.text}
        if citations:
            entry.update(source=source, citations=citations)
        ai[name] = entry

    def ai_entry(self, name: str) -> dict[str, Any]:
        """What the tool knows of an ai section: its text as last written, and its citations
        (only while the file still holds that text)."""
        entry = (self.view.get("ai") or {}).get(name) or {}
        b = self.block("ai", name)
        if b is None or entry.get("text") != b.text:
            return {}
        return entry

    # -- metadata ----------------------------------------------------------------------------
    @property
    def version(self) -> Version:
        return Version.parse(str(self.meta.get("version")))

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "draft"))
