"""``exp site``: the workspace as a static web site, rebuilt page by page; ``--serve`` serves it.

The site (``out/site/`` by default) is derived data: ``index.html`` (every record, sortable
and filterable, the lineage beside it), ``compare.html`` (any selection, in its address),
``r/VERSION.html`` (a record) with ``r/VERSION.data.js`` (its config, metrics and curves for
the charts), ``assets/`` (our stylesheet and scripts, from ``templates/site/``). Nothing is
fetched: every page works opened from ``file://``. A record's run files and PNG are linked
where they lie in the workspace (relative links), not copied.

Incremental: ``.manifest.json`` in the site keeps, per page, a hash of its inputs — the
sizes and mtimes of the record's markdown and state, of its run's files, of its parent's
record (the config diff) and its children's names, and the templates' contents. A page
whose hash is unchanged is not rendered again; the index is rendered when any row changed.

Cached (``out/.cache/site/r/VERSION.json``): a record's thinned curves under its metrics file's
size, mtime and inode, and its rendered markdown under a hash of the text itself; so a page
rendered again (a new template, another ``--out``, the site folder removed) reads neither its
10,000-line metrics file nor markdown-it again, and a changed input is never answered from the
cache.

Layer 4: reads records through ``records``, ``catalog`` and ``reporting``; HTML comes from
``pages`` (layer 3); every file is written by ``files.atomic_write`` (not synced: a crash
costs a rebuild, and a thousand syncs cost seconds).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import catalog, commit, pages, records, reporting, store
from .errors import ExpError, RecordError, UsageError, WorkspaceError
from .files import atomic_write, read_json
from .names import METRICS_FILE, SAMPLES_FILE
from .report import report_rows
from .version import Version
from .workspace import Workspace, package_templates_dir

MANIFEST = ".manifest.json"
#: Bump when what a page holds changes without its templates changing (pages.py, this module).
LAYOUT = 2
#: Bump when what the per-record cache holds changes (pages.curves, pages.record_parts).
RECORD_CACHE_LAYOUT = 1
#: Run files a record page links: everything at the top of the run directory but these.
HIDDEN_FILES = ("heartbeat",)
#: Samples shown on a record page, and characters of each.
MAX_SAMPLES, MAX_SAMPLE_CHARS = 24, 600


def default_dir(ws: Workspace) -> Path:
    return ws.out_root / "site"


def templates_dir(ws: Workspace) -> Path:
    """The workspace's ``templates/site/`` (a lab may restyle its site), else the one expkit ships."""
    local = ws.root / "templates" / "site"
    return local if (local / "index.html.j2").is_file() else package_templates_dir() / "site"


def _stat(path: Path | str) -> list[int]:
    try:
        st = os.stat(path)
        return [st.st_mtime_ns, st.st_size]
    except OSError:
        return [0, 0]


def cache_dir(ws: Workspace) -> Path:
    return ws.cache_dir() / "site"


def _run_files(ws: Workspace, version: str) -> list[tuple[str, int, int]]:
    """(path under the run directory, size, mtime) of the run's files and its plots."""
    return _run_files_at(f"{ws.out_root}/experiment_{version}")


