"""The run queue: several runs from one command — records, the members of a group, and the
replicates of a record — one after another or side by side.

A *unit* is one training: a record's run, or one replicate of a replicated record. ``plan``
checks everything first (unknown versions, records that cannot start, GPU sets that do not
divide, the preflight) and nothing starts unless all of it holds. ``Supervisor`` then runs the
units on ``parallel`` slots: each slot owns a disjoint GPU set (``CUDA_VISIBLE_DEVICES``) or, on
a CPU, ``cores / parallel`` threads; a unit that ends frees its slot for the next pending one. A
failing unit does not stop the others unless ``fail_fast``. The supervisor is the foreground
``exp run`` or, with ``--detach``, a process of its own session (``exp _queue ID``), and the
queue's state lives in ``Workspace.queue_dir()/ID.json``: its units, and the supervisor's
identity (``procs.identity``). A unit's truth is its record: a supervisor killed outright loses
nothing — running units finalize their own records, pending ones stay pending, and
``exp run ... --resume`` runs only what did not finish. Under Slurm every unit is a job and the
order is Slurm's (``--dependency=afterany``): no supervisor is needed. Layer 4.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import groups, procs, records, runner, slurm, times, watch
from .errors import ExpError, UsageError
from .files import file_lock, read_json, write_json
from .preflight import Check, failed_checks, probe_environment
from .script import LaunchOptions, RunError
from .status import next_step
from .version import Version
from .workspace import Workspace

#: Seconds between two looks of the supervisor at its units.
POLL_S = 0.5
#: Record statuses of a run that ended well: nothing left to run.
DONE = ("finished", "analyzed", "approved", "changes_requested", "committed")


@dataclass
class Unit:
    """One training of the queue: ``version``'s run, or its replicate ``replicate``."""

    version: str
    replicate: int | None
    seed: int
    resume: bool = False
    #: pending, launched, ended, cancelled
    state: str = "pending"
    gpus: str | None = None
    slot: int | None = None
    job_id: str | None = None
    pid: int | None = None
    started: str | None = None
    ended: str | None = None
    #: how it ended: finished, failed, interrupted (the record's words), with the error
    outcome: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.version if self.replicate is None else f"{self.version}/r{self.replicate}"


@dataclass
class QueueOptions:
    parallel: int | None = None
    gpus: str | None = None
    gpus_per_run: int | None = None
    fail_fast: bool = False
    resume: bool = False
    #: what every unit's launch shares (backend, Slurm options)
    launch: LaunchOptions = field(default_factory=LaunchOptions)


@dataclass
class Plan:
    id: str
    versions: list[str]
    units: list[Unit]
    parallel: int
    gpu_sets: list[str]
    threads: int | None
    backend: str
    fail_fast: bool
    resume: bool
    skipped: list[dict[str, str]] = field(default_factory=list)
    checks: dict[str, list[Check]] = field(default_factory=dict)
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    #: the environment probe (torch, GPUs) per GPU set, taken once: it does not change between two runs of a queue
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def opts_for(self, version: str, gpus: str | None) -> LaunchOptions:
        """A unit's launch options: the shared ones, its GPU set, and whether it resumes."""
        resume = any(u.resume for u in self.units if u.version == version)
        return replace(self.launch, gpus=gpus if self.backend != "slurm" else self.launch.gpus, resume=resume)


# -- planning --------------------------------------------------------------------------------------
def gpu_sets(gpus: str | None, per_run: int | None, backend: str) -> list[str]:
    """``--gpus 0,1,2,3 --gpus-per-run 2`` → ["0,1", "2,3"]; ``--gpus 0,1`` alone → ["0,1"] (every
    run gets all of them, one run at a time)."""
    if per_run is not None and per_run < 1:
        raise UsageError(f"--gpus-per-run must be 1 or more, not {per_run}")
    if backend == "slurm":
        if gpus is not None and per_run is not None:
            raise UsageError("under Slurm give --gpus-per-run K (each job asks for K GPUs); Slurm chooses the devices")
        return []
    if gpus is None:
        if per_run is not None:
            raise UsageError("--gpus-per-run needs --gpus, the devices to divide (e.g. --gpus 0,1,2,3 --gpus-per-run 2)")
        return []
    ids = [g.strip() for g in gpus.split(",")]
    if not all(g.isdigit() for g in ids):
        raise UsageError(f"--gpus must look like 0 or 0,1,2,3, not {gpus!r}")
    if len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {gpus} names a device twice")
    if per_run is None:
        return [",".join(ids)]
    if per_run > len(ids):
        raise UsageError(f"--gpus-per-run {per_run} exceeds the {len(ids)} GPU(s) of --gpus {gpus}")
    if len(ids) % per_run:
        raise UsageError(f"--gpus-per-run {per_run} does not divide the {len(ids)} GPUs of --gpus {gpus}: "
                         f"give a divisor ({', '.join(str(k) for k in range(1, len(ids) + 1) if len(ids) % k == 0)})")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids), per_run)]


