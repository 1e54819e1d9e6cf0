"""Watching a run that lives elsewhere: is it alive, where is it, what is its progress; stop it;
follow its log.

A status that never guesses. ``seen`` answers alive, gone, or *unknown* (the scheduler did not
answer, the run is on another machine); unknown is reported as unknown and changes nothing. A run
is ended by a read command (``exp status``) only when its process (the process table here, the
scheduler for a job) is gone *and* its heartbeat is stale — and the run's own finalize, when it
comes later, still wins over that conclusion (``runner.finalize``). The scheduler is asked at most
once every ``SCHEDULER_POLL_S`` per job, across processes (a small cache file in the run's output
directory); files are read in between. Signals go only to the recorded process (``procs``), never to
a pid that now belongs to someone else, and never to a process on another host. Layer 4.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import groups, procs, records, remote, runner, slurm, times
from .files import read_json, write_json
from .record import Record
from .runner import conclude, finalize, tail_lines
from .script import RunError
from .status import require_status
from .store import entries
from .version import Version
from .workspace import Workspace

#: The cluster is asked about a job at most this often (admins ban faster polling);
#: EXP_SCHEDULER_POLL_S may raise it, never lower it.
SCHEDULER_POLL_S = 10.0
#: The trainer rewrites its heartbeat every 10 s; older than this, nobody is writing it.
HEARTBEAT_STALE_S = 60.0
#: How often files (the record, the log) are read while waiting.
FILE_POLL_S = 0.5
#: Slurm states of a job that is still alive (queued, running, being requeued).
SLURM_ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT")


@dataclass(frozen=True)
class Seen:
    """What a look at a run found: alive (True), gone (False) or unknown (None), in words."""

    alive: bool | None
    where: str


# -- the scheduler, asked at most every SCHEDULER_POLL_S ---------------------------------------
def poll_interval() -> float:
    try:
        return max(SCHEDULER_POLL_S, float(os.environ.get("EXP_SCHEDULER_POLL_S", SCHEDULER_POLL_S)))
    except ValueError:
        return SCHEDULER_POLL_S


def slurm_state(ws: Workspace, version: Version, job_id: str) -> tuple[str | None, str]:
    """The job's state, from the cache when it is younger than SCHEDULER_POLL_S."""
    cache = ws.out_dir(version) / "scheduler.json"
    seen = read_json(cache)
    if isinstance(seen, dict) and seen.get("job_id") == job_id and time.time() - float(seen.get("at", 0)) < poll_interval():
        return seen.get("state"), str(seen.get("why", ""))
    state, why = slurm.job_state(job_id)
    if cache.parent.exists():
        write_json(cache, {"job_id": job_id, "at": round(time.time(), 3), "state": state, "why": why})
    return state, why


# -- is it alive -----------------------------------------------------------------------------------
def seen(ws: Workspace, record: Record) -> Seen:
    run = record.meta.get("run") or {}
    if runner.replicated(run) and not run.get("remote"):
        return _seen_replicates(ws, record)
    if run.get("remote"):  # on another host over ssh: None when the host could not be reached
        alive, where = remote.state(run)
        return Seen(alive, where)
    return _seen_process(ws, record.version, run)


def seen_replicate(ws: Workspace, record: Record, rep: dict[str, Any]) -> Seen:
    """One running replicate: its process here, or its Slurm job."""
    return _seen_process(ws, record.version, rep, name=f"r{rep['index']}")


def _seen_process(ws: Workspace, version: Version, where: dict[str, Any], name: str | None = None) -> Seen:
    """A run's (or a replicate's, ``name``) Slurm job or process, from what the record keeps of it
    (job_id, or host, pid, pgid and start time): alive, gone, or None when it cannot be told."""
    said = f"{name}: " if name else ""
    if where.get("job_id"):
        job = str(where["job_id"])
        state, why = slurm_state(ws, version, job)
        if state is None:
            return Seen(None, f"{said}Slurm job {job}: could not ask Slurm ({why}); left as it was")
        if state == "GONE":
            return Seen(False, f"{said}Slurm job {job} is no longer known to the cluster")
        return Seen(state.split()[0] in SLURM_ACTIVE, f"{said}Slurm job {job} {state}")
    host = where.get("host")
    if host and host != procs.hostname():
        return Seen(None, f"{said}runs on {host}, not on this machine ({procs.hostname()}): look there with `exp status {version}`")
    pid = where.get("pid")
    if not pid:
        return Seen(None, f"{said}no process recorded yet (starting, or begun by hand without a pid)")
    alive, text = LOOKS[procs.look(int(pid), where.get("pgid"), where.get("pid_started"))](pid, host or procs.hostname())
    return Seen(alive, said + text)


