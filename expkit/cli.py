"""The ``exp`` command line: parse, call one core function, print.

Core modules raise ``ExpError``; ``main`` alone turns one into a one-line message and an exit
code (validation 1, usage 2). Core modules are imported inside the commands so that
``exp --help`` pays only for typer.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Optional

import typer

from .errors import ExpError

app = typer.Typer(
    help="exp — versioned, reviewed experiment records for pretraining small language models.\n\n"
    "Loop: exp new → (human fills goal/hypothesis/expected/focus) → exp set → exp check → exp run → "
    "exp analyze → exp review (a person) → exp commit.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

VERSION_HELP = "experiment version X.Y.Z"


def command(name: str | None = None, hidden: bool = False):
    """Register a command whose ExpError becomes one line on stderr and an exit code.

    This wrapper is the one place where errors turn into exit codes, so the same behaviour
    holds under ``CliRunner`` in tests and in the console script.
    """

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ExpError as err:
                typer.echo(f"exp: error: {err}", err=True)
                raise typer.Exit(err.exit_code) from None
            except OSError as err:  # permissions, full disk: the user can act on these too
                where = f": {err.filename}" if err.filename else ""
                typer.echo(f"exp: error: {err.strerror or err}{where}", err=True)
                raise typer.Exit(1) from None

        return app.command(name, hidden=hidden)(wrapper)

    return register
JSON_HELP = "print JSON instead of text"


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _ws():
    from .workspace import Workspace

    return Workspace.find()


def _v(text: str):
    from .version import Version

    return Version.parse(text)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (no rich: listings must start fast)."""
    from unicodedata import east_asian_width

    def width(s: str) -> int:
        return sum(2 if east_asian_width(c) in "WF" else 1 for c in s)

    cols = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c + " " * (cols[i] - width(c)) for i, c in enumerate(cells)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * c for c in cols])] + [line(r) for r in rows])


# -- workspace -------------------------------------------------------------------------------
@command()
def init(
    directory: str = typer.Argument(..., metavar="DIR", help="directory for the new workspace"),
    force: bool = typer.Option(False, "--force", help="allow a non-empty DIR: existing files are kept; an existing pyproject.toml / .gitignore gets what it lacks appended"),
) -> None:
    """Create a new workspace: experiment/, run_file/, out/, templates/, CLAUDE.md, pyproject.toml."""
    from pathlib import Path

    from .workspace import scaffold

    done = scaffold(Path(directory), force=force)
    for path in done.created:
        typer.echo(f"created {path}")
    for path in done.kept:
        typer.echo(f"kept    {path} (exists)")
    for added in done.appended:
        typer.echo(f"added to {added.path}:")
        for line in added.lines:
            typer.echo(f"  + {line}".rstrip())
    if not done.changed:
        typer.echo(f"\nnothing changed: {directory} already holds everything exp init adds")
    typer.echo(f"\nworkspace ready: cd {directory} && exp new 0.1.0 --desc '...'")