def _units_of(ws: Workspace, version: Version, resume: bool, skipped: list[dict[str, str]]) -> list[Unit]:
    """The units one record contributes; ``resume``: only what did not finish."""
    record = records.load(ws, version)
    config = record.meta.get("config") or {}
    run = record.meta.get("run") or {}
    seeds = groups.replicate_seeds(config)
    if not resume:
        runner._require_startable(ws, record, False)
        return [Unit(str(version), i if len(seeds) > 1 else None, seed) for i, seed in enumerate(seeds)]
    if record.status in DONE or (record.status not in ("running", "draft", "ready") and run.get("status") == "finished"):
        skipped.append({"version": str(version), "why": f"finished ({record.status})"})
        return []
    if record.status == "running":
        skipped.append({"version": str(version), "why": "running: followed by its own record (`exp status`)"})
        return []
    if record.status in ("draft", "ready"):
        runner._require_startable(ws, record, False)
        return [Unit(str(version), i if len(seeds) > 1 else None, seed) for i, seed in enumerate(seeds)]
    if runner.replicated(run):
        return [Unit(str(version), r["index"], r["seed"], resume=True) for r in run["replicates"] if r.get("status") != "finished"]
    has_checkpoint = any((ws.out_dir(version) / "checkpoints").glob("*.pt"))
    runner._require_startable(ws, record, has_checkpoint)
    return [Unit(str(version), None, seeds[0], resume=has_checkpoint)]


def resolve_versions(ws: Workspace, versions: list[str], members: bool) -> list[Version]:
    """The records a queue runs: the versions given (all known, none twice), or with ``members``
    the members of the one group given."""
    parsed = []
    for text in versions:
        if not Version.is_valid(text):
            raise UsageError(f"{text!r} is not a version X.Y.Z")
        parsed.append(Version.parse(text))
    if members:
        if len(parsed) != 1:
            raise UsageError("--members takes one group: exp run PARENT --members")
        return [e.version for e in groups.require_group(ws, parsed[0])]
    unknown = [str(v) for v in parsed if not ws.record_path(v).exists()]
    if unknown:
        raise UsageError(f"no experiment {', '.join(unknown)} ({len(unknown)} of {len(parsed)} unknown); nothing was started; "
                         "`exp list` shows the records")
    twice = sorted({str(v) for v in parsed if parsed.count(v) > 1})
    if twice:
        raise UsageError(f"{', '.join(twice)} given twice; name each record once")
    return parsed