def _run_files_at(root: str) -> list[tuple[str, int, int]]:
    out = []
    for sub in ("", "plots"):
        try:
            entries = list(os.scandir(f"{root}/{sub}" if sub else root))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") or e.name in HIDDEN_FILES:
                continue
            try:
                if e.is_file():
                    st = e.stat()
                    out.append((f"{sub}/{e.name}" if sub else e.name, st.st_size, st.st_mtime_ns))
            except OSError:
                continue
    return sorted(out)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _quick_hash(*parts: Any) -> str:
    """A hash of plain values (str, int, bool, None, lists and tuples of them): their repr, which
    is exact for these and a fifth of the cost of JSON with sorted keys (a thousand per build)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _cached(ws: Workspace, record: Any, v: str, lang: str, base: str) -> tuple[dict[str, Any] | None, str, list[dict[str, Any]]]:
    """(the run's curves' line count and stride, or None without curves; the curves as JSON text;
    the record's parts as HTML), from the cache when their inputs are the ones cached: the
    metrics file's size, mtime and inode (taken before it is read, so a file that grows
    meanwhile is read again next time), and the text of every part.

    The cache file is one JSON line (stamp, counts, parts) and then the curves' JSON text, kept
    as text: turning 2,000 floats into JSON again costs more than thinning the file did."""
    path = cache_dir(ws) / "r" / f"{v}.json"
    try:
        head_text, _, curves_text = path.read_text(encoding="utf-8").partition("\n")
        saved = json.loads(head_text)
    except (OSError, UnicodeDecodeError, ValueError):
        saved, curves_text = {}, ""
    saved = saved if isinstance(saved, dict) and saved.get("layout") == RECORD_CACHE_LAYOUT else {}
    metrics = f"{ws.out_root}/experiment_{v}/{METRICS_FILE}"
    try:
        st = os.stat(metrics)
        stamp: list[int] | None = [st.st_size, st.st_mtime_ns, st.st_ino, pages.CURVE_POINTS]
    except OSError:
        stamp = None
    counts = saved.get("counts")
    if not (stamp is not None and saved.get("stamp") == stamp and pages.is_curves_json(curves_text)
            and (counts is None or isinstance(counts, dict))):
        counts, curves_text = pages.curves_json(Path(metrics)) if stamp is not None else (None, "null")
    texts = [p if isinstance(p, str) else [p.kind, p.name, p.text] for p in record.parts]
    key = _quick_hash(lang, base, texts)
    parts = saved.get("parts") if saved.get("key") == key and isinstance(saved.get("parts"), list) else None
    if parts is None:
        parts = pages.record_parts(record.parts, lang, base)
    head = {"layout": RECORD_CACHE_LAYOUT, "stamp": stamp, "counts": counts, "key": key, "parts": parts}
    if head != saved:
        try:
            atomic_write(path, json.dumps(head, ensure_ascii=False, separators=(",", ":")) + "\n" + curves_text, durable=False)
        except OSError:
            pass  # a read-only out/: the page is still right, only slower next time
    return counts, curves_text, parts


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target, page_dir)).as_posix()


@functools.lru_cache(maxsize=64)
def _way(folder: str, page_dir: str) -> str:
    """The way from ``page_dir`` to ``folder`` (relpath once per folder, not once per link)."""
    return Path(os.path.relpath(folder, page_dir)).as_posix()


def _extras(meta: dict[str, Any]) -> dict[str, Any]:
    """What the index shows that ``catalog.rows`` does not keep: task, review, date."""
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    return {"task": meta.get("task") or "pretrain", "review": pages.review_state(meta),
            "date": str(run.get("ended") or run.get("started") or meta.get("created") or "")}


def _record_data(ws: Workspace, site: Path, row: dict[str, Any], children: list[str], versions: set[str],
                 files: list[tuple[str, int, int]], lang: str) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(the record page's context, its data script's content or None, its index extras)."""
    v = str(row["version"])
    page_dir = site / "r"
    t = pages.strings(lang)
    try:
        # read-only: the tool's state put over a stale editor save in memory, nothing written, no lock
        record = store.load(ws, Version.parse(v))
        records.reconcile(ws, record)
    except (RecordError, ExpError) as err:
        data = {"version": v, "status": "broken", "description": "", "error": f"{t['broken']} {err}", "parent": None,
                "baseline": None, "parent_link": False, "baseline_link": False, "children": children, "review": "",
                "created": "", "commit": "", "compare_parent": False, "has_curves": False, "plot": None, "curve_note": "",
                "verdicts": [], "partial": False, "analyzed": False, "anomalies": [], "metrics": [], "changes": [],
                "samples": [], "parts": [], "reviews": [], "files": []}
        return data, None, {"task": "", "review": "", "date": ""}
    meta = record.meta
    analysis = meta.get("analysis") if isinstance(meta.get("analysis"), dict) else {}
    table = catalog.run_table(ws, v, meta) or {}
    table = catalog.clean_table(table)
    curve, curves_text, parts = _cached(ws, record, v, lang, _way(str(ws.experiment_dir), str(page_dir)) + "/")
    names = {f[0]: f for f in files}
    plot = next((n for n in ("plots/loss.png",) if n in names), None)
    samples = []
    raw = read_json(ws.out_dir(v) / SAMPLES_FILE)
    for s in (raw.get("samples") if isinstance(raw, dict) else raw) or []:
        if isinstance(s, dict) and len(samples) < MAX_SAMPLES:
            samples.append({k: str(s.get(k) or "")[:MAX_SAMPLE_CHARS] for k in ("prompt", "mode", "completion")})
    changes = row.get("changes") if isinstance(row.get("changes"), dict) else {}
    review = meta.get("review") if isinstance(meta.get("review"), dict) else {}
    info_commit = commit.commit_info(ws, record) or {}
    parent, baseline = meta.get("parent"), meta.get("baseline")
    pd = str(page_dir)
    file_links = []
    for folder, name in ((ws.experiment_dir, f"experiment_{v}.md"), (ws.experiment_dir, f"experiment_{v}.state.json"),
                         (ws.run_file_dir, f"experiment_{v}.sh")):
        try:
            size = os.stat(f"{folder}/{name}").st_size
        except OSError:
            continue
        file_links.append({"name": name, "href": f"{_way(str(folder), pd)}/{name}", "size": _size(size)})
    run_way = f"{_way(str(ws.out_root), pd)}/experiment_{v}"
    file_links += [{"name": f"out/experiment_{v}/{n}", "href": f"{run_way}/{n}", "size": _size(size)} for n, size, _ in files]
    data = {
        "version": v, "status": str(meta.get("status") or "?"), "description": str(meta.get("description") or ""), "error": "",
        "parent": parent, "baseline": baseline, "parent_link": str(parent) in versions, "baseline_link": str(baseline) in versions,
        "children": children, "review": pages.review_state(meta), "created": str(meta.get("created") or ""),
        "commit": str(info_commit.get("sha") or info_commit.get("time") or ""),
        "compare_parent": str(parent) in versions and curve is not None,
        "has_curves": curve is not None, "plot": _link(ws.out_dir(v) / plot, page_dir) if plot else None,
        "curve_note": t["curve_note"].format(lines=curve["lines"], stride=curve["stride"]) if curve and curve["stride"] > 1 else "",
        "verdicts": pages.verdict_rows(analysis.get("verdicts") or [], lang), "partial": bool(analysis.get("partial")),
        "analyzed": bool(analysis),
        "anomalies": [{"kind": str(a.get("kind") or ""), "step": a.get("step"), "end_step": a.get("end_step"),
                       "message": str(a.get("message") or "")} for a in analysis.get("anomalies") or [] if isinstance(a, dict)],
        "metrics": [(k, pages.shown(val)) for k, val in table.items()],
        "changes": [(k, pages.shown(ab[0] if isinstance(ab, list) and ab else None), pages.shown(ab[1] if isinstance(ab, list) and len(ab) > 1 else ab))
                    for k, ab in changes.items()],
        "samples": samples, "parts": parts,
        "reviews": [{"decision": str(x.get("decision") or ""), "reviewer": str(x.get("reviewer") or ""), "time": str(x.get("time") or ""),
                     "comments": str(x.get("comments") or "")} for x in review.get("history") or [] if isinstance(x, dict)],
        "files": file_links,
    }
    script = None
    if curve is not None:
        script = {"version": v, "description": data["description"], "status": data["status"],
                  "config": pages.json_safe_config(meta.get("config") or {}), "metrics": table,
                  "curves": pages.RawJSON(curves_text), "strings": {"reset": t["reset"]}}
    return data, script, _extras(meta)


