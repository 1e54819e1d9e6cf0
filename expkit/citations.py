"""Citations of the evidence, and the check that every number in the AI's prose is one.

- ``resolve(source, evidence) -> (text, citations)``: the AI **cites** instead of copying:
  ``[[metrics.val_loss]]`` or ``[[references.parent.deltas.val_loss.rel:.1%]]`` become the value,
  formatted; each replacement is kept as a ``Citation`` (path, format, value, where it landed).
- ``check(text, evidence, citations, human) -> list[Finding]``: citations are re-rendered and
  must still read as written (a stale one is a finding: "cited metrics.val_loss now reads 5.19,
  the text shows 5.232"; a span edited by hand since is no citation any more, its numbers are
  checked as bare ones); every other number must match, at the precision written, a leaf of the
  evidence **that its clause names**. A finding's reason says what the number matches instead,
  or that nothing matches, and which named quantity is nearest ("the sentence names
  references.parent.deltas.val_loss.rel = -3.1%").

The precision rule: a number written with d decimals (in the mantissa, for 3e-3) matches a value
v when |v| rounds to it, halves either way (so "5.23" and "5.2" match 5.2318, "5.24" does not);
signs are ignored; "12.5%" also matches the ratio 0.125; "1,234" is 1234; "1.2k", "3.4M", "2B"
scale the value and the precision; "1.5x" and "1.5×" are 1.5.

Pure (layer 3): no files, no printing; standard library, ``numbers`` and ``errors`` only.

Names and context (the rule of ``check``)
-----------------------------------------
Every numeric leaf has names: its key's own forms (``val_loss``, "val loss", "val-loss") and the
aliases of ``_ALIASES`` in English and Chinese (val_loss: validation loss, 验证损失, ...); some
leaves take names from their place (a delta's abs/rel/ratio is also named by its reference,
"parent"/父实验; a verdict's reference by "threshold"/预期/阈值 and its metric; an anomaly's numbers
by its kind, "spike"/尖峰, and its metric). A bare number passes when some leaf matches it at the
precision written *and* one of that leaf's names is mentioned in the number's **clause**: the
text between clause ends, which are 。！？；;!? a line end, and a period followed by white space.
Commas do not end a clause ("val_loss 5.23 vs 5.40 for the parent, -3.2%" is one). In a
markdown table a row's clause also has the names of the table's first row (its column heads).

A name is mentioned where it occurs in the clause case-insensitively; a Latin name only as a
whole word (letters, digits, ``_``, ``/`` and an apostrophe continue a word, so "loss" is not in
"val_loss" or "tokens/s", "s" is not in "parent's"), with an English plural allowed ("steps",
"losses"). A name inside a longer name found at the same place does not count: "验证损失" and
"val loss" mention the validation loss, not the train loss (损失, loss).

Not checked: versions (1.4.1, v2.0.1), list and heading numbering at a line start, dates and
times, URLs, inline code spans and fenced code blocks, digits inside identifiers (H100, bf16,
distinct-2), and quotations (“…”, "…", 「…」, 『…』, on one line) that appear verbatim in a human
section (compared without white space and without end punctuation, so "约300步" quotes "约 300 步").
"""

from __future__ import annotations

import bisect
import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ExpError
from .evidence import is_scalar, leaves, names_of, paths
from .numbers import format_number, format_percent


class CitationError(ExpError):
    """A ``[[path]]`` names no single value of the evidence, or its format does not apply."""


# -- the index: numeric leaves by value, grouped by their names -------------------------------------


class _Leaf:
    """A numeric leaf: its path's parts, its value and its names (a plain slotted class: an index
    holds thousands, and their paths are joined only for a finding's message)."""

    __slots__ = ("parts", "value", "names")

    def __init__(self, parts: tuple[str, ...], value: int | float, names: frozenset[str]) -> None:
        self.parts, self.value, self.names = parts, value, names

    @property
    def path(self) -> str:
        return ".".join(self.parts)


def _numeric_leaves(node: Any, prefix: tuple[str, ...], out: list[tuple[tuple[str, ...], int | float]]) -> None:
    """The finite numbers under ``node`` (booleans are not numbers), in order, appended to ``out``;
    ``_leaves`` without a generator per value, for the index's thousands."""
    for key, value in node.items() if isinstance(node, Mapping) else enumerate(node):
        kind = type(value)
        if kind is int or (kind is float and math.isfinite(value)):
            out.append(((*prefix, str(key)), value))
        elif isinstance(value, (Mapping, list)):
            _numeric_leaves(value, (*prefix, str(key)), out)