def plan(ws: Workspace, versions: list[Version], qopts: QueueOptions, preflight: bool = True) -> Plan:
    """Every unit, its slot and GPUs, checked; and each record's preflight. Raises (nothing
    started, nothing written) when the plan itself cannot hold."""
    base = qopts.launch
    if base.nnodes > 1 or base.node_rank:
        raise UsageError("a run queue runs each unit on one node; run multi-node records one at a time")
    sets = gpu_sets(qopts.gpus, qopts.gpus_per_run, base.backend)
    if qopts.parallel is not None and qopts.parallel < 1:
        raise UsageError(f"--parallel must be 1 or more, not {qopts.parallel}")
    if sets:
        parallel = qopts.parallel or len(sets)
        if parallel > len(sets):
            raise UsageError(f"--parallel {parallel} needs {parallel} GPU sets, but --gpus {qopts.gpus} "
                             f"{'with --gpus-per-run ' + str(qopts.gpus_per_run) if qopts.gpus_per_run else ''} makes {len(sets)}")
    else:
        parallel = qopts.parallel or 1
    backend = base.backend
    if sets and len(sets[0].split(",")) > 1 and backend == "local":
        backend = "torchrun"  # several GPUs per run: one process per GPU, torchrun --standalone
    launch = replace(base, backend=backend)
    if base.backend == "slurm" and qopts.gpus_per_run:
        launch = replace(launch, gpus=str(qopts.gpus_per_run))
    threads = None
    if backend != "slurm" and not sets and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    for data in states(ws):  # a live queue that will still start one of these: two queues must not race for it
        held = sorted({u["version"] for u in data["units"] if u.get("state") == "pending"} & {str(v) for v in versions})
        if held and not data.get("ended") and runner.supervisor_alive(ws, data["id"]):
            raise RunError(f"queue {data['id']} ({supervisor_words(ws, data)}) will still start {', '.join(held)}; nothing was "
                           f"started: wait for it (`exp status`), or stop it first (`exp stop V`, `exp stop PARENT --members`)")
    skipped: list[dict[str, str]] = []
    units: list[Unit] = []
    problems = []
    for v in versions:
        try:
            units += _units_of(ws, v, qopts.resume, skipped)
        except ExpError as err:
            problems.append(str(err) if str(err).startswith(str(v)) else f"{v}: {err}")
    if problems:
        raise RunError("nothing was started: " + " | ".join(problems))
    for i, unit in enumerate(units):  # the GPUs each would get if the runs took equal time; the first to finish hands its set on
        unit.slot = i % parallel
        unit.gpus = sets[unit.slot] if sets else None
    result = Plan(f"q{times.stamp()}-{secrets.token_hex(2)}", [str(v) for v in versions], units, parallel, sets, threads,
                  backend, qopts.fail_fast, qopts.resume, skipped, {}, launch)
    if preflight:
        probes = result.probes
        for version in dict.fromkeys(u.version for u in units):
            gpus = next(u.gpus for u in units if u.version == version)
            opts = result.opts_for(version, gpus).check()
            key = gpus or ""
            if key not in probes and backend != "slurm":
                probes[key] = probe_environment({"CUDA_VISIBLE_DEVICES": key} if key else None)
            prepared = runner.prepare(ws, Version.parse(version), opts, dry_run=True, probe=probes.get(key))
            result.checks[version] = prepared.checks
    return result


def host_launch_options(plan_: Plan, qopts: QueueOptions) -> LaunchOptions:
    """What the host's ``exp run ... --detach`` is given (and its preflight checks): the options as
    asked (the host chooses torchrun for several GPUs per run itself), all the GPUs of the queue."""
    return replace(qopts.launch, gpus=qopts.gpus, resume=qopts.resume)


def plan_for_host(ws: Workspace, versions: list[Version], qopts: QueueOptions) -> tuple[Plan, list[str]]:
    """A queue to run on another host: the plan checked here (versions, records that cannot
    start, GPU sets; nothing copied or started when it fails), without this machine's preflight
    or thread count (the host's exp decides them); and the queue's flags for the host's ``exp run``."""
    if qopts.launch.backend == "slurm":
        raise UsageError("--host runs a queue on that one host; for Slurm, log in to the cluster and run "
                         "`exp run ... --backend slurm` there")
    plan_ = plan(ws, versions, qopts, preflight=False)
    plan_.threads = None
    flags = ["--parallel", str(plan_.parallel)]
    if qopts.gpus_per_run is not None:
        flags += ["--gpus-per-run", str(qopts.gpus_per_run)]
    if qopts.fail_fast:
        flags.append("--fail-fast")
    return plan_, flags


def rendezvous(plan_: Plan, unit: Unit) -> str:
    """How a unit's processes meet: ``standalone`` (torchrun picks its own free port on one node,
    so runs side by side never collide), Slurm's c10d on the job's node, or none (one process)."""
    procs_per_run = len(unit.gpus.split(",")) if unit.gpus else (plan_.launch.nproc or 1)
    if plan_.backend == "torchrun":
        return "standalone"
    if plan_.backend == "slurm" and (plan_.launch.gpu_count > 1 or (plan_.launch.nproc or 1) > 1):
        return "c10d (the job's node, port from the job id)"
    return "standalone" if procs_per_run > 1 else "-"