def _record_files(job: tuple[Any, ...]) -> tuple[dict[str, Any], bool]:
    """Render and write one record's page and data script; (its index extras, whether it has a script)."""
    ws, site, row, kids, versions, files, lang, tdir, workspace = job
    v = str(row["version"])
    data, script, extra = _record_data(ws, site, row, kids, versions, files, lang)
    atomic_write(site / "r" / f"{v}.html", pages.record_page(tdir, lang, workspace, data), durable=False)
    if script is not None:
        atomic_write(site / "r" / f"{v}.data.js", pages.record_script(v, script), durable=False)
    return extra, script is not None


def build(ws: Workspace, out: Path | None = None) -> dict[str, Any]:
    """Build (or bring up to date) the site; returns what was written."""
    started = time.perf_counter()
    site = (out or default_dir(ws)).resolve()
    if site.exists() and not site.is_dir():
        raise UsageError(f"--out {site} is a file; give a folder (it is created when missing)")
    manifest_path = site / MANIFEST
    if site.is_dir() and any(site.iterdir()) and not manifest_path.is_file():
        raise UsageError(f"{site} holds files exp site did not write; give an empty or new folder with --out DIR")
    lang = ws.default_lang if ws.default_lang in ("zh", "en") else "zh"
    tdir = templates_dir(ws)
    if not (tdir / "index.html.j2").is_file():
        raise WorkspaceError(f"the site's templates are missing at {tdir}; reinstall expkit (`pip install .` in its checkout)")
    assets = sorted(p for p in (tdir / "assets").iterdir() if p.is_file())
    try:
        (cache_dir(ws) / "jinja").mkdir(parents=True, exist_ok=True)
        pages.use_bytecode_cache(tdir, cache_dir(ws) / "jinja")
    except OSError:  # a read-only out/: compiled each time
        pages.use_bytecode_cache(tdir, None)
    key = _hash(LAYOUT, lang, ws.root.name, [(p.name, p.read_bytes().decode("utf-8", "replace")) for p in sorted(tdir.rglob("*")) if p.is_file()])
    saved = read_json(manifest_path)
    saved = saved if isinstance(saved, dict) and saved.get("key") == key else {}
    old_pages: dict[str, Any] = saved.get("pages") if isinstance(saved.get("pages"), dict) else {}
    fresh: dict[str, Any] = {}
    written: list[str] = []

    def write(rel: str, text: Callable[[], str], inputs: str) -> None:
        fresh[rel] = {"hash": inputs}
        if old_pages.get(rel, {}).get("hash") == inputs and (site / rel).is_file():
            return
        atomic_write(site / rel, text(), durable=False)
        written.append(rel)

    for asset in assets:
        rel = f"assets/{asset.name}"
        fresh[rel] = {"hash": key}
        if old_pages.get(rel, {}).get("hash") != key or not (site / rel).is_file():
            atomic_write(site / rel, asset.read_bytes(), durable=False)
            written.append(rel)

    rows = catalog.rows(ws)
    versions = {str(r["version"]) for r in rows}
    children = pages.children_of(rows)
    workspace = ws.root.name
    extras: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str, tuple[Any, ...]]] = []
    # plain strings and os.stat, not pathlib: a thousand records' paths cost more than their stats
    exp_dir, script_dir, out_root, site_dir = str(ws.experiment_dir), str(ws.run_file_dir), str(ws.out_root), str(site)
    stamps: dict[str, list[int]] = {}

    def stamp(v: str) -> list[int]:  # the record's markdown and state
        if v not in stamps:
            stamps[v] = _stat(f"{exp_dir}/experiment_{v}.md") + _stat(f"{exp_dir}/experiment_{v}.state.json")
        return stamps[v]

    for row in rows:
        v = str(row["version"])
        rel = f"r/{v}.html"
        parent = row.get("parent")
        files = _run_files_at(f"{out_root}/experiment_{v}")
        # taken before the page is rendered: an input that changes meanwhile is rendered again next time
        inputs = _quick_hash(key, stamp(v), _stat(f"{script_dir}/experiment_{v}.sh"), files,
                             stamp(str(parent)) if parent else None, children.get(v, []), parent in versions,
                             row.get("baseline") in versions)
        old = old_pages.get(rel, {})
        if old.get("hash") == inputs and isinstance(old.get("extras"), dict) and os.path.isfile(f"{site_dir}/{rel}"):
            fresh[rel] = old
            if old.get("script"):
                fresh[f"r/{v}.data.js"] = old_pages.get(f"r/{v}.data.js", {"hash": inputs})
            extras[v] = old["extras"]
            continue
        todo.append((v, inputs, (ws, site, row, children.get(v, []), versions, files, lang, tdir, workspace)))

    # in this process: forked workers (one per CPU) built 1,000 record pages no faster on the
    # 2-core development machine, cold or cached, at loads of 1.4 to 4.8 (bench/README.md)
    done = [_record_files(job) for _, _, job in todo]
    for (v, inputs, job), (extra, has_script) in zip(todo, done):
        fresh[f"r/{v}.html"] = {"hash": inputs, "extras": extra, "script": has_script}
        written.append(f"r/{v}.html")
        if has_script:
            fresh[f"r/{v}.data.js"] = {"hash": inputs}
            written.append(f"r/{v}.data.js")
        extras[v] = extra

    tree = reporting.tree(ws, rows)
    best = [n["version"] for n in pages.tree_lines(tree) if n["best"]]
    index_rows = pages.index_rows(rows, report_rows(rows), extras, best)
    lines = pages.tree_lines(tree)
    groups: list[dict[str, Any]] = []  # group pages (X.Y.0 with replicated members) come with groups; none exist yet
    # the index and the compare page: rendered only when their inputs changed
    write("index.html", lambda: pages.index_page(tdir, lang, workspace, index_rows, lines, groups), _hash(key, index_rows, lines, groups))
    write("compare.html", lambda: pages.compare_page(tdir, lang, workspace), key)

    removed = []
    for rel in sorted(set(old_pages) - set(fresh)):  # records that are gone, a data script no longer needed
        try:
            (site / rel).unlink()
            removed.append(rel)
        except FileNotFoundError:
            pass
    atomic_write(manifest_path, json.dumps({"key": key, "pages": fresh}, ensure_ascii=False, separators=(",", ":")), durable=False)
    return {
        "site": ws.rel(site) if site.is_relative_to(ws.root) else str(site),
        "index": (site / "index.html").as_uri(),
        "records": len(rows),
        "pages": len(fresh),
        "written": written,
        "unchanged": len([r for r in fresh if r not in written]),
        "removed": removed,
        "seconds": round(time.perf_counter() - started, 3),
    }