class _Sorted:
    """Leaves sorted by |value|, for bisection."""

    def __init__(self, leaves: list[_Leaf]) -> None:
        leaves = sorted(leaves, key=lambda leaf: abs(leaf.value))
        self.keys = [abs(float(leaf.value)) for leaf in leaves]
        self.leaves = leaves

    def within(self, written: float, tolerance: float) -> list[_Leaf]:
        """The leaves whose |value| lies within ``tolerance`` of |written| (both ends included)."""
        w = abs(written)
        slack = tolerance * (1 + 1e-9) + 1e-12 * w  # the written decimal is itself a binary float
        lo = bisect.bisect_left(self.keys, w - slack)
        hi = bisect.bisect_right(self.keys, w + slack, lo)
        return self.leaves[lo:hi]

    def has(self, written: float, tolerance: float) -> bool:
        w = abs(written)
        slack = tolerance * (1 + 1e-9) + 1e-12 * w
        i = bisect.bisect_left(self.keys, w - slack)
        return i < len(self.keys) and self.keys[i] <= w + slack

    def nearest(self, target: float) -> list[_Leaf]:
        """The leaves just below and just above |target|, all of them where values tie."""
        i = bisect.bisect_left(self.keys, abs(target))
        lo = bisect.bisect_left(self.keys, self.keys[i - 1]) if i > 0 else 0
        hi = bisect.bisect_right(self.keys, self.keys[i]) if i < len(self.keys) else len(self.keys)
        return self.leaves[lo:hi]


class Index:
    """The evidence's numbers: all of them by value, and in groups of leaves sharing their names
    (a curve of 1,000 evaluations is one group), so a clause looks up only the groups it names."""

    def __init__(self, evidence: Mapping[str, Any]) -> None:
        found: list[tuple[tuple[str, ...], int | float]] = []
        _numeric_leaves(evidence, (), found)
        by_names: dict[frozenset[str], list[_Leaf]] = {}
        for parts, value in found:
            names = names_of(parts, evidence)
            by_names.setdefault(names, []).append(_Leaf(parts, value, names))
        self.everything = _Sorted([leaf for group in by_names.values() for leaf in group])
        self.groups = [_Sorted(leaves) for leaves in by_names.values()]
        self.by_name: dict[str, list[int]] = {}
        for i, names in enumerate(by_names):
            for name in names:
                self.by_name.setdefault(name, []).append(i)

    def named(self, names: Iterable[str]) -> list[_Sorted]:
        return [self.groups[i] for i in sorted({i for n in names for i in self.by_name.get(n, ())})]


# -- reading a text: code, exempt spans, numbers, clauses, names --------------------------------------