def _seen_replicates(ws: Workspace, record: Record) -> Seen:
    """A replicated run is alive while one of its replicates is, or its queue will start one."""
    run = record.meta.get("run") or {}
    looks = [seen_replicate(ws, record, r) for r in run["replicates"]
             if r.get("status") == "running" or (r.get("status") == "pending" and r.get("job_id"))]
    pending = [r for r in run["replicates"] if r.get("status") == "pending" and not r.get("job_id")]
    words = [s.where for s in looks]
    queued = bool(pending) and runner.supervisor_alive(ws, run.get("queue"))
    if pending:
        words.append(f"{len(pending)} pending" + ("" if queued else " (no live queue supervisor will start them)"))
    if any(s.alive for s in looks) or queued:
        return Seen(True, "; ".join(words))
    if any(s.alive is None for s in looks):
        return Seen(None, "; ".join(words))
    return Seen(False, "; ".join(words) or "no replicate runs")


#: What ``procs.look`` saw, as alive/gone/unknown and the words ``exp status`` prints.
LOOKS = {
    "alive": lambda pid, host: (True, f"pid {pid} alive on {host}"),
    "orphans": lambda pid, host: (True, f"pid {pid} gone, its process group (the trainer) still running on {host}"),
    "reused": lambda pid, host: (False, f"pid {pid} gone (the number now belongs to another process)"),
    "gone": lambda pid, host: (False, f"pid {pid} gone"),
    "unknown": lambda pid, host: (None, f"pid {pid} exists but cannot be inspected"),
}


def _exists(pid: int) -> bool:
    return procs.same_process(pid, None) is True


def heartbeat(ws: Workspace, version: Version) -> dict[str, Any]:
    beat = read_json(ws.out_dir(version) / "heartbeat")
    return beat if isinstance(beat, dict) else {}


def heartbeat_stale(ws: Workspace, record: Record) -> tuple[bool, str]:
    """Is nobody writing the run's heartbeat any more? Stale when it is older than
    HEARTBEAT_STALE_S, when the trainer that writes it ran here and is gone, or when there is none."""
    beat = heartbeat(ws, record.version)
    if not beat.get("unix"):
        return True, "no heartbeat"
    age = time.time() - float(beat["unix"])
    run = record.meta.get("run") or {}
    local = not run.get("job_id") and run.get("host") in (None, procs.hostname())
    if local and beat.get("pid") and not _exists(int(beat["pid"])):
        return True, f"heartbeat {age:.0f} s old, its trainer (pid {beat['pid']}) gone"
    return age > HEARTBEAT_STALE_S, f"heartbeat {age:.0f} s old"


def _trainer_finished(ws: Workspace, version: Version) -> bool:
    trainer = read_json(ws.out_dir(version) / "status.json")
    return isinstance(trainer, dict) and trainer.get("status") == "finished"


def progress(ws: Workspace, version: Version, config: dict[str, Any]) -> dict[str, Any]:
    """Step, loss, throughput and ETA from the newest metrics line and the heartbeat; of a
    replicated run, its replicate furthest behind (the record ends with its last replicate)."""
    dirs = [ws.replicate_dir(version, i) for i in range(len(groups.replicate_seeds(config)))]
    seen = [progress_of(d, config) for d in dirs if len(dirs) > 1 and (d / "metrics.jsonl").exists()]
    if seen:
        return min(seen, key=lambda p: p.get("step") or 0)
    return progress_of(ws.out_dir(version), config)


