"""Running a record: begin, launch, follow, stop, finalize.

``exp run`` renders the script (``script``), preflights (``preflight``), does the bookkeeping
before the launch (so a second ``exp run`` is refused at once), and adds what a person at a
terminal wants: a progress display, ``--detach``, and ``sbatch``. The script's own ``exp
_start`` and ``exp _finalize`` calls land in ``start_from_script`` and ``finalize``, so a
detached or Slurm run updates its record by itself. This is the only module that starts
processes for a run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfg_mod
from . import catalog, gitops, grouping, lifecycle, procs, records, remote, results, slurm, store, tasks, times, tracking, view
from .groups import replicate_seeds
from .errors import ConfigError, ExpError
from .files import atomic_write, read_json, write_json
from .groups import prereg_sections
from .preflight import Check, failed_checks, init_model_dir, preflight, swanlab_logged_in
from .record import Record, sha256
from .script import LaunchOptions, RunError, code_state, git_state, own_paths, render_script, write_script
from .status import next_step, require_status, transition
from .version import Version
from .workspace import Workspace

#: States from which a fresh run may start.
STARTABLE = ("draft", "ready", "failed")
#: What the record keeps of the trainer's summary.json as the run's final figures.
FINAL_KEYS = ("steps", "final_loss", "best_val_loss", "val_ppl", "tokens_seen", "tokens_per_s", "wall_s", "params", "peak_mem_mb", "mfu")
LOG_TAIL_LINES = 30


# -- begin and finalize (the script's _start and _finalize) ------------------------------------
def _require_startable(ws: Workspace, record: Record, resume: bool) -> None:
    """Refuse a run that is running, or a fresh run of a record that has run, or a resume of a
    run that finished or has no checkpoint; each with the next step."""
    version = record.version
    run = record.meta.get("run") or {}
    if record.status == "running":
        raise RunError(
            f"{version} is already running ({_where(run)}); `exp status {version}`, `exp logs {version} -f` or `exp stop {version}`"
        )
    if resume:
        if record.status in ("analyzed", "changes_requested") and run.get("status") in ("interrupted", "failed"):
            pass  # a partial analysis of a run that did not finish: it may go on
        elif record.status in ("analyzed", "changes_requested"):
            raise RunError(f"cannot resume {version}: its run finished (there is nothing left to run); next: "
                           f"{next_step(record.status, str(version))}")
        else:
            require_status(record, ("interrupted", "failed"), "resume")
        if (not run.get("remote") and not run.get("replicates")  # remote: they are there; replicates: each resumes or starts
                and not any((ws.out_dir(version) / "checkpoints").glob("*.pt"))):
            raise RunError(
                f"{version} has no checkpoint to resume from in {ws.rel(ws.out_dir(version))}/checkpoints; "
                f"run it afresh with `exp run {version}`"
            )
        return
    if record.status not in STARTABLE:
        nxt = (
            f"continue it with `exp run {version} --resume`"
            if record.status == "interrupted" or run.get("status") == "interrupted"
            else f"start the next experiment with `exp new NEXT --from {version}`"
        )
        raise RunError(f"{version} has already run (status {record.status}); {nxt}")
    lifecycle.ready_or_raise(ws, record)


def run_config(ws: Workspace, record: Record) -> dict[str, Any]:
    """The config the trainer receives (out/experiment_V/config.json): the record's, validated
    by its task; a classify record's ``init_from: VERSION`` becomes that record's final model."""
    cfg = cfg_mod.validate_for(tasks.of(ws, record.meta), record.meta.get("config") or {})
    source = cfg.get("init_from")
    if tasks.name_of(record.meta) == "classify" and isinstance(source, str) and Version.is_valid(source):
        try:
            cfg["init_from"] = str(init_model_dir(ws, source))
        except ConfigError as err:
            raise RunError(str(err)) from None
    return cfg


def _archive_previous_outputs(ws: Workspace, version: Version) -> Path | None:
    """A fresh run after a failed one keeps the failed outputs, moved aside."""
    out = ws.out_dir(version)
    if not out.exists() or not any(p for p in out.iterdir() if p.name not in ("config.json",)):
        return None
    target = out.with_name(f"{out.name}.previous-{times.stamp()}")
    out.rename(target)
    return target


def begin(ws: Workspace, version: Version, opts: LaunchOptions, pid: int | None = None, token: str | None = None,
          env: dict[str, Any] | None = None, command: str | None = None, snapshot: bool = True,
          queue: str | None = None) -> Record:
    """Status running, pre-registration, config.json and the environment snapshot.

    Idempotent for the token that ``exp run`` passed to the script it launched. ``snapshot=False``
    (a Slurm submit on a login node): the environment is taken in the job, on the node that
    trains (``start_from_script``).
    """
    out = ws.out_dir(version)
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        if record.status == "running":
            if token and run.get("token") == token:
                if pid:
                    run.update(_process(pid))
                if os.environ.get("SLURM_JOB_ID"):
                    run["job_id"] = os.environ["SLURM_JOB_ID"]
                record.meta["run"] = run
                return record
        _require_startable(ws, record, opts.resume)
        if opts.resume:
            run.setdefault("resumed", []).append(times.now())
            for key in ("ended", "duration_s", "exit_code", "error", "log_tail", "final", "status", "ended_by"):
                run.pop(key, None)
            if run.get("replicates"):  # only the replicates that did not finish run again
                run["replicates"] = [r if r.get("status") == "finished" else _pending(r["index"], r["seed"])
                                     for r in run["replicates"]]
        else:
            _archive_previous_outputs(ws, version)
            cfg = run_config(ws, record)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", cfg)
            record.meta["prereg"] = {
                "at": times.now(),
                "sections": prereg_sections(ws, record),  # a group member's: the text that holds for it
            }
            repo = git_state(ws) or {}
            run = {
                "started": times.now(),
                "backend": opts.backend,
                "host": socket.gethostname(),
                "command": command or f"bash {ws.rel(ws.run_script_path(version))}",
                "script": ws.rel(ws.run_script_path(version)),
                "git_sha": repo.get("sha") or "not a git repository",
                "git_dirty": bool(repo.get("dirty")),
                "out_dir": ws.rel(out),
            }
            if opts.backend in ("torchrun", "slurm"):
                run["processes"] = opts.procs * opts.nnodes
            script = ws.run_script_path(version)
            if script.exists():
                run["script_sha256"] = sha256(script.read_bytes())
            seeds = replicate_seeds(cfg)
            if len(seeds) > 1:  # each replicate its own directory and config.json (its seed), none of them started
                for i, seed in enumerate(seeds):
                    ws.replicate_dir(version, i).mkdir(parents=True, exist_ok=True)
                    write_json(ws.replicate_dir(version, i) / "config.json", {**cfg, "seed": seed})
                run["replicates"] = [_pending(i, seed) for i, seed in enumerate(seeds)]
            if snapshot:
                _take_environment(ws, version, record, run, env, repo)
            else:
                run["host"] = "not yet: the Slurm job's node, once it starts"
        run["token"] = token or secrets.token_hex(8)
        if queue:
            run["queue"] = queue
        else:
            run.pop("queue", None)
        if pid:
            run.update(_process(pid))
        if os.environ.get("SLURM_JOB_ID"):
            run["job_id"] = os.environ["SLURM_JOB_ID"]
        record.meta["run"] = run
        if record.status == "draft":  # `exp run` checked it just now (_require_startable): it is ready
            transition(record, "ready")
        transition(record, "running")
        _regenerate_quietly(ws, record, ("execution", "environment"))
    return record


def _take_environment(ws: Workspace, version: Version, record: Record, run: dict[str, Any], env: dict[str, Any] | None,
                      repo: dict[str, Any] | None = None) -> None:
    """The run's host, GPUs, versions and trainer code into ``run``; env.json, requirements.txt,
    the diffs and experiment_info.txt into its outputs. Where the trainer runs: at ``exp run`` for
    a local run, inside the job for a Slurm one."""
    envinfo = env or {}
    repo = repo if repo is not None else (git_state(ws) or {})
    run["host"] = envinfo.get("host") or socket.gethostname()
    run["code"] = code_state(env)
    _snapshot(ws, version, ws.out_dir(version), record, repo, env, run["code"])
    run["gpus"] = ", ".join(envinfo.get("gpus") or []) or "none (CPU)"
    run["env"] = {k: envinfo[k] for k in ("python", "torch", "cuda", "transformers", "tokenizers", "swanlab", "platform", "host", "cpus") if envinfo.get(k) is not None}


def _snapshot(ws: Workspace, version: Version, out: Path, record: Record, repo: dict[str, Any], env: dict[str, Any] | None,
              code: dict[str, Any]) -> None:
    """Files that let a result be traced: the workspace's and the trainer code's uncommitted
    changes (git.diff, code.diff; untracked files included), pip freeze, environment, a summary."""
    diffs = []
    if repo.get("dirty"):
        diffs.append(("git.diff", ws.root, (), own_paths(ws)))
    if code.get("dirty"):
        diffs.append(("code.diff", Path(code["location"]), tuple(Path(p) for p in code["packages"]), ()))
    for name, where, only, exclude in diffs:
        try:
            atomic_write(out / name, gitops.diff(where, only=only, exclude=exclude))
        except Exception as err:  # the diff is evidence, not a precondition
            atomic_write(out / name, f"# could not save the diff: {err}\n")
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True, text=True, timeout=120)
    atomic_write(out / "requirements.txt", freeze.stdout if freeze.returncode == 0 else f"# pip freeze failed: {freeze.stderr.strip()}\n")
    write_json(out / "env.json", env or {})
    meta = record.meta
    atomic_write(
        out / "experiment_info.txt",
        "\n".join(
            [
                f"experiment   {version}",
                f"description  {json.dumps(meta.get('description', ''), ensure_ascii=False)}",
                f"parent       {meta.get('parent') or '-'}",
                f"baseline     {meta.get('baseline') or '-'}",
                f"record       {ws.rel(ws.record_path(version))}",
                f"script       {ws.rel(ws.run_script_path(version))}",
                f"git          {repo.get('sha') or 'not a git repository'}{' (dirty)' if repo.get('dirty') else ''}",
                f"started      {times.now()}",
                "",
            ]
        ),
    )


def _process(pid: int) -> dict[str, Any]:
    """What the record keeps of a run's process: host, pid, process group and start time, so that
    a later look or stop never takes a reused pid (or one on another host) for it."""
    ident = procs.identity(pid)
    fields: dict[str, Any] = ident.to_dict() if ident else {"pid": pid}
    fields["host"] = procs.hostname()
    return fields


def _regenerate_quietly(ws: Workspace, record: Record, names: tuple[str, ...]) -> None:
    """Generated sections follow the data; if a person edited one by hand, the data is still
    recorded in the state and the edit is left for `exp check` to report."""
    warning = view.regenerate_quietly(ws, record, names)
    if warning:
        records.note(f"warning: {warning}")


def _where(run: dict[str, Any]) -> str:
    if run.get("remote"):
        return f"pid {run['remote'].get('pid')} on {run['remote']['host']}, over ssh"
    if run.get("job_id"):
        return f"Slurm job {run['job_id']}"
    if run.get("pid"):
        return f"pid {run['pid']} on {run.get('host', '?')}"
    return "starting"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing, unreadable or not an object."""
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