def unit_env(plan_: Plan, unit: Unit) -> dict[str, str]:
    """What a unit's script gets in its environment beyond the workspace's: its threads (CPU side
    by side), its GPUs (a replicate: the script's CUDA_VISIBLE_DEVICES is overridden)."""
    env: dict[str, str] = {}
    if plan_.threads:
        env.update(OMP_NUM_THREADS=str(plan_.threads), MKL_NUM_THREADS=str(plan_.threads))
    if unit.gpus and unit.replicate is not None:
        env["EXP_GPUS"] = unit.gpus
    return env


def command_of(ws: Workspace, plan_: Plan, unit: Unit, after: str | None = None) -> str:
    """The exact command that starts a unit (as ``exp run`` starts it)."""
    script = ws.rel(ws.run_script_path(unit.version))
    env = unit_env(plan_, unit)
    if unit.replicate is not None:
        env = {"EXP_REPLICATE": str(unit.replicate), **env}
    if unit.resume:
        env["EXP_RESUME"] = "1"
    if plan_.backend == "slurm":
        out = ws.replicate_dir(unit.version, unit.replicate) if unit.replicate is not None else ws.out_dir(unit.version)
        return " ".join(slurm.submit_args(script, env, [after] if after else None,
                                          ws.rel(out / "run.log") if unit.replicate is not None else None,
                                          f"exp-{unit.name.replace('/', '-')}" if unit.replicate is not None else None))
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    return f"{prefix + ' ' if prefix else ''}bash {script}"


def plan_rows(ws: Workspace, plan_: Plan) -> list[dict[str, Any]]:
    """The plan as rows: member, seed, GPUs, rendezvous, backend, threads, command, out dir."""
    rows = []
    for i, unit in enumerate(plan_.units):
        after = f"<job of {plan_.units[i - plan_.parallel].name}>" if plan_.backend == "slurm" and i >= plan_.parallel else None
        out = ws.replicate_dir(unit.version, unit.replicate) if unit.replicate is not None else ws.out_dir(unit.version)
        rows.append({"member": unit.name, "version": unit.version, "replicate": unit.replicate, "seed": unit.seed,
                     "gpus": unit.gpus or ("-" if plan_.backend != "slurm" or not plan_.launch.gpu_count
                                           else f"{plan_.launch.gpu_count} (Slurm's choice)"),
                     "rendezvous": rendezvous(plan_, unit), "backend": plan_.backend, "threads": plan_.threads,
                     "resume": unit.resume, "slot": unit.slot, "command": command_of(ws, plan_, unit, after),
                     "out_dir": ws.rel(out)})
    return rows


def plan_dict(ws: Workspace, plan_: Plan) -> dict[str, Any]:
    """The dry run's answer: the plan, the preflight's findings, whether the plan is valid."""
    findings = {v: [c.to_dict() for c in checks] for v, checks in plan_.checks.items()}
    missing = {v: [c.name for c in failed_checks(checks)] for v, checks in plan_.checks.items() if failed_checks(checks)}
    return {"queue": plan_.id, "versions": plan_.versions, "parallel": plan_.parallel, "gpu_sets": plan_.gpu_sets,
            "threads": plan_.threads, "backend": plan_.backend, "fail_fast": plan_.fail_fast, "resume": plan_.resume,
            "units": plan_rows(ws, plan_), "skipped": plan_.skipped, "preflight": findings,
            "not_found_here": missing, "valid": True}


# -- the queue's state -------------------------------------------------------------------------------
def state_path(ws: Workspace, queue_id: str) -> Path:
    return ws.queue_dir() / f"{queue_id}.json"


def _lock(ws: Workspace, queue_id: str) -> Any:
    return file_lock(ws.queue_dir() / f".{queue_id}.lock")


def save_state(ws: Workspace, plan_: Plan, **fields: Any) -> None:
    """Write the queue's state: the plan and its units (``fields`` adds the supervisor, the end)."""
    with _lock(ws, plan_.id):
        old = read_json(state_path(ws, plan_.id))
        old = old if isinstance(old, dict) else {}
        cancelled = {u["name"] for u in old.get("units", []) if u.get("state") == "cancelled"}
        for unit in plan_.units:  # `exp stop` cancelled these while we ran: they never start
            if unit.name in cancelled and unit.state == "pending":
                unit.state = "cancelled"
        data = {**{k: v for k, v in old.items() if k not in ("units",)}, **fields,
                "id": plan_.id, "versions": plan_.versions, "parallel": plan_.parallel, "gpu_sets": plan_.gpu_sets,
                "threads": plan_.threads, "backend": plan_.backend, "fail_fast": plan_.fail_fast, "resume": plan_.resume,
                "launch": asdict(plan_.launch),
                "units": [{**asdict(u), "name": u.name} for u in plan_.units]}
        data.setdefault("created", times.now())
        write_json(state_path(ws, plan_.id), data)