# -- records ---------------------------------------------------------------------------------
@command()
def new(
    version: str = typer.Argument(..., help=VERSION_HELP),
    parent: Optional[str] = typer.Option(None, "--from", metavar="PARENT", help="copy the config of this experiment"),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="VERSION", help="the experiment to compare against"),
    desc: str = typer.Option("", "--desc", metavar="TEXT", help="one-line description"),
    lang: Optional[str] = typer.Option(None, "--lang", metavar="zh|en", help="record language (default: workspace's, zh)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/experiment_VERSION.md from the templates."""
    from . import store

    v = _v(version)
    p = _v(parent) if parent else None
    b = _v(baseline) if baseline else None
    if lang is not None and lang not in ("zh", "en"):
        raise _usage(f"--lang must be zh or en, not {lang!r}")
    ws = _ws()
    record = store.create(ws, v, parent=p, baseline=b, description=desc, lang=lang)
    if json_out:
        _echo_json({"version": str(v), "path": str(record.path), "status": record.status})
        return
    typer.echo(f"created {record.path.relative_to(ws.root)}")
    typer.echo("next: fill the 🧑‍🔬 human sections (goal, hypothesis, expected, focus), then "
               f"`exp check {v}`")


@command()
def check(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List every problem of a record with its line and fix; a clean draft becomes ready."""
    from .problems import check_record

    result = check_record(_ws(), _v(version))
    if json_out:
        _echo_json(result)
    else:
        for p in result["problems"]:
            typer.echo(f"{result['path']}:{p['line']}: {p['level']}: {p['message']} — fix: {p['fix']}")
        n_err = sum(p["level"] == "error" for p in result["problems"])
        n_warn = len(result["problems"]) - n_err
        verdict = "ok" if n_err == 0 else ("not ready" if result["status"] in ("draft", "ready") else "problems")
        typer.echo(f"{version}: {verdict} ({n_err} error(s), {n_warn} warning(s)); status {result['status']}")
    if not result["ok"]:
        raise typer.Exit(1)


@command("set")
def set_(
    version: str = typer.Argument(..., help=VERSION_HELP),
    assignments: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE...", help="config values, e.g. learning_rate=8e-5"),
    regenerate: bool = typer.Option(
        False, "--regenerate", help="rewrite hand-edited generated sections (their text is saved under out/.discarded/)"
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set config values (typed and range-checked) and regenerate the parameter table."""
    from .store import set_config

    if not assignments and not regenerate:
        raise _usage("give at least one KEY=VALUE (e.g. learning_rate=8e-5), or --regenerate")
    result = set_config(_ws(), _v(version), assignments or [], regenerate=regenerate)
    if json_out:
        _echo_json(result)
        return
    for key, (old, new) in result["changed"].items():
        typer.echo(f"{key}: {old} → {new}")
    for path in result["discarded"]:
        typer.echo(f"saved the hand-edited text to {path}")
    if not result["changed"] and not result["discarded"]:
        typer.echo("nothing changed")


@command()
def show(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a record: state, human sections, expected-result claims, config changes."""
    from .store import describe

    info = describe(_ws(), _v(version))
    if json_out:
        _echo_json(info)
        return
    typer.echo(f"experiment {info['version']} — {info['description'] or '(no description)'}")
    typer.echo(f"  status    {info['status']}    next: {info['next']}")
    if info.get("commit"):
        c = info["commit"]
        typer.echo(f"  commit    {c.get('sha') or 'SHA not recorded here; find it: ' + str(c.get('find'))}    {c.get('time', '')}")
    typer.echo(f"  category  {info['category']}")
    typer.echo(f"  parent    {info['parent'] or '—'}    baseline {info['baseline'] or '—'}")
    typer.echo(f"  record    {info['path']}")
    for warn in info["warnings"]:
        typer.echo(f"  ⚠ {warn}")
    for name, text in info["sections"].items():
        typer.echo(f"\n[{name}]\n{text.strip() or '(empty)'}")
    if info["claims"]:
        typer.echo("\n[checkable expected results]")
        for c in info["claims"]:
            typer.echo(f"  line {c['line']}: {c['text']}")
    if info["changed_from_parent"]:
        typer.echo(f"\n[config changed from {info['parent']}]")
        for key, (old, new) in info["changed_from_parent"].items():
            typer.echo(f"  {key}: {old} → {new}")
    if info["verdicts"]:
        from .analysis import format_number as num

        typer.echo("\n[verdicts]")
        for x in info["verdicts"]:
            why = f"  ({x['reason']})" if x.get("reason") else ""
            typer.echo(f"  {x['verdict']:12} {x['claim']}  observed {num(x['observed'])}, reference {num(x['reference'])}{why}")
    run_info = info.get("run") or {}
    if run_info:
        from .render import fmt

        typer.echo("\n[run]")
        for key in ("status", "backend", "started", "ended", "duration_s", "exit_code", "job_id", "git_sha", "error"):
            if run_info.get(key) is not None:
                typer.echo(f"  {key:12} {run_info[key]}")
        for key, value in (run_info.get("final") or {}).items():
            typer.echo(f"  {key:12} {fmt(round(value, 4) if isinstance(value, float) else value)}")


@command("list")
def list_(
    status: Optional[str] = typer.Option(None, "--status", metavar="S", help="only records with this status"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the records with status, category, parent and description."""
    from .store import list_records

    rows = list_records(_ws(), status)
    if json_out:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no experiments" + (f" with status {status}" if status else "") + "; create one with `exp new 0.1.0`")
        return
    typer.echo(
        _table(
            ["VERSION", "STATUS", "CATEGORY", "PARENT", "DESCRIPTION"],
            [[r["version"], r["status"], r["category"], r["parent"] or "—", (r["description"] or "")[:60]] for r in rows],
        )
    )


@command()
def diff(
    a: str = typer.Argument(..., metavar="A", help="first version"),
    b: str = typer.Argument(..., metavar="B", help="second version"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """How two experiments differ: config, environment, run script, code (git), metrics."""
    from .analysis import format_number as num
    from .analysis import format_percent as pct
    from .reporting import diff_records

    r = diff_records(_ws(), _v(a), _v(b))
    if json_out:
        _echo_json(r)
        return
    typer.echo(f"[config] {len(r['config'])} key(s) differ")
    if r["config"]:
        typer.echo(_table(["KEY", a, b], [[k, str(x), str(y)] for k, (x, y) in r["config"].items()]))
    typer.echo(f"\n[environment] {len(r['environment'])} difference(s)")
    if r["environment"]:
        typer.echo(_table(["KEY", a, b], [[k, str(x), str(y)] for k, (x, y) in r["environment"].items()]))
    code = r["code"]
    typer.echo("\n[code]")
    if code.get("note"):
        typer.echo(f"  {code['note']}")
    else:
        dirty = lambda d: " (+ uncommitted changes)" if d else ""  # noqa: E731
        typer.echo(f"  {a}: {code['a']}{dirty(code['a_dirty'])}\n  {b}: {code['b']}{dirty(code['b_dirty'])}")
        if code.get("same"):
            typer.echo("  same revision")
        elif code.get("error"):
            typer.echo(f"  {code['error']}")
        else:
            typer.echo(f"  {code.get('files', 0)} file(s) changed\n{code.get('stat', '')}")
    typer.echo("\n[metrics]")
    if r["metrics"]:
        rows = [[k, num(d["reference"]), num(d["value"]), num(d["abs"], signed=True), pct(d["rel"], signed=True)]
                for k, d in r["metrics"].items()]
        typer.echo(_table(["METRIC", a, b, "Δ", "Δ%"], rows))
    else:
        typer.echo(f"  {r['metrics_note']}")
    typer.echo("\n[script]")
    typer.echo(r["script"]["diff"].rstrip("\n") if r["script"]["diff"] else "  " + r["script"].get("note", "identical"))


@command()
def compare(
    versions: list[str] = typer.Argument(..., metavar="V1 V2 ...", help="the experiments; deltas are against the first"),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="FILE", help="write their loss curves overlaid to this PNG"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare runs: the config keys that differ, a metric table with deltas, overlaid curves."""
    from pathlib import Path

    from .analysis import format_number as num
    from .analysis import format_percent as pct
    from .reporting import compare_records

    r = compare_records(_ws(), [_v(x) for x in versions], Path(plot) if plot else None)
    if json_out:
        _echo_json(r)
        return
    labels = r["labels"]
    if r["config_diff"]:
        typer.echo(_table(["CONFIG", *labels], [[k, *(str(vals.get(x)) for x in labels)] for k, vals in r["config_diff"].items()]))
    else:
        typer.echo("same config")
    ref = r["reference"]

    def cell(metric: str, label: str) -> str:
        value = r["metrics"][metric].get(label)
        if label == ref or metric not in r["deltas"].get(label, {}):
            return num(value)
        d = r["deltas"][label][metric]
        return f"{num(value)} ({num(d['abs'], signed=True)}, {pct(d['rel'], signed=True)})"

    typer.echo("")
    typer.echo(_table(["METRIC", *(x + (" (ref)" if x == ref else "") for x in labels)],
                      [[m, *(cell(m, x) for x in labels)] for m in r["metrics"]]))
    if r.get("plot"):
        typer.echo(f"\nplot: {r['plot']}" + (f" (no curve for {', '.join(r['not_plotted'])})" if r["not_plotted"] else ""))


@command()
def tree(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show the lineage of experiments by parent, with verdicts and the best loss of each."""
    from .analysis import format_number as num
    from .reporting import tree as lineage

    nodes = lineage(_ws())
    if json_out:
        _echo_json(nodes)
        return
    if not nodes:
        typer.echo("no experiments; create one with `exp new 0.1.0`")

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        parts = [f"{node['version']} [{node['status']}]"]
        if node["verdicts"] is not None:
            v = node["verdicts"]
            parts.append(f"✓{v['confirmed']} ✗{v['refuted']} ?{v['inconclusive']}")
        if node["metric"]:
            parts.append(f"{node['metric']['name']} {num(node['metric']['value'])}" + (" ★" if node["best"] else ""))
        if node["description"]:
            parts.append(node["description"])
        typer.echo(f"{prefix}{branch}" + "  ".join(parts))
        child_prefix = prefix if root else prefix + ("    " if last else "│   ")
        for i, child in enumerate(node["children"]):
            walk(child, child_prefix, i == len(node["children"]) - 1, False)

    for node in nodes:
        walk(node, "", True, True)


@command()
def report(
    no_plots: bool = typer.Option(False, "--no-plots", help="skip the PNGs (the markdown and CSV only)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write experiment/EXPERIMENT_REPORT.md, experiment/experiment_tracker.csv and comparison PNGs."""
    from .reporting import report as write_report

    r = write_report(_ws(), plots=not no_plots)
    if json_out:
        _echo_json(r)
        return
    by = ", ".join(f"{n} {s}" for s, n in sorted(r["by_status"].items()))
    typer.echo(f"{r['records']} experiment(s){': ' + by if by else ''}")
    typer.echo(f"wrote {r['report']}\nwrote {r['tracker']}")
    for p in r["plots"]:
        typer.echo(f"wrote {p}")


# -- running ---------------------------------------------------------------------------------
def _opts(backend, gpus, nproc, nnodes, node_rank, master_addr, resume, time_limit=None, partition=None):
    from .runner import LaunchOptions

    return LaunchOptions(
        backend=backend, gpus=gpus, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
        master_addr=master_addr or "127.0.0.1", resume=resume, time_limit=time_limit or "24:00:00", partition=partition,
    ).check()


def _print_checks(checks, err: bool = False) -> None:
    marks = {True: "✓", False: "✗", None: "!"}
    for c in checks:
        fix = f"  → {c.fix}" if c.fix and c.ok is not True else ""
        typer.echo(f"  {marks[c.ok]} {c.name:15} {c.detail}{fix}", err=err)


def _fmt_s(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _watch(ws, v, launch, max_steps: int, resume: bool) -> None:
    """Progress of a foreground run: a rich bar on a terminal, plain lines otherwise."""
    import signal as _signal

    from . import runner

    alive = lambda: launch.process.poll() is None  # noqa: E731
    stopping = False

    def lines():
        nonlocal stopping
        while True:
            try:
                yield from runner.follow_metrics(ws, v, alive, resume=resume)
                return
            except KeyboardInterrupt:
                if stopping:
                    runner.interrupt(launch, _signal.SIGKILL)
                else:
                    stopping = True
                    typer.echo("\nexp: stopping — the trainer saves a checkpoint first (Ctrl-C again to kill)", err=True)
                    runner.interrupt(launch, _signal.SIGTERM)

    def describe(m) -> str:
        parts = [f"loss {m['loss']:.4f}" if m.get("loss") is not None else ""]
        if m.get("val_loss") is not None:
            parts.append(f"val {m['val_loss']:.4f}")
        if m.get("tokens_per_s"):
            parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
        return "  ".join(p for p in parts if p)

    if sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"[bold]{v}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        ) as bar:
            task = bar.add_task("train", total=max_steps, info="starting…")
            for m in lines():
                if m.get("step") is not None:
                    bar.update(task, completed=m["step"], info=describe(m))
    else:
        for m in lines():
            if m.get("step") is None:
                continue
            eta = (max_steps - m["step"]) * m.get("elapsed_s", 0) / max(m["step"], 1)
            typer.echo(f"step {m['step']:>6}/{max_steps}  {describe(m)}  eta {_fmt_s(eta)}")


@command()
def run(
    version: str = typer.Argument(..., help=VERSION_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the script and the preflight; start nothing"),
    detach: bool = typer.Option(False, "--detach", help="run in its own session and return (pid file in out/)"),
    backend: str = typer.Option("local", "--backend", metavar="local|torchrun|slurm", help="how to launch"),
    gpus: Optional[str] = typer.Option(None, "--gpus", metavar="0,1", help="GPUs to use (sets CUDA_VISIBLE_DEVICES and the process count)"),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N", help="processes per node where there is no GPU"),
    nnodes: int = typer.Option(1, "--nnodes", metavar="N", help="nodes (torchrun multi-node)"),
    node_rank: int = typer.Option(0, "--node-rank", metavar="R", help="this node's rank"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", metavar="HOST", help="rank-0 host for multi-node"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last checkpoint"),
    time_limit: Optional[str] = typer.Option(None, "--time", metavar="HH:MM:SS", help="Slurm time limit (default 24:00:00)"),
    partition: Optional[str] = typer.Option(None, "--partition", metavar="NAME", help="Slurm partition"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Render run_file/experiment_VERSION.sh, preflight, and run it (foreground, detached or Slurm)."""
    from . import runner, store

    v = _v(version)
    ws = _ws()
    opts = _opts(backend, gpus, nproc, nnodes, node_rank, master_addr, resume, time_limit, partition)
    launch = runner.prepare(ws, v, opts)
    bad = runner.failed_checks(launch.checks)
    if dry_run:
        if json_out:
            _echo_json({"version": str(v), "script": str(launch.script), "text": launch.text,
                        "preflight": [c.to_dict() for c in launch.checks], "ok": not bad})
        else:
            typer.echo(launch.text, nl=False)
            typer.echo(f"\n# ---- preflight ({'ok' if not bad else 'FAILED'}); nothing was started; script: {store._rel(ws, launch.script)}")
            _print_checks(launch.checks)
        raise typer.Exit(1 if bad else 0)
    if not json_out:
        typer.echo(f"script    {store._rel(ws, launch.script)}")
        typer.echo("preflight")
        _print_checks(launch.checks)
    launch = runner.launch(ws, v, opts, launch)
    where = f"Slurm job {launch.job_id}" if launch.job_id else f"pid {launch.pid}"
    if launch.job_id or detach:
        if json_out:
            _echo_json({"version": str(v), "status": "running", "job_id": launch.job_id, "pid": launch.pid, "log": str(launch.log)})
        else:
            typer.echo(f"started   {v} as {where}; log {store._rel(ws, launch.log)}")
            typer.echo(f"follow    exp status {v} · exp logs {v} -f · exp stop {v}")
        return
    if not json_out:
        typer.echo(f"started   {v} as {where}; log {store._rel(ws, launch.log)}")
        record = store.load(ws, v)
        _watch(ws, v, launch, int((record.meta.get("config") or {}).get("max_steps", 0)), opts.resume)
    record = runner.wait(ws, v, launch)
    run_info = record.meta.get("run") or {}
    if json_out:
        _echo_json({"version": str(v), "status": record.status, "run": {k: w for k, w in run_info.items() if k != "token"}})
    else:
        typer.echo(f"\n{v}: {record.status} (exit {run_info.get('exit_code')}, {_fmt_s(run_info.get('duration_s'))})")
        from .render import fmt

        for key, value in (run_info.get("final") or {}).items():
            typer.echo(f"  {key:15} {fmt(round(value, 4) if isinstance(value, float) else value)}")
        if run_info.get("error"):
            typer.echo(f"  error: {run_info['error']}")
        out = store._rel(ws, ws.out_dir(v))
        typer.echo(f"record    {store._rel(ws, record.path)}\noutputs   {out}/ (samples.json, summary.json, metrics.jsonl, train.log)")
        found = record.meta.get("analysis") or {}
        if record.status == "analyzed" and found:
            from .analysis import format_number as num

            c = found.get("verdict_counts") or {}
            typer.echo(f"verdicts  {_counts(c)}")
            for x in found.get("verdicts") or []:
                typer.echo(f"  {x['verdict']:12} {x['claim']} (observed {num(x.get('observed'))})")
            typer.echo(f"anomalies {len(found.get('anomalies') or []) or 'none'}")
            for p in found.get("plots") or []:
                typer.echo(f"plot      {p}")
        from .record import next_step

        nxt = (f"write the analysis (`exp context {v} --json`, `exp fill {v} analysis --file F`), then a person runs `exp review {v}`"
               if record.status == "analyzed" else next_step(record.status, str(v)))
        typer.echo(f"next      {nxt}")
    if record.status not in ("finished", "analyzed"):
        raise typer.Exit(1)


@command()
def doctor(
    version: Optional[str] = typer.Argument(None, help="check this record's config too"),
    backend: str = typer.Option("local", "--backend", metavar="local|torchrun|slurm", help="the backend to check"),
    gpus: Optional[str] = typer.Option(None, "--gpus", metavar="0,1", help="GPUs the run will ask for"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the environment a run needs: torch, GPUs, data, tokenizer, disk, SwanLab, git."""
    from . import runner, store

    ws = _ws()
    record = store.load(ws, _v(version)) if version else None
    checks, env = runner.preflight(ws, record, _opts(backend, gpus, None, 1, 0, None, False))
    bad = runner.failed_checks(checks)
    if json_out:
        _echo_json({"ok": not bad, "checks": [c.to_dict() for c in checks], "environment": env})
    else:
        _print_checks(checks)
        typer.echo("ok" if not bad else f"{len(bad)} problem(s)")
    if bad:
        raise typer.Exit(1)


@command()
def status(
    version: Optional[str] = typer.Argument(None, help="one record (default: every running one)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show running experiments: step, loss, tokens/s, ETA; finds runs that died."""
    from . import runner

    rows = runner.status(_ws(), _v(version) if version else None)
    if json_out:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("nothing is running")
        return
    for r in rows:
        step = f"step {r['step']}/{r.get('max_steps')}" if r.get("step") is not None else "no steps yet"
        loss = f"loss {r['loss']:.4f}" if r.get("loss") is not None else ""
        tps = f"{r['tokens_per_s']:,.0f} tok/s" if r.get("tokens_per_s") else ""
        eta = f"eta {_fmt_s(r['eta_s'])}" if r.get("eta_s") is not None and r["status"] == "running" else ""
        line = "  ".join(x for x in (r["version"], r["status"], step, loss, tps, eta, r.get("where", "")) if x)
        typer.echo(line)
        for key in ("note", "error"):
            if r.get(key):
                typer.echo(f"  {key}: {r[key]}")


@command()
def logs(
    version: str = typer.Argument(..., help=VERSION_HELP),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing until the run ends"),
) -> None:
    """Print the run's log (out/experiment_VERSION/run.log); -f follows it."""
    from . import runner

    try:
        for line in runner.follow_log(_ws(), _v(version), follow):
            typer.echo(line, nl=False)
    except KeyboardInterrupt:
        pass


@command()
def stop(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Stop a run with SIGTERM (scancel on Slurm); it checkpoints and becomes interrupted."""
    from . import runner

    result = runner.stop(_ws(), _v(version))
    if json_out:
        _echo_json(result)
    else:
        typer.echo(f"{version}: {result['status']}" + (f" ({result['note']})" if result.get("note") else ""))
        if result["status"] == "interrupted":
            typer.echo(f"resume with: exp run {version} --resume")


@command()
def sync(version: str = typer.Argument(..., help=VERSION_HELP)) -> None:
    """Upload the run's offline SwanLab log to the cloud (swanlab sync)."""
    from . import runner

    result = runner.sync(_ws(), _v(version))
    typer.echo(result["output"] or f"synced {result['run_dir']}")


@command("_start", hidden=True)
def start_(
    version: str = typer.Argument(...),
    backend: str = typer.Option("local", "--backend"),
    pid: int = typer.Option(0, "--pid"),
    gpus: Optional[str] = typer.Option(None, "--gpus"),
) -> None:
    """Run-script step: preflight, then mark the record running (called by the rendered script)."""
    from . import runner

    checks, record = runner.start_from_script(_ws(), _v(version), backend, pid, gpus)
    if checks:
        typer.echo("preflight", err=True)
        _print_checks(checks, err=True)
    if record is None:
        typer.echo("exp: preflight failed; nothing started, the record is unchanged", err=True)
        raise typer.Exit(1)


@command("_finalize", hidden=True)
def finalize_(version: str = typer.Argument(...), exit_code: int = typer.Option(..., "--exit-code")) -> None:
    """Run-script step: record how the run ended (called by the script's EXIT trap)."""
    from . import runner

    ws, v = _ws(), _v(version)
    record = runner.finalize(ws, v, exit_code)
    typer.echo(f"exp: {version} {record.status} (exit {exit_code})", err=True)
    if record.status == "finished":  # every backend (foreground, detached, Slurm) ends here
        from . import results

        try:
            result = results.analyze(ws, v)
        except ExpError as err:
            typer.echo(f"exp: the analysis failed: {err}; run `exp analyze {version}` after fixing it", err=True)
            return
        c = result["verdict_counts"]
        typer.echo(f"exp: {version} analyzed: {_counts(c)}, {len(result['anomalies'])} anomalies", err=True)


# -- results ---------------------------------------------------------------------------------
@command()
def analyze(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Metrics, verdicts on the expected results, anomalies, plots and drafts of the AI sections."""
    from . import results

    result = results.analyze(_ws(), _v(version))
    if json_out:
        _echo_json(result)
        return
    _print_analysis(result)


def _counts(counts: dict[str, int]) -> str:
    """"1 confirmed, 2 refuted, 0 inconclusive" from an analysis' verdict_counts."""
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in ("confirmed", "refuted", "inconclusive"))


def _print_analysis(result: dict[str, Any]) -> None:
    from .analysis import format_number as num

    v = result["version"]
    m = result["metrics"]
    typer.echo(f"{v}: analyzed — {result['path']}")
    shown = [k for k in ("steps", "final_loss", "val_loss", "best_val_loss", "val_ppl", "tokens_per_s", "wall_s") if k in m]
    typer.echo("  " + "  ".join(f"{k} {num(m[k])}" for k in shown))
    marks = {"confirmed": "✓", "refuted": "✗", "inconclusive": "?"}
    c = result["verdict_counts"]
    typer.echo(f"verdicts  {_counts(c)}")
    for x in result["verdicts"]:
        why = f"  ({x['reason']})" if x.get("reason") else ""
        typer.echo(f"  {marks[x['verdict']]} {x['claim']:30} observed {num(x['observed'])}  reference {num(x['reference'])}{why}")
    typer.echo(f"anomalies {len(result['anomalies']) or 'none'}")
    for a in result["anomalies"][:10]:
        typer.echo(f"  ! {a['kind']}: {a['message']}")
    for p in result["plots"]:
        typer.echo(f"plot      {p}")
    if result["drafted"]:
        typer.echo(f"drafted   {', '.join(result['drafted'])} (refine with `exp fill {v} SECTION --file F`)")
    if result["kept"]:
        typer.echo(f"kept      {', '.join(result['kept'])} (already written; not redrafted)")
    for u in result["untraceable"]:
        typer.echo(f"  ⚠ line {u['line']} ({u['section']}): {u['number']} is not in the run's evidence")
    for n in result["notes"]:
        typer.echo(f"note      {n}")
    typer.echo(f"next      check the AI sections (`exp context {v} --json`, `exp fill`), then a person runs `exp review {v}`")


@command()
def context(
    version: str = typer.Argument(..., help=VERSION_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What an AI assistant needs to write the analysis: sections, config, metrics, verdicts, samples."""
    from . import results

    data = results.context(_ws(), _v(version))
    if json_out:
        _echo_json(data)
        return
    from .analysis import format_number as num

    typer.echo(f"experiment {data['version']} [{data['status']}] — {data['description'] or '(no description)'}")
    for key, value in data["paths"].items():
        typer.echo(f"  {key:9} {value}")
    if data["metrics"]:
        typer.echo("metrics   " + "  ".join(f"{k} {num(x)}" for k, x in data["metrics"].items()))
    for x in data["verdicts"]:
        typer.echo(f"verdict   {x['claim']}: {x['verdict']} (observed {num(x['observed'])}, reference {num(x['reference'])})")
    for a in data["anomalies"]:
        typer.echo(f"anomaly   {a['message']}")
    for s in data["samples"][:4]:
        typer.echo(f"sample    {s.get('prompt')!r} → {str(s.get('completion'))[:80]!r}")
    typer.echo(f"write     {data['rules']['write']}\n(--json gives everything, section texts included)")


@command()
def fill(
    version: str = typer.Argument(..., help=VERSION_HELP),
    section: str = typer.Argument(..., metavar="SECTION", help="analysis, diagnosis or suggestions"),
    file: str = typer.Option(..., "--file", metavar="F", help="the text (markdown); - reads standard input"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the AI's prose into an AI section (human sections refused); warns of untraceable numbers."""
    from pathlib import Path

    from . import results

    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _usage(f"--file {file}: no such file") from None
        except UnicodeDecodeError:
            raise _usage(f"--file {file}: not UTF-8 text") from None
    result = results.fill(_ws(), _v(version), section, text)
    if json_out:
        _echo_json(result)
        return
    typer.echo(f"wrote the {section} of {version} ({result['path']})")
    for u in result["untraceable"]:
        typer.echo(f"warning: line {u['line']}: {u['number']} is not in the run's evidence "
                   f"(`exp context {version} --json` lists the values)", err=True)
    if not result["analyzed"]:
        typer.echo(f"note: {version} is not analysed yet, so numbers cannot be checked; run `exp analyze {version}`", err=True)


@command()
def review(version: str = typer.Argument(..., help=VERSION_HELP)) -> None:
    """A person reviews an analyzed record at a terminal: approve, request changes, or quit."""
    from . import review as review_mod

    result = review_mod.session(_ws(), _v(version))
    if not result["written"]:
        typer.echo(f"quit: nothing written; {version} stays {result['status']}")
        return
    typer.echo(f"{version}: {result['status']} (round {result['round']}, {result['reviewer']}); next: {result['next']}")


@command()
def commit(
    version: str = typer.Argument(..., help=VERSION_HELP),
    sign: bool = typer.Option(False, "--sign", help="sign the commit with git's configured key (git commit -S)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """git-commit an approved, unchanged record with its run script and small artifacts."""
    from . import review as review_mod

    result = review_mod.commit(_ws(), _v(version), sign=sign)
    if json_out:
        _echo_json(result)
        return
    typer.echo(f"committed {version} as {result['sha'][:12]} on {result['branch']}" + (" (signed)" if result["signed"] else ""))
    for path in result["paths"]:
        typer.echo(f"  {path}")
    for s in result["skipped"]:
        typer.echo(f"  not committed: {s['path']} ({s['bytes']} bytes > {s['limit']}, [tool.exp] artifact_max_bytes)")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


def _usage(message: str) -> ExpError:
    from .errors import UsageError

    return UsageError(message)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("exp: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