def finalize(ws: Workspace, version: Version, exit_code: int, reason: str | None = None, interrupted: bool = False,
             ended_by: str | None = None, replicate: int | None = None) -> Record:
    """Record how the run ended: finished, failed (with the error and the log's tail) or interrupted.

    ``ended_by`` names the command that concluded the run from outside (``exp status`` finding it
    gone, ``exp stop``); without it, this is the run's own finalize (its script's EXIT trap), which
    wins over such a conclusion when it comes later: the record is put back to running, then ended
    with what the run itself says.
    """
    if replicate is not None:
        return finalize_replicate(ws, version, replicate, exit_code, reason=reason, interrupted=interrupted, ended_by=ended_by)
    if replicated(records.load(ws, version).meta.get("run")):
        return finalize_replicates(ws, version, exit_code, reason=reason, interrupted=interrupted, ended_by=ended_by)
    out = ws.out_dir(version)
    trainer = _read_json(out / "status.json")
    summary = _read_json(out / "summary.json")
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        if (ended_by is None and run.get("ended_by") and run.get("status") == "interrupted"
                and record.status in ("interrupted", "analyzed", "changes_requested")):
            # concluded from outside (and maybe analysed as partial since): what the run says wins
            records.note(f"{version}: the run's own finalize replaces the conclusion of `{run['ended_by']}`")
            run.pop("ended_by", None)
            transition(record, "running")
        if record.status != "running":
            return record
        job = os.environ.get("SLURM_JOB_ID")
        if job and str(run.get("job_id")) == job and exit_code != 0 and trainer.get("status") != "finished" \
                and slurm.requeue_pending(job, _restart_count()):
            # Slurm is requeueing this job: the next attempt resumes from the checkpoint, the run goes on
            run.setdefault("requeued", []).append(times.now())
            run["last_step"] = trainer.get("step", run.get("last_step"))
            record.meta["run"] = run
            return record
        status = ended_status(trainer, summary, exit_code, interrupted)
        run["ended"] = times.now()
        run["duration_s"] = round(times.age_s(run["started"]), 1) if run.get("started") else None
        run["exit_code"] = exit_code
        final = final_figures(ws, record.meta, summary)
        if final:
            run["final"] = final
        swan = tracking.run_dirs(out)
        if swan:
            run["swanlab_dir"] = ws.rel(swan[-1])
        if isinstance(summary.get("tracking") or trainer.get("tracking"), dict):
            run["tracking"] = summary.get("tracking") or trainer["tracking"]  # the mode it got, and why not the one asked for
        if status != "finished":
            error = trainer.get("error") or reason or (f"the run exited with code {exit_code}" if exit_code else "the trainer did not report finishing")
            run["error"] = " ".join(str(error).split())[:500]
            tail = tail_lines(out / "train.log") or tail_lines(out / "run.log")
            if tail:
                run["log_tail"] = "\n".join(tail)
        if trainer.get("step") is not None:
            run["last_step"] = trainer["step"]
        run["status"] = status
        if ended_by:
            run["ended_by"] = ended_by
        record.meta["run"] = run
        transition(record, status)
        _regenerate_quietly(ws, record, ("execution", "environment"))
    (out / "run.pid").unlink(missing_ok=True)
    return record


