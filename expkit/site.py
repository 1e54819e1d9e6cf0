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

Curves survive a new template: the manifest keeps, per data script, the metrics file's size,
mtime and inode it was thinned from, and a page rendered again with that file unchanged takes
its curves from the data script already in the site instead of reading 10,000 lines again.
A finished run's curves come from its ``curves.json``, which ``exp analyze`` writes (the run's
own output, thinned once; used only while its metrics file is unchanged). Nothing else is
cached outside the site: a cold build of 1,000 records spent a second creating
a thousand cache files (out/.cache/site/ before), which paid off only when the site folder was
removed. Record pages are rendered by one forked process per CPU when there are many, and
written by a thread of their own (creating a file waits on the filesystem's journal).

Layer 4: reads records through ``records``, ``catalog`` and ``reporting``; HTML comes from
``pages`` (layer 3); every file is written by ``files.atomic_write`` (not synced: a crash
costs a rebuild, and a thousand syncs cost seconds).
"""

from __future__ import annotations

import errno
import functools
import gc
import hashlib
import http.server
import json
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from . import catalog, commit, groups, pages, records, reporting, store
from .errors import ExpError, RecordError, UsageError, WorkspaceError
from .files import atomic_write, read_json
from .names import CURVES_FILE, METRICS_FILE, SAMPLES_FILE
from .report import PRETRAIN, report_rows, task_name
from .version import Version
from .workspace import Workspace, package_templates_dir

MANIFEST = ".manifest.json"
#: Bump when what a page holds changes without its templates changing (pages.py, this module).
LAYOUT = 4
#: Run files a record page links: everything at the top of the run directory but these.
HIDDEN_FILES = ("heartbeat",)
#: Record pages to render before they are shared among worker processes (forking costs ~20 ms each).
PARALLEL_FROM = 64
#: Samples shown on a record page, and characters of each.
MAX_SAMPLES, MAX_SAMPLE_CHARS = 24, 600


def default_dir(ws: Workspace) -> Path:
    return ws.out_root / "site"


#: The site's templates: a workspace's ``templates/site/`` is used when it has all of them.
TEMPLATES = ("base.html.j2", "index.html.j2", "record.html.j2", "compare.html.j2", "group.html.j2")


def templates_dir(ws: Workspace) -> Path:
    """The workspace's ``templates/site/`` (a lab may restyle its site) when it holds every page's
    template (one made before a page type existed does not), else the one expkit ships."""
    local = ws.root / "templates" / "site"
    return local if all((local / name).is_file() for name in TEMPLATES) else package_templates_dir() / "site"


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
    """Also the files of its replicates' run directories (``r0/``, ``r1/``, ...): a page's inputs."""
    out = []
    subs = ["", "plots"]
    for sub in subs:
        try:
            entries = list(os.scandir(f"{root}/{sub}" if sub else root))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") or e.name in HIDDEN_FILES:
                continue
            try:
                if not sub and catalog.REPLICATE_DIR.fullmatch(e.name) and e.is_dir():
                    subs.append(e.name)
                elif e.is_file():
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


class _Writer:
    """Writes files on a thread of its own while the caller renders the next page: creating a
    file waits on the filesystem's journal (0.1 to 6 ms each on the shared development machine,
    2,000 of them in a cold build of 1,000 records), and that wait needs no CPU. ``close`` waits
    for every file and raises the first error."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Path, str] | None] = queue.Queue(maxsize=64)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="exp-site-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    atomic_write(item[0], item[1], durable=False)
                except OSError as err:
                    self._error = err

    def put(self, path: Path, data: str) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((path, data))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _curves(ws: Workspace, site: Path, v: str, previous: Any,
            series: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str, dict[str, Any] | None]:
    """(the run's curves' points and whether they were thinned, or None without curves; the
    curves as JSON text; what the manifest keeps to reuse them). Reused from the site's own
    ``r/VERSION.data.js`` when the metrics file's size, mtime and inode (taken before it is read,
    so a file that grows meanwhile is read again next time) are the ones ``previous`` kept: a new
    template or expkit renders every page again but thins no metrics file again. Else taken from
    the run's ``curves.json`` (``exp analyze`` thinned them once) when it was made from the metrics
    file as it is now; else the metrics file is thinned here. ``series``: the record's task's
    curves beyond pretraining's (``pages.curves``)."""
    metrics = f"{ws.out_root}/experiment_{v}/{METRICS_FILE}"
    try:
        st = os.stat(metrics)
    except OSError:
        return None, "null", None
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, pages.CURVE_POINTS, LAYOUT, *([list(series)] if series else [])]
    if isinstance(previous, dict) and previous.get("stamp") == stamp and isinstance(previous.get("counts"), dict):
        try:
            text = (site / "r" / f"{v}.data.js").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        head, _, curves_text = text.rpartition(',"curves":')
        curves_text = curves_text[:-3] if head and curves_text.endswith("};\n") else ""
        if pages.is_curves_json(curves_text):
            return previous["counts"], curves_text, previous
    # thinned by `exp analyze` from this very file (a finished run's), else by us (a running one's)
    found = pages.read_curves_file(f"{ws.out_root}/experiment_{v}/{CURVES_FILE}", st, series)
    if found is None:
        found = pages.curves_json(Path(metrics), pages.CURVE_POINTS, series) if series else pages.curves_json(Path(metrics))
    counts, curves_text = found
    return counts, curves_text, ({"stamp": stamp, "counts": counts} if counts is not None else None)


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


