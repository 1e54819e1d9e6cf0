"""Running: ``exp run``, ``exp doctor``, ``exp status``, ``exp logs``, ``exp stop``, ``exp sync``,
and the run script's own steps ``exp _start`` / ``exp _finalize``."""

from __future__ import annotations

import signal
import sys
from typing import Any, Optional

import typer

from .. import queue, records, remote, runner, watch
from ..numbers import fmt, format_number
from ..preflight import Check, failed_checks, preflight
from ..script import LaunchOptions
from ..status import next_step
from . import JSON_HELP, VERSION_HELP, command, counts, duration, echo_json, table, typer_app, usage, version, current_workspace

app = typer_app()


def _opts(backend: str, gpus: str | None, nproc: int | None, nnodes: int, node_rank: int, master_addr: str | None,
          resume: bool, time_limit: str | None = None, partition: str | None = None, *, ws: Any = None,
          master_port: int | None = None, account: str | None = None, qos: str | None = None, mem: str | None = None,
          cpus_per_task: int | None = None, constraint: str | None = None) -> LaunchOptions:
    opts = LaunchOptions(
        backend=backend, gpus=gpus, nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr or "127.0.0.1",
        master_port=master_port, resume=resume, time_limit=time_limit, partition=partition, account=account, qos=qos,
        mem=mem, cpus_per_task=cpus_per_task, constraint=constraint,
    )
    return opts.with_workspace_defaults(ws.settings) if ws is not None else opts.check()


def _print_checks(checks: list[Check], err: bool = False) -> None:
    marks = {True: "✓", False: "✗", None: "!"}
    for c in checks:
        fix = f"  → {c.fix}" if c.fix and c.ok is not True else ""
        typer.echo(f"  {marks[c.ok]} {c.name:15} {c.detail}{fix}", err=err)


def _watch(ws: Any, v: Any, launch: runner.Launch, max_steps: int, resume: bool) -> None:
    """Progress of a foreground run: a rich bar on a terminal, plain lines otherwise."""
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
                    runner.interrupt(launch, signal.SIGKILL)
                else:
                    stopping = True
                    typer.echo("\nexp: stopping — the trainer saves a checkpoint first (Ctrl-C again to kill)", err=True)
                    runner.interrupt(launch, signal.SIGTERM)

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
            task = bar.add_task("train", total=max_steps or None, info="starting…")
            for m in lines():
                if m.get("step") is not None:
                    bar.update(task, completed=m["step"], info=describe(m))
    else:
        for m in lines():
            if m.get("step") is None:
                continue
            if not max_steps:  # a trainer that decides its own length (epochs, a declared task's)
                typer.echo(f"step {m['step']:>6}  {describe(m)}")
                continue
            eta = (max_steps - m["step"]) * m.get("elapsed_s", 0) / max(m["step"], 1)
            typer.echo(f"step {m['step']:>6}/{max_steps}  {describe(m)}  eta {duration(eta)}")


def _queue_wanted(ws: Any, versions: list[str], members: bool, parallel: int | None, gpus_per_run: int | None,
                  fail_fast: bool) -> bool:
    """One version alone runs as it always has; several, a group's members, a replicated record or
    the queue's options make a run queue."""
    if len(versions) != 1 or members or parallel is not None or gpus_per_run is not None or fail_fast:
        return True
    v = version(versions[0])
    if not ws.record_path(v).exists():
        return False
    record = records.load(ws, v)
    return len(queue.groups.replicate_seeds(record.meta.get("config") or {})) > 1