def conclude(ws: Workspace, version: Version, exit_code: int, reason: str | None = None,
             interrupted: bool = False, ended_by: str | None = None,
             replicate: int | None = None) -> tuple[Record, dict[str, Any] | None, str | None]:
    """``finalize``, then analyse a run that finished (every way a run ends comes here: the
    script's EXIT trap, a foreground ``exp run``, ``exp status`` finding a dead process).
    Returns (record, the analysis or None, why the analysis failed or None)."""
    record = finalize(ws, version, exit_code, reason=reason, interrupted=interrupted, ended_by=ended_by, replicate=replicate)
    if record.status == "running":  # a replicate ended, others go on
        return record, None, None
    result, failure = None, None
    if record.status == "finished":
        try:
            result = results.analyze(ws, version)
        except ExpError as err:
            failure = str(err)
    try:  # the last member of a group to end analyses the group
        if grouping.after_member_end(ws, version) is not None:
            records.note(f"{version} was the last member of its group to end: the group's analysis is written")
    except ExpError as err:
        records.note(f"the group's analysis failed: {err}")
    if failure is not None:
        return record, None, failure
    return (records.load(ws, version), result, None) if result is not None else (record, None, None)


def _restart_count() -> int:
    """This Slurm attempt's ``SLURM_RESTART_COUNT`` (0: the first; a requeued job counts up)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def start_from_script(ws: Workspace, version: Version, opts: LaunchOptions, pid: int) -> tuple[list[Check], Record | None]:
    """The script's first step. Launched by ``exp run`` (its token in the environment): the
    bookkeeping is done, only the pid is noted — and in a Slurm job the job's own preflight runs
    here, on the node that trains (torch, CUDA, the GPUs the job got, data), and the environment
    is snapshotted here; a failed one fails the run with its reason. A requeued job
    (``SLURM_RESTART_COUNT > 0``) continues its run: the trainer resumes from the checkpoint.
    Run by hand or by Slurm on its own: preflight, and begin only if it passed (a failed preflight
    leaves the status unchanged)."""
    opts.resume = opts.resume or bool(os.environ.get("EXP_RESUME"))
    opts.check()
    token = os.environ.get("EXP_RUN_TOKEN")
    job = os.environ.get("SLURM_JOB_ID")
    record = records.load(ws, version)
    run = record.meta.get("run") or {}
    ours = bool(token) and run.get("token") == token
    requeued = ours and bool(job) and str(run.get("job_id")) == job and _restart_count() > 0 \
        and record.status in ("running", "interrupted")
    if ours and record.status == "running" and not job:
        return [], begin(ws, version, opts, pid=pid, token=token)
    if (ours and record.status == "running") or requeued:
        checks, env = preflight(ws, record, opts, stage="job")
        bad = failed_checks(checks)
        if bad:
            host = env.get("host") or socket.gethostname()
            reason = f"the job's preflight failed on {host}: " + "; ".join(f"{c.name}: {c.detail} — {c.fix}" for c in bad)
            if record.status == "running":
                with records.update(ws, version) as rec:
                    r = rec.meta.get("run") or {}
                    _take_environment(ws, version, rec, r, env)
                    rec.meta["run"] = r
                finalize(ws, version, 1, reason=reason)
            return checks, None
        with records.update(ws, version) as rec:
            r = rec.meta.get("run") or {}
            if rec.status != "running":  # the first attempt's EXIT trap ended it; the requeued attempt goes on
                for key in ("ended", "duration_s", "exit_code", "error", "log_tail", "final", "status"):
                    r.pop(key, None)
                transition(rec, "running")
            if requeued:
                r["restarts"] = _restart_count()
                r.setdefault("resumed", []).append(times.now())
            _take_environment(ws, version, rec, r, env)
            r.update(_process(pid))
            r["job_id"] = job
            rec.meta["run"] = r
            _regenerate_quietly(ws, rec, ("execution", "environment"))
        return checks, records.load(ws, version)
    _require_startable(ws, record, opts.resume)
    checks, env = preflight(ws, record, opts, stage="job" if job else "local")
    if failed_checks(checks):
        return checks, None
    return checks, begin(ws, version, opts, pid=pid, env=env, command=f"bash {ws.rel(ws.run_script_path(version))}")


# -- replicates: one record's run trained with seeds seed, seed+1, ... in r0/, r1/, ... ------------
#: A replicate's bookkeeping in ``run.replicates[i]``: index, seed, status (pending, running,
#: finished, failed, interrupted), started, ended, exit_code, error, and its process or job.
REPLICATE_ENDED = ("finished", "failed", "interrupted")


def _pending(index: int, seed: int) -> dict[str, Any]:
    return {"index": index, "seed": seed, "status": "pending"}


def replicated(run: dict[str, Any] | None) -> bool:
    """Does this run train several replicates (``run.replicates``)?"""
    return bool((run or {}).get("replicates"))


def supervisor_alive(ws: Workspace, queue_id: str | None) -> bool:
    """Is the process that runs queue ``queue_id`` (its supervisor, or the foreground `exp run`) alive?"""
    if not queue_id:
        return False
    state = read_json(ws.queue_dir() / f"{queue_id}.json")
    sup = state.get("supervisor") if isinstance(state, dict) else None
    if not isinstance(sup, dict) or not sup.get("pid") or sup.get("host") not in (None, procs.hostname()):
        return False
    return procs.same_process(int(sup["pid"]), sup.get("pid_started")) is not False


def start_replicate(ws: Workspace, version: Version, opts: LaunchOptions, index: int,
                    pid: int) -> tuple[list[Check], Record | None]:
    """The script's first step for replicate ``index`` (``exp _start V --replicate i``): the
    record was begun by ``exp run`` (its token); mark this replicate running with its process. In
    a Slurm job, the job's preflight runs first (a failed one fails the replicate) and the first
    replicate to start snapshots the environment."""
    opts.resume = opts.resume or bool(os.environ.get("EXP_RESUME"))
    opts.check()
    token = os.environ.get("EXP_RUN_TOKEN")
    job = os.environ.get("SLURM_JOB_ID")
    record = records.load(ws, version)
    run = record.meta.get("run") or {}
    reps = run.get("replicates") or []
    if record.status != "running" or not token or run.get("token") != token or not 0 <= index < len(reps):
        raise RunError(f"replicate {index} of {version} was not started by `exp run {version}` (status {record.status}); "
                       f"run the record with `exp run {version}`")
    checks: list[Check] = []
    env: dict[str, Any] = {}
    if job:
        checks, env = preflight(ws, record, opts, stage="job")
        bad = failed_checks(checks)
        if bad:
            host = env.get("host") or socket.gethostname()
            finalize_replicate(ws, version, index, 1, reason=f"the job's preflight failed on {host}: "
                               + "; ".join(f"{c.name}: {c.detail} — {c.fix}" for c in bad))
            return checks, None
    with records.update(ws, version) as rec:
        run = rec.meta.get("run") or {}
        rep = run["replicates"][index]
        if rec.status != "running" or rep.get("status") not in ("pending", "running") or run.get("stopping"):
            raise RunError(f"replicate {index} of {version} is {rep.get('status')} (record {rec.status}); it does not start")
        if job and str(run.get("host", "")).startswith("not yet"):
            _take_environment(ws, version, rec, run, env)
        for key in ("ended", "duration_s", "exit_code", "error", "ended_by"):
            rep.pop(key, None)
        rep.update(status="running", started=times.now(), **_process(pid))
        if job:
            rep["job_id"] = job
        rec.meta["run"] = run
        _regenerate_quietly(ws, rec, ("execution",))
    return checks, records.load(ws, version)


def final_figures(ws: Workspace, meta: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of summary.json as the run's final figures: pretraining's
    FINAL_KEYS, or a task's key metrics (classify: macro-F1, accuracy, the majority baseline)."""
    task = catalog.task_of(ws, meta)
    keys = FINAL_KEYS if task.name == tasks.DEFAULT else ("steps", *task.key_metrics, "wall_s")
    return {k: summary[k] for k in keys if summary.get(k) is not None and not isinstance(summary.get(k), (dict, list))}