def _extras(v: str, meta: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """What the index and the group pages show that ``catalog.rows`` does not keep: task, review,
    date; the group a member belongs to and what it changes; replicate statistics (mean, CI, n)
    when replicated, in a group or possibly leading one; the status of those two."""
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    group = groups.group_of(meta)
    out: dict[str, Any] = {"task": meta.get("task") or "pretrain", "review": pages.review_state(meta),
                           "date": str(run.get("ended") or run.get("started") or meta.get("created") or "")}
    if group is not None:
        out["group"] = str(group)
        out["swept"] = pages.json_safe_config(groups.changes_of(meta))
    leader = Version.is_valid(v) and groups.can_lead(Version.parse(v))
    if group is not None or leader or any((st.get("n") or 0) >= 2 for st in stats.values()):
        out["stats"] = stats
    if group is not None or leader:
        out["status"] = str(meta.get("status") or "?")
    return out


def _record_data(ws: Workspace, site: Path, row: dict[str, Any], children: list[str], versions: set[str],
                 files: list[tuple[str, int, int]], lang: str, previous: Any, leads: bool,
                 series: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]:
    """(the record page's context, its data script's content or None, its index extras, what the
    manifest keeps of its curves or None); ``previous``: what it kept last time."""
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
                "samples": [], "parts": [], "reviews": [], "files": [], "group": None, "leads": leads, "swept": ""}
        return data, None, {"task": "", "review": "", "date": ""}, None
    meta = record.meta
    analysis = meta.get("analysis") if isinstance(meta.get("analysis"), dict) else {}
    table = catalog.run_table(ws, v, meta) or {}
    table = catalog.clean_table(table)
    stored = analysis.get("replicates")
    # without replicates stored or run directories of them (``files`` lists theirs) the run is its one
    # replicate: what replicate_tables finds, without listing the run directory again
    single = not (isinstance(stored, list) and stored) and not any(
        "/" in f[0] and catalog.REPLICATE_DIR.fullmatch(f[0].split("/", 1)[0]) for f in files)
    stats = pages.replicate_stats(([table] if single else catalog.replicate_tables(ws, v, meta, table)) if table else [])
    group = groups.group_of(meta)
    curve, curves_text, kept = _curves(ws, site, v, previous, series)
    parts = pages.record_parts(record.parts, lang, _way(str(ws.experiment_dir), str(page_dir)) + "/", v)
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
        "curve_note": t["curve_note"].format(points=curve["points"]) if curve and curve.get("thinned") else "",
        "verdicts": pages.verdict_rows(analysis.get("verdicts") or [], lang), "partial": bool(analysis.get("partial")),
        "analyzed": bool(analysis),
        "anomalies": [{"kind": str(a.get("kind") or ""), "step": a.get("step"), "end_step": a.get("end_step"),
                       "message": str(a.get("message") or "")} for a in analysis.get("anomalies") or [] if isinstance(a, dict)],
        "metrics": [(k, pages.shown(stats[k]) + f" (n={stats[k]['n']})" if k in stats and stats[k]["n"] >= 2 else pages.shown(val))
                    for k, val in table.items()],
        "group": str(group) if group is not None and str(group) in versions else None, "leads": leads,
        "swept": " ".join(f"{k}={pages.shown(x)}" for k, x in groups.changes_of(meta).items()),
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
    return data, script, _extras(v, meta, stats), kept if script is not None else None