def _print_plan(ws: Any, found: dict[str, Any]) -> None:
    rows = [[u["member"], str(u["seed"]), u["gpus"], u["rendezvous"], u["backend"], str(u["threads"] or "-"),
             ("resume" if u["resume"] else "fresh"), u["out_dir"]] for u in found["units"]]
    typer.echo(f"plan      queue {found['queue']}: {len(found['units'])} unit(s), {found['parallel']} at a time"
               + (f", GPU sets {' | '.join(found['gpu_sets'])}" if found["gpu_sets"] else "")
               + (f", {found['threads']} thread(s) each" if found["threads"] else ""))
    typer.echo(table(["member", "seed", "gpus", "rendezvous", "backend", "threads", "start", "out dir"], rows))
    typer.echo("commands")
    for u in found["units"]:
        typer.echo(f"  {u['member']:14} {u['command']}")
    for s in found["skipped"]:
        typer.echo(f"skipped   {s['version']}: {s['why']}")


def _run_queue(ws: Any, versions: list[str], members: bool, opts: LaunchOptions, gpus: str | None, parallel: int | None,
               gpus_per_run: int | None, fail_fast: bool, dry_run: bool, detach: bool, json_out: bool,
               target: Any = None) -> None:
    vs = queue.resolve_versions(ws, versions, members)
    qopts = queue.QueueOptions(parallel=parallel, gpus=gpus, gpus_per_run=gpus_per_run, fail_fast=fail_fast,
                               resume=opts.resume, launch=opts)
    if target is not None:
        _run_queue_on_host(ws, vs, qopts, target, dry_run, json_out)
        return
    plan = queue.plan(ws, vs, qopts)
    found = queue.plan_dict(ws, plan)
    if dry_run:
        if json_out:
            echo_json(found)
            return
        _print_plan(ws, found)
        for v, checks in plan.checks.items():
            bad = failed_checks(checks)
            typer.echo(f"preflight {v}: {'ok' if not bad else 'not found here: ' + ', '.join(c.name for c in bad)}")
            _print_checks(checks)
        if found["not_found_here"]:
            typer.echo("# what the preflight could not find here must be on the machine that runs the plan")
        typer.echo("# the plan is valid; nothing was started or written")
        return
    bad = {v: failed_checks(c) for v, c in plan.checks.items() if failed_checks(c)}
    if bad:
        raise usage("preflight failed, nothing started: " + " | ".join(
            f"{v}: " + "; ".join(f"{c.name}: {c.detail} — {c.fix}" for c in cs) for v, cs in bad.items()))
    if not plan.units:
        typer.echo("nothing to run: " + "; ".join(f"{s['version']} {s['why']}" for s in plan.skipped))
        return
    if plan.backend == "slurm":
        done = queue.summary(queue.submit_slurm(ws, plan))
        if json_out:
            echo_json(done)
        else:
            for u in done["units"]:
                typer.echo(f"submitted {u['name']} as Slurm job {u['job_id']}" if u["job_id"] else f"failed    {u['name']}: {u['error']}")
            typer.echo(f"follow    exp status · exp stop V · queue state {ws.rel(queue.state_path(ws, plan.id))}")
        if done["failed"]:
            raise typer.Exit(1)
        return
    if detach:
        started = queue.detach(ws, plan)
        if json_out:
            echo_json(started)
        else:
            typer.echo(f"queue     {started['queue']}: {len(started['units'])} unit(s), supervisor pid {started['pid']}; "
                       f"log {started['log']}")
            typer.echo("follow    exp status · exp stop V · exp run ... --resume continues what did not finish")
        return
    if not json_out:
        _print_plan(ws, found)
    sup = queue.Supervisor(ws, plan, echo=(lambda line: None) if json_out else typer.echo)
    try:
        sup.run()
    except KeyboardInterrupt:
        typer.echo("\nexp: the queue was stopped; `exp run ... --resume` continues what did not finish", err=True)
        raise typer.Exit(130)
    done = queue.summary(plan)
    if json_out:
        echo_json(done)
    else:
        typer.echo("\nqueue     " + ", ".join(f"{u['name']} {u['outcome'] or u['state']}" for u in done["units"]))
        for v in dict.fromkeys(u.version for u in plan.units):
            rec = records.load(ws, version(v))
            typer.echo(f"record    {v}: {rec.status}" + (f" ({(rec.meta.get('run') or {}).get('error')})"
                                                          if rec.status in ("failed", "interrupted") else ""))
    if not done["ok"]:
        raise typer.Exit(1)


