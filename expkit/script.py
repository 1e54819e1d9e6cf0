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

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, gitops
from .errors import ExpError, UsageError
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
    gpus: str | None = None
    nproc: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    resume: bool = False
    time_limit: str = "24:00:00"
    partition: str | None = None

    def check(self) -> LaunchOptions:
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.gpus is not None and not re.fullmatch(r"\d+(,\d+)*", self.gpus):
            raise UsageError(f"--gpus must look like 0 or 0,1,2, not {self.gpus!r}")
        if self.nproc is not None and not 1 <= self.nproc <= 1024:
            raise UsageError(f"--nproc must be between 1 and 1024, not {self.nproc}")
        if self.gpus and self.nproc and self.nproc != len(self.gpus.split(",")):
            raise UsageError(f"--nproc {self.nproc} disagrees with --gpus {self.gpus}; give one of them")
        if not 1 <= self.nnodes <= 4096 or not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank} must be below --nnodes {self.nnodes}")
        if self.backend == "local" and (self.nproc or 1) > 1:
            raise UsageError("--nproc > 1 needs --backend torchrun (or slurm)")
        if self.nnodes > 1 and self.backend == "local":
            raise UsageError("--nnodes needs --backend torchrun or slurm")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.master_addr):
            raise UsageError(f"--master-addr {self.master_addr!r} is not a host name or address")
        if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d\d){0,2}|UNLIMITED|INFINITE", self.time_limit):
            raise UsageError(f"--time {self.time_limit!r} is not a Slurm time (e.g. 24:00:00 or 2-00:00:00)")
        if self.partition is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", self.partition):
            raise UsageError(f"--partition {self.partition!r} is not a partition name")
        return self

    @property
    def procs(self) -> int:
        """Processes per node: one per GPU asked for, else --nproc, else 1."""
        return len(self.gpus.split(",")) if self.gpus else (self.nproc or 1)

    @property
    def distributed(self) -> bool:
        return self.backend == "torchrun" or (self.backend == "slurm" and (self.procs > 1 or self.nnodes > 1))


def _master_port(version: Version) -> int:
    """A fixed port for multi-node runs, the same on every node that renders this version."""
    return 20000 + (version.major * 1009 + version.minor * 101 + version.patch * 7) % 20000


# -- rendering -------------------------------------------------------------------------------
def render_script(ws: Workspace, record: Record, opts: LaunchOptions) -> str:
    version = record.version
    meta = record.meta
    config = meta.get("config") or {}
    out = ws.out_dir(version)
    repo = git_state(ws)
    backend = "torchrun" if opts.backend == "torchrun" or (opts.backend == "slurm" and opts.distributed) else "local"
    if opts.backend == "slurm" and re.search(r"\s", str(out)):
        raise RunError(f"Slurm cannot take an output path with spaces ({out}); move the workspace")
    context = {
        "version": str(version),
        "description": meta.get("description", ""),
        "record": ws.rel(record.path),
        "out_rel": ws.rel(out),
        "script_rel": ws.rel(ws.run_script_path(version)),
        "template": TEMPLATE,
        "exp_version": __version__,
        "git_sha": (repo or {}).get("sha") or "not a git repository",
        "git_dirty": bool((repo or {}).get("dirty")),
        "backend": opts.backend if opts.backend != "slurm" else "slurm",
        "launcher": backend,
        "root": str(ws.root),
        "out": str(out),
        "python": sys.executable,
        "cuda_devices": opts.gpus or config.get("cuda_devices") or "",
        "gpus": opts.gpus or "",
        "nproc": opts.procs,
        "nnodes": opts.nnodes,
        "node_rank": opts.node_rank,
        "master_addr": opts.master_addr,
        "master_port": opts.master_port or _master_port(version),
        "name": f"experiment_{version}",
        "tags": [f"v{version}", version.category] + ([f"parent-{meta['parent']}"] if meta.get("parent") else []),
        "time_limit": opts.time_limit,
        "partition": opts.partition,
        "cpus_per_task": max(1, os.cpu_count() or 1),
    }
    return render(ws.templates_dir, TEMPLATE, **context)


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