def load_plan(ws: Workspace, queue_id: str) -> Plan:
    data = read_json(state_path(ws, queue_id))
    if not isinstance(data, dict) or "units" not in data:
        raise RunError(f"no run queue {queue_id} in {ws.rel(ws.queue_dir())}/")
    units = [Unit(**{k: v for k, v in u.items() if k != "name"}) for u in data["units"]]
    launch = LaunchOptions(**{**data["launch"], "sbatch_extra": tuple(data["launch"].get("sbatch_extra") or ())})
    return Plan(data["id"], data["versions"], units, data["parallel"], data["gpu_sets"], data["threads"], data["backend"],
                data["fail_fast"], data["resume"], [], {}, launch)


def states(ws: Workspace) -> list[dict[str, Any]]:
    """Every queue's state, newest first."""
    out = []
    if ws.queue_dir().is_dir():
        for path in ws.queue_dir().glob("q*.json"):
            data = read_json(path)
            if isinstance(data, dict) and "units" in data:
                out.append(data)
    return sorted(out, key=lambda d: d.get("created", ""), reverse=True)


def supervisor_words(ws: Workspace, data: dict[str, Any]) -> str:
    if data.get("backend") == "slurm":
        return "Slurm orders the jobs (no supervisor)"
    if data.get("ended"):
        return f"ended {data['ended']}"
    sup = data.get("supervisor") or {}
    if not sup.get("pid"):
        return "supervisor not started"
    alive = runner.supervisor_alive(ws, data["id"])
    return f"supervisor pid {sup['pid']} {'alive' if alive else 'gone'} on {sup.get('host', '?')}"


def cancel(ws: Workspace, versions: list[str]) -> list[str]:
    """Mark the pending units of these records cancelled in every queue that holds them: they never
    start. Returns the units cancelled."""
    done = []
    for data in states(ws):
        if data.get("ended"):
            continue
        with _lock(ws, data["id"]):
            fresh = read_json(state_path(ws, data["id"]))
            changed = False
            for unit in fresh.get("units", []):
                if unit["version"] in versions and unit.get("state") == "pending":
                    unit["state"] = "cancelled"
                    unit["error"] = "stopped before it started (exp stop)"
                    done.append(unit["name"])
                    changed = True
            if changed:
                write_json(state_path(ws, data["id"]), fresh)
    return done


# -- running -------------------------------------------------------------------------------------------
def on_group_end(ws: Workspace, parent: Version) -> None:
    """Called once when the last member of group ``parent`` run by a queue ends: a line in
    ``out/.queue/events.log``. The group's analysis is not started here: the last member's own end
    writes it (``runner.conclude`` → ``grouping.after_member_end``), with or without a queue."""
    with open(ws.queue_dir() / "events.log", "a", encoding="utf-8") as fh:
        fh.write(f"{times.now()} group {parent}: its last member ended\n")