def _record_files(job: tuple[Any, ...], writer: _Writer) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Render one record's page and data script and hand them to ``writer``; (its index extras,
    what the manifest keeps of its data script or None without one)."""
    ws, site, row, kids, versions, files, lang, tdir, workspace, previous, leads, series = job
    v = str(row["version"])
    data, script, extra, kept = _record_data(ws, site, row, kids, versions, files, lang, previous, leads, series)
    writer.put(site / "r" / f"{v}.html", pages.record_page(tdir, lang, workspace, data))
    if script is not None:
        writer.put(site / "r" / f"{v}.data.js", pages.record_script(v, script))
    return extra, kept


#: The record pages a forked worker renders: set before the fork, read by index in the workers.
_JOBS: list[tuple[Any, ...]] = []


def _record_share(k: int, n: int) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """In worker ``k`` of ``n``: render and write every n-th record page from the k-th."""
    writer = _Writer()
    try:
        return [_record_files(job, writer) for job in _JOBS[k::n]]
    finally:
        writer.close()


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _render_records(jobs: list[tuple[Any, ...]], workers: int) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each record's index extras and what the manifest keeps of its data script, in the order of ``jobs``; the
    pages rendered and written by ``workers`` forked processes when there are enough of them."""
    if workers < 2 or len(jobs) < PARALLEL_FROM:
        writer = _Writer()
        try:
            return [_record_files(job, writer) for job in jobs]
        finally:
            writer.close()
    workers = min(workers, len(jobs))
    _JOBS[:] = jobs  # inherited by the fork, not pickled: a job holds the workspace and the rows
    # what exists now is out of the collector's sight: a worker's collections would otherwise touch
    # (and so copy) every page of the memory it shares with this process
    gc.freeze()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            shares = list(pool.map(_record_share, range(workers), [workers] * workers))
    finally:
        gc.unfreeze()
        _JOBS.clear()
    done: list[tuple[dict[str, Any], dict[str, Any] | None]] = [({}, None)] * len(jobs)
    for k, share in enumerate(shares):
        done[k::workers] = share
    return done