def _run_queue_on_host(ws: Any, vs: list[Any], qopts: Any, target: Any, dry_run: bool, json_out: bool) -> None:
    """``exp run V1 V2 ... --host HOST``: the plan checked here, the queue run there (detached)."""
    plan, flags = queue.plan_for_host(ws, vs, qopts)
    where = f"{target.host}:{target.dir or '~/exp-runs/' + ws.root.name}"
    if dry_run:
        argv = remote.run_args(plan.versions, queue.host_launch_options(plan, qopts), flags)
        found = {**queue.plan_dict(ws, plan), "host": target.host, "dir": target.dir, "remote_command": "exp " + " ".join(argv)}
        if json_out:
            echo_json(found)
            return
        _print_plan(ws, found)
        typer.echo(f"on        {where}: {found['remote_command']} (its supervisor there; threads and the preflight are the host's)")
        typer.echo("# the plan is valid; nothing was copied, started or written")
        return
    if not plan.units:
        typer.echo("nothing to run: " + "; ".join(f"{s['version']} {s['why']}" for s in plan.skipped))
        return
    todo = list(dict.fromkeys(u.version for u in plan.units))  # with --resume, what finished stays here
    started = runner.launch_remote_queue(ws, [version(v) for v in todo], {v: plan.opts_for(v, None) for v in todo},
                                         queue.host_launch_options(plan, qopts), target, flags)
    if json_out:
        echo_json(started)
        return
    typer.echo(f"copied    {', '.join(started['pushed'])} to {started['host']}:{started['dir']}")
    typer.echo(f"queue     {started['queue']} on {started['host']}: {', '.join(started['units'] or started['versions'])}; "
               f"supervisor pid {started['pid']} there; log {started['log']}")
    typer.echo("follow    exp status V · exp logs V -f · exp stop V · exp pull V (brings a member's outputs back; "
               "when it ended there, finalizes and analyses it here)")