class Supervisor:
    """Runs a plan's units on its slots until none is pending or running (the foreground ``exp
    run`` or the detached ``exp _queue ID``); ``echo`` prints progress lines."""

    def __init__(self, ws: Workspace, plan_: Plan, echo: Any = None) -> None:
        self.ws, self.plan, self.echo = ws, plan_, echo or (lambda line: None)
        self.launches: dict[str, runner.Launch] = {}
        self.scripts: set[str] = set()
        self.stopping = False
        self.groups_done: set[str] = set()
        #: records this queue began: a later replicate of one that ended meanwhile does not begin it again
        self.begun: set[str] = set()

    def start(self) -> None:
        me = procs.identity(os.getpid())
        sup = {**(me.to_dict() if me else {"pid": os.getpid()}), "host": procs.hostname(), "started": times.now()}
        save_state(self.ws, self.plan, supervisor=sup)

    def run(self) -> Plan:
        self.start()
        try:
            while True:
                self._reap()
                save_state(self.ws, self.plan)  # picks up cancellations too
                if self.plan.fail_fast and any(u.outcome == "failed" for u in self.plan.units):
                    self._cancel_pending("--fail-fast: another unit failed")
                if not self.stopping:
                    self._fill()
                if not any(u.state in ("pending", "launched") for u in self.plan.units):
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop_all()
            raise
        finally:
            if any(u.state == "launched" for u in self.plan.units):
                save_state(self.ws, self.plan)  # interrupted while units run: they end by themselves
            else:
                save_state(self.ws, self.plan, ended=times.now())
        return self.plan

    def _cancel_pending(self, why: str) -> None:
        for u in self.plan.units:
            if u.state == "pending":
                u.state, u.error = "cancelled", why
                self.echo(f"cancelled {u.name}: {why}")

    def stop_all(self) -> None:
        """Ctrl-C: nothing pending starts; the running units are asked to stop and waited for."""
        self.stopping = True
        self._cancel_pending("the queue was stopped")
        for unit in self.plan.units:
            launch = self.launches.get(unit.name)
            if unit.state == "launched" and launch is not None:
                runner.interrupt(launch, 15)
        while any(u.state == "launched" for u in self.plan.units):
            self._reap()
            time.sleep(POLL_S)
        save_state(self.ws, self.plan, ended=times.now())

    def _free_slots(self) -> list[int]:
        busy = {u.slot for u in self.plan.units if u.state == "launched"}
        return [s for s in range(self.plan.parallel) if s not in busy]

    def _fill(self) -> None:
        for slot in self._free_slots():
            unit = next((u for u in self.plan.units if u.state == "pending"), None)
            if unit is None:
                return
            self._launch(unit, slot)

    def _launch(self, unit: Unit, slot: int) -> None:
        p = self.plan
        unit.slot = slot
        unit.gpus = p.gpu_sets[slot] if p.gpu_sets else None
        v = Version.parse(unit.version)
        opts = p.opts_for(unit.version, unit.gpus).check()
        if unit.replicate is None:
            opts = replace(opts, resume=unit.resume)
        try:
            record = records.load(self.ws, v)
            run = record.meta.get("run") or {}
            if unit.version in self.begun and (record.status != "running" or run.get("stopping")):
                # its record ended meanwhile (`exp stop`, or every started replicate failed and none was left to wait for)
                unit.state, unit.error = "cancelled", f"{unit.version} ended ({record.status}) before this replicate started"
                self.echo(f"cancelled {unit.name}: {unit.error}")
                return
            if unit.replicate is not None and record.status == "running" and run.get("queue") == p.id:
                script = self.ws.run_script_path(v)  # begun by an earlier replicate of this queue: its script
                launch = runner.Launch(unit.version, script, "", [], {})
            else:
                key = unit.gpus or ""
                if key not in p.probes:
                    p.probes[key] = probe_environment({"CUDA_VISIBLE_DEVICES": key} if key else None)
                launch = runner.prepare(self.ws, v, opts, probe=p.probes[key])
            launch = runner.launch(self.ws, v, opts, launch, replicate=unit.replicate, env=unit_env(p, unit), queue=p.id,
                                   command=f"exp run (queue {p.id})")
        except (ExpError, OSError) as err:
            unit.state, unit.outcome, unit.error, unit.ended = "ended", "failed", str(err), times.now()
            self.echo(f"failed    {unit.name}: {err}")
            self._group_check(unit)
            return
        unit.state, unit.started, unit.pid = "launched", times.now(), launch.pid
        self.launches[unit.name] = launch
        self.begun.add(unit.version)
        where = f"GPUs {unit.gpus}" if unit.gpus else (f"{p.threads} thread(s)" if p.threads else "")
        self.echo(f"started   {unit.name} (seed {unit.seed}{', resumed' if unit.resume and launch.pid else ''}) as pid "
                  f"{launch.pid}{'; ' + where if where else ''}; log {self.ws.rel(launch.log) if launch.log else '-'}")

    def _reap(self) -> None:
        for unit in self.plan.units:
            launch = self.launches.get(unit.name)
            if unit.state != "launched" or launch is None or launch.process is None:
                continue
            code = launch.process.poll()
            if code is None:
                continue
            self._ended(unit, code)

    def _ended(self, unit: Unit, code: int) -> None:
        v = Version.parse(unit.version)
        record = records.load(self.ws, v)
        run = record.meta.get("run") or {}
        failure = None
        if unit.replicate is not None:
            rep = (run.get("replicates") or [{}] * (unit.replicate + 1))[unit.replicate]
            if record.status == "running" and rep.get("status") in ("pending", "running"):
                record, _, failure = runner.conclude(self.ws, v, code, replicate=unit.replicate,
                                                     reason=f"the run script ended with code {code} without finalizing")
                run = record.meta.get("run") or {}
                rep = run["replicates"][unit.replicate]
            outcome, error = rep.get("status"), rep.get("error")
        else:
            if record.status == "running":
                record, _, failure = runner.conclude(self.ws, v, code, reason=f"the run script ended with code {code} without finalizing")
                run = record.meta.get("run") or {}
            outcome, error = run.get("status") or record.status, run.get("error")
        unit.state, unit.ended, unit.outcome, unit.error = "ended", times.now(), outcome, error
        self.echo(f"{outcome or 'ended':9} {unit.name}" + (f": {error}" if error and outcome != "finished" else "")
                  + (f"; the record is {record.status}" if unit.replicate is not None else "")
                  + (f"; the analysis failed: {failure}" if failure else ""))
        self._group_check(unit)

    def _group_check(self, unit: Unit) -> None:
        """The hook, once, when the last member of a group ends."""
        meta = records.load(self.ws, Version.parse(unit.version)).meta
        parent = groups.group_of(meta)
        if parent is None or str(parent) in self.groups_done:
            return
        members = groups.member_versions(self.ws, parent)
        if any(u.state in ("pending", "launched") and Version.parse(u.version) in members for u in self.plan.units):
            return
        if any(records.load(self.ws, m).status in ("running", "draft", "ready") for m in members):
            return
        self.groups_done.add(str(parent))
        on_group_end(self.ws, parent)