def build(ws: Workspace, out: Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """Build (or bring up to date) the site; returns what was written. ``workers``: processes
    that render record pages (default: one per CPU, or 1 in a process with other threads)."""
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
    saved = saved if isinstance(saved, dict) and isinstance(saved.get("pages"), dict) else {"pages": {}}
    # curves survive a new template: their data scripts are reused when their metrics file is unchanged
    kept_curves = {rel: p.get("curves") for rel, p in saved["pages"].items() if isinstance(p, dict) and p.get("curves")}
    old_pages: dict[str, Any] = saved["pages"] if saved.get("key") == key else {}
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
    found = reporting.task_tables(ws, rows)
    # a record page draws its task's curves beyond pretraining's (none for pretraining: its pages stay as they were)
    series = {name: pages.drawn_series(task) for name, task in found.items()}
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

    # which records lead a group, as the last build found it: a leader's page links its group's page;
    # checked below against what this build finds, and a page that guessed wrong is rendered again
    hinted = {str(p["extras"]["group"]) for p in saved["pages"].values()
              if isinstance(p, dict) and isinstance(p.get("extras"), dict) and p["extras"].get("group")}

    def job(row: dict[str, Any], leads: bool) -> tuple[str, tuple[Any, ...]]:
        v = str(row["version"])
        parent = row.get("parent")
        files = _run_files_at(f"{out_root}/experiment_{v}")
        # taken before the page is rendered: an input that changes meanwhile is rendered again next time
        drawn = series.get(task_name(row), ())
        inputs = _quick_hash(key, stamp(v), _stat(f"{script_dir}/experiment_{v}.sh"), files,
                             stamp(str(parent)) if parent else None, children.get(v, []), parent in versions,
                             row.get("baseline") in versions, leads, *([drawn] if drawn else []))
        return inputs, (ws, site, row, children.get(v, []), versions, files, lang, tdir, workspace,
                        kept_curves.get(f"r/{v}.data.js"), leads, drawn)

    def reuse(v: str, inputs: str) -> bool:
        rel = f"r/{v}.html"
        old = old_pages.get(rel, {})
        if not (old.get("hash") == inputs and isinstance(old.get("extras"), dict) and os.path.isfile(f"{site_dir}/{rel}")):
            return False
        fresh[rel] = old
        if old.get("script"):
            fresh[f"r/{v}.data.js"] = old_pages.get(f"r/{v}.data.js", {"hash": inputs})
        extras[v] = old["extras"]
        return True

    def render(todo: list[tuple[str, str, tuple[Any, ...]]], workers: int) -> None:
        done = _render_records([j for _, _, j in todo], workers)
        for (v, inputs, _), (extra, curves) in zip(todo, done):
            fresh[f"r/{v}.html"] = {"hash": inputs, "extras": extra, "script": curves is not None}
            written.append(f"r/{v}.html")
            fresh.pop(f"r/{v}.data.js", None)
            if curves is not None:
                fresh[f"r/{v}.data.js"] = {"hash": inputs, "curves": curves}
                written.append(f"r/{v}.data.js")
            extras[v] = extra

    for row in rows:
        v = str(row["version"])
        inputs, j = job(row, v in hinted)
        if not reuse(v, inputs):
            todo.append((v, inputs, j))
    if todo:
        pages.prepare(tdir)  # the template compiled and the markdown parser made once, before any fork
    # forked only from a process without other threads (a fork copies their locks mid-step)
    render(todo, workers if workers is not None else cpus() if threading.active_count() == 1 else 1)

    members: dict[str, list[str]] = {}
    for row in rows:
        g = extras.get(str(row["version"]), {}).get("group")
        if g in versions:
            members.setdefault(str(g), []).append(str(row["version"]))
    wrong = [row for row in rows if (str(row["version"]) in hinted) != (str(row["version"]) in members)]
    again = []
    for row in wrong:
        inputs, j = job(row, str(row["version"]) in members)
        if not reuse(str(row["version"]), inputs):
            again.append((str(row["version"]), inputs, j))
    render(again, 1)

    tree = reporting.tree(ws, rows, found)
    best = [n["version"] for n in pages.tree_lines(tree) if n["best"]]
    columns = pages.index_columns(found)
    index_rows = pages.index_rows(rows, report_rows(rows, found), extras, best, members, columns)
    lines = pages.tree_lines(tree)
    by_version = {str(r["version"]): r for r in rows}
    group_list = []
    for parent, vs in sorted(members.items(), key=lambda kv: pages.version_order(kv[0])):
        try:  # the parent's config: its values of the keys its members sweep (read for the few groups only)
            config = pages.json_safe_config(store.read_meta(ws, Version.parse(parent)).get("config") or {})
        except (RecordError, ExpError):
            config = {}
        points = [{"version": m, "status": extras[m].get("status") or by_version[m].get("status"), "swept": extras[m].get("swept") or {},
                   "stats": extras[m].get("stats") or {}} for m in [parent, *vs]]
        task = found.get(task_name(by_version[parent]))
        data = pages.group_data(parent, str(by_version[parent].get("description") or ""), config, points,
                                task.key_metrics if task is not None and task.name != PRETRAIN else None)
        write(f"g/{parent}.html", functools.partial(pages.group_page, tdir, lang, workspace, data), _hash(key, data))
        group_list.append({"version": parent, "href": f"g/{parent}.html", "members": len(vs)})
    # the index and the compare page: rendered only when their inputs changed
    write("index.html", lambda: pages.index_page(tdir, lang, workspace, index_rows, lines, group_list, columns),
          _hash(key, index_rows, lines, group_list, columns))
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
        "groups": len(group_list),
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