_CODE_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
# Spans whose digits are not quantities of the run. (Each pattern here starts with a lookahead
# for its possible first characters: re tries a pattern at every offset of the text.)
_EXEMPT = re.compile(
    r"""(?=[hv\d])(?:
      https?://\S+                                                   # URLs
    | (?<![\d.])v?\d+(?:\.\d+){2,}(?![\d])                            # versions X.Y.Z
    | \d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?  # dates
    | \d{4}\s*年(?:\s*\d{1,2}\s*月)?(?:\s*\d{1,2}\s*日)? | \d{1,2}\s*月\s*\d{1,2}\s*日              # 2026年11月22日
    | (?<![\d.])\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?![\d])             # times
    )""",
    re.X,
)
# List numbering ("1.", "2)", "3、") and numbered headings at the start of a line.
_LIST_NUMBER = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:[-*+][ \t]+)?\d+(?:\.\d+)*(?:[.)](?=\s|$)|、)|^[ \t]*#+[ \t]*\d+(?:\.\d+)*(?=\s)", re.M
)
_QUOTE = re.compile(r"“([^”\n]+)”|\"([^\"\n]+)\"|「([^」\n]+)」|『([^』\n]+)』")
_NUMBER = re.compile(
    r"""(?=[\d.])(?<![A-Za-z0-9_.])(?<![A-Za-z]-)   # not inside an identifier (H100, bf16, distinct_2, distinct-2) or 1.2.
    (?P<mant>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:[eE](?P<exp>[-+]?\d+))?
    (?P<suffix>%|[x×]|(?:[KMGT]i?B|ms|min|s|h)(?![A-Za-z])|[kKMBG](?![A-Za-z]))?   # a unit (MB, s) or a scale (k, M)
    (?![A-Za-z0-9_])                          # not the head of a word or hash (3rd, 4f9a2c, 2M_tokens)
    """,
    re.X,
)
_SUFFIX_SCALE = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}
_CLAUSE_END = re.compile(r"[。！？；;!?\n]|\.(?=\s)")
_CITATION = re.compile(r"\[\[\s*([^\[\]:\s]+)\s*(?::([^\[\]\n]*))?\]\]")
#: What continues a Latin word for the name search.
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
#: Units written with a slash: searched as names so that their parts are not mentions.
_COMPOUNDS = ("tokens/s", "token/s", "tok/s", "it/s", "samples/s")
_END_PUNCTUATION = " \t\n。，、；：！？.,;:!?…"


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks (an unclosed fence runs to the end) and inline code spans (a backtick
    string up to the next one of the same length on its line), as [start, end) offsets."""
    spans = []
    fence: tuple[str, int, int] | None = None  # (character, length, start)
    pos = 0
    for line in text.splitlines(keepends=True):
        m = _CODE_FENCE.match(line)
        if fence is None and m:
            fence = (m[1][0], len(m[1]), pos)
        elif fence is not None:
            if m and m[1][0] == fence[0] and len(m[1]) >= fence[1] and not line[m.end():].strip():
                spans.append((fence[2], pos + len(line)))
                fence = None
        else:
            spans.extend((pos + c.start(), pos + c.end()) for c in _INLINE_CODE.finditer(line))
        pos += len(line)
    if fence is not None:
        spans.append((fence[2], len(text)))
    return spans


def _normalized(s: str) -> str:
    return re.sub(r"\s+", "", s).strip(_END_PUNCTUATION)


def _human_quotes(text: str, human: Mapping[str, str] | None) -> list[tuple[int, int]]:
    """Quotations whose words are a human section's, verbatim: their numbers are the person's."""
    if not human:
        return []
    sources = [_normalized(str(t)) for t in human.values() if t]
    spans = []
    for m in _QUOTE.finditer(text):
        quoted = _normalized(next(g for g in m.groups() if g is not None))
        if quoted and any(quoted in s for s in sources):
            spans.append(m.span())
    return spans


class _Spans:
    """Sorted, merged [start, end) intervals; does one overlap a range?"""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, end - 1) - 1
        return i >= 0 and self.ends[i] > start


def _lower(text: str) -> str:
    """Lower case with the offsets kept (a few characters grow when lowered: İ)."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _is_latin(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _mentions(text: str, names: Iterable[str]) -> list[tuple[int, int, str]]:
    """(start, end, name) of each name found in ``text`` (already lower case): Latin names as
    whole words, optionally plural; a name inside a longer one found at the same place dropped.
    ``_COMPOUNDS`` are searched too, so "tokens/s" never mentions "tokens" or "s"."""
    hits = []
    n = len(text)
    for name in (*names, *_COMPOUNDS):
        i = text.find(name)
        if i < 0:
            continue
        word_start, word_end = _is_latin(name[0]), _is_latin(name[-1])
        while i >= 0:
            end = i + len(name)
            before = text[i - 1] if i > 0 else " "
            ok = not (word_start and (before in _WORD or (name == "s" and before in "'’")))
            if ok and word_end:
                for plural in ("es", "s", ""):  # "losses", "steps": the longest that ends a word
                    e = end + len(plural)
                    if text.startswith(plural, end) and (e >= n or text[e] not in _WORD):
                        end = e
                        break
                else:
                    ok = False
            if ok:
                hits.append((i, end, name))
            i = text.find(name, i + 1)
    hits.sort(key=lambda h: (h[0], -(h[1] - h[0])))
    kept: list[tuple[int, int, str]] = []
    longest = (-1, -1)  # the span reaching furthest so far
    for start, end, name in hits:
        # inside a longer name's span; the same span twice is one mention ("step" and "steps")
        if end <= longest[1] and (start, end) != longest:
            continue
        kept.append((start, end, name))
        if end > longest[1]:
            longest = (start, end)
    return [h for h in kept if h[2] not in _COMPOUNDS or h[2] in names]