def progress_of(out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``progress`` of one run directory (a record's, or a replicate's r{i}/)."""
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
    max_steps = config.get("max_steps")
    if not (isinstance(max_steps, int) and max_steps > 0):  # a trainer that decides its length (epochs) says it
        trainer = read_json(out / "status.json")
        max_steps = trainer.get("max_steps") if isinstance(trainer, dict) and isinstance(trainer.get("max_steps"), int) else None
    info: dict[str, Any] = {"step": last.get("step"), "max_steps": max_steps, "loss": last.get("loss"),
                            "val_loss": val, "tokens_per_s": last.get("tokens_per_s")}
    if last.get("step") and last.get("elapsed_s") and max_steps:
        rate = last["step"] / max(last["elapsed_s"], 1e-9)
        info["eta_s"] = round((max_steps - last["step"]) / rate, 1) if rate > 0 else None
    beat = read_json(out / "heartbeat")
    beat = beat if isinstance(beat, dict) else {}
    if beat.get("time"):
        try:
            info["heartbeat_age_s"] = round(times.age_s(beat["time"]), 1)
        except (TypeError, ValueError):
            pass
    return info


# -- exp status ------------------------------------------------------------------------------------
def status(ws: Workspace, version: Version | None = None) -> list[dict[str, Any]]:
    """Runs and their progress. A run whose process is gone and whose heartbeat is stale is
    concluded (finished if its trainer said so, else interrupted); an unknown one is left alone."""
    targets = [version] if version is not None else [e.version for e in entries(ws) if e.status == "running"]
    rows = []
    for v in targets:
        record = records.load(ws, v)
        row: dict[str, Any] = {"version": str(v), "status": record.status}
        run = record.meta.get("run") or {}
        if record.status == "running" and runner.replicated(run) and not run.get("remote"):
            record, note = _status_replicates(ws, record)
            if note:
                row["note"] = note
            row["status"] = record.status
            run = record.meta.get("run") or {}
            row["where"] = seen(ws, record).where if record.status == "running" else ""
        elif record.status == "running":
            look = seen(ws, record)
            row["where"] = look.where
            row["alive"] = look.alive
            if run.get("remote"):  # its outcome comes back by pulling; an unreachable host ends nothing
                row.update(_remote_status(ws, v, look.alive))
                if look.alive is None:
                    row["note"] = f"unknown: {look.where}"
            elif look.alive is None:
                row["note"] = f"unknown: {look.where}"
            elif not look.alive:
                stale, beat = heartbeat_stale(ws, record)
                if stale or _trainer_finished(ws, v):
                    record, _, failure = conclude(ws, v, 1, reason=f"the run's process died without finalizing ({look.where}; {beat})",
                                                  interrupted=True, ended_by="exp status")
                    row["status"] = record.status
                    row["note"] = f"marked {(record.meta.get('run') or {}).get('status', record.status)}: {look.where}; {beat}"
                    if failure:
                        row["note"] += f"; the analysis failed: {failure}"
                else:
                    row["note"] = f"{look.where}, but {beat}: waiting for the run's own finalize"
        run = record.meta.get("run") or {}
        row.update({k: run.get(k) for k in ("backend", "host", "started", "ended", "exit_code", "job_id", "pid", "restarts")
                    if run.get(k) is not None})
        if runner.replicated(run):
            row["replicates"] = replicate_rows(ws, v, run, record.meta.get("config") or {})
        row.update(progress(ws, v, record.meta.get("config") or {}))  # of a replicated run: the one furthest behind
        if record.status in ("failed", "interrupted") and run.get("error"):
            row["error"] = run["error"]
        rows.append(row)
    return rows


def replicate_rows(ws: Workspace, version: Version, run: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each replicate: index, seed, status, and its progress while it runs or its error."""
    out = []
    for rep in run.get("replicates") or []:
        row = {k: rep.get(k) for k in ("index", "seed", "status", "started", "ended", "exit_code", "job_id", "pid")
               if rep.get(k) is not None}
        if rep.get("status") == "running":
            row.update(progress_of(ws.replicate_dir(version, rep["index"]), config))
        if rep.get("error"):
            row["error"] = rep["error"]
        out.append(row)
    return out


def _status_replicates(ws: Workspace, record: Record) -> tuple[Record, str | None]:
    """Conclude the replicates whose process is gone (heartbeat stale); end the record when nothing
    runs and no live queue supervisor will start what is pending."""
    v = record.version
    run = record.meta.get("run") or {}
    notes = []
    for rep in run["replicates"]:
        if rep.get("status") == "pending" and rep.get("job_id"):  # its job waits in Slurm, or was cancelled there
            look = seen_replicate(ws, record, rep)
            if look.alive is False:
                runner.finalize_replicate(ws, v, rep["index"], 1, reason=f"its Slurm job ended before the replicate started ({look.where})",
                                          ended_by="exp status")
                notes.append(f"r{rep['index']}: {look.where} before it started")
            continue
        if rep.get("status") != "running":
            continue
        look = seen_replicate(ws, record, rep)
        if look.alive is not False:
            continue
        beat = read_json(ws.replicate_dir(v, rep["index"]) / "heartbeat")
        age = time.time() - float(beat["unix"]) if isinstance(beat, dict) and beat.get("unix") else None
        trainer = read_json(ws.replicate_dir(v, rep["index"]) / "status.json")
        finished = isinstance(trainer, dict) and trainer.get("status") == "finished"
        if age is None or age > HEARTBEAT_STALE_S or finished or (isinstance(beat, dict) and beat.get("pid")
                                                                   and not _exists(int(beat["pid"]))):
            runner.conclude(ws, v, 1, reason=f"the replicate's process died without finalizing ({look.where})",
                            interrupted=True, ended_by="exp status", replicate=rep["index"])
            notes.append(f"r{rep['index']} marked ended: {look.where}")
    record = records.load(ws, v)
    run = record.meta.get("run") or {}
    if record.status == "running" and not any(r.get("status") == "running" or r.get("job_id") and r.get("status") == "pending"
                                              for r in run["replicates"]) \
            and not runner.supervisor_alive(ws, run.get("queue")):
        record = runner.finalize_replicates(ws, v, 1, interrupted=True, ended_by="exp status")
        notes.append("no replicate runs and the queue's supervisor is gone: pending replicates stay pending; "
                     f"`exp run {v} --resume` runs them")
    return record, "; ".join(notes) or None


# -- a run on another host (ssh) ------------------------------------------------------------------
def _remote_status(ws: Workspace, version: Version, alive: bool | None) -> dict[str, Any]:
    """A status row's news of a remote run: fresh progress while it runs, its outcome once it ended."""
    if alive is None:
        return {}
    try:
        if alive:
            remote.pull(ws, version)
            return {}
        return {k: v for k, v in runner.pull(ws, version).items() if k in ("status", "note")}
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
    result = runner.pull(ws, version)
    return {"version": str(version), "status": result["status"], "where": where}


# -- exp stop --------------------------------------------------------------------------------------
def stop(ws: Workspace, version: Version, timeout_s: float = 120.0) -> dict[str, Any]:
    """SIGTERM to the recorded process group (scancel for a Slurm job); the trainer checkpoints and
    the run ends interrupted. Refused, in one line, for a run on another host or without a process."""
    record = records.load(ws, version)
    require_status(record, ("running",), "stop")
    run = record.meta.get("run") or {}
    if runner.replicated(run) and not run.get("remote"):
        return _stop_replicates(ws, version, timeout_s)
    if run.get("remote"):
        return _stop_remote(ws, version, run, timeout_s)
    if run.get("job_id"):
        job = str(run["job_id"])
        try:
            slurm.cancel(job, "TERM")
        except slurm.SlurmError as err:
            if "invalid job id" not in str(err).lower():
                raise RunError(f"could not ask Slurm to stop job {job}: {err}; the run was left as it is") from None
    else:
        host = run.get("host")
        if host and host != procs.hostname():
            raise RunError(f"{version} runs on {host}, not on this machine ({procs.hostname()}); stop it there with "
                           f"`exp stop {version}` (exp never signals a process on another host)")
        if not run.get("pid"):
            raise RunError(f"{version} has no process recorded (it was begun without one); if nothing runs it, "
                           f"`exp status {version}` will end it once its heartbeat is stale")
        done = procs.terminate(int(run["pid"]), run.get("pgid"), run.get("pid_started"))
        if done == "unknown":
            raise RunError(f"{version}'s pid {run['pid']} cannot be inspected (another user's?); nothing was signalled")
        if done != "signalled":
            why = "is gone" if done == "gone" else "now belongs to another process (not signalled)"
            stale, beat = heartbeat_stale(ws, record)
            if not stale:
                raise RunError(f"{version}'s pid {run['pid']} {why}, but its {beat}: something still runs it; look with `exp status {version}`")
            record = finalize(ws, version, 143, reason=f"the process was already gone (pid {run['pid']} {why})", interrupted=True,
                              ended_by="exp stop")
            return {"version": str(version), "status": record.status, "note": f"pid {run['pid']} {why}; {beat}"}
    deadline = time.monotonic() + timeout_s
    look = Seen(True, "")
    while time.monotonic() < deadline:
        record = records.load(ws, version)
        if record.status != "running":
            break
        look = seen(ws, record)  # the scheduler's answer is cached: files are read every FILE_POLL_S
        if look.alive is False:
            time.sleep(FILE_POLL_S)  # let the EXIT trap write its result
            record = records.load(ws, version)
            if record.status == "running":
                record = finalize(ws, version, 143, reason="stopped by exp stop", interrupted=True, ended_by="exp stop")
            break
        time.sleep(FILE_POLL_S)
    result = {"version": str(version), "status": record.status, "where": look.where}
    if record.status == "running":
        result["note"] = f"still running after {timeout_s:.0f} s; `exp status {version}` to look again"
        if run.get("job_id"):
            try:
                slurm.cancel(str(run["job_id"]))  # the job did not end on TERM: cancel it outright
            except slurm.SlurmError as err:
                result["note"] += f" (scancel: {err})"
    return result


def _stop_replicates(ws: Workspace, version: Version, timeout_s: float) -> dict[str, Any]:
    """No pending replicate starts; each running one gets SIGTERM (scancel for a job) and
    checkpoints; the record ends interrupted once none runs."""
    record = runner.mark_stopping(ws, version)
    run = record.meta.get("run") or {}
    for rep in run.get("replicates") or []:
        if rep.get("job_id") and rep.get("status") in ("pending", "running"):
            try:
                slurm.cancel(str(rep["job_id"]), "TERM" if rep.get("status") == "running" else None)
            except slurm.SlurmError:
                pass
        elif rep.get("status") == "running" and rep.get("pid") and rep.get("host") in (None, procs.hostname()):
            procs.terminate(int(rep["pid"]), rep.get("pgid"), rep.get("pid_started"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = records.load(ws, version)
        if record.status != "running":
            break
        if not any(seen_replicate(ws, record, r).alive for r in (record.meta.get("run") or {})["replicates"]
                   if r.get("status") == "running"):
            time.sleep(FILE_POLL_S)  # let the EXIT traps write their results
            record = runner.finalize_replicates(ws, version, 143, reason="stopped by exp stop", interrupted=True,
                                                ended_by="exp stop")
            break
        time.sleep(FILE_POLL_S)
    result = {"version": str(version), "status": record.status,
              "replicates": {r["index"]: r.get("status") for r in (record.meta.get("run") or {}).get("replicates") or []}}
    if record.status == "running":
        result["note"] = f"still running after {timeout_s:.0f} s; `exp status {version}` to look again"
    return result


# -- exp logs --------------------------------------------------------------------------------------
def log_path(ws: Workspace, version: Version) -> Path:
    out = ws.out_dir(version)
    for name in ("run.log", "train.log"):
        if (out / name).exists():
            return out / name
    raise RunError(f"{version} has no log yet ({ws.rel(out)}/run.log); start it with `exp run {version}`")


def follow_log(ws: Workspace, version: Version, follow: bool) -> Iterator[str]:
    """The run's log; with ``follow``, new lines until the run ends (the record leaves running, or
    its process is seen gone). An unknown state keeps following. A run on another host is followed there."""
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
            if record.status != "running" or seen(ws, record).alive is False:
                rest = fh.read()
                if rest:
                    yield rest.decode("utf-8", errors="replace")
                return
            time.sleep(FILE_POLL_S)