@command(app)
def run(
    versions_: list[str] = typer.Argument(..., metavar="VERSION...", help="experiment version(s) X.Y.Z; several make a run queue"),
    members: bool = typer.Option(False, "--members", help="run every member of the group VERSION (X.Y.0)"),
    parallel: Optional[int] = typer.Option(None, "--parallel", metavar="N", help="queue: run N at once (default 1, or one per GPU set)"),
    gpus_per_run: Optional[int] = typer.Option(None, "--gpus-per-run", metavar="K", help="queue: split --gpus into disjoint sets of K, one per run"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="queue: a failed unit cancels what is still pending (default: the others go on)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the script (a queue: its plan) and the preflight; start nothing"),
    detach: bool = typer.Option(False, "--detach", help="run in its own session and return (a queue: to a supervisor of its own)"),
    backend: str = typer.Option("local", "--backend", metavar="local|torchrun|slurm", help="how to launch"),
    gpus: Optional[str] = typer.Option(None, "--gpus", metavar="0,1|N",
                                       help="local/torchrun: GPU ids (sets CUDA_VISIBLE_DEVICES); slurm: a count of GPUs per node"),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N", help="processes per node where there is no GPU (gloo)"),
    nnodes: int = typer.Option(1, "--nnodes", "--nodes", metavar="N", help="nodes (slurm: sbatch --nodes; torchrun: run on each)"),
    node_rank: int = typer.Option(0, "--node-rank", metavar="R", help="torchrun multi-node: this node's rank"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", metavar="HOST", help="torchrun multi-node: node 0's address"),
    master_port: Optional[int] = typer.Option(None, "--master-port", metavar="PORT", help="torchrun multi-node: node 0's port (default: from the version)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last checkpoint"),
    time_limit: Optional[str] = typer.Option(None, "--time", metavar="HH:MM:SS", help="Slurm time limit (default 24:00:00)"),
    partition: Optional[str] = typer.Option(None, "--partition", metavar="NAME", help="Slurm partition"),
    account: Optional[str] = typer.Option(None, "--account", metavar="NAME", help="Slurm account"),
    qos: Optional[str] = typer.Option(None, "--qos", metavar="NAME", help="Slurm QOS"),
    mem: Optional[str] = typer.Option(None, "--mem", metavar="SIZE", help="Slurm memory per node, e.g. 64G"),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", metavar="N", help="Slurm CPUs per node's task (default: Slurm's)"),
    constraint: Optional[str] = typer.Option(None, "--constraint", metavar="FEATURES", help="Slurm node features, e.g. a100"),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST", help="run on HOST over ssh (user@host or an ssh config alias)"),
    port: Optional[int] = typer.Option(None, "--port", metavar="N", help="ssh port of --host"),
    remote_dir: Optional[str] = typer.Option(None, "--remote-dir", metavar="DIR", help="workspace copy on HOST (default ~/exp-runs/NAME)"),
    remote_python: Optional[str] = typer.Option(None, "--remote-python", metavar="PATH", help="Python on HOST with exp installed (default python3)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run records: render the script, preflight, start (foreground, detached, Slurm); several: a queue."""
    ws = current_workspace()
    if _queue_wanted(ws, versions_, members, parallel, gpus_per_run, fail_fast):
        opts = _opts(backend, None if backend != "slurm" else gpus, nproc, nnodes, node_rank, master_addr, resume, time_limit,
                     partition, ws=ws, master_port=master_port, account=account, qos=qos, mem=mem, cpus_per_task=cpus_per_task,
                     constraint=constraint)
        target = None if host is None else remote.Target(host, port, remote_dir, remote_python or remote.DEFAULT_PYTHON).check()
        _run_queue(ws, versions_, members, opts, gpus if backend != "slurm" else None, parallel, gpus_per_run, fail_fast,
                   dry_run, detach, json_out, target)
        return
    version_ = versions_[0]
    v = version(version_)
    opts = _opts(backend, gpus, nproc, nnodes, node_rank, master_addr, resume, time_limit, partition, ws=ws,
                 master_port=master_port, account=account, qos=qos, mem=mem, cpus_per_task=cpus_per_task, constraint=constraint)
    target = runner.remote_target(ws, v, host, port, remote_dir, remote_python, resume)
    if target is not None:
        if dry_run:
            raise usage("--dry-run shows the script here; --host copies it to HOST and starts it there: drop one of them")
        started = runner.launch_remote(ws, v, opts, target)
        if json_out:
            echo_json(started)
        else:
            typer.echo(f"copied    {', '.join(started['pushed'])} to {started['host']}:{started['dir']}")
            typer.echo(f"started   {v} on {started['host']} as pid {started['pid']}; log {started['log']}")
            typer.echo(f"follow    exp status {v} · exp logs {v} -f · exp stop {v} · exp pull {v} (brings the outputs back)")
        return
    launch = runner.prepare(ws, v, opts, dry_run=dry_run)
    bad = failed_checks(launch.checks)
    if dry_run:
        if json_out:
            echo_json({"version": str(v), "script": str(launch.script), "text": launch.text,
                        "preflight": [c.to_dict() for c in launch.checks], "ok": not bad})
        else:
            typer.echo(launch.text, nl=False)
            typer.echo(f"\n# ---- preflight ({'ok' if not bad else 'FAILED'}); nothing was started or written "
                       f"(`exp run {v}` writes {ws.rel(launch.script)})")
            _print_checks(launch.checks)
        raise typer.Exit(1 if bad else 0)
    if not json_out:
        typer.echo(f"script    {ws.rel(launch.script)}")
        typer.echo("preflight")
        _print_checks(launch.checks)
    launch = runner.launch(ws, v, opts, launch)
    if opts.node_rank > 0:  # another node of node 0's run: it trains; the record is node 0's
        typer.echo(f"joined    {v} as node {opts.node_rank} of {opts.nnodes} (pid {launch.pid}); log {ws.rel(launch.log)}")
        if detach:
            return
        code = launch.process.wait()
        typer.echo(f"node {opts.node_rank} exited with code {code}; the record is node 0's: exp status {v}")
        raise typer.Exit(0 if code == 0 else 1)
    where = f"Slurm job {launch.job_id}" if launch.job_id else f"pid {launch.pid}"
    if launch.job_id or detach:
        if json_out:
            echo_json({"version": str(v), "status": "running", "job_id": launch.job_id, "pid": launch.pid, "log": str(launch.log)})
        else:
            typer.echo(f"started   {v} as {where}; log {ws.rel(launch.log)}")
            typer.echo(f"follow    exp status {v} · exp logs {v} -f · exp stop {v}")
        return
    if not json_out:
        typer.echo(f"started   {v} as {where}; log {ws.rel(launch.log)}")
        record = records.load(ws, v)
        _watch(ws, v, launch, int((record.meta.get("config") or {}).get("max_steps", 0)), opts.resume)
    record = runner.wait(ws, v, launch)
    run_info = record.meta.get("run") or {}
    if json_out:
        echo_json({"version": str(v), "status": record.status, "run": {k: w for k, w in run_info.items() if k != "token"}})
    else:
        typer.echo(f"\n{v}: {record.status} (exit {run_info.get('exit_code')}, {duration(run_info.get('duration_s'))})")
        for key, value in (run_info.get("final") or {}).items():
            typer.echo(f"  {key:15} {fmt(round(value, 4) if isinstance(value, float) else value)}")
        if run_info.get("error"):
            typer.echo(f"  error: {run_info['error']}")
        out = ws.rel(ws.out_dir(v))
        typer.echo(f"record    {ws.rel(ws.record_path(v))}\noutputs   {out}/ (samples.json, summary.json, metrics.jsonl, train.log)")
        found = record.meta.get("analysis") or {}
        if record.status == "analyzed" and found:
            c = found.get("verdict_counts") or {}
            typer.echo(f"verdicts  {counts(c)}")
            for x in found.get("verdicts") or []:
                typer.echo(f"  {x['verdict']:12} {x['claim']} (observed {format_number(x.get('observed'))})")
            typer.echo(f"anomalies {len(found.get('anomalies') or []) or 'none'}")
            for p in found.get("plots") or []:
                typer.echo(f"plot      {p}")
        nxt = (f"write the analysis (`exp context {v} --json`, `exp fill {v} analysis --file F`), then a person runs `exp review {v}`"
               if record.status == "analyzed" else next_step(record.status, str(v)))
        typer.echo(f"next      {nxt}")
    if record.status not in ("finished", "analyzed"):
        raise typer.Exit(1)


@command(app)
def doctor(
    version_: Optional[str] = typer.Argument(None, metavar="[VERSION]", help="check this record's config too"),
    backend: str = typer.Option("local", "--backend", metavar="local|torchrun|slurm", help="the backend to check"),
    gpus: Optional[str] = typer.Option(None, "--gpus", metavar="0,1", help="GPUs the run will ask for"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the environment a run needs: torch, GPUs, data, tokenizer, disk, SwanLab, git."""
    ws = current_workspace()
    record = records.load(ws, version(version_)) if version_ else None
    checks, env = preflight(ws, record, _opts(backend, gpus, None, 1, 0, None, False, ws=ws),
                            stage="submit" if backend == "slurm" else "local")
    bad = failed_checks(checks)
    if json_out:
        echo_json({"ok": not bad, "checks": [c.to_dict() for c in checks], "environment": env})
    else:
        _print_checks(checks)
        typer.echo("ok" if not bad else f"{len(bad)} problem(s)")
    if bad:
        raise typer.Exit(1)


@command(app)
def status(
    version_: Optional[str] = typer.Argument(None, metavar="[VERSION]", help="one record (default: every running one)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show running experiments, queues and replicates: step, loss, tokens/s, ETA; finds runs that died."""
    ws = current_workspace()
    v = version(version_) if version_ else None
    member_vs = [e.version for e in queue.groups.members(ws, v)] if v is not None else []
    if member_vs:  # a group: its members, and the queues that run them
        rows = [r for m in member_vs for r in watch.status(ws, m)]
        queues = queue.status(ws, [str(m) for m in member_vs])
        if json_out:
            echo_json({"runs": rows, "queues": queues})
            return
    else:
        rows = watch.status(ws, v)
        rows += queue.pending_rows(ws, {r["version"] for r in rows}) if v is None else []
        queues = queue.status(ws, [str(v)] if v else None) if not json_out else []
        if json_out:
            echo_json(rows)
            return
    for q in queues:
        typer.echo(f"queue {q['queue']} ({q['supervisor']})")
        for u in q["units"]:
            step = f"step {u['step']}/{u.get('max_steps')}" if u.get("step") is not None else ""
            eta = f"eta {duration(u['eta_s'])}" if u.get("eta_s") is not None else ""
            typer.echo("  " + "  ".join(x for x in (f"{u['member']:12}", f"seed {u['seed']}", f"{u['status']:11}", step, eta,
                                                       u.get("why") or "") if x))
    if not rows and not queues:
        typer.echo("nothing is running")
        return
    for r in rows:
        step = f"step {r['step']}/{r.get('max_steps')}" if r.get("step") is not None else "no steps yet"
        loss = f"loss {r['loss']:.4f}" if r.get("loss") is not None else ""
        tps = f"{r['tokens_per_s']:,.0f} tok/s" if r.get("tokens_per_s") else ""
        eta = f"eta {duration(r['eta_s'])}" if r.get("eta_s") is not None and r["status"] == "running" else ""
        line = "  ".join(x for x in (r["version"], r["status"], step, loss, tps, eta, r.get("where", "")) if x)
        typer.echo(line)
        for key in ("note", "error"):
            if r.get(key):
                typer.echo(f"  {key}: {r[key]}")
        for rep in r.get("replicates") or []:
            step = f"step {rep['step']}/{rep.get('max_steps')}" if rep.get("step") is not None else ""
            eta = f"eta {duration(rep['eta_s'])}" if rep.get("eta_s") is not None and rep["status"] == "running" else ""
            typer.echo("  " + "  ".join(x for x in (f"r{rep['index']}", f"seed {rep['seed']}", rep["status"], step, eta,
                                                       rep.get("error") or "") if x))


@command(app)
def logs(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing until the run ends"),
) -> None:
    """Print the run's log (out/experiment_VERSION/run.log); -f follows it."""
    try:
        for line in watch.follow_log(current_workspace(), version(version_), follow):
            typer.echo(line, nl=False)
    except KeyboardInterrupt:
        pass


@command(app)
def stop(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    members: bool = typer.Option(False, "--members", help="stop every member of the group VERSION (pending ones never start)"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Stop a run with SIGTERM (scancel on Slurm); it checkpoints and becomes interrupted."""
    ws = current_workspace()
    if members or queue.is_pending(ws, version(version_)):
        results = queue.stop(ws, queue.check_members_flag(ws, version(version_)) if members else [version(version_)])
        if json_out:
            echo_json(results)
        else:
            for res in results:
                typer.echo(f"{res['version']}: {res['status']}" + (f" ({res['note']})" if res.get("note") else ""))
        return
    result = watch.stop(ws, version(version_))
    if json_out:
        echo_json(result)
    else:
        typer.echo(f"{version_}: {result['status']}" + (f" ({result['note']})" if result.get("note") else ""))
        if result["status"] == "interrupted":
            typer.echo(f"resume with: exp run {version_} --resume (or `exp analyze {version_}` for a partial analysis first)")


@command(app)
def pull(
    version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP),
    members: bool = typer.Option(False, "--members", help="pull every member of the group VERSION that ran on a host"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Bring a remote run's outputs back over ssh; a run that ended there is finalized and analysed."""
    ws = current_workspace()
    if members:
        results = runner.pull_many(ws, queue.check_members_flag(ws, version(version_)))
    else:
        results = [runner.pull(ws, version(version_))]
    if json_out:
        echo_json(results if members else results[0])
        return
    for result in results:
        v = result["version"]
        if result.get("skipped"):
            typer.echo(f"{v}: {result['status']} ({result['skipped']})")
            continue
        typer.echo(f"{v}: {result['status']} (pulled from {result['host']}; {result['where']})")
        if result.get("note"):
            typer.echo(f"  note: {result['note']}")
        if result["status"] == "running":
            typer.echo(f"still running there: `exp pull {v}` again later, or `exp logs {v} -f`")
        elif not members:
            typer.echo(f"next      {next_step(result['status'], v)}")
    if members and any(r.get("error") for r in results):
        raise typer.Exit(1)


@command(app)
def sync(version_: str = typer.Argument(..., metavar="VERSION", help=VERSION_HELP)) -> None:
    """Upload the run's offline SwanLab log to the cloud (swanlab sync)."""
    result = runner.sync(current_workspace(), version(version_))
    typer.echo(result["output"] or f"synced {result['run_dir']}")


@command(app, "_start", hidden=True)
def start_(
    version_: str = typer.Argument(..., metavar="VERSION"),
    backend: str = typer.Option("local", "--backend"),
    pid: int = typer.Option(0, "--pid"),
    gpus: Optional[str] = typer.Option(None, "--gpus"),
    nproc: Optional[int] = typer.Option(None, "--nproc"),
    nnodes: int = typer.Option(1, "--nnodes"),
    replicate: Optional[int] = typer.Option(None, "--replicate"),
) -> None:
    """Run-script step: preflight, then mark the record running (called by the rendered script)."""
    opts = LaunchOptions(backend=backend, gpus=gpus, nproc=nproc, nnodes=nnodes)
    if replicate is not None:
        checks, record = runner.start_replicate(current_workspace(), version(version_), opts, replicate, pid)
    else:
        checks, record = runner.start_from_script(current_workspace(), version(version_), opts, pid)
    if checks:
        typer.echo("preflight", err=True)
        _print_checks(checks, err=True)
    if record is None:
        run_info = records.load(current_workspace(), version(version_)).meta.get("run") or {}
        if run_info.get("status") == "failed" and "preflight failed" in str(run_info.get("error")):
            typer.echo("exp: the job's preflight failed; the run is marked failed with the reason", err=True)
        else:
            typer.echo("exp: preflight failed; nothing started, the record is unchanged", err=True)
        raise typer.Exit(1)


@command(app, "_finalize", hidden=True)
def finalize_(version_: str = typer.Argument(..., metavar="VERSION"), exit_code: int = typer.Option(..., "--exit-code"),
              replicate: Optional[int] = typer.Option(None, "--replicate")) -> None:
    """Run-script step: record how the run ended (called by the script's EXIT trap)."""
    record, result, failure = runner.conclude(current_workspace(), version(version_), exit_code, replicate=replicate)
    run_info = record.meta.get("run") or {}
    if replicate is not None:
        reps = run_info.get("replicates") or []
        mine = reps[replicate].get("status") if replicate < len(reps) else "unknown"
        typer.echo(f"exp: {version_} replicate {replicate} {mine} (exit {exit_code}); the record is {record.status}", err=True)
    else:
        typer.echo(f"exp: {version_} {run_info.get('status', record.status)} (exit {exit_code})", err=True)
    if failure:
        typer.echo(f"exp: the analysis failed: {failure}; run `exp analyze {version_}` after fixing it", err=True)
    elif result is not None:
        typer.echo(f"exp: {version_} analyzed: {counts(result['verdict_counts'])}, {len(result['anomalies'])} anomalies", err=True)


@command(app, "_queue", hidden=True)
def queue_(queue_id: str = typer.Argument(..., metavar="ID")) -> None:
    """The detached run queue's supervisor (started by `exp run ... --detach`)."""
    queue.supervise(current_workspace(), queue_id)