def _reading(m: re.Match[str]) -> tuple[float, float]:
    """A written number and half a unit of its last written digit: "5.23" → (5.23, 0.005),
    "8.0e-05" → (8e-05, 5e-07), "1.2k" → (1200, 50)."""
    mant = m["mant"].replace(",", "")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    exp = int(m["exp"] or 0)
    scale = _SUFFIX_SCALE.get(m["suffix"] or "", 1.0)
    # decimal strings through float(): exact to the last bit, also for 1e-320-sized values
    return float(f"{mant}e{exp}") * scale, float(f"5e{exp - decimals - 1}") * scale


def _readings(m: re.Match[str]) -> list[tuple[float, float]]:
    """The values a written number may stand for: itself, and a ratio for a percentage."""
    value, tolerance = _reading(m)
    if m["suffix"] == "%":
        return [(value, tolerance), (value / 100.0, tolerance / 100.0)]
    return [(value, tolerance)]


class _Lines:
    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)


# -- citations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Citation:
    """A ``[[path]]`` or ``[[path:format]]`` as ``resolve`` rendered it: where it landed in the
    rendered text (``line`` 1-based, ``start``/``end`` offsets) and what it showed."""

    path: str
    format: str | None
    value: Any
    text: str
    line: int
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Citation:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


def _lookup(evidence: Any, path: str) -> tuple[bool, Any]:
    """(found, node) at a dotted path; list indices are numbers."""
    node = evidence
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _render(value: Any, spec: str | None) -> str:
    """A cited value as text: ``format(value, spec)``, else ``numbers.format_number`` (strings as
    they are). An integral float takes an integer spec (``,d``): JSON does not keep 30720 an int.

    Raises ValueError or TypeError when the spec does not apply to the value."""
    if not spec:
        return value if isinstance(value, str) else format_number(value)
    if isinstance(value, float) and value.is_integer() and spec[-1:] in ("d", "n", "b", "o", "x", "X"):
        value = int(value)
    return format(value, spec)


