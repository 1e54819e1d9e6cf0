"""The site's pages as HTML text: the index, a record, the compare page (``exp site``).

Layer 3 (pure computation on the data handed in, plus the files it is handed: a run's
``metrics.jsonl`` thinned into curves, and the ``curves.json`` ``exp analyze`` keeps of them,
whose text is made here too). The service ``expkit.site`` reads the workspace and
writes the files. Templates are Jinja with autoescape on: every value from a record is text
unless it went through ``markdown_html``, which renders markdown with raw HTML disabled,
images off (an image would be a request) and links limited to http(s), mailto and relative
targets. jinja2 and markdown_it are imported inside the functions that need them (the CLI's
start-up must not pay for them).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .intervals import t_interval
from .metrics import SUMMARY_KEYS
from .numbers import format_number, is_finite_number
from .report import PRETRAIN, lineage
from .verdicts import VERDICTS, verdict_kind

#: What the pages say, in the workspace's language (en, zh).
STRINGS: dict[str, tuple[str, str]] = {
    "home": ("Experiments", "实验"), "compare": ("Compare", "对比"), "footer": ("built by exp site — static, offline", "由 exp site 生成——静态、离线"),
    "index_title": ("Experiments", "实验总览"), "records": ("Records", "实验记录"), "search": ("filter: version, description, parent…", "筛选：版本、描述、父实验…"),
    "status": ("status", "状态"), "task": ("task", "任务"), "all_status": ("every status", "全部状态"), "all_tasks": ("every task", "全部任务"),
    "compare_selected": ("compare selected", "对比所选"), "no_records": ("No records yet: `exp new 0.1.0`.", "还没有实验记录：`exp new 0.1.0`。"),
    "pick": ("select", "选择"), "best": ("best of its task in the workspace", "工作区内同任务最佳"), "lineage": ("Lineage", "谱系"), "groups": ("Groups", "实验组"),
    "version": ("version", "版本"), "description": ("description", "描述"), "parent": ("parent", "父实验"), "verdicts": ("verdicts", "预期检验"),
    "review": ("review", "审核"), "date": ("date", "日期"), "baseline": ("baseline", "基线"), "children": ("children", "子实验"),
    "created": ("created", "创建时间"), "commit": ("commit", "提交"), "experiment": ("Experiment", "实验"),
    "no_description": ("(no description)", "（无描述）"), "compare_with_parent": ("compare with the parent", "与父实验对比"),
    "curves": ("Curves", "曲线"), "claim": ("expected result", "预期"), "verdict": ("verdict", "结论"), "observed": ("observed", "实际值"),
    "reference": ("reference", "阈值"), "reason": ("reason", "原因"), "partial": ("partial analysis: the run did not finish", "部分分析：运行未完成"),
    "anomalies": ("Anomalies", "异常"), "no_anomalies": ("none found", "未发现异常"), "step": ("step", "步"),
    "metrics": ("Metrics", "指标"), "config_diff_parent": ("Config changed from", "相对父实验的配置改动："), "key": ("key", "参数"),
    "samples": ("Samples", "生成样本"), "record_text": ("The record", "实验记录全文"), "review_history": ("Review history", "审核记录"),
    "files": ("Run files", "运行文件"), "config_diff": ("Config: only the keys that differ", "配置：仅不同的参数"),
    "compare_hint": ("Pick two or more records on the index and press “compare selected”; the address keeps the selection (compare.html?v=1.0.0,1.0.1).",
                     "在总览页勾选两个或更多实验并点“对比所选”；网址记录所选内容（compare.html?v=1.0.0,1.0.1）。"),
    "noscript_compare": ("The comparison is drawn by JavaScript; `exp compare V1 V2` prints it in a terminal.", "对比由 JavaScript 绘制；终端里可用 `exp compare V1 V2`。"),
    "missing": ("not in this site:", "站点中没有："), "same_config": ("the configs are the same", "配置完全相同"), "metric": ("metric", "指标"),
    "reset": ("reset zoom", "重置缩放"), "owner_human": ("human", "人类填写"), "owner_tool": ("tool", "工具生成"), "owner_ai": ("AI", "AI 完成"),
    "curve_note": ("the chart shows {points} of the log's lines, spread evenly (and every evaluation)", "图中均匀取日志中的 {points} 行（验证点全部保留）"),
    "broken": ("this record cannot be read:", "无法读取该记录："),
    "group": ("group", "实验组"), "group_title": ("Group", "实验组"), "group_page": ("the group's page", "实验组页面"),
    "members": ("Members", "组成员"), "member": ("member", "成员"), "swept": ("changes", "改动"), "replicates": ("n", "重复次数"),
    "group_chart": ("Swept value against metric (mean ± 95% CI over replicates)", "扫描值与指标（重复实验的均值 ± 95% 置信区间）"),
    "fold": ("members", "个成员"),
    "noscript_group": ("The chart is drawn by JavaScript; the table above holds every value.", "图由 JavaScript 绘制；上表列出了全部数值。"),
    "more": ("more rows", "更多"),
    "noscript_index": ("The table is drawn by JavaScript; the lineage beside it links every record.",
                       "表格由 JavaScript 绘制；旁边的谱系链接了每个实验。"),
}
#: The owner of each kind of section, as the page labels it.
OWNERS = {"human": "human", "generated": "tool", "ai": "ai"}
#: The index's metric columns of pretraining records (the first present in a row's table is
#: shown; one column each); another task's records show its key metrics (``index_columns``).
INDEX_METRICS = (("final_loss",), ("best_val_loss", "val_loss"), ("tokens_per_s",))
#: Points per curve at most: a thousand-pixel chart shows no more, and the page stays small.
CURVE_POINTS = 500
CURVE_SERIES = ("loss", "lr", "grad_norm")
#: Series every chart draws from its own fields; another task's curves are the rest of its ``Task.curves``.
CHART_SERIES = (*CURVE_SERIES, "val_loss")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def strings(lang: str) -> dict[str, str]:
    i = 1 if lang == "zh" else 0
    return {k: v[i] for k, v in STRINGS.items()}


# -- markdown ------------------------------------------------------------------------------------------
def _allowed_link(url: str) -> bool:
    """http(s), mailto, in-page and relative links; never javascript:, data:, file: or another scheme."""
    target = url.strip().lower()
    scheme = re.match(r"^([a-z][a-z0-9+.\-]*):", target)
    return scheme is None or scheme.group(1) in ("http", "https", "mailto")


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.disable("image")  # an image is fetched when the page opens: a request the reader did not ask for
    md.validateLink = _allowed_link
    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # a relative link in a record points from the record's folder; the page lives elsewhere
        href = tokens[idx].attrGet("href") or ""
        if env.get("base") and href and not re.match(r"^(?:[a-z][a-z0-9+.\-]*:|#|/)", href, re.I):
            tokens[idx].attrSet("href", env["base"] + href)
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_memo: dict[tuple[str, bool, str], str] = {}
_SEPARATOR = re.compile(r"^\|(?:\s*-{3,}\s*\|)+\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


#: Stands for the record's own version while its text is rendered (``markdown_html``'s ``version``):
#: a version's shape (digits and two dots), which no record's text holds.
_VERSION_MARK = "8642097531.8642097531.8642097531"


def markdown_html(text: str, tool_tables: bool = False, base: str = "", version: str = "") -> str:
    """``text`` (markdown) as HTML; raw HTML in it is shown as text. ``base``: put before each
    relative link (the way from the page to the folder the text's links are relative to).

    ``tool_tables``: the text is the tool's own (a generated section): its tables, written by
    expkit's templates in one form (``| a | b |`` rows under a ``|---|---|`` line, no alignment),
    are rendered row by row with each cell's inline markdown remembered. markdown-it-py spends
    ~10 ms on a 40-row parameter table, and a thousand records' tables repeat most of their
    cells; the HTML is the same as markdown-it's (tests/test_site.py checks it).

    ``version``: the record's own, which its tool-written text repeats (the title, the usage note,
    its run's paths): rendered in place of a mark of the same shape (digits and dots, which markdown
    reads as text wherever they stand), so a thousand records' texts that differ only in it are
    rendered once; used only when the mark comes out once for each version that went in."""
    if version and version in text and _VERSION_MARK not in text:
        n = text.count(version)
        html = markdown_html(text.replace(version, _VERSION_MARK), tool_tables, base)
        if html.count(_VERSION_MARK) == n:
            return html.replace(_VERSION_MARK, version)
    key = (text, tool_tables, base)
    hit = _memo.get(key)
    if hit is None:
        hit = _tool_markdown(text, base) if tool_tables else _markdown().render(text, {"base": base})
        if len(_memo) > 20000:
            _memo.clear()
        _memo[key] = hit
    return hit


def _tool_markdown(text: str, base: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            if prose:
                out.append(markdown_html("\n".join(prose), base=base))
                prose = []
            out.append(_table(lines[i], lines[i + 2: j], base))
            i = j
            continue
        prose.append(lines[i])
        i += 1
    if prose and "".join(prose).strip():
        out.append(markdown_html("\n".join(prose), base=base))
    return "".join(out)


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in _CELL_SPLIT.split(body)]


_inline_memo: dict[tuple[str, str], str] = {}


def _inline(text: str, base: str = "") -> str:
    hit = _inline_memo.get((text, base))
    if hit is None:
        hit = _inline_memo[(text, base)] = _markdown().renderInline(text.replace("\\|", "|"), {"base": base})
    return hit


_row_memo: dict[tuple[str, int, str], str] = {}


def _table(head: str, rows: list[str], base: str = "") -> str:
    names = _cells(head)
    out = ["<table>\n<thead>\n<tr>\n", *(f"<th>{_inline(c, base)}</th>\n" for c in names), "</tr>\n</thead>\n"]
    if rows:
        out.append("<tbody>\n")
        width = len(names)
        for row in rows:  # a row as a whole remembered too: most rows of a thousand records' tables repeat
            key = (row, width, base)
            html = _row_memo.get(key)
            if html is None:
                cells = (_cells(row) + [""] * width)[:width]
                html = "".join(["<tr>\n", *(f"<td>{_inline(c, base)}</td>\n" for c in cells), "</tr>\n"])
                if len(_row_memo) > 50000:
                    _row_memo.clear()
                _row_memo[key] = html
            out.append(html)
        out.append("</tbody>\n")
    out.append("</table>\n")
    return "".join(out)


# -- curves --------------------------------------------------------------------------------------------
class _Number(str):
    """A JSON number as written in the file (curves_json copies it instead of parsing and
    printing it again: 2,000 floats printed cost more than thinning the file)."""


def _finite(value: Any) -> bool:
    """A finite number as json.loads gives it: an int, a float (v - v is 0 only when finite),
    or a _Number (a literal is finite unless its exponent overflows)."""
    t = type(value)
    if t is _Number:
        return not ("e" in value or "E" in value) or math.isfinite(float(value))
    return t is int or (t is float and value - value == 0)


def _row(line: bytes, parse_float: Any = float) -> dict[str, Any] | None:
    try:
        row = json.loads(line, parse_float=parse_float)
    except ValueError:  # a torn line
        return None
    return row if isinstance(row, dict) and _finite(row.get("step")) else None


def curves(path: Path, max_points: int = CURVE_POINTS, series: Sequence[str] = ()) -> dict[str, Any] | None:
    """The training and validation curves of a ``metrics.jsonl``: every evaluation line, and of
    the other lines every one when there are at most ``max_points``, else about ``max_points``
    spread evenly through the file (the first and the last always). ``points``: the training
    points kept; ``thinned``: whether lines were left out. Only the lines kept are parsed, and
    a large file is not split into lines at all: a 10,000-line file costs ~2 ms, not ~40.
    Non-finite values become None (a gap in the line); a torn last line is skipped. None when
    the file is missing or has no line with a step.

    ``series``: more metrics to draw (another task's curves, e.g. ``val_acc``), each under
    ``series[NAME] = {"x": steps, "y": values}`` from the lines that hold it (about
    ``max_points`` of them, spread evenly); none asked for, none written (pretraining's curves
    are as they were)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return _thin(raw, max_points, float, series)


def curves_json(path: Path, max_points: int = CURVE_POINTS, series: Sequence[str] = ()) -> tuple[dict[str, Any] | None, str]:
    """``curves`` as JSON text (``"null"`` when there are none) and its ``points`` and ``thinned``
    (None when there are none): the numbers are copied as the file writes them, not printed
    again (json.loads(text) == curves(path))."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None, "null"
    out = _thin(raw, max_points, _Number, series)
    return (None, "null") if out is None else _curves_text(out)


def _curves_text(out: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``_thin``'s curves (numbers as ``_Number``) as JSON text, and their counts."""
    def text(values: list[Any]) -> str:
        return "[" + ",".join(["null" if v is None else v if type(v) is _Number else str(v) for v in values]) + "]"

    items = []
    for name, value in out.items():
        if isinstance(value, list):
            value = text(value)
        elif name == "series":
            value = "{" + ",".join(f'{json.dumps(k)}:{{"x":{text(xy["x"])},"y":{text(xy["y"])}}}' for k, xy in value.items()) + "}"
        else:
            value = json.dumps(value)
        items.append(f'"{name}":{value}')
    return {"points": out["points"], "thinned": out["thinned"]}, "{" + ",".join(items) + "}"


#: Below this size a metrics file is split into lines and every k-th kept (exact and cheap);
#: above it the lines kept are found by position, so 1.7 MB are never split into 10,000 lines.
SPLIT_BYTES = 128 * 1024


#: The layout of a run's ``curves.json`` (``curves_file_text``): bump when what it holds changes.
CURVES_FILE_FORMAT = 1


def drawn_series(task: Any) -> tuple[str, ...]:
    """The curves a record page draws beyond pretraining's, for a record of ``task`` (a
    ``tasks.Task`` or None): its ``curves`` the chart does not draw from its own fields; none for
    pretraining (its pages stay as they were)."""
    if task is None or task.name == PRETRAIN:
        return ()
    return tuple(c for c in task.curves if c not in CHART_SERIES)


def curves_file_text(metrics: Path, series: Sequence[str] = (), max_points: int = CURVE_POINTS) -> str | None:
    """A run's thinned curves as ``exp analyze`` keeps them in the run's ``curves.json`` (None
    when ``metrics`` cannot be read): the size and mtime of the metrics file they were thinned
    from (taken before it is read: a file that grows meanwhile no longer matches), the thinning's
    parameters, ``curves_json``'s counts and, last, its text as it is (``read_curves_file``
    copies it without parsing it)."""
    try:
        with open(metrics, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read()
    except OSError:
        return None
    out = _thin(raw, max_points, _Number, series)
    counts, text = (None, "null") if out is None else _curves_text(out)
    head = {"format": CURVES_FILE_FORMAT, "metrics": [st.st_size, st.st_mtime_ns], "max_points": max_points,
            "series": list(series), "counts": counts}
    return json.dumps(head, separators=(",", ":"))[:-1] + f',"curves":{text}}}\n'


def read_curves_file(path: str | Path, metrics: os.stat_result, series: Sequence[str] = (),
                     max_points: int = CURVE_POINTS) -> tuple[dict[str, Any] | None, str] | None:
    """``curves_json``'s answer from a run's ``curves.json`` when it was thinned from the metrics
    file as ``metrics`` (its ``os.stat``) finds it now, with these parameters; else None (a
    missing, older, damaged or foreign file: the caller thins the metrics file itself)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    head, _, curves = text.rpartition(',"curves":')
    if not head or not curves.endswith("}\n"):
        return None
    curves = curves[:-2]
    try:
        meta = json.loads(head + "}")
    except ValueError:
        return None
    if not (isinstance(meta, dict) and meta.get("format") == CURVES_FILE_FORMAT
            and meta.get("metrics") == [metrics.st_size, metrics.st_mtime_ns] and meta.get("max_points") == max_points
            and meta.get("series") == list(series) and is_curves_json(curves)):
        return None
    counts = meta.get("counts")
    if curves == "null":
        return (None, "null") if counts is None else None
    if not (isinstance(counts, dict) and isinstance(counts.get("points"), int) and isinstance(counts.get("thinned"), bool)):
        return None
    return {"points": counts["points"], "thinned": counts["thinned"]}, curves


def _pick(raw: bytes, max_points: int) -> tuple[list[bytes], bool]:
    """The lines of ``raw`` a chart keeps (see ``curves``), and whether any was left out."""
    end = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
    if end <= 0:
        return [], False
    if end <= SPLIT_BYTES:
        lines = raw[:end].split(b"\n")
        n = len(lines)
        stride = max(1, math.ceil(n / max_points))
        picked = lines[::stride]
        if (n - 1) % stride:
            picked.append(lines[n - 1])  # the last line, always
        return picked, stride > 1
    find, picked, last, after, skipped = raw.find, [], -1, 0, False
    for i in range(max_points - 1):
        start = find(b"\n", i * end // max_points, end) + 1 if i else 0
        if i and start <= last:
            continue  # no line starts in this stretch (lines longer than the spacing), or the last one is next
        stop = find(b"\n", start, end)
        stop = stop if stop >= 0 else end
        picked.append(raw[start:stop])
        skipped = skipped or start > after  # a line between this one and the one kept before
        last, after = start, stop + 1
    start = raw.rfind(b"\n", 0, end) + 1  # the last line, always
    if start > last:
        picked.append(raw[start:end])
        skipped = skipped or start > after
    return picked, skipped


def _thin(raw: bytes, max_points: int, parse_float: Any, series: Sequence[str] = ()) -> dict[str, Any] | None:
    picked, thinned = _pick(raw, max_points)
    if not picked:
        return None
    out: dict[str, Any] = {"step": [], **{k: [] for k in CURVE_SERIES}, "val_step": [], "val_loss": []}
    try:  # one parse of the kept lines as an array: ~10x faster than a parse per line
        parsed = json.loads(b"[" + b",".join(picked) + b"]", parse_float=parse_float)
    except ValueError:  # a torn or damaged line: line by line, skipping it
        parsed = [_row(line, parse_float) for line in picked]
    # comprehensions, and the common value (a number as the file writes it, no exponent) tested
    # inline: a loop with a call per value cost as much as parsing the lines
    kept = [row for row in parsed if type(row) is dict and "loss" in row and _finite(row.get("step"))]
    out["step"] = steps = [s if type(s) is int else int(float(s)) for s in (row["step"] for row in kept)]
    for name in CURVE_SERIES:
        out[name] = [v if (type(v) is _Number and "e" not in v and "E" not in v) or type(v) is int or _finite(v) else None
                     for v in (row.get(name) for row in kept)]
    evals = [raw[start:end] for start, end in _lines_with(raw, b'"val_loss"')]
    try:  # all of them in one parse, as above
        parsed = json.loads(b"[" + b",".join(evals) + b"]", parse_float=parse_float)
    except ValueError:
        parsed = [_row(line, parse_float) for line in evals]
    for row in parsed:
        if type(row) is dict and _finite(row.get("step")) and "val_loss" in row:
            step = row["step"]
            out["val_step"].append(int(float(step)) if type(step) is _Number else int(step))
            out["val_loss"].append(row["val_loss"] if _finite(row["val_loss"]) else None)
    extra = _series(raw, [n for n in dict.fromkeys(series) if n not in CHART_SERIES], max_points, parse_float)
    if not out["step"] and not out["val_step"] and not extra:
        return None
    for name in CURVE_SERIES:  # a series the trainer never logged is left out
        if all(v is None for v in out[name]):
            del out[name]
    if extra:
        out["series"] = extra
    out["points"], out["thinned"] = len(steps), thinned
    return out


def _series(raw: bytes, names: Sequence[str], max_points: int, parse_float: Any) -> dict[str, dict[str, list[Any]]]:
    """{name: {"x": steps, "y": values}} of each named metric from the lines that hold it, about
    ``max_points`` lines of each (spread evenly, the first and the last always); a metric no line
    holds is left out."""
    out: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        found = _lines_with(raw, json.dumps(name).encode())
        if len(found) > max_points:
            stride = math.ceil(len(found) / max_points)
            found = found[::stride] + ([found[-1]] if (len(found) - 1) % stride else [])
        xs: list[Any] = []
        ys: list[Any] = []
        for start, end in found:
            row = _row(raw[start:end], parse_float)
            if row is None or name not in row:
                continue
            step = row["step"]
            xs.append(int(float(step)) if type(step) is _Number else int(step))
            ys.append(row[name] if _finite(row[name]) else None)
        if any(v is not None for v in ys):
            out[name] = {"x": xs, "y": ys}
    return out


def _lines_with(raw: bytes, needle: bytes) -> list[tuple[int, int]]:
    """(start, end) of each line of ``raw`` that holds ``needle``, found without parsing the lines
    between them. A search for the needle's first letter that is not a quote (``v``) is a memchr,
    ten times the speed of a search for the whole needle, and a trainer's lines hold few of it
    (its keys are step, loss, lr, grad_norm, tokens…); past 64 misses the whole needle is searched."""
    out: list[tuple[int, int]] = []
    first = needle[1:2] if needle[:1] == b'"' else needle[:1]
    lead = needle.index(first)
    size, misses, at = len(raw), 0, 0
    while True:
        if misses < 64:
            at = raw.find(first, at)
            if at < 0:
                break
            if at < lead or not raw.startswith(needle, at - lead):
                misses += 1
                at += 1
                continue
            at -= lead
        else:
            at = raw.find(needle, at)
            if at < 0:
                break
        start, end = raw.rfind(b"\n", 0, at) + 1, raw.find(b"\n", at)
        end = end if end >= 0 else size
        out.append((start, end))
        at = end
    return out


# -- values as the pages show them ---------------------------------------------------------------------
def shown(value: Any) -> str:
    """A value for a cell: numbers compactly, a replicated metric as mean ± half-width, None as —."""
    if value is None:
        return "—"
    if isinstance(value, Mapping) and is_finite_number(value.get("mean")):
        half = value.get("ci") if is_finite_number(value.get("ci")) else value.get("half_width")
        return format_number(value["mean"]) + (f" ± {format_number(half)}" if is_finite_number(half) else "")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _sort_value(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("mean")
    return repr(float(value)) if is_finite_number(value) else ""


def version_order(version: str) -> str:
    """A version as a string that sorts like the version (1.10.0 after 1.9.0)."""
    parts = str(version).split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return ".".join(p.zfill(6) for p in parts)
    return "~" + str(version)


def review_state(meta: Mapping[str, Any]) -> str:
    """The review in a few words: approved (round, reviewer), changes requested, approval stale, or ""."""
    review = meta.get("review") if isinstance(meta.get("review"), Mapping) else {}
    if isinstance(review.get("approved"), Mapping):
        a = review["approved"]
        return f"approved r{a.get('round', '?')} {a.get('reviewer') or ''}".strip()
    if isinstance(review.get("stale"), Mapping):
        return "approval stale"
    history = review.get("history") if isinstance(review.get("history"), list) else []
    if history and isinstance(history[-1], Mapping):
        return {"changes": "changes requested", "approve": "approved"}.get(str(history[-1].get("decision")), str(history[-1].get("decision")))
    return ""


# -- the index ----------------------------------------------------------------------------------------
def replicate_stats(tables: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: {"mean", "ci", "n"}} over a record's per-replicate tables (``catalog.replicate_tables``):
    the mean and the half-width of its 95% Student t interval (None for one value)."""
    names: dict[str, None] = {}
    for t in tables:
        names.update(dict.fromkeys(k for k, v in t.items() if is_finite_number(v)))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [t[name] for t in tables if is_finite_number(t.get(name))]
        if len(values) >= 2:
            interval = t_interval(values)
            out[name] = {"mean": interval.mean, "ci": interval.half, "n": len(values)}
        elif values:
            out[name] = {"mean": values[0], "ci": None, "n": 1}
    return out


def _metric(table: Mapping[str, Any], stats: Mapping[str, Any], names: Sequence[str]) -> tuple[str, Any]:
    """The first of ``names`` a record has, as its index cell shows it: mean ± CI when replicated."""
    for n in names:
        st = stats.get(n)
        if isinstance(st, Mapping) and (st.get("n") or 0) >= 2:
            return n, st
        if table.get(n) is not None:
            return n, table[n]
    return names[0], None


def index_columns(tasks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The index's metric columns for the records' tasks (``tasks``: name -> its ``Task``, or None
    when its declaration cannot be read): pretraining's INDEX_METRICS (also the columns of a task
    that cannot be read, and of an empty workspace), then each other task's key metrics; a column
    names the tasks whose records fill it. {"key", "label", "names", "tasks"}."""
    generic = sorted(name for name, task in tasks.items() if task is None or task.name == PRETRAIN)
    out: list[dict[str, Any]] = []
    if generic or not tasks:
        out = [{"key": names[0], "label": " / ".join(names), "names": names, "tasks": generic or [PRETRAIN]}
               for names in INDEX_METRICS]
    for name in sorted(n for n in tasks if n not in generic):
        for metric in tasks[name].key_metrics:
            col = next((c for c in out if c["key"] == metric), None)
            if col is None:
                out.append({"key": metric, "label": metric, "names": (metric,), "tasks": [name]})
            elif name not in col["tasks"]:
                col["tasks"].append(name)
    return out


def index_rows(rows: Sequence[Mapping[str, Any]], flat: Sequence[Mapping[str, Any]], extras: Mapping[str, Mapping[str, Any]],
               best: Iterable[str], members: Mapping[str, Sequence[str]] | None = None,
               columns: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The index's rows: ``rows`` from ``catalog.rows`` (its order), ``flat`` the same records as
    ``report.report_rows`` gives them (metrics and verdict counts), ``extras`` what only the
    record's state knows (task, review, date, group, replicate statistics) by version, ``best``
    the versions marked best, ``members`` each group parent's members (folded under it),
    ``columns`` the metric columns (``index_columns``; default pretraining's): a row fills those
    of its own task and shows — in the others."""
    columns = columns if columns is not None else index_columns({})
    by_version = {r["version"]: r for r in flat}
    versions = {str(r["version"]) for r in rows}
    best = set(best)
    members = members or {}
    out = []
    for r in rows:
        v = str(r["version"])
        f = by_version.get(v, {})
        x = extras.get(v, {})
        table = r.get("metrics") or {}
        stats = x.get("stats") if isinstance(x.get("stats"), Mapping) else {}
        metrics = []
        task = str(x.get("task") or r.get("task") or PRETRAIN)
        for col in columns:
            value = _metric(table, stats, col["names"])[1] if task in col["tasks"] else None
            metrics.append({"text": shown(value), "sort": _sort_value(value)})
        verdicts = {k: f.get(k, 0) for k in VERDICTS} if r.get("verdicts") is not None else None
        parent = r.get("parent")
        desc = str(r.get("description") or "")
        group = x.get("group") if x.get("group") in members and v in members[str(x.get("group"))] else None
        swept = " ".join(f"{k}={shown(val)}" for k, val in (x.get("swept") or {}).items()) if group else ""
        out.append({
            "version": v, "order": version_order(v), "status": str(r.get("status") or "?"), "task": task,
            "description": desc, "parent": parent, "parent_link": bool(parent) and str(parent) in versions,
            "parent_order": version_order(parent) if parent else "", "metrics": metrics, "verdicts": verdicts,
            "verdict_sort": f"{verdicts['confirmed']:04d}{9999 - verdicts['refuted']:04d}" if verdicts else "",
            "review": x.get("review") or "—", "date": str(x.get("date") or ""), "best": v in best,
            "search": " ".join([v, desc, str(parent or ""), str(r.get("status") or ""), str(x.get("task") or ""), swept]).lower(),
            "group": group, "members": len(members.get(v, ())), "swept": swept,
        })
    return out


def tree_lines(tree: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``reporting.tree`` as a flat list with depths (iterative: a long chain must not recurse)."""
    out = []
    stack = [(n, 0) for n in reversed(tree)]
    while stack:
        n, depth = stack.pop()
        metric = n.get("metric")
        out.append({"version": n["version"], "status": n.get("status"), "best": bool(n.get("best")), "depth": min(depth, 8),
                    "metric": f"{metric['name']} {format_number(metric['value'])}" if metric else ""})
        stack += [(c, depth + 1) for c in reversed(n.get("children") or [])]
    return out


def children_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    return {p: [str(c["version"]) for c in cs] for p, cs in lineage(rows)[1].items()}


# -- rendering -----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def environment(templates_dir: Path) -> Any:
    """A Jinja environment over the site's templates: autoescape on, strict undefined."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def use_bytecode_cache(templates_dir: Path, folder: Path | None) -> None:
    """Keep the templates compiled in ``folder`` (jinja checks each against its source), so a new
    process does not compile them again (~0.2 s of every ``exp site``). A folder that cannot be
    read or written costs only the compiling."""
    import jinja2

    class Cache(jinja2.FileSystemBytecodeCache):
        def load_bytecode(self, bucket: Any) -> None:
            try:
                super().load_bytecode(bucket)
            except (OSError, ValueError, EOFError):
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError:
                pass

    environment(templates_dir).bytecode_cache = Cache(str(folder)) if folder is not None else None


def prepare(templates_dir: Path) -> None:
    """Compile the record page's template and make the markdown parser (before forking workers)."""
    environment(templates_dir).get_template("record.html.j2")
    _markdown()


def render(templates_dir: Path, name: str, **context: Any) -> str:
    return environment(templates_dir).get_template(name).render(**context)


def index_page(templates_dir: Path, lang: str, workspace: str, rows: list[dict[str, Any]], tree: list[dict[str, Any]],
               groups: list[dict[str, Any]], metric_columns: Sequence[Mapping[str, Any]] | None = None) -> str:
    t = strings(lang)
    metric_columns = metric_columns if metric_columns is not None else index_columns({})
    columns = [("version", t["version"], "str"), ("task", t["task"], "str"), ("status", t["status"], "str"),
               ("description", t["description"], "str"), ("parent", t["parent"], "str"),
               *((c["key"], c["label"], "num") for c in metric_columns),
               ("verdicts", t["verdicts"], "str"), ("review", t["review"], "str"), ("date", t["date"], "str")]
    return render(templates_dir, "index.html.j2", lang=lang, t=t, page="index", root="", workspace=workspace, rows=rows,
                  rows_json=index_json(rows, t), tree=tree, groups=groups, columns=columns,
                  statuses=sorted({r["status"] for r in rows}), tasks=sorted({r["task"] for r in rows}))


#: The fields of a row in the index's JSON, in order (site.js reads them by these names).
INDEX_FIELDS = ("version", "order", "status", "task", "description", "parent", "parent_link", "parent_order", "metrics",
                "verdicts", "verdict_sort", "review", "date", "best", "search", "group", "members", "swept")


def index_json(rows: Sequence[Mapping[str, Any]], t: Mapping[str, str]) -> str:
    """The index's rows as compact JSON for a ``<script type="application/json">`` element, which
    site.js turns into the table (with textContent only). A thousand rows as HTML were a
    megabyte the browser spent most of a second parsing; as arrays the page is half that.
    Safe inside the element (the template puts it there as it is): no ``<`` is left, so no
    ``</script`` nor ``<!--``; JSON.parse reads ``\\u003c`` back as ``<``."""
    out = []
    for r in rows:
        v = r["verdicts"]
        out.append([r["version"], r["order"], r["status"], r["task"], r["description"], r["parent"], r["parent_link"],
                    r["parent_order"], [[m["text"], m["sort"]] for m in r["metrics"]],
                    [v["confirmed"], v["refuted"], v["inconclusive"]] if v else None, r["verdict_sort"], r["review"],
                    r["date"], r["best"], r["search"], r.get("group"), r.get("members", 0), r.get("swept", "")])
    text = json.dumps({"fields": INDEX_FIELDS, "rows": out, "t": {k: t[k] for k in ("pick", "best", "fold", "group")}},
                      ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def group_data(parent: str, description: str, config: Mapping[str, Any], points: Sequence[Mapping[str, Any]],
               key_metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """What a group's page shows: ``parent`` (X.Y.0) with its ``config`` and ``description``;
    ``points``: the parent and each member as {"version", "status", "swept" (a member's changes,
    {} for the parent), "stats" (``replicate_stats``)}. Each member's row, the swept keys, and
    per point the swept value (the parent's own config value for the parent), mean and CI.
    ``key_metrics``: the group's task's metrics, shown first (default: the index's pretraining ones)."""
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.get("swept") or {} if k not in keys]
    metrics: list[str] = []
    first = [(m,) for m in key_metrics] if key_metrics else INDEX_METRICS
    for names in first:  # the task's (the index's) metrics first, then the rest in the summary's order
        metrics += [n for n in names if n not in metrics and any(n in (p.get("stats") or {}) for p in points)]
    metrics += [n for n in SUMMARY_KEYS if n not in metrics and any(n in (p.get("stats") or {}) for p in points)]
    rows = []
    for p in points:
        v = str(p["version"])
        swept = dict(p.get("swept") or {}) if v != parent else {k: config.get(k) for k in keys}
        stats = p.get("stats") or {}
        rows.append({"version": v, "status": str(p.get("status") or "?"), "parent": v == parent,
                     "swept": {k: swept.get(k) for k in keys},
                     "swept_text": " ".join(f"{k}={shown(swept.get(k))}" for k in keys),
                     "n": max([st.get("n") or 0 for st in stats.values() if isinstance(st, Mapping)] or [0]),
                     "cells": [shown(_metric({}, stats, (m,))[1]) for m in metrics[:3]],
                     "stats": {m: {"mean": stats[m]["mean"], "ci": stats[m].get("ci")} for m in metrics if m in stats}})
    return {"parent": parent, "description": description, "keys": keys, "metrics": metrics, "rows": rows}


def group_page(templates_dir: Path, lang: str, workspace: str, group: Mapping[str, Any]) -> str:
    t = strings(lang)
    data = {"keys": group["keys"], "metrics": group["metrics"],
            "points": [{"version": r["version"], "parent": r["parent"], "x": r["swept"], "stats": r["stats"]} for r in group["rows"]],
            "t": {k: t[k] for k in ("key", "metric", "reset")}}
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return render(templates_dir, "group.html.j2", lang=lang, t=t, page="group", root="../", workspace=workspace, g=group,
                  group_json=text)


def compare_page(templates_dir: Path, lang: str, workspace: str) -> str:
    t = strings(lang)
    js = {k: t[k] for k in ("key", "metric", "missing", "same_config", "reset")}
    js["summary_keys"] = list(SUMMARY_KEYS)
    return render(templates_dir, "compare.html.j2", lang=lang, t=t, page="compare", root="", workspace=workspace,
                  strings=json.dumps(js, ensure_ascii=False))


def record_parts(parts: Sequence[Any], lang: str, base: str = "", version: str = "") -> list[dict[str, Any]]:
    """A record's body, in order: the text between sections (headings; template hints dropped)
    and each section with its owner. ``parts``: ``Record.parts`` (strings and blocks); ``base``:
    the way from the page to the record's folder (its relative links start there); ``version``:
    the record's (``markdown_html``)."""
    t = strings(lang)
    out = []
    for p in parts:
        if isinstance(p, str):
            text = "\n".join(line for line in p.replace("\r\n", "\n").split("\n") if not line.startswith("> 💡"))
            if text.strip():
                out.append({"owner": None, "html": markdown_html(text, base=base, version=version)})
            continue
        owner = OWNERS.get(p.kind, p.kind)
        out.append({"owner": owner, "owner_label": t.get(f"owner_{owner}", owner), "kind": p.kind, "name": p.name,
                    "html": markdown_html(p.text, tool_tables=p.kind == "generated", base=base, version=version)})
    return out


def record_page(templates_dir: Path, lang: str, workspace: str, data: Mapping[str, Any]) -> str:
    return render(templates_dir, "record.html.j2", lang=lang, t=strings(lang), page="record", root="../",
                  workspace=workspace, r=data)


class RawJSON(str):
    """JSON text already made (a record's cached curves): ``record_script`` puts it in as it is,
    after checking it holds only what curves' JSON holds (names, numbers, null, brackets, commas,
    colons, quotes): no call, assignment, ``<`` or space can reach the script that way."""


_RAW_JSON = re.compile(r"[{\[][\[\]{}\",:0-9A-Za-z_.+\-]*[}\]]|null")


def is_curves_json(text: str) -> bool:
    """Whether ``text`` may go into a data script as ``RawJSON`` (see there)."""
    return bool(_RAW_JSON.fullmatch(text))


def record_script(version: str, data: Mapping[str, Any]) -> str:
    """``r/VERSION.data.js``: the record's config, metrics and curves for its chart and the compare page.
    A script, not JSON: a page opened from file:// may load a script but not fetch a file.
    A value given as ``RawJSON`` is checked to be JSON and put in as it is."""
    if not VERSION_RE.match(version):
        raise ValueError(f"not a version: {version!r}")
    raw = {k: v for k, v in data.items() if isinstance(v, RawJSON)}
    for k, v in raw.items():
        if not _RAW_JSON.fullmatch(v):
            raise ValueError(f"{k} is not the JSON of curves")
    text = json.dumps({k: v for k, v in data.items() if k not in raw}, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if raw:
        text = text[:-1] + "".join(f",{json.dumps(k)}:{v}" for k, v in raw.items()) + "}"
        text = "{" + text[2:] if text.startswith("{,") else text
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'(window.EXP_RECORDS = window.EXP_RECORDS || {{}})["{version}"] = {text};\n'


def verdict_rows(verdicts: Sequence[Any], lang: str) -> list[dict[str, str]]:
    marks = {"confirmed": ("✓", "ok"), "refuted": ("✗", "no"), "inconclusive": ("?", "q")}
    out = []
    for x in verdicts:
        if not isinstance(x, Mapping):
            continue
        mark, badge = marks.get(verdict_kind(str(x.get("verdict"))), ("?", "q"))
        out.append({"claim": str(x.get("claim") or ""), "verdict": str(x.get("verdict") or ""), "mark": mark, "badge": badge,
                    "label": str(x.get("label") or x.get("verdict") or ""), "observed": shown(x.get("observed")),
                    "reference": shown(x.get("reference")), "reason": str(x.get("reason") or "")})
    return out


def json_safe_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in config.items()}
