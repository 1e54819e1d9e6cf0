"""The run script of a record: launch options and the rendered ``run_file/experiment_X.Y.Z.sh``.

The script is self-contained: it calls ``exp _start`` (preflight, then status running,
pre-registration, environment snapshot), launches the trainer, and on exit — success, crash or
SIGTERM — calls ``exp _finalize``, so a detached or Slurm run updates its record by itself.
Rendering is deterministic: the same record, options and code revision give the same bytes (the
run records the script's hash, and an approval binds it). Backends: ``local`` (one process),
``torchrun`` (DDP: gloo on CPU, NCCL on GPU), ``slurm`` (the same script with an ``#SBATCH``
header).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, gitops, slurm, tasks
from .errors import ConfigError, ExpError, UsageError
from .files import atomic_write
from .record import Record
from .render import render
from .version import Version
from .workspace import Workspace

BACKENDS = ("local", "torchrun", "slurm")
TEMPLATE = "run.sh.j2"


class RunError(ExpError):
    """A run cannot start, be found, or be stopped."""


# -- options ---------------------------------------------------------------------------------
@dataclass
class LaunchOptions:
    backend: str = "local"
    #: local/torchrun: device ids "0,1"; slurm: a count of GPUs per node "4"
    gpus: str | None = None
    nproc: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    resume: bool = False
    time_limit: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    constraint: str | None = None
    #: extra #SBATCH lines from [tool.exp.slurm] sbatch
    sbatch_extra: tuple[str, ...] = ()

    def check(self) -> LaunchOptions:
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "slurm":
            if self.gpus is not None and not re.fullmatch(r"\d{1,3}", self.gpus):
                raise UsageError(f"under Slurm --gpus is a count of GPUs per node (e.g. --gpus 4), not {self.gpus!r}: "
                                 "Slurm chooses the devices")
            if self.node_rank or self.master_addr != "127.0.0.1" or self.master_port:
                raise UsageError("--node-rank, --master-addr and --master-port are for --backend torchrun; "
                                 "under Slurm give --nodes N and Slurm places them")
        elif self.gpus is not None and not re.fullmatch(r"\d+(,\d+)*", self.gpus):
            raise UsageError(f"--gpus must look like 0 or 0,1,2, not {self.gpus!r}")
        if self.nproc is not None and not 1 <= self.nproc <= 1024:
            raise UsageError(f"--nproc must be between 1 and 1024, not {self.nproc}")
        if self.gpus and self.nproc and self.nproc != self.gpu_count:
            raise UsageError(f"--nproc {self.nproc} disagrees with --gpus {self.gpus}; give one of them")
        if not 1 <= self.nnodes <= 4096 or not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank} must be below --nnodes {self.nnodes}")
        if self.backend == "local" and (self.nproc or 1) > 1:
            raise UsageError("--nproc > 1 needs --backend torchrun (or slurm)")
        if self.nnodes > 1 and self.backend == "local":
            raise UsageError("--nnodes needs --backend torchrun or slurm")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.master_addr):
            raise UsageError(f"--master-addr {self.master_addr!r} is not a host name or address")
        if self.master_port is not None and not 1024 <= self.master_port <= 65535:
            raise UsageError(f"--master-port must be between 1024 and 65535, not {self.master_port}")
        for key in ("partition", "account", "qos", "mem", "constraint"):
            if getattr(self, key) is not None:
                setattr(self, key, slurm.check_option(key, getattr(self, key)))
        if self.time_limit is not None:
            self.time_limit = slurm.check_option("time", self.time_limit)
        if self.cpus_per_task is not None:
            slurm.check_option("cpus_per_task", self.cpus_per_task)
        if self.backend != "slurm":
            given = [f for f, v in (("--partition", self.partition), ("--time", self.time_limit), ("--account", self.account),
                                    ("--qos", self.qos), ("--mem", self.mem), ("--cpus-per-task", self.cpus_per_task),
                                    ("--constraint", self.constraint)) if v is not None]
            if given:
                raise UsageError(f"{', '.join(given)} {'is a Slurm option' if len(given) == 1 else 'are Slurm options'}; "
                                 "add --backend slurm")
        return self

    def with_workspace_defaults(self, settings: dict[str, Any]) -> LaunchOptions:
        """Under Slurm, what the command line left out comes from ``[tool.exp.slurm]``."""
        if self.backend != "slurm":
            return self.check()
        table = slurm.defaults(settings)
        for key, attr in (("partition", "partition"), ("time", "time_limit"), ("account", "account"), ("qos", "qos"),
                          ("mem", "mem"), ("constraint", "constraint")):
            if getattr(self, attr) is None and table.get(key):
                setattr(self, attr, table[key])
        if self.cpus_per_task is None and table.get("cpus_per_task"):
            self.cpus_per_task = int(table["cpus_per_task"])
        if self.gpus is None and table.get("gpus"):
            self.gpus = str(table["gpus"])
        if self.nnodes == 1 and table.get("nodes"):
            self.nnodes = int(table["nodes"])
        self.sbatch_extra = table["sbatch"]
        return self.check()

    @property
    def gpu_count(self) -> int:
        """GPUs per node: Slurm's --gpus is a count, the others' a list of device ids."""
        if not self.gpus:
            return 0
        return int(self.gpus) if self.backend == "slurm" else len(self.gpus.split(","))

    @property
    def procs(self) -> int:
        """Processes per node: one per GPU asked for, else --nproc, else 1."""
        return self.gpu_count or (self.nproc or 1)

    @property
    def distributed(self) -> bool:
        return self.backend == "torchrun" or (self.backend == "slurm" and (self.procs > 1 or self.nnodes > 1))


def _master_port(version: Version) -> int:
    """A fixed port for multi-node runs, the same on every node that renders this version."""
    return 20000 + (version.major * 1009 + version.minor * 101 + version.patch * 7) % 20000


# -- rendering -------------------------------------------------------------------------------
def render_script(ws: Workspace, record: Record, opts: LaunchOptions) -> str:
    """The run script's text. Launchers: ``python`` (one process), ``torchrun`` (``--standalone``
    on one node: it binds its own free port; static rendezvous at --master-addr:--master-port over
    several), ``srun`` (Slurm with more than one process or node: one torchrun per node, c10d
    rendezvous on the job's first node)."""
    version = record.version
    meta = record.meta
    config = meta.get("config") or {}
    try:
        task = tasks.of(ws, meta)
    except ConfigError as err:
        raise RunError(f"{version}: {err}") from None
    if opts.distributed and not task.distributed:
        raise RunError(f"the {task.name} task trains in one process: drop --nproc/--nnodes and --backend torchrun "
                       "(Slurm runs it as one task)")
    out = ws.out_dir(version)
    repo = git_state(ws)
    is_slurm = opts.backend == "slurm"
    launcher = ("srun" if is_slurm else "torchrun") if opts.distributed else "python"
    if is_slurm and re.search(r"\s", str(out)):
        raise RunError(f"Slurm cannot take an output path with spaces ({out}); move the workspace")
    torchrun = Path(sys.executable).with_name("torchrun")
    log = out / ("run.log" if opts.node_rank == 0 else f"run.node{opts.node_rank}.log")
    context = {
        "version": str(version),
        "task": task.name,
        "builtin": task.builtin,
        "task_source": task.source,
        "trainer": " ".join(_shell_word(w) for w in task.launch_words(_CONFIG, _OUT, _PY)),
        "description": meta.get("description", ""),
        "record": ws.rel(record.path),
        "out_rel": ws.rel(out),
        "script_rel": ws.rel(ws.run_script_path(version)),
        "template": TEMPLATE,
        "exp_version": __version__,
        "git_sha": (repo or {}).get("sha") or "not a git repository",
        "git_dirty": bool((repo or {}).get("dirty")),
        "backend": opts.backend,
        "launcher": launcher,
        "root": str(ws.root),
        "out": str(out),
        "python": sys.executable,
        "torchrun": str(torchrun) if torchrun.exists() else "",
        # Slurm binds the GPUs it gives a job (CUDA_VISIBLE_DEVICES): nothing may override that
        "cuda_devices": "" if is_slurm else (opts.gpus or config.get("cuda_devices") or ""),
        "gpus": opts.gpus or "",
        "nproc": opts.procs,
        "nnodes": opts.nnodes,
        "node_rank": opts.node_rank,
        "master_addr": opts.master_addr,
        "master_port": opts.master_port or _master_port(version),
        "name": f"experiment_{version}",
        # replicates > 1: the script runs one replicate, EXP_REPLICATE=i, in out/experiment_V/r{i}/
        "replicates": replicate_count(config),
        "seed": int(config.get("seed", 0) or 0),
        "tags": [f"v{version}", version.category] + ([f"parent-{meta['parent']}"] if meta.get("parent") else []),
        "sbatch": slurm.header(
            job_name=f"exp-{version}", log=log, nodes=opts.nnodes, gpus_per_node=opts.gpu_count,
            options={"partition": opts.partition, "time": opts.time_limit or "24:00:00", "account": opts.account,
                     "qos": opts.qos, "mem": opts.mem, "cpus_per_task": str(opts.cpus_per_task or ""),
                     "constraint": opts.constraint},
            extra=opts.sbatch_extra,
        ) if is_slurm else [],
    }
    return render(ws.templates_dir, TEMPLATE, **context)


# markers the trainer's words are built with, then written as the script's own variables
_CONFIG, _OUT, _PY = "\x00config\x00", "\x00out\x00", "\x00python\x00"
_REFS = {_CONFIG: '"$OUT_DIR/config.json"', _OUT: '"$OUT_DIR"', _PY: '"$PYTHON"'}


def _shell_word(word: str) -> str:
    """One word of the trainer's command line for bash: literal parts shell-quoted, the
    placeholders as the script's variables (``--out-dir={out_dir}`` -> ``--out-dir="$OUT_DIR"``)."""
    parts = re.split("(" + "|".join(map(re.escape, _REFS)) + ")", word)
    return "".join(_REFS[p] if p in _REFS else shlex.quote(p) for p in parts if p) or "''"


def replicate_count(config: dict[str, Any]) -> int:
    """How many times a record's run trains (config ``replicates``; 1 when unset or invalid)."""
    n = config.get("replicates", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def write_script(ws: Workspace, record: Record, opts: LaunchOptions) -> tuple[Path, str]:
    text = render_script(ws, record, opts)
    path = ws.run_script_path(record.version)
    atomic_write(path, text, chmod=0o755)
    return path, text


def own_paths(ws: Workspace) -> tuple[Path, ...]:
    """What exp itself writes in a workspace (records and their state, run scripts, outputs):
    not code, so not what makes a run's code revision dirty."""
    return (ws.experiment_dir, ws.run_file_dir, ws.out_root)


def git_state(ws: Workspace) -> dict[str, Any] | None:
    """The workspace repository's revision (sha, branch; dirty: changes outside exp's own files),
    or None when there is none."""
    try:
        st = gitops.state(ws.root, exclude=own_paths(ws))
    except Exception:  # a broken repository must not stop a run; the record says "unknown"
        return None
    return st.to_dict() if st else None


def code_state(env: dict[str, Any] | None) -> dict[str, Any]:
    """Where the trainer code that runs comes from: the ``model`` package the run's Python
    imports (``env["model_path"]`` from the preflight probe, which imports as the run does) and
    expkit beside it — a checkout (its git revision, dirty when the packages have uncommitted or
    untracked changes) or an installed package (its version)."""
    model_path = (env or {}).get("model_path")
    if not model_path:
        return {"version": __version__, "location": "unknown (the preflight could not find the model package)"}
    model_dir = Path(model_path).resolve().parent
    packages = (model_dir, Path(__file__).resolve().parent)
    try:
        st = gitops.state(model_dir, only=packages)
    except Exception:
        st = None
    if st is None:
        return {"version": __version__, "location": str(model_dir.parent), "package": f"expkit {__version__} (installed, not a checkout)"}
    return {"version": __version__, "location": st.root, "git_sha": st.sha or "no commit yet", "dirty": st.dirty,
            "packages": [str(p) for p in packages]}