def _suggest(path: str, evidence: Mapping[str, Any]) -> str:
    """The nearest valid paths to a wrong one, or some values of a group."""
    found, node = _lookup(evidence, path)
    if found:
        inner = [".".join((path, *p)) for p, _ in leaves(node)]
        return f"; it holds {', '.join(inner[:4])}{', ...' if len(inner) > 4 else ''}" if inner else ""
    close = difflib.get_close_matches(path, paths(evidence), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def resolve(source: str, evidence: Mapping[str, Any], *, version: str | None = None) -> tuple[str, list[Citation]]:
    """Replace each ``[[path]]`` / ``[[path:format]]`` outside code by its value, formatted.

    ``format`` is a Python format spec (``.1%``, ``.3f``, ``,d``, ``+.2f``); without one the value
    is written by ``numbers.format_number``. Raises CitationError (one line: the line of
    ``source``, what is wrong, the nearest valid paths) for an unknown path, a group rather
    than a value, or a format that does not apply. ``version`` only words that error."""
    hint = f"(`exp context {version or 'VERSION'} --json` lists the evidence)"
    code = _Spans(_code_spans(source))
    lines = _Lines(source)
    out: list[str] = []
    citations: list[Citation] = []
    pos = length = newlines = 0
    for m in _CITATION.finditer(source):
        if code.overlaps(m.start(), m.end()):
            continue
        path, spec = m[1], (m[2].strip() or None) if m[2] is not None else None
        where = f"line {lines.of(m.start())}: {m[0]}"
        found, value = _lookup(evidence, path)
        if not found:
            raise CitationError(f"{where} is not in the evidence{_suggest(path, evidence)} {hint}")
        if not is_scalar(value):
            raise CitationError(f"{where} is a group, not one value{_suggest(path, evidence)} {hint}")
        try:
            text = _render(value, spec)
        except (ValueError, TypeError) as err:
            raise CitationError(f"{where}: {spec!r} is not a format for {value!r} ({err}); "
                                f"use a Python format spec such as .3f, .1%, ,d or +.2f") from None
        before = source[pos:m.start()]
        out.append(before)
        length += len(before)
        newlines += before.count("\n")
        citations.append(Citation(path, spec, value, text, newlines + 1, length, length + len(text)))
        out.append(text)
        length += len(text)
        newlines += text.count("\n")
        pos = m.end()
    out.append(source[pos:])
    return "".join(out), citations


# -- the check ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A number of the text the evidence does not vouch for: its line (1-based in the text),
    the number as written, and why."""

    line: int
    number: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verify(c: Citation, text: str, evidence: Mapping[str, Any], lines: _Lines) -> tuple[bool, Finding | None]:
    """(whether the citation's span still holds it, a finding if its value moved on).

    A span that no longer reads as rendered was edited since: the citation no longer vouches
    for it, and its numbers are checked as bare ones."""
    shown = text[c.start:c.end] if 0 <= c.start <= c.end <= len(text) else None
    if shown is None or shown != c.text:
        return False, None
    line = lines.of(c.start)
    found, value = _lookup(evidence, c.path)
    if not found or not is_scalar(value):
        return True, Finding(line, shown, f"cited {c.path} is no longer in the evidence: run exp fill again")
    try:
        now = _render(value, c.format)
    except (ValueError, TypeError):
        return True, Finding(line, shown, f"cited {c.path} = {value!r} no longer takes the format {c.format!r}: "
                                          "run exp fill again")
    if now != shown:
        return True, Finding(line, shown, f"cited {c.path} now reads {now}, the text shows {shown}: run exp fill again")
    return True, None


def check(text: str, evidence: Mapping[str, Any], citations: Iterable[Citation | Mapping[str, Any]] = (),
          human: Mapping[str, str] | None = None, index: Index | None = None) -> list[Finding]:
    """The numbers of ``text`` that the evidence does not vouch for, in text order.

    ``citations``: ``resolve``'s (or their ``to_dict()``), with offsets in ``text``; each must
    still render as it reads. Every other number must match, at the precision written, a leaf
    that its clause names (see the module docstring). ``human``: the human sections
    {name: text}, whose verbatim quotations are exempt. ``index``: ``Index(evidence)`` when the
    caller checks several texts against one evidence (building it is most of a check's cost)."""
    lines = _Lines(text)
    findings: list[tuple[int, Finding]] = []
    exempt = _code_spans(text)
    for c in citations:
        c = c if isinstance(c, Citation) else Citation.from_dict(c)
        holds, finding = _verify(c, text, evidence, lines)
        if holds:
            exempt.append((c.start, c.end))
        if finding:
            findings.append((c.start, finding))
    for m in _unresolved(text, _Spans(exempt)):
        findings.append((m.start(), Finding(lines.of(m.start()), m[0], "an unresolved citation: write the text with "
                                                                       "exp fill, which puts in the value")))
        exempt.append(m.span())
    exempt += [m.span() for m in _EXEMPT.finditer(text)]
    exempt += [m.span() for m in _LIST_NUMBER.finditer(text)]
    exempt += _human_quotes(text, human)
    skip = _Spans(exempt)
    numbers = list(_NUMBER.finditer(text))
    bare = [m for m in numbers if not skip.overlaps(m.start(), m.end())]
    if bare:
        findings += [(m.start(), f) for m, f in _unnamed(text, numbers, bare, index or Index(evidence), lines)]
    return [f for _, f in sorted(findings, key=lambda x: x[0])]


def _unresolved(text: str, code: _Spans) -> list[re.Match[str]]:
    """``[[...]]`` left in a text outside code: written past ``exp fill``."""
    return [m for m in _CITATION.finditer(text) if not code.overlaps(m.start(), m.end())]


def _unnamed(text: str, numbers: list[re.Match[str]], bare: list[re.Match[str]], index: Index,
             lines: _Lines) -> list[tuple[re.Match[str], Finding]]:
    """The bare numbers that no leaf named in their clause matches, with the reason."""
    clause_ends = [m.start() for m in _CLAUSE_END.finditer(text)]
    named = _named_per_clause(text, numbers, index, clause_ends)
    headers = _table_headers(text)
    mentioned_in: dict[int, set[str]] = {}  # by clause, with a table row's header
    groups_of: dict[int, list[_Sorted]] = {}  # the groups a clause names, looked up once per clause
    out = []
    for m in bare:
        clause = bisect.bisect_right(clause_ends, m.start())
        if clause not in groups_of:
            names = set(named.get(clause, ()))
            header = headers.get(lines.of(m.start()))
            if header is not None:
                first, last = (bisect.bisect_right(clause_ends, at) for at in header)
                names.update(*(named.get(c, ()) for c in range(first, last + 1)))
            mentioned_in[clause], groups_of[clause] = names, index.named(names)
        groups = groups_of[clause]
        if not any(g.has(w, tol) for w, tol in _readings(m) for g in groups):
            why = _why(m, index, groups, mentioned_in[clause])
            out.append((m, Finding(lines.of(m.start()), m[0], why)))
    return out


def _table_headers(text: str) -> dict[int, tuple[int, int]]:
    """For each body row of a markdown table (lines starting with "|"), by its line number, the
    [start, end) of the table's first row: a cell's quantity is named in its column's header."""
    out = {}
    header: tuple[int, int] | None = None
    pos = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.lstrip().startswith("|"):
            header = None
        elif header is None:
            header = (pos, pos + len(line))
        else:
            out[number] = header
        pos += len(line) + 1
    return out


def _named_per_clause(text: str, numbers: list[re.Match[str]], index: Index,
                      clause_ends: list[int]) -> dict[int, set[str]]:
    """The names each clause mentions. Numbers are blanked first so that a unit written onto
    one ("596.9MB", "1.5x") is a word of its own."""
    chars = list(_lower(text))
    for m in numbers:
        end = m.end("exp") if m["exp"] is not None else m.end("mant")
        chars[m.start():end] = " " * (end - m.start())
    out: dict[int, set[str]] = {}
    for start, _, name in _mentions("".join(chars), index.by_name):
        out.setdefault(bisect.bisect_right(clause_ends, start), set()).add(name)
    return out


#: Keys whose values are ratios: a percentage is compared with these first in a finding's hint.
_RATIO_KEY = re.compile(r"(?:^|\.)(?:rel|ratio|\w+_ratio|\w+_rate|mfu|distinct_\d)$")


def _why(m: re.Match[str], index: Index, groups: list[_Sorted], mentioned: set[str]) -> str:
    """Why a number is not vouched for: what it matches that the clause does not name, or that
    nothing matches; and what the clause does name nearest to it."""
    written = m[0]
    matches = list({leaf.path: leaf for w, tol in _readings(m) for leaf in index.everything.within(w, tol)}.values())
    if matches:
        shown = ", ".join(f"{leaf.path} ({format_number(leaf.value)})" for leaf in matches[:2])
        more = f" and {len(matches) - 2} more" if len(matches) > 2 else ""
        reason = f"{written} matches {shown}{more}, which this sentence does not name"
    else:
        reason = f"no value of the evidence rounds to {written}"
    near = _nearest(m, groups, mentioned)
    if near is None:
        return reason + "; name the quantity next to the number, or cite it as [[path]]"
    as_percent = m["suffix"] == "%" and _RATIO_KEY.search(near.path)
    value = format_percent(near.value) if as_percent else format_number(near.value)
    return f"{reason}; the sentence names {near.path} = {value}"


def _nearest(m: re.Match[str], groups: Sequence[_Sorted], mentioned: set[str]) -> _Leaf | None:
    """The named leaf the writer most likely meant: for a percentage or a factor ("3x") a
    ratio-valued one first; then the one the clause names most ("val loss ... the parent" is
    the parent's val_loss delta more than its throughput delta); then the closest by ratio;
    then the shorter path."""
    best: tuple[tuple[bool, int, float, int], _Leaf] | None = None
    ratio_like = m["suffix"] in ("%", "x", "×")
    for w, _ in _readings(m):
        for g in groups:
            for leaf in g.nearest(w):
                v = abs(float(leaf.value))
                distance = abs(math.log(v / abs(w))) if v and w else (0.0 if v == abs(w) else math.inf)
                key = (ratio_like and not _RATIO_KEY.search(leaf.path), -len(leaf.names & mentioned), distance,
                       len(leaf.path))
                if best is None or key < best[0]:
                    best = (key, leaf)
    return None if best is None else best[1]
