"""Running a record: render the script, preflight, launch, follow, stop, finalize.

The rendered ``run_file/experiment_X.Y.Z.sh`` is self-contained: it calls ``exp _start``
(preflight, then status running, pre-registration, environment snapshot), launches the
trainer, and on exit — success, crash or SIGTERM — calls ``exp _finalize``, so a detached or
Slurm run updates its record by itself. ``exp run`` adds what a person at a terminal wants:
the same bookkeeping done before the launch (so a second ``exp run`` is refused at once), a
progress display, ``--detach``, and ``sbatch``.

Backends: ``local`` (one process), ``torchrun`` (DDP: gloo on CPU, NCCL on GPU),
``slurm`` (the same script with an ``#SBATCH`` header, submitted with ``sbatch --parsable``).
This is the only module that starts processes for a run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__
from . import record as rec_mod
from . import store
from .errors import ExpError, RecordError, UsageError
from .record import Record
from .version import Version
from .workspace import Workspace

BACKENDS = ("local", "torchrun", "slurm")
TEMPLATE = "run.sh.j2"
#: States from which a fresh run may start, and from which ``--resume`` may continue.
STARTABLE = ("draft", "ready", "failed")
RESUMABLE = ("interrupted", "failed")
SUMMARY_KEYS = ("steps", "final_loss", "best_val_loss", "val_ppl", "tokens_seen", "tokens_per_s", "wall_s", "params", "peak_mem_mb", "mfu")
LOG_TAIL_LINES = 30


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
    from .render import render

    version = record.version
    meta = record.meta
    config = meta.get("config") or {}
    out = ws.out_dir(version)
    repo = _git_state(ws)
    backend = "torchrun" if opts.backend == "torchrun" or (opts.backend == "slurm" and opts.distributed) else "local"
    if opts.backend == "slurm" and re.search(r"\s", str(out)):
        raise RunError(f"Slurm cannot take an output path with spaces ({out}); move the workspace")
    context = {
        "version": str(version),
        "description": meta.get("description", ""),
        "record": store._rel(ws, record.path),
        "out_rel": store._rel(ws, out),
        "script_rel": store._rel(ws, ws.run_script_path(version)),
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
    store.atomic_write(path, text, mode=0o755)
    return path, text


def _git_state(ws: Workspace) -> dict[str, Any] | None:
    from . import gitops

    try:
        st = gitops.state(ws.root)
    except Exception:  # a broken repository must not stop a run; the record says "unknown"
        return None
    return st.to_dict() if st else None


# -- preflight -------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool | None  # None: a warning, the run may go on
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PROBE = r"""
import json, os, platform, socket, sys
info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "host": socket.gethostname(), "cpus": os.cpu_count()}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    info["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
except Exception as err:
    info["torch_error"] = f"{type(err).__name__}: {err}"
for name in ("transformers", "tokenizers", "swanlab"):
    try:
        info[name] = __import__(name).__version__
    except Exception as err:
        info[name + "_error"] = f"{type(err).__name__}: {err}"
print(json.dumps(info))
"""


def probe_environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Versions and GPUs as seen by the Python that will run the trainer (a subprocess, so the
    CLI never imports torch itself)."""
    try:
        out = subprocess.run(
            # -P: like the trainer (PYTHONSAFEPATH=1 in the run script), not importing from the current directory
            [sys.executable, "-P", "-c", _PROBE], capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError) as err:
        return {"probe_error": f"{type(err).__name__}: {err}", "python": sys.version.split()[0], "executable": sys.executable}


def _estimate_params(config: dict[str, Any]) -> int:
    h, layers, v = config.get("hidden_size", 128), config.get("num_hidden_layers", 2), config.get("vocab_size", 6400)
    ffn = config.get("intermediate_size") or 64 * -(-8 * h // 3 // 64)
    per_layer = 4 * h * h + 3 * h * ffn
    if config.get("model_type") == "model_moe":
        per_layer += (config.get("num_experts", 4) - 1) * 3 * h * ffn
    extra = config.get("knowledge_num", 0) * h if config.get("model_type") == "model" else 0
    return v * h + layers * per_layer + extra


def preflight(ws: Workspace, record: Record | None, opts: LaunchOptions, probe: dict[str, Any] | None = None) -> tuple[list[Check], dict[str, Any]]:
    """Everything a run needs, checked before anything starts. Returns (checks, environment)."""
    checks: list[Check] = []
    config = (record.meta.get("config") if record else None) or {}
    cuda = opts.gpus or config.get("cuda_devices") or ""
    env = probe if probe is not None else probe_environment({"CUDA_VISIBLE_DEVICES": cuda} if cuda else None)

    checks.append(Check("python", True, f"{env.get('python')} at {env.get('executable')}"))
    fix_install = f"install the environment: cd {store._rel(ws, ws.root) or '.'} && make venv (or pip install -e .)"
    if "torch_error" in env or "probe_error" in env:
        checks.append(Check("torch", False, env.get("torch_error") or env.get("probe_error", "?"), fix_install))
    else:
        checks.append(Check("torch", True, f"torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else ", CPU build")))
    if "transformers_error" in env:
        checks.append(Check("transformers", False, env["transformers_error"], fix_install))
    elif "transformers" in env:
        checks.append(Check("transformers", True, f"transformers {env['transformers']}"))

    gpus = env.get("gpus") or []
    wants_gpu = bool(cuda) or str(config.get("device", "auto")).startswith("cuda")
    if wants_gpu and not gpus:
        checks.append(Check("gpus", False, f"GPUs {cuda or 'cuda'} asked for, none visible", "drop --gpus / set device=auto, or run where the GPUs are"))
    elif cuda and len(gpus) < len(cuda.split(",")):
        checks.append(Check("gpus", False, f"asked for GPUs {cuda}; visible: {', '.join(gpus) or 'none'}", "ask only for GPUs that exist"))
    elif gpus:
        checks.append(Check("gpus", True, ", ".join(f"{i}: {n}" for i, n in enumerate(gpus))))
    else:
        checks.append(Check("gpus", True, "none; training on CPU"))
    if opts.backend in ("torchrun", "slurm") and gpus and opts.procs > len(gpus) and not opts.gpus:
        checks.append(Check("processes", False, f"{opts.procs} processes for {len(gpus)} GPUs", "use --gpus or a smaller --nproc"))

    for key, kind, build in (
        ("data_path", "train", "python scripts/build_corpus.py"),
        ("val_data_path", "val", "python scripts/build_corpus.py"),
        ("tokenizer_path", "tokenizer", "python scripts/build_tokenizer.py"),
    ):
        value = config.get(key, "embedded")
        path = ws.resolve(value, kind)
        if path is None:
            checks.append(Check(key, True, "held out from data_path"))
        elif path.exists():
            checks.append(Check(key, True, str(path)))
        else:
            fix = f"build it: {build} (in the expkit checkout)" if value == "embedded" else f"fix the path: exp set VERSION {key}=PATH"
            checks.append(Check(key, False, f"{path} is missing", fix))

    params = _estimate_params(config) if config else 0
    need = params * 16 * (int(config.get("keep_top_k", 2)) + 2) + 200 * 2**20  # fp32 weights + Adam, per checkpoint kept
    ws.out_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(ws.out_root).free
    checks.append(
        Check(
            "disk", free >= need, f"{free / 2**30:.1f} GiB free in {ws.out_root}, about {need / 2**30:.2f} GiB needed",
            "free space, or lower keep_top_k" if free < need else "",
        )
    )

    mode = os.environ.get("SWANLAB_MODE") or config.get("swanlab_mode", "offline")
    if mode == "cloud" and not (os.environ.get("SWANLAB_API_KEY") or _swanlab_logged_in()):
        checks.append(Check("swanlab", None, "cloud mode without an API key: the run will log offline", "swanlab login, or exp set VERSION swanlab_mode=offline"))
    else:
        checks.append(Check("swanlab", True, f"mode {mode}" + (" (SWANLAB_MODE)" if os.environ.get("SWANLAB_MODE") else "")))

    repo = _git_state(ws)
    if repo is None:
        checks.append(Check("git", None, "not a git repository: runs cannot be traced to code", "git init && git commit"))
    elif repo.get("dirty"):
        checks.append(Check("git", None, f"{(repo.get('sha') or 'no commit')[:12]} with uncommitted changes (saved to git.diff)", "commit before running for a clean trace"))
    else:
        checks.append(Check("git", True, f"{(repo.get('sha') or 'no commit yet')[:12]} on {repo.get('branch') or 'detached HEAD'}"))

    if opts.backend == "slurm":
        sbatch = shutil.which("sbatch")
        if not sbatch:
            checks.append(Check("slurm", False, "sbatch not found", "install Slurm, or start the local cluster: scripts/slurm_local.sh start"))
        else:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
            up = ping.returncode == 0 and "UP" in ping.stdout
            checks.append(Check("slurm", up, (ping.stdout.strip() or ping.stderr.strip()).splitlines()[0] if (ping.stdout or ping.stderr) else "no answer", "" if up else "start slurmctld (scripts/slurm_local.sh start)"))
    return checks, env


def _swanlab_logged_in() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "swanlab" in netrc.read_text(errors="ignore")


def failed_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.ok is False]


# -- begin and finalize (the script's _start and _finalize) ------------------------------------
def _ready_or_raise(ws: Workspace, record: Record) -> None:
    from .problems import check, is_clean

    problems = check(ws, record)
    if not is_clean(problems):
        errors = [p for p in problems if p.level == "error"]
        listed = "; ".join(f"line {p.line}: {p.message}" for p in errors[:6])
        more = f"; and {len(errors) - 6} more" if len(errors) > 6 else ""
        raise RecordError(f"{record.version} is not ready to run — {listed}{more} (see `exp check {record.version}`)")


def _require_startable(ws: Workspace, record: Record, resume: bool) -> None:
    version = record.version
    if record.status == "running":
        run = record.meta.get("run") or {}
        raise RunError(
            f"{version} is already running ({_where(run)}); `exp status {version}`, `exp logs {version} -f` or `exp stop {version}`"
        )
    if resume:
        rec_mod.require_status(record, RESUMABLE, "resume")
        if not any((ws.out_dir(version) / "checkpoints").glob("*.pt")):
            raise RunError(
                f"{version} has no checkpoint to resume from in {store._rel(ws, ws.out_dir(version))}/checkpoints; "
                f"run it afresh with `exp run {version}`"
            )
        return
    if record.status not in STARTABLE:
        nxt = (
            f"continue it with `exp run {version} --resume`"
            if record.status == "interrupted"
            else f"start the next experiment with `exp new NEXT --from {version}`"
        )
        raise RunError(f"{version} has already run (status {record.status}); {nxt}")
    _ready_or_raise(ws, record)


def _archive_previous_outputs(ws: Workspace, version: Version) -> Path | None:
    """A fresh run after a failed one keeps the failed outputs, moved aside."""
    out = ws.out_dir(version)
    if not out.exists() or not any(p for p in out.iterdir() if p.name not in ("config.json",)):
        return None
    target = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%dT%H%M%S')}")
    out.rename(target)
    return target


def begin(ws: Workspace, version: Version, opts: LaunchOptions, pid: int | None = None, token: str | None = None,
          env: dict[str, Any] | None = None, command: str | None = None) -> Record:
    """Status running, pre-registration, config.json and the environment snapshot.

    Idempotent for the token that ``exp run`` passed to the script it launched.
    """
    out = ws.out_dir(version)
    with store.update(ws, version) as record:
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
            run.setdefault("resumed", []).append(store.now())
            for key in ("ended", "duration_s", "exit_code", "error", "log_tail", "final", "status"):
                run.pop(key, None)
        else:
            _archive_previous_outputs(ws, version)
            from . import config as cfg_mod

            cfg = cfg_mod.validate(record.meta.get("config") or {})
            out.mkdir(parents=True, exist_ok=True)
            store.atomic_write(out / "config.json", json.dumps(cfg.model_dump(), indent=2, ensure_ascii=False) + "\n")
            record.meta["prereg"] = {
                "at": store.now(),
                "sections": {n: rec_mod.sha256(record.human(n)) for n in rec_mod.PREREGISTERED},
            }
            repo = _git_state(ws) or {}
            run = {
                "started": store.now(),
                "backend": opts.backend,
                "host": socket.gethostname(),
                "command": command or f"bash {store._rel(ws, ws.run_script_path(version))}",
                "script": store._rel(ws, ws.run_script_path(version)),
                "git_sha": repo.get("sha") or "not a git repository",
                "git_dirty": bool(repo.get("dirty")),
                "out_dir": store._rel(ws, out),
            }
            if opts.backend in ("torchrun", "slurm"):
                run["processes"] = opts.procs * opts.nnodes
            _snapshot(ws, version, out, record, repo, env)
            script = ws.run_script_path(version)
            if script.exists():
                run["script_sha256"] = rec_mod.sha256(script.read_bytes())
            envinfo = env or {}
            run["gpus"] = ", ".join(envinfo.get("gpus") or []) or "none (CPU)"
            run["env"] = {k: envinfo[k] for k in ("python", "torch", "cuda", "transformers", "tokenizers", "swanlab", "platform", "host", "cpus") if envinfo.get(k) is not None}
        run["token"] = token or secrets.token_hex(8)
        if pid:
            run["pid"] = pid
        if os.environ.get("SLURM_JOB_ID"):
            run["job_id"] = os.environ["SLURM_JOB_ID"]
        record.meta["run"] = run
        record.set_status("running")
        _regenerate_quietly(ws, record, ("execution", "environment"))
    return record


def _snapshot(ws: Workspace, version: Version, out: Path, record: Record, repo: dict[str, Any], env: dict[str, Any] | None) -> None:
    """Files that let a result be traced: git diff, pip freeze, environment, a plain summary."""
    from . import gitops

    if repo.get("dirty"):
        try:
            store.atomic_write(out / "git.diff", gitops.diff(ws.root))
        except Exception as err:  # the diff is evidence, not a precondition
            store.atomic_write(out / "git.diff", f"# could not save the diff: {err}\n")
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True, text=True, timeout=120)
    store.atomic_write(out / "requirements.txt", freeze.stdout if freeze.returncode == 0 else f"# pip freeze failed: {freeze.stderr.strip()}\n")
    store.atomic_write(out / "env.json", json.dumps(env or {}, indent=2, ensure_ascii=False) + "\n")
    meta = record.meta
    store.atomic_write(
        out / "experiment_info.txt",
        "\n".join(
            [
                f"experiment   {version}",
                f"description  {json.dumps(meta.get('description', ''), ensure_ascii=False)}",
                f"parent       {meta.get('parent') or '-'}",
                f"baseline     {meta.get('baseline') or '-'}",
                f"record       {store._rel(ws, record.path)}",
                f"script       {store._rel(ws, ws.run_script_path(version))}",
                f"git          {repo.get('sha') or 'not a git repository'}{' (dirty)' if repo.get('dirty') else ''}",
                f"started      {store.now()}",
                "",
            ]
        ),
    )


def _regenerate_quietly(ws: Workspace, record: Record, names: tuple[str, ...]) -> None:
    """Generated sections follow the data; if a person edited one by hand, the data is still
    recorded in the front matter and the edit is left for `exp check` to report."""
    from .errors import HandEditError

    try:
        store.regenerate_blocks(ws, record, names)
    except HandEditError as err:
        print(f"exp: warning: {err}", file=sys.stderr)


def _where(run: dict[str, Any]) -> str:
    if run.get("job_id"):
        return f"Slurm job {run['job_id']}"
    if run.get("pid"):
        return f"pid {run['pid']} on {run.get('host', '?')}"
    return "starting"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


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
    with store.update(ws, version) as record:
        if record.status != "running":
            return record
        run = record.meta.get("run") or {}
        t_status = trainer.get("status")
        if exit_code == 0 and t_status == "finished":
            status = "finished"
        elif t_status == "interrupted" or exit_code in (130, 143) or interrupted:
            status = "interrupted"
        else:
            status = "failed"
        run["ended"] = store.now()
        run["duration_s"] = round(time.time() - _parse_time(run.get("started")), 1) if run.get("started") else None
        run["exit_code"] = exit_code
        final = {k: summary[k] for k in SUMMARY_KEYS if summary.get(k) is not None}
        if final:
            run["final"] = final
        swan = sorted((out / "swanlog").glob("run-*")) if (out / "swanlog").is_dir() else []
        if swan:
            run["swanlab_dir"] = store._rel(ws, swan[-1])
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
        record.set_status(status)
        _regenerate_quietly(ws, record, ("execution", "environment"))
    (out / "run.pid").unlink(missing_ok=True)
    return record


def _parse_time(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def start_from_script(ws: Workspace, version: Version, backend: str, pid: int, gpus: str | None) -> tuple[list[Check], Record | None]:
    """The script's first step. Launched by ``exp run`` (its token in the environment): the
    bookkeeping is done, only the pid is noted. Run by hand or by Slurm on its own: preflight,
    and begin only if it passed (a failed preflight leaves the status unchanged)."""
    opts = LaunchOptions(backend=backend, gpus=gpus, resume=bool(os.environ.get("EXP_RESUME"))).check()
    token = os.environ.get("EXP_RUN_TOKEN")
    record = store.load(ws, version)
    if token and record.status == "running" and (record.meta.get("run") or {}).get("token") == token:
        return [], begin(ws, version, opts, pid=pid, token=token)
    _require_startable(ws, record, opts.resume)
    checks, env = preflight(ws, record, opts)
    if failed_checks(checks):
        return checks, None
    return checks, begin(ws, version, opts, pid=pid, env=env, command=f"bash {store._rel(ws, ws.run_script_path(version))}")


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


def prepare(ws: Workspace, version: Version, opts: LaunchOptions) -> Launch:
    """Render the script and preflight, without changing the record's status."""
    opts.check()
    record = store.load(ws, version)
    _require_startable(ws, record, opts.resume)
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
            store.atomic_write(out / "run.pid", f"{proc.pid}\n")
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
    with store.update(ws, version) as record:
        run = record.meta.get("run") or {}
        run.update(fields)
        record.meta["run"] = run


def wait(ws: Workspace, version: Version, launch: Launch) -> Record:
    """Wait for a local launch to end; finalize it here if the script could not."""
    assert launch.process is not None
    code = launch.process.wait()
    record = store.load(ws, version)
    if record.status == "running":  # the script died before its EXIT trap could run
        record = finalize(ws, version, code, reason=f"the run script ended with code {code} without finalizing")
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
            info["heartbeat_age_s"] = round(time.time() - _parse_time(beat["time"]), 1)
        except (TypeError, ValueError):
            pass
    return info


def status(ws: Workspace, version: Version | None = None) -> list[dict[str, Any]]:
    """Runs and their progress; a run whose process died without finalizing becomes interrupted."""
    if version is not None:
        targets = [version]
    else:
        targets = [e.version for e in store.entries(ws) if e.status == "running"]
    rows = []
    for v in targets:
        record = store.load(ws, v)
        row: dict[str, Any] = {"version": str(v), "status": record.status}
        run = record.meta.get("run") or {}
        if record.status == "running":
            alive, where = liveness(ws, record)
            row["where"] = where
            if not alive:
                record = finalize(ws, v, 1, reason=f"the run's process died without finalizing ({where})", interrupted=True)
                row["status"] = record.status
                row["note"] = f"marked {record.status}: {where}"
        row.update({k: run.get(k) for k in ("backend", "started", "ended", "exit_code", "job_id", "pid") if run.get(k) is not None})
        row.update(progress(ws, v, record.meta.get("config") or {}))
        if record.status == "failed" and run.get("error"):
            row["error"] = run["error"]
        rows.append(row)
    return rows


def stop(ws: Workspace, version: Version, timeout_s: float = 120.0) -> dict[str, Any]:
    """SIGTERM to the run (scancel for Slurm); the trainer checkpoints; status interrupted."""
    record = store.load(ws, version)
    rec_mod.require_status(record, ("running",), "stop")
    run = record.meta.get("run") or {}
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
        record = store.load(ws, version)
        if record.status != "running":
            break
        alive, where = liveness(ws, record)
        if not alive:
            time.sleep(0.5)  # let the EXIT trap write its result
            record = store.load(ws, version)
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
    raise RunError(f"{version} has no log yet ({store._rel(ws, out)}/run.log); start it with `exp run {version}`")


def follow_log(ws: Workspace, version: Version, follow: bool) -> Iterator[str]:
    path = log_path(ws, version)
    with open(path, "rb") as fh:
        while True:
            line = fh.readline()
            if line:
                yield line.decode("utf-8", errors="replace")
                continue
            if not follow:
                return
            record = store.load(ws, version)
            if record.status != "running" or not liveness(ws, record)[0]:
                rest = fh.read()
                if rest:
                    yield rest.decode("utf-8", errors="replace")
                return
            time.sleep(0.3)


def sync(ws: Workspace, version: Version) -> dict[str, Any]:
    """Upload the offline SwanLab run (``swanlab sync`` underneath)."""
    from . import tracking

    out = ws.out_dir(version)
    try:
        run_dir = tracking.latest_run_dir(out / "swanlog")
    except Exception as err:
        raise RunError(f"{version} has no offline SwanLab run under {store._rel(ws, out)}/swanlog ({err})") from None
    if not (os.environ.get("SWANLAB_API_KEY") or _swanlab_logged_in()):
        raise RunError("no SwanLab API key: run `swanlab login` (or set SWANLAB_API_KEY), then `exp sync " + str(version) + "`")
    cmd = tracking.sync_command(run_dir)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RunError(f"swanlab sync failed: {(res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout).strip() else res.returncode}")
    return {"version": str(version), "run_dir": str(run_dir), "command": cmd, "output": res.stdout.strip()}