def submit_slurm(ws: Workspace, plan_: Plan) -> Plan:
    """Every unit a Slurm job, submitted now: unit k waits for unit k - parallel
    (``--dependency=afterany``), so at most ``parallel`` run at once and sequential is a chain."""
    save_state(ws, plan_, supervisor={"backend": "slurm"})
    for i, unit in enumerate(plan_.units):
        v = Version.parse(unit.version)
        opts = replace(plan_.opts_for(unit.version, None), resume=unit.resume).with_workspace_defaults(ws.settings)
        after = [plan_.units[i - plan_.parallel].job_id] if i >= plan_.parallel and plan_.units[i - plan_.parallel].job_id else None
        try:
            record = records.load(ws, v)
            if unit.replicate is not None and record.status == "running" and (record.meta.get("run") or {}).get("queue") == plan_.id:
                launch = runner.Launch(unit.version, ws.run_script_path(v), "", [], {})
            else:
                launch = runner.prepare(ws, v, opts)
            launch = runner.launch(ws, v, opts, launch, replicate=unit.replicate, env=unit_env(plan_, unit), queue=plan_.id,
                                   after=after, command=f"exp run (queue {plan_.id}, Slurm)")
        except ExpError as err:
            unit.state, unit.outcome, unit.error = "ended", "failed", str(err)
            continue
        unit.state, unit.job_id, unit.started = "launched", launch.job_id, times.now()
    save_state(ws, plan_, ended=times.now())
    return plan_


def detach(ws: Workspace, plan_: Plan) -> dict[str, Any]:
    """Hand the queue to a supervisor in its own session (it survives the terminal): ``exp _queue ID``."""
    save_state(ws, plan_)
    log = ws.queue_dir() / f"{plan_.id}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "expkit.cli", "_queue", plan_.id], cwd=ws.root,
                                env={**os.environ, "EXP_ROOT": str(ws.root)}, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    ident = procs.identity(proc.pid)
    sup = {**(ident.to_dict() if ident else {"pid": proc.pid}), "host": procs.hostname(), "started": times.now()}
    save_state(ws, plan_, supervisor=sup)
    return {"queue": plan_.id, "pid": proc.pid, "log": ws.rel(log), "units": [u.name for u in plan_.units],
            "state": ws.rel(state_path(ws, plan_.id))}


def supervise(ws: Workspace, queue_id: str) -> Plan:
    """The detached supervisor's body."""
    plan_ = load_plan(ws, queue_id)
    return Supervisor(ws, plan_, echo=lambda line: print(f"{times.now()} {line}", flush=True)).run()