def ended_status(trainer: dict[str, Any], summary: dict[str, Any], exit_code: int, interrupted: bool) -> str:
    """How a run (or one replicate) ended: finished, interrupted or failed.

    Our trainers say it in status.json: finished with a summary.json is finished whatever
    happened to the script after (a kill before its EXIT trap, a stale pid found by `exp
    status`). A declared task's trainer need not write status.json: its contract is exit 0 with
    a summary.json."""
    t_status = trainer.get("status")
    if summary and (t_status == "finished" or (t_status is None and exit_code == 0 and not interrupted)):
        return "finished"
    if t_status == "interrupted" or exit_code in (130, 143) or interrupted:
        return "interrupted"
    return "failed"


def _replicate_outcome(ws: Workspace, version: Version, rep: dict[str, Any], exit_code: int, reason: str | None,
                       interrupted: bool) -> None:
    """How one replicate ended, from its own status.json and summary.json, into ``rep``."""
    out = ws.replicate_dir(version, rep["index"])
    trainer = _read_json(out / "status.json")
    summary = _read_json(out / "summary.json")
    status = ended_status(trainer, summary, exit_code, interrupted)
    rep["status"] = status
    rep["ended"] = times.now()
    rep["exit_code"] = exit_code
    if rep.get("started"):
        rep["duration_s"] = round(times.age_s(rep["started"]), 1)
    if trainer.get("step") is not None:
        rep["last_step"] = trainer["step"]
    final = final_figures(ws, store.read_meta(ws, version), summary)
    if final:
        rep["final"] = final
    if status != "finished":
        error = trainer.get("error") or reason or (f"the run exited with code {exit_code}" if exit_code else
                                                   "the trainer did not report finishing")
        rep["error"] = " ".join(str(error).split())[:300]