# -- serving -------------------------------------------------------------------------------------------
def inputs_stamp(ws: Workspace) -> str:
    """What changes when a record or a run's outputs change (sizes and mtimes; no file is read)."""
    parts: list[Any] = []
    for folder in (ws.experiment_dir, ws.run_file_dir):
        try:
            parts += sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(folder) if e.is_file())
        except OSError:
            pass
    try:
        runs = sorted(e.name for e in os.scandir(ws.out_root) if e.name.startswith("experiment_") and e.is_dir())
    except OSError:
        runs = []
    for name in runs:
        parts.append((name, _run_files(ws, name[len("experiment_"):])))
    return _hash(parts)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files under the served root, GET and HEAD only, only the site and the records' files."""

    allowed: tuple[str, ...] = ()

    def send_head(self) -> Any:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if not any(path.startswith(p) for p in self.allowed):
            self.send_error(404, "not part of the site")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        pass


def serve(ws: Workspace, out: Path | None, port: int, report: Callable[[dict[str, Any]], None],
          interval: float = 1.0, stop: threading.Event | None = None) -> None:
    """Build, serve on 127.0.0.1:``port``, and rebuild whenever a record or a run's files change,
    until ``stop`` is set (or Ctrl-C). ``report`` gets each build's result and the address."""
    site = (out or default_dir(ws)).resolve()
    result = build(ws, out)
    root = ws.root if site.is_relative_to(ws.root) else site
    prefix = "/" + site.relative_to(root).as_posix() + "/" if site != root else "/"
    handler = functools.partial(type("Handler", (_Handler,), {"allowed": (prefix, "/experiment/", "/run_file/", "/out/experiment_")}),
                                directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        if err.errno in (errno.EADDRINUSE, errno.EACCES):
            raise UsageError(f"port {port} on 127.0.0.1 is {'in use' if err.errno == errno.EADDRINUSE else 'not allowed'}; "
                             f"pick another with --port P") from None
        raise
    url = f"http://127.0.0.1:{server.server_address[1]}{prefix.replace(' ', '%20')}index.html"
    report({**result, "url": url})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop = stop or threading.Event()
    last = inputs_stamp(ws)
    try:
        while not stop.wait(interval):
            now = inputs_stamp(ws)
            if now != last:
                last = now
                report({**build(ws, out), "url": url})
    finally:
        server.shutdown()
        server.server_close()