# -- status and stop -----------------------------------------------------------------------------------
def unit_status(ws: Workspace, data: dict[str, Any], unit: dict[str, Any]) -> dict[str, Any]:
    """One unit as `exp status` shows it: pending / running (step, ETA) / finished / failed (why)."""
    v = Version.parse(unit["version"])
    row: dict[str, Any] = {"member": unit["name"], "seed": unit["seed"]}
    if unit.get("state") == "cancelled":
        return {**row, "status": "cancelled", "why": unit.get("error")}
    record = records.load(ws, v)
    run = record.meta.get("run") or {}
    ours = run.get("queue") == data["id"]
    if unit["replicate"] is not None and ours and runner.replicated(run):
        rep = run["replicates"][unit["replicate"]]
        status = rep.get("status")
        out = ws.replicate_dir(v, unit["replicate"])
        error = rep.get("error")
    elif ours:
        status = run.get("status") or ("running" if record.status == "running" else record.status)
        out = ws.out_dir(v)
        error = run.get("error")
    else:
        status = "pending" if unit.get("state") == "pending" else (unit.get("outcome") or record.status)
        out = ws.out_dir(v)
        error = unit.get("error")
    row["status"] = status
    if status == "running":
        row.update(watch.progress_of(out, record.meta.get("config") or {}))
    if status in ("failed", "interrupted") and error:
        row["why"] = error
    return row


def status(ws: Workspace, only: list[str] | None = None) -> list[dict[str, Any]]:
    """The queues that are not over (or that hold ``only``'s records), each with its units."""
    out = []
    for data in states(ws):
        units = [u for u in data["units"] if only is None or u["version"] in only]
        if not units:
            continue
        rows = [unit_status(ws, data, u) for u in units]
        if only is None and data.get("ended") and not any(r["status"] in ("pending", "running") for r in rows):
            continue
        out.append({"queue": data["id"], "supervisor": supervisor_words(ws, data), "created": data.get("created"),
                    "units": rows, "failed": [r for r in rows if r["status"] == "failed"]})
    return out


def stop(ws: Workspace, versions: list[Version]) -> list[dict[str, Any]]:
    """Stop these records: pending units never start; running ones stop (SIGTERM, or scancel)."""
    names = [str(v) for v in versions]
    cancelled = cancel(ws, names)
    out = []
    for v in versions:
        record = records.load(ws, v)
        if record.status == "running":
            out.append(watch.stop(ws, v))
        elif any(c == str(v) or c.startswith(f"{v}/") for c in cancelled):
            out.append({"version": str(v), "status": record.status, "note": "pending in a queue: it will not start"})
        else:
            out.append({"version": str(v), "status": record.status, "note": f"not running; next: {next_step(record.status, str(v))}"})
    return out


def pending_rows(ws: Workspace, skip: set[str]) -> list[dict[str, Any]]:
    """`exp status` rows of the records a queue that is not over still holds pending (their
    records unchanged, not running yet), with the queue and its supervisor."""
    out: dict[str, dict[str, Any]] = {}
    for data in states(ws):
        if data.get("ended"):
            continue
        for u in data["units"]:
            if u.get("state") == "pending" and u["version"] not in skip and u["version"] not in out:
                if records.load(ws, Version.parse(u["version"])).status == "running":
                    continue  # a replicate still to start: its record's row shows it
                out[u["version"]] = {"version": u["version"], "status": "pending", "queue": data["id"],
                                     "note": f"pending in queue {data['id']} ({supervisor_words(ws, data)})"}
    return list(out.values())


def is_pending(ws: Workspace, version: Version) -> bool:
    """Does a queue that is not over hold a pending unit of this record?"""
    return any(u["version"] == str(version) and u.get("state") == "pending"
               for data in states(ws) if not data.get("ended") for u in data["units"])


def check_members_flag(ws: Workspace, version: Version) -> list[Version]:
    return [e.version for e in groups.require_group(ws, version)]


def summary(plan_: Plan) -> dict[str, Any]:
    return {"queue": plan_.id, "units": [{**asdict(u), "name": u.name} for u in plan_.units],
            "failed": [u.name for u in plan_.units if u.outcome == "failed"],
            "ok": all(u.outcome == "finished" for u in plan_.units)}
