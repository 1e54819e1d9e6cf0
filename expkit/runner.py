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
import re
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
from . import gitops, lifecycle, records, remote, results, store, times, tracking, view
from .errors import ExpError
from .files import atomic_write, read_json, write_json
from .preflight import Check, failed_checks, preflight, swanlab_logged_in
from .record import PREREGISTERED, Record, sha256
from .script import LaunchOptions, RunError, code_state, git_state, own_paths, render_script, write_script
from .status import next_step, require_status, transition
from .store import entries
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
        if not run.get("remote") and not any((ws.out_dir(version) / "checkpoints").glob("*.pt")):  # remote: they are there
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


def _archive_previous_outputs(ws: Workspace, version: Version) -> Path | None:
    """A fresh run after a failed one keeps the failed outputs, moved aside."""
    out = ws.out_dir(version)
    if not out.exists() or not any(p for p in out.iterdir() if p.name not in ("config.json",)):
        return None
    target = out.with_name(f"{out.name}.previous-{times.stamp()}")
    out.rename(target)
    return target


def begin(ws: Workspace, version: Version, opts: LaunchOptions, pid: int | None = None, token: str | None = None,
          env: dict[str, Any] | None = None, command: str | None = None) -> Record:
    """Status running, pre-registration, config.json and the environment snapshot.

    Idempotent for the token that ``exp run`` passed to the script it launched.
    """
    out = ws.out_dir(version)
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        if record.status == "running":
            if token and run.get("token") == token:
                if pid:
                    run["pid"] = pid
                if os.environ.get("SLURM_JOB_ID"):
                    run["job_id"] = os.environ["SLURM_JOB_ID"]
                record.meta["run"] = run
                return record
        _require_startable(ws, record, opts.resume)
        if opts.resume:
            run.setdefault("resumed", []).append(times.now())
            for key in ("ended", "duration_s", "exit_code", "error", "log_tail", "final", "status"):
                run.pop(key, None)
        else:
            _archive_previous_outputs(ws, version)
            cfg = cfg_mod.validate(record.meta.get("config") or {})
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", cfg.model_dump())
            record.meta["prereg"] = {
                "at": times.now(),
                "sections": {n: sha256(record.human(n)) for n in PREREGISTERED},
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
            run["code"] = code_state(env)
            _snapshot(ws, version, out, record, repo, env, run["code"])
            script = ws.run_script_path(version)
            if script.exists():
                run["script_sha256"] = sha256(script.read_bytes())
            envinfo = env or {}
            run["gpus"] = ", ".join(envinfo.get("gpus") or []) or "none (CPU)"
            run["env"] = {k: envinfo[k] for k in ("python", "torch", "cuda", "transformers", "tokenizers", "swanlab", "platform", "host", "cpus") if envinfo.get(k) is not None}
        run["token"] = token or secrets.token_hex(8)
        if pid:
            run["pid"] = pid
        if os.environ.get("SLURM_JOB_ID"):
            run["job_id"] = os.environ["SLURM_JOB_ID"]
        record.meta["run"] = run
        if record.status == "draft":  # `exp run` checked it just now (_require_startable): it is ready
            transition(record, "ready")
        transition(record, "running")
        _regenerate_quietly(ws, record, ("execution", "environment"))
    return record


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


def finalize(ws: Workspace, version: Version, exit_code: int, reason: str | None = None, interrupted: bool = False) -> Record:
    """Record how the run ended: finished, failed (with the error and the log's tail) or interrupted."""
    out = ws.out_dir(version)
    trainer = _read_json(out / "status.json")
    summary = _read_json(out / "summary.json")
    with records.update(ws, version) as record:
        if record.status != "running":
            return record
        run = record.meta.get("run") or {}
        t_status = trainer.get("status")
        if t_status == "finished" and summary:
            # the trainer finished and wrote its summary: whatever happened to the script after
            # (a kill before its EXIT trap, a stale pid found by `exp status`), the run finished
            status = "finished"
        elif t_status == "interrupted" or exit_code in (130, 143) or interrupted:
            status = "interrupted"
        else:
            status = "failed"
        run["ended"] = times.now()
        run["duration_s"] = round(times.age_s(run["started"]), 1) if run.get("started") else None
        run["exit_code"] = exit_code
        final = {k: summary[k] for k in FINAL_KEYS if summary.get(k) is not None}
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
        record.meta["run"] = run
        transition(record, status)
        _regenerate_quietly(ws, record, ("execution", "environment"))
    (out / "run.pid").unlink(missing_ok=True)
    return record


def conclude(ws: Workspace, version: Version, exit_code: int, reason: str | None = None,
             interrupted: bool = False) -> tuple[Record, dict[str, Any] | None, str | None]:
    """``finalize``, then analyse a run that finished (every way a run ends comes here: the
    script's EXIT trap, a foreground ``exp run``, ``exp status`` finding a dead process).
    Returns (record, the analysis or None, why the analysis failed or None)."""
    record = finalize(ws, version, exit_code, reason=reason, interrupted=interrupted)
    if record.status != "finished":
        return record, None, None
    try:
        result = results.analyze(ws, version)
    except ExpError as err:
        return record, None, str(err)
    return records.load(ws, version), result, None


def start_from_script(ws: Workspace, version: Version, backend: str, pid: int, gpus: str | None) -> tuple[list[Check], Record | None]:
    """The script's first step. Launched by ``exp run`` (its token in the environment): the
    bookkeeping is done, only the pid is noted. Run by hand or by Slurm on its own: preflight,
    and begin only if it passed (a failed preflight leaves the status unchanged)."""
    opts = LaunchOptions(backend=backend, gpus=gpus, resume=bool(os.environ.get("EXP_RESUME"))).check()
    token = os.environ.get("EXP_RUN_TOKEN")
    record = records.load(ws, version)
    if token and record.status == "running" and (record.meta.get("run") or {}).get("token") == token:
        return [], begin(ws, version, opts, pid=pid, token=token)
    _require_startable(ws, record, opts.resume)
    checks, env = preflight(ws, record, opts)
    if failed_checks(checks):
        return checks, None
    return checks, begin(ws, version, opts, pid=pid, env=env, command=f"bash {ws.rel(ws.run_script_path(version))}")


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


def prepare(ws: Workspace, version: Version, opts: LaunchOptions, dry_run: bool = False) -> Launch:
    """Render the script and preflight, without changing the record's status. A dry run writes
    nothing at all: the script is rendered to be printed, not saved."""
    opts.check()
    record = records.load(ws, version)
    _require_startable(ws, record, opts.resume)
    if dry_run:
        path, text = ws.run_script_path(version), render_script(ws, record, opts)
    else:
        with store.locked(ws, version):
            path, text = write_script(ws, record, opts)
    checks, env = preflight(ws, record, opts)
    return Launch(str(version), path, text, checks, env)


def launch(ws: Workspace, version: Version, opts: LaunchOptions, launch: Launch) -> Launch:
    """Begin the record and start the script: a local process group, or a Slurm job."""
    bad = failed_checks(launch.checks)
    if bad:
        raise RunError("preflight failed, nothing started: " + "; ".join(f"{c.name}: {c.detail} — {c.fix}" for c in bad))
    token = secrets.token_hex(8)
    command = " ".join(["exp", "run", str(version)] + _flags(opts))
    begin(ws, version, opts, token=token, env=launch.env, command=command)
    out = ws.out_dir(version)
    log = out / "run.log"
    child_env = {**os.environ, "EXP_ROOT": str(ws.root), "EXP_RUN_TOKEN": token}
    if opts.resume:
        child_env["EXP_RESUME"] = "1"
    try:
        if opts.backend == "slurm":
            exports = "ALL,EXP_RUN_TOKEN=" + token + (",EXP_RESUME=1" if opts.resume else "")
            res = subprocess.run(["sbatch", "--parsable", f"--export={exports}", str(launch.script)], capture_output=True, text=True, env=child_env, timeout=60)
            if res.returncode != 0:
                raise RunError(f"sbatch refused the job: {res.stderr.strip() or res.stdout.strip()}")
            launch.job_id = res.stdout.strip().split(";")[0]
            _update_run(ws, version, job_id=launch.job_id)
        else:
            with open(log, "ab") as fh:
                proc = subprocess.Popen(
                    ["bash", str(launch.script)], cwd=ws.root, env=child_env, stdin=subprocess.DEVNULL,
                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,  # its own session: closing the terminal does not kill it
                )
            launch.process, launch.pid = proc, proc.pid
            atomic_write(out / "run.pid", f"{proc.pid}\n")
            _update_run(ws, version, pid=proc.pid)
    except BaseException as err:
        finalize(ws, version, 1, reason=f"could not start: {err}")
        raise
    launch.log = log
    return launch


def _flags(opts: LaunchOptions) -> list[str]:
    flags = [] if opts.backend == "local" else ["--backend", opts.backend]
    if opts.gpus:
        flags += ["--gpus", opts.gpus]
    if opts.nproc:
        flags += ["--nproc", str(opts.nproc)]
    if opts.nnodes > 1:
        flags += ["--nnodes", str(opts.nnodes), "--node-rank", str(opts.node_rank), "--master-addr", opts.master_addr]
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


def launch_remote(ws: Workspace, version: Version, opts: LaunchOptions, target: remote.Target) -> dict[str, Any]:
    """Preflight the host, copy the snapshot there, start ``exp run V --detach`` there, and
    begin the local record as running with ``run.remote`` (where it lives) and the host's
    environment. A failed remote preflight copies and starts nothing and changes no record."""
    opts.check()
    if opts.backend == "slurm" or opts.nnodes > 1:
        raise RunError("--host runs the script on that one host; for Slurm or several nodes, log in to the cluster and run exp there")
    record = records.load(ws, version)
    _require_startable(ws, record, opts.resume)
    env = remote.probe(target, opts)
    target = remote.workdir(target, default=f"exp-runs/{ws.root.name}")
    with store.locked(ws, version):
        write_script(ws, record, opts)  # the remote renders its own from the record (its paths); this one is replaced by it
    pushed = remote.push(ws, version, target)
    started = remote.start(target, version, opts)
    info = {**target.to_dict(), "pid": started["pid"], "pgid": started["pid"], "started": times.now()}
    command = " ".join(["exp", "run", str(version), "--host", target.host] + (["--port", str(target.port)] if target.port else [])
                       + _flags(opts))
    try:
        theirs = remote.remote_run(ws, version, target).get("run") or {}
        begin(ws, version, opts, env=env, command=command)
        with records.update(ws, version) as rec:
            run = rec.meta.get("run") or {}
            run.update({k: theirs[k] for k in REMOTE_RUN_KEYS if theirs.get(k) is not None}, remote=info)
            rec.meta["run"] = run
            _regenerate_quietly(ws, rec, ("execution", "environment"))
        remote.pull(ws, version)  # the host's snapshot: env.json, requirements.txt, experiment_info.txt, the script
    except BaseException:
        try:
            remote.stop({"remote": info})  # nothing runs there that this record does not know of
        except RunError:
            pass
        raise
    return {"version": str(version), "status": "running", "host": target.host, "dir": target.dir, "pid": started["pid"],
            "pushed": pushed, "log": f"{target.dir}/{ws.rel(ws.out_dir(version))}/run.log"}


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
    theirs = remote.pull(ws, version)
    result: dict[str, Any] = {"version": str(version), "host": run["remote"]["host"], "where": where}
    if record.status == "running" and alive is False:
        trun = theirs["run"]
        if theirs["status"] == "running" or not trun.get("status"):  # killed before its EXIT trap
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


def _take_remote_end(ws: Workspace, version: Version, trun: dict[str, Any]) -> None:
    """When the run ended there (not when it was pulled here)."""
    with records.update(ws, version) as record:
        run = record.meta.get("run") or {}
        run.update({k: trun[k] for k in ("ended", "duration_s") if trun.get(k) is not None})
        record.meta["run"] = run
        _regenerate_quietly(ws, record, ("execution",))


def _remote_status(ws: Workspace, version: Version, alive: bool | None) -> dict[str, Any]:
    """A status row's news of a remote run: fresh progress while it runs, its outcome once it ended."""
    if alive is None:
        return {}
    try:
        if alive:
            remote.pull(ws, version)
            return {}
        return {k: v for k, v in pull(ws, version).items() if k in ("status", "note")}
    except RunError as err:
        return {"note": str(err)}


def _stop_remote(ws: Workspace, version: Version, run: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """SIGTERM to the process group on its host; once it is gone, pull: status interrupted."""
    alive, where = remote.state(run)
    if alive is None:
        raise RunError(f"{where}; nothing was stopped: `exp stop {version}` again when it answers")
    if alive:
        remote.stop(run)
        deadline = time.monotonic() + timeout_s
        while alive is not False and time.monotonic() < deadline:
            time.sleep(2)  # one ssh call each time: a host is not polled several times a second
            alive, where = remote.state(run)
    if alive is not False:
        return {"version": str(version), "status": "running", "where": where,
                "note": f"still running after SIGTERM; `exp status {version}`, or `exp stop {version}` again"}
    result = pull(ws, version)
    return {"version": str(version), "status": result["status"], "where": where}


# -- status, stop, logs ----------------------------------------------------------------------
def _pid_alive(pid: int, script: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid running something else does not count
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        stat = Path(f"/proc/{pid}/stat").read_text().split()
        if len(stat) > 2 and stat[2] == "Z":
            return False
        return script is None or Path(script).name in cmdline
    except OSError:
        return True


def slurm_state(job_id: str) -> str | None:
    """The job's state from squeue, then scontrol (sacct needs accounting, off here)."""
    try:
        q = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if q.returncode == 0 and q.stdout.strip():
            return q.stdout.strip().splitlines()[0]
        s = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
        m = re.search(r"JobState=(\S+)", s.stdout)
        return m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


SLURM_ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING", "STAGE_OUT")


def liveness(ws: Workspace, record: Record) -> tuple[bool, str]:
    run = record.meta.get("run") or {}
    if run.get("remote"):  # None: the host could not be asked
        return remote.state(run)  # type: ignore[return-value]
    if run.get("job_id"):
        state = slurm_state(str(run["job_id"]))
        if state is None:
            return False, f"Slurm job {run['job_id']} is unknown to the cluster"
        return state in SLURM_ACTIVE, f"Slurm job {run['job_id']} {state}"
    pid = run.get("pid")
    if not pid:
        return True, "starting"
    if run.get("host") and run["host"] != socket.gethostname():
        return True, f"pid {pid} on {run['host']} (another host: not checked)"
    alive = _pid_alive(int(pid), run.get("script"))
    return alive, f"pid {pid} {'alive' if alive else 'gone'}"


def progress(ws: Workspace, version: Version, config: dict[str, Any]) -> dict[str, Any]:
    """Step, loss, throughput and ETA from the newest metrics line and the heartbeat."""
    out = ws.out_dir(version)
    last: dict[str, Any] = {}
    val = None
    for line in reversed(tail_lines(out / "metrics.jsonl", 50)):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not last:
            last = item
        if val is None and item.get("val_loss") is not None:
            val = item["val_loss"]
        if last and val is not None:
            break
    info: dict[str, Any] = {"step": last.get("step"), "max_steps": config.get("max_steps"), "loss": last.get("loss"),
                            "val_loss": val, "tokens_per_s": last.get("tokens_per_s")}
    if last.get("step") and last.get("elapsed_s") and config.get("max_steps"):
        rate = last["step"] / max(last["elapsed_s"], 1e-9)
        info["eta_s"] = round((config["max_steps"] - last["step"]) / rate, 1) if rate > 0 else None
    beat = _read_json(out / "heartbeat")
    if beat.get("time"):
        try:
            info["heartbeat_age_s"] = round(times.age_s(beat["time"]), 1)
        except (TypeError, ValueError):
            pass
    return info


def status(ws: Workspace, version: Version | None = None) -> list[dict[str, Any]]:
    """Runs and their progress; a run whose process died without finalizing becomes interrupted."""
    if version is not None:
        targets = [version]
    else:
        targets = [e.version for e in entries(ws) if e.status == "running"]
    rows = []
    for v in targets:
        record = records.load(ws, v)
        row: dict[str, Any] = {"version": str(v), "status": record.status}
        run = record.meta.get("run") or {}
        if record.status == "running":
            alive, where = liveness(ws, record)
            row["where"] = where
            if run.get("remote"):  # its outcome comes back by pulling; an unreachable host ends nothing
                row.update(_remote_status(ws, v, alive))
            elif not alive:
                record, _, failure = conclude(ws, v, 1, reason=f"the run's process died without finalizing ({where})", interrupted=True)
                row["status"] = record.status
                row["note"] = f"marked {(record.meta.get('run') or {}).get('status', record.status)}: {where}"
                if failure:
                    row["note"] += f"; the analysis failed: {failure}"
        row.update({k: run.get(k) for k in ("backend", "started", "ended", "exit_code", "job_id", "pid") if run.get(k) is not None})
        row.update(progress(ws, v, record.meta.get("config") or {}))
        if record.status == "failed" and run.get("error"):
            row["error"] = run["error"]
        rows.append(row)
    return rows


def stop(ws: Workspace, version: Version, timeout_s: float = 120.0) -> dict[str, Any]:
    """SIGTERM to the run (scancel for Slurm); the trainer checkpoints; status interrupted."""
    record = records.load(ws, version)
    require_status(record, ("running",), "stop")
    run = record.meta.get("run") or {}
    if run.get("remote"):
        return _stop_remote(ws, version, run, timeout_s)
    alive, where = liveness(ws, record)
    if not alive:
        record = finalize(ws, version, 143, reason=f"the process was already gone ({where})", interrupted=True)
        return {"version": str(version), "status": record.status, "note": f"the process was already gone ({where})"}
    if run.get("job_id"):
        subprocess.run(["scancel", "--signal=TERM", "--full", str(run["job_id"])], capture_output=True, text=True, timeout=30)
    else:
        try:
            os.killpg(int(run["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = records.load(ws, version)
        if record.status != "running":
            break
        alive, where = liveness(ws, record)
        if not alive:
            time.sleep(0.5)  # let the EXIT trap write its result
            record = records.load(ws, version)
            if record.status == "running":
                record = finalize(ws, version, 143, reason="stopped by exp stop", interrupted=True)
            break
        time.sleep(0.3)
    if record.status == "running" and run.get("job_id"):
        subprocess.run(["scancel", str(run["job_id"])], capture_output=True, text=True, timeout=30)
    return {"version": str(version), "status": record.status, "where": where}


def log_path(ws: Workspace, version: Version) -> Path:
    out = ws.out_dir(version)
    for name in ("run.log", "train.log"):
        if (out / name).exists():
            return out / name
    raise RunError(f"{version} has no log yet ({ws.rel(out)}/run.log); start it with `exp run {version}`")


def follow_log(ws: Workspace, version: Version, follow: bool) -> Iterator[str]:
    record = records.load(ws, version)
    if (record.meta.get("run") or {}).get("remote") and record.status == "running":
        yield from remote.log_lines(ws, version, record.meta["run"], follow)
        return
    path = log_path(ws, version)
    with open(path, "rb") as fh:
        while True:
            line = fh.readline()
            if line:
                yield line.decode("utf-8", errors="replace")
                continue
            if not follow:
                return
            record = records.load(ws, version)
            if record.status != "running" or not liveness(ws, record)[0]:
                rest = fh.read()
                if rest:
                    yield rest.decode("utf-8", errors="replace")
                return
            time.sleep(0.3)


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