def _replicates_summary(ws: Workspace, version: Version, reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's summary.json: the mean of its finished replicates' summaries (numbers only),
    with which replicates and seeds it averages; each replicate's own stays in its r{i}/."""
    tables = [_read_json(ws.replicate_dir(version, r["index"]) / "summary.json") for r in reps if r.get("status") == "finished"]
    tables = [t for t in tables if t]
    out: dict[str, Any] = {}
    keys = sorted({k for t in tables for k, v in t.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in keys:
        values = [t[key] for t in tables if isinstance(t.get(key), (int, float)) and not isinstance(t.get(key), bool)]
        mean = sum(values) / len(values)
        out[key] = round(mean) if all(isinstance(v, int) for v in values) else mean
    out["replicates"] = {"n": len(tables), "seeds": [r["seed"] for r in reps if r.get("status") == "finished"],
                         "dirs": [f"r{r['index']}" for r in reps if r.get("status") == "finished"],
                         "note": "the mean of the replicates' summary.json; each replicate's own is in its r{i}/"}
    return out


def _end_replicated(ws: Workspace, version: Version, record: Record, run: dict[str, Any], force: bool = False) -> None:
    """End the record once no replicate runs and none will start (``force``: whatever is pending):
    finished when all finished, else failed (naming which replicate failed and why) or interrupted."""
    reps = run["replicates"]
    if any(r.get("status") == "running" for r in reps):
        return
    pending = [r for r in reps if r.get("status") == "pending"]
    if pending and not force and not run.get("stopping") and (
            any(r.get("job_id") for r in pending) or supervisor_alive(ws, run.get("queue"))):
        return  # the queue starts them, or Slurm does (their jobs wait there)
    failed = [r for r in reps if r.get("status") == "failed"]
    if all(r.get("status") == "finished" for r in reps):
        status = "finished"
    elif failed:
        status = "failed"
    else:
        status = "interrupted"
    run["ended"] = times.now()
    run["duration_s"] = round(times.age_s(run["started"]), 1) if run.get("started") else None
    run["exit_code"] = next((r.get("exit_code") for r in reps if r.get("exit_code")), 0)
    summary = _replicates_summary(ws, version, reps)
    if summary["replicates"]["n"]:
        write_json(ws.out_dir(version) / "summary.json", summary)
        run["final"] = final_figures(ws, record.meta, summary)
    if status != "finished":
        words = [f"replicate {r['index']} (seed {r['seed']}) {r['status']}: {r.get('error', '')}".rstrip(": ")
                 for r in reps if r.get("status") in ("failed", "interrupted")]
        words += [f"replicate {r['index']} (seed {r['seed']}) never started" for r in pending]
        run["error"] = "; ".join(words)[:500]
    run["status"] = status
    run.pop("stopping", None)
    transition(record, status)


def finalize_replicate(ws: Workspace, version: Version, index: int, exit_code: int, reason: str | None = None,
                       interrupted: bool = False, ended_by: str | None = None) -> Record:
    """Record how replicate ``index`` ended; the record ends with its last replicate."""
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        reps = run.get("replicates") or []
        if record.status != "running" or not 0 <= index < len(reps) or reps[index].get("status") in REPLICATE_ENDED:
            return record
        _replicate_outcome(ws, version, reps[index], exit_code, reason, interrupted)
        if ended_by:
            reps[index]["ended_by"] = ended_by
        (ws.replicate_dir(version, index) / "run.pid").unlink(missing_ok=True)
        _end_replicated(ws, version, record, run)
        record.meta["run"] = run
        _regenerate_quietly(ws, record, ("execution", "environment"))
    return record


def finalize_replicates(ws: Workspace, version: Version, exit_code: int, reason: str | None = None,
                        interrupted: bool = False, ended_by: str | None = None) -> Record:
    """End a replicated record from outside (``exp stop``, ``exp status`` finding its processes
    gone): each replicate still marked running ends from its own files, pending ones stay pending
    (``exp run V --resume`` starts them), and the record ends."""
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        if record.status != "running":
            return record
        for rep in run["replicates"]:
            if rep.get("status") == "running":
                _replicate_outcome(ws, version, rep, exit_code, reason, interrupted)
                if ended_by:
                    rep["ended_by"] = ended_by
        _end_replicated(ws, version, record, run, force=True)
        if ended_by:
            run["ended_by"] = ended_by
        record.meta["run"] = run
        _regenerate_quietly(ws, record, ("execution", "environment"))
    return record


def mark_stopping(ws: Workspace, version: Version) -> Record:
    """``exp stop`` of a replicated record: no pending replicate starts any more."""
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        if record.status == "running":
            run["stopping"] = times.now()
            _end_replicated(ws, version, record, run)  # nothing runs: it ends now
            record.meta["run"] = run
    return record


# -- launching -----------------------------------------------------------------------------------
@dataclass
class Launch:
    version: str
    script: Path
    text: str
    checks: list[Check]
    env: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    job_id: str | None = None
    pid: int | None = None
    log: Path | None = None


def prepare(ws: Workspace, version: Version, opts: LaunchOptions, dry_run: bool = False,
            probe: dict[str, Any] | None = None) -> Launch:
    """Render the script and preflight, without changing the record's status. A dry run writes
    nothing at all: the script is rendered to be printed, not saved."""
    opts.check()
    record = records.load(ws, version)
    if opts.node_rank > 0:
        # another node of a multi-node torchrun run: it joins node 0's run and never touches the
        # record; its script lives beside its log, not in run_file/ (node 0's script is the record's)
        path = ws.out_dir(version) / f"run.node{opts.node_rank}.sh"
        checks, env = preflight(ws, record, opts)
        return Launch(str(version), path, render_script(ws, record, opts), checks, env)
    _require_startable(ws, record, opts.resume)
    if dry_run:
        path, text = ws.run_script_path(version), render_script(ws, record, opts)
    else:
        with store.locked(ws, version):
            path, text = write_script(ws, record, opts)
    checks, env = preflight(ws, record, opts, probe=probe, stage="submit" if opts.backend == "slurm" else "local")
    return Launch(str(version), path, text, checks, env)


def launch(ws: Workspace, version: Version, opts: LaunchOptions, launch: Launch, *, replicate: int | None = None,
           env: dict[str, str] | None = None, queue: str | None = None, after: list[str] | None = None,
           command: str | None = None) -> Launch:
    """Begin the record and start the script: a local process group, or a Slurm job.

    The run queue's units: ``env`` is added to the script's environment (threads, GPUs),
    ``queue`` names the queue in the record, ``after`` are Slurm jobs this one waits for
    (``--dependency=afterany``). ``replicate``: start replicate i of a replicated record (the
    record is begun by its first replicate's launch, under this queue)."""
    bad = failed_checks(launch.checks)
    if bad:
        raise RunError("preflight failed, nothing started: " + "; ".join(f"{c.name}: {c.detail} — {c.fix}" for c in bad))
    if opts.node_rank > 0:
        return _join(ws, version, opts, launch)
    if replicate is not None:
        return _launch_replicate(ws, version, opts, launch, replicate, env or {}, queue, after, command)
    token = secrets.token_hex(8)
    command = command or " ".join(["exp", "run", str(version)] + _flags(opts))
    begin(ws, version, opts, token=token, env=launch.env, command=command, snapshot=opts.backend != "slurm", queue=queue)
    out = ws.out_dir(version)
    log = out / "run.log"
    child_env = {**os.environ, **(env or {}), "EXP_ROOT": str(ws.root), "EXP_RUN_TOKEN": token}
    if opts.resume:
        child_env["EXP_RESUME"] = "1"
    try:
        if opts.backend == "slurm":
            exports = {"EXP_RUN_TOKEN": token, **({"EXP_RESUME": "1"} if opts.resume else {}), **(env or {})}
            launch.job_id = slurm.submit(launch.script, exports, child_env, ws.root, after=after)
            _update_run(ws, version, job_id=launch.job_id)
        else:
            with open(log, "ab") as fh:
                proc = subprocess.Popen(
                    ["bash", str(launch.script)], cwd=ws.root, env=child_env, stdin=subprocess.DEVNULL,
                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,  # its own session: closing the terminal does not kill it
                )
            launch.process, launch.pid = proc, proc.pid
            atomic_write(out / "run.pid", f"{proc.pid}\n")
            _update_run(ws, version, **_process(proc.pid))
    except BaseException as err:
        finalize(ws, version, 1, reason=f"could not start: {err}")
        raise
    launch.log = log
    return launch


def _launch_replicate(ws: Workspace, version: Version, opts: LaunchOptions, launch: Launch, index: int,
                      env: dict[str, str], queue: str | None, after: list[str] | None, command: str | None) -> Launch:
    """Start replicate ``index``: the script with EXP_REPLICATE=index (its r{index}/, seed + index);
    resumed from its own checkpoint when it has one (``--resume``), else afresh."""
    record = records.load(ws, version)
    run = record.meta.get("run") or {}
    ours = record.status == "running" and replicated(run) and queue is not None and run.get("queue") == queue
    if not ours:
        begin(ws, version, opts, token=secrets.token_hex(8), env=launch.env,
              command=command or " ".join(["exp", "run", str(version)] + _flags(opts)), snapshot=opts.backend != "slurm",
              queue=queue)
        run = records.load(ws, version).meta.get("run") or {}
    rep = (run.get("replicates") or [])[index] if index < len(run.get("replicates") or []) else None
    if rep is None or rep.get("status") != "pending" or run.get("stopping"):
        raise RunError(f"replicate {index} of {version} is {rep and rep.get('status')}: it does not start again")
    out = ws.replicate_dir(version, index)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    resume = opts.resume and any((out / "checkpoints").glob("*.pt"))
    extra = {**env, "EXP_REPLICATE": str(index), "EXP_RUN_TOKEN": run["token"], **({"EXP_RESUME": "1"} if resume else {})}
    child_env = {**os.environ, "EXP_ROOT": str(ws.root), **extra}
    if not resume:
        child_env.pop("EXP_RESUME", None)
    try:
        if opts.backend == "slurm":
            launch.job_id = slurm.submit(launch.script, extra, child_env, ws.root, after=after,
                                         output=log, job_name=f"exp-{version}-r{index}")
            _update_replicate(ws, version, index, job_id=launch.job_id)
        else:
            with open(log, "ab") as fh:
                proc = subprocess.Popen(["bash", str(launch.script)], cwd=ws.root, env=child_env, stdin=subprocess.DEVNULL,
                                        stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            launch.process, launch.pid = proc, proc.pid
            atomic_write(out / "run.pid", f"{proc.pid}\n")
    except BaseException as err:
        finalize_replicate(ws, version, index, 1, reason=f"could not start: {err}")
        raise
    launch.log = log
    return launch


def _update_replicate(ws: Workspace, version: Version, index: int, **fields: Any) -> None:
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        run["replicates"][index].update(fields)
        record.meta["run"] = run


#: How long another node of a multi-node run waits for node 0 to begin the record.
JOIN_WAIT_S = 600.0


def _join(ws: Workspace, version: Version, opts: LaunchOptions, launch: Launch) -> Launch:
    """Node R > 0 of a multi-node torchrun run: wait until node 0 has begun the record (so its
    fresh outputs are in place), then start this node's script; its log is run.nodeR.log. The
    record is node 0's alone: nothing here reads or writes its state beyond looking."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while records.load(ws, version).status != "running":
        if time.monotonic() > deadline:
            raise RunError(f"node 0 has not started {version} within {JOIN_WAIT_S:.0f} s; start "
                           f"`exp run {version} --backend torchrun --nnodes {opts.nnodes} --node-rank 0 ...` first")
        time.sleep(1.0)
    out = ws.out_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(launch.script, launch.text, chmod=0o755)
    log = out / f"run.node{opts.node_rank}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(["bash", str(launch.script)], cwd=ws.root, env={**os.environ, "EXP_ROOT": str(ws.root)},
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    launch.process, launch.pid, launch.log = proc, proc.pid, log
    return launch


def _flags(opts: LaunchOptions) -> list[str]:
    flags = [] if opts.backend == "local" else ["--backend", opts.backend]
    if opts.gpus:
        flags += ["--gpus", opts.gpus]
    if opts.nproc:
        flags += ["--nproc", str(opts.nproc)]
    if opts.nnodes > 1 and opts.backend == "slurm":
        flags += ["--nodes", str(opts.nnodes)]
    elif opts.nnodes > 1:
        flags += ["--nnodes", str(opts.nnodes), "--node-rank", str(opts.node_rank), "--master-addr", opts.master_addr]
    for flag, value in (("--partition", opts.partition), ("--time", opts.time_limit), ("--account", opts.account),
                        ("--qos", opts.qos), ("--mem", opts.mem), ("--cpus-per-task", opts.cpus_per_task),
                        ("--constraint", opts.constraint)):
        if value is not None:
            flags += [flag, str(value)]
    if opts.resume:
        flags.append("--resume")
    return flags


def _update_run(ws: Workspace, version: Version, **fields: Any) -> None:
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        run.update(fields)
        record.meta["run"] = run


def wait(ws: Workspace, version: Version, launch: Launch) -> Record:
    """Wait for a local launch to end; finalize it here if the script could not."""
    assert launch.process is not None
    code = launch.process.wait()
    record = records.load(ws, version)
    if record.status == "running":  # the script died before its EXIT trap could run
        record, _, failure = conclude(ws, version, code, reason=f"the run script ended with code {code} without finalizing")
        if failure:
            records.note(f"the analysis failed: {failure}; run `exp analyze {version}` after fixing it")
    return record


def interrupt(launch: Launch, sig: int = signal.SIGINT) -> None:
    if launch.pid:
        try:
            os.killpg(launch.pid, sig)
        except ProcessLookupError:
            pass


def follow_metrics(ws: Workspace, version: Version, alive: Any, poll_s: float = 0.5,
                   resume: bool = False) -> Iterator[dict[str, Any]]:
    """Yield each new line of this session's metrics.jsonl while ``alive()`` is true (and once more after).

    A file already there at the start is not this session's: a fresh run's trainer deletes it
    and starts a new one (all of it is yielded), a resumed run's trainer replaces it with the
    lines up to its checkpoint (history: only the last of them is yielded, to say where the run
    stands). Either way the new file is spotted by its inode or by its shrinking; following it by
    the old byte offset would skip its lines and then yield a line cut in half.
    """
    path = ws.out_dir(version) / "metrics.jsonl"

    def stat() -> tuple[tuple[int, int] | None, int]:
        try:
            st = path.stat()
        except OSError:
            return None, 0
        return (st.st_dev, st.st_ino), st.st_size

    ident, pos = stat()
    buf = b""
    while True:
        running = alive()
        now, size = stat()
        if now is None:  # deleted (a fresh run's trainer does that): whatever appears next is new
            ident, pos, buf = None, 0, b""
        else:
            # a new file; on a resume, the trainer's truncated copy of the old one is history
            history = False
            if now != ident or size < pos:
                history = resume and ident is not None
                ident, pos, buf = now, 0, b""
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            rows = []
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
            yield from rows[-1:] if history else rows
        if not running:
            return
        time.sleep(poll_s)


# -- a run on another host, over ssh (the ssh and rsync calls live in ``remote``) ----------------
#: What the local record takes from the remote's copy when the run starts there: where it ran and with what.
REMOTE_RUN_KEYS = ("host", "code", "gpus", "env", "script_sha256", "processes")


def remote_target(ws: Workspace, version: Version, host: str | None, port: int | None = None, remote_dir: str | None = None,
                  python: str | None = None, resume: bool = False) -> remote.Target | None:
    """Where the run goes: ``--host``; for a resume of a run that lived on a host, that host (its
    checkpoints are there); None to run here."""
    run = records.load(ws, version).meta.get("run") or {}
    before = run.get("remote") if resume else None
    if host is None:
        if not before:
            return None
        old = remote.Target.of(run)
        return remote.Target(old.host, old.port, old.dir, python or old.python)
    target = remote.Target(host, port, remote_dir, python or remote.DEFAULT_PYTHON).check()
    if resume and not before and run.get("started"):
        raise RunError(f"{version} ran here and its checkpoints are here: resume it here with `exp run {version} --resume`")
    if before and (before["host"], before.get("port")) != (target.host, target.port):
        raise RunError(f"{version}'s checkpoints are on {before['host']}: resume it there with `exp run {version} --resume`")
    if before and remote_dir is None:
        target = remote.Target(target.host, target.port, before.get("dir"), target.python)
    return target


def _refuse_on_host(opts: LaunchOptions) -> None:
    opts.check()
    if opts.backend == "slurm" or opts.nnodes > 1:
        raise RunError("--host runs the script on that one host; for Slurm or several nodes, log in to the cluster and run exp there")


def launch_remote(ws: Workspace, version: Version, opts: LaunchOptions, target: remote.Target) -> dict[str, Any]:
    """Preflight the host, copy the snapshot there, start ``exp run V --detach`` there, and
    begin the local record as running with ``run.remote`` (where it lives) and the host's
    environment. A failed remote preflight copies and starts nothing and changes no record."""
    _refuse_on_host(opts)
    record = records.load(ws, version)
    _require_startable(ws, record, opts.resume)
    with store.locked(ws, version):
        write_script(ws, record, opts)  # the remote renders its own from the record (its paths); this one is replaced by it
    return _start_on_host(ws, [version], {str(version): opts}, opts, target, None)


def launch_remote_queue(ws: Workspace, versions: list[Version], member_opts: dict[str, LaunchOptions], opts: LaunchOptions,
                        target: remote.Target, queue_flags: list[str]) -> dict[str, Any]:
    """A run queue on the host: the plan was checked here (``queue.plan``); preflight the host
    once, copy the snapshot of every record once, start ``exp run V1 V2 ... --detach`` there (its
    supervisor in its own session), and begin each local record as running there (``run.remote``
    names the queue: ``exp status/stop/logs/pull V`` work per member as for one remote run)."""
    _refuse_on_host(opts)
    return _start_on_host(ws, versions, member_opts, opts, target, queue_flags)


def _start_on_host(ws: Workspace, versions: list[Version], member_opts: dict[str, LaunchOptions], opts: LaunchOptions,
                   target: remote.Target, queue_flags: list[str] | None) -> dict[str, Any]:
    """The one path of a run on a host, alone or as a queue: probe, workdir, push, start, begin here."""
    env = remote.probe(target, opts)
    target = remote.workdir(target, default=f"exp-runs/{ws.root.name}")
    pushed = remote.push(ws, versions, target)
    started = remote.start(target, versions, opts, queue_flags)
    queue_id = started.get("queue") if queue_flags is not None else None
    base = {**target.to_dict(), "started": times.now()}
    if queue_id:  # the members start there one by one: their processes are learnt from the records there
        base.update(queue=queue_id, queue_file=f"{ws.rel(ws.queue_dir())}/{queue_id}.json", supervisor_pid=started["pid"])
    else:
        base.update(pid=started["pid"], pgid=started["pid"])
    names = [str(v) for v in versions]
    command = " ".join(["exp", "run", *names, "--host", target.host] + (["--port", str(target.port)] if target.port else [])
                       + _flags(opts) + (queue_flags or []))
    infos: dict[str, dict[str, Any]] = {}
    try:
        for v in versions:
            info = infos[str(v)] = {**base, "version": str(v), "state": ws.rel(ws.state_path(v))}
            theirs = {} if queue_id else remote.remote_run(ws, v, target).get("run") or {}
            # the process there as its own exp recorded it: pid, group and start time (a reused pid is never taken for it)
            info.update({k: theirs[k] for k in ("pid", "pgid", "pid_started") if theirs.get(k) is not None})
            begin(ws, v, member_opts[str(v)], env=env, command=command)
            with records.update(ws, v) as rec:
                run = rec.meta.get("run") or {}
                if queue_id:  # the host's own name comes back with the member's outcome (``exp pull``)
                    run["host"] = target.host
                run.update({k: theirs[k] for k in REMOTE_RUN_KEYS if theirs.get(k) is not None}, remote=info)
                rec.meta["run"] = run
                _regenerate_quietly(ws, rec, ("execution", "environment"))
        if not queue_id:
            remote.pull(ws, versions[0])  # the host's snapshot: env.json, requirements.txt, experiment_info.txt, the script
    except BaseException:
        try:  # nothing runs there that these records do not know of
            if queue_id:
                remote.stop_there(target, versions)
            else:
                remote.stop({"remote": infos.get(names[0]) or base})
        except RunError:
            pass
        raise
    log = (f"{target.dir}/{ws.rel(ws.queue_dir())}/{queue_id}.log" if queue_id
           else f"{target.dir}/{ws.rel(ws.out_dir(versions[0]))}/run.log")
    answer = {"status": "running", "host": target.host, "dir": target.dir, "pid": started["pid"], "pushed": pushed, "log": log}
    if queue_id:
        return {**answer, "queue": queue_id, "versions": names, "units": started.get("units") or []}
    return {"version": names[0], **answer}


def pull(ws: Workspace, version: Version) -> dict[str, Any]:
    """Bring a remote run's outputs back; a run that ended there is finalized and analysed here,
    from the remote's outcome. A host that cannot be reached changes nothing."""
    record = records.load(ws, version)
    run = record.meta.get("run") or {}
    if not run.get("remote"):
        raise RunError(f"{version} did not run on a remote host; its outputs are in {ws.rel(ws.out_dir(version))}/")
    alive, where = remote.state(run) if record.status == "running" else (False, "ended")
    if alive is None:
        raise RunError(f"{where}; nothing was pulled: `exp pull {version}` again when it answers")
    result: dict[str, Any] = {"version": str(version), "host": run["remote"]["host"], "where": where}
    if alive and where.startswith(remote.QUEUED_WORDS):  # waits in the queue there: nothing to bring back yet
        return {**result, "status": record.status}
    theirs = remote.pull(ws, version)
    if record.status == "running" and alive is False:
        trun = theirs["run"]
        if replicated(run) and replicated(trun):  # each replicate's outcome there (its r{i}/ came back with the outputs)
            with records.update(ws, version) as rec:
                rec.meta["run"]["replicates"] = trun["replicates"]
        if run["remote"].get("queue") and theirs["status"] in ("draft", "ready"):  # never started in the queue there
            record, _, failure = conclude(ws, version, 1, interrupted=True, reason=where)
        elif theirs["status"] == "running" or not trun.get("status"):  # killed before its EXIT trap
            record, _, failure = conclude(ws, version, 1, interrupted=True,
                                          reason=f"the run's process on {run['remote']['host']} died without finalizing")
        else:
            record, _, failure = conclude(ws, version, int(trun.get("exit_code") or 0), reason=trun.get("error"),
                                          interrupted=trun.get("status") == "interrupted")
            _take_remote_end(ws, version, trun)
            record = records.load(ws, version)
        run_status = (record.meta.get("run") or {}).get("status", record.status)
        result["note"] = f"marked {run_status}: {where}" + (f"; the analysis failed: {failure}" if failure else "")
    result["status"] = record.status
    return result


def pull_many(ws: Workspace, versions: list[Version]) -> list[dict[str, Any]]:
    """``pull`` each record that runs (or ran) on a host, one after another; one that cannot be
    pulled (its host does not answer) says why and the others go on."""
    out = []
    for v in versions:
        record = records.load(ws, v)
        if not (record.meta.get("run") or {}).get("remote"):
            out.append({"version": str(v), "status": record.status, "skipped": "did not run on a host"})
            continue
        try:
            out.append(pull(ws, v))
        except RunError as err:
            out.append({"version": str(v), "status": record.status, "skipped": str(err), "error": str(err)})
    return out


def _take_remote_end(ws: Workspace, version: Version, trun: dict[str, Any]) -> None:
    """When the run ended there (not when it was pulled here)."""
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        run.update({k: trun[k] for k in ("ended", "duration_s") if trun.get(k) is not None})
        if (run.get("remote") or {}).get("queue"):  # a queue's member: where and with what it ran, learnt now
            run.update({k: trun[k] for k in REMOTE_RUN_KEYS if trun.get(k) is not None})
            run["remote"].update({k: trun[k] for k in ("pid", "pgid", "pid_started") if trun.get(k) is not None})
        record.meta["run"] = run
        _regenerate_quietly(ws, record, ("execution",))


def sync(ws: Workspace, version: Version) -> dict[str, Any]:
    """Upload the offline SwanLab run (``swanlab sync`` underneath)."""
    out = ws.out_dir(version)
    try:
        run_dir = tracking.latest_run_dir(out / "swanlog")
    except Exception as err:
        raise RunError(f"{version} has no offline SwanLab run under {ws.rel(out)}/swanlog ({err})") from None
    if not (os.environ.get("SWANLAB_API_KEY") or swanlab_logged_in()):
        raise RunError("no SwanLab API key: run `swanlab login` (or set SWANLAB_API_KEY), then `exp sync " + str(version) + "`")
    cmd = tracking.sync_command(run_dir)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RunError(f"swanlab sync failed: {(res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout).strip() else res.returncode}")
    return {"version": str(version), "run_dir": str(run_dir), "command": cmd, "output": res.stdout.strip()}
