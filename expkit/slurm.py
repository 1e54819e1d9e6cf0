"""Slurm: every call exp makes to the scheduler (sbatch, sinfo, squeue, scontrol, scancel) and the
``#SBATCH`` lines of a run script, with the workspace's ``[tool.exp.slurm]`` defaults.

Layer 2, like ``gitops``: side effects other layers share, no record or run logic. A command
that is missing, fails or hangs gives ``None`` (or a ``SlurmError`` where the caller must
stop), never a guess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .errors import ExpError, UsageError

#: Seconds one scheduler command may take before it counts as "could not ask".
TIMEOUT_S = 30
#: Minutes-before-the-limit warning: Slurm sends USR1 to the batch shell, which checkpoints and requeues.
SIGNAL = "B:USR1@120"

#: ``[tool.exp.slurm]`` keys → (``#SBATCH`` option, what a value must look like, the hint).
OPTIONS: dict[str, tuple[str, str, str]] = {
    "partition": ("--partition", r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*", "a partition name (sinfo -s lists them)"),
    "time": ("--time", r"(\d+-)?\d{1,3}(:\d\d){0,2}|UNLIMITED|INFINITE", "a Slurm time such as 24:00:00 or 2-00:00:00"),
    "account": ("--account", r"[A-Za-z0-9_.\-]+", "an account name (sacctmgr show assoc user=$USER)"),
    "qos": ("--qos", r"[A-Za-z0-9_.\-]+", "a QOS name"),
    "mem": ("--mem", r"\d+[KMGT]?", "a size such as 64G or 0 (all of the node's memory)"),
    "cpus_per_task": ("--cpus-per-task", r"[1-9]\d{0,3}", "a CPU count such as 8"),
    "constraint": ("--constraint", r"[A-Za-z0-9_.\-&|,\[\]*:]+", "a feature expression such as a100|h100"),
}
#: Keys of the table that are not ``#SBATCH`` options of their own.
OTHER_KEYS = ("gpus", "nodes", "sbatch")
#: Options exp writes itself; an extra ``sbatch`` line may not set them again.
OWNED = ("--job-name", "--output", "--error", "--open-mode", "--nodes", "--ntasks-per-node", "--gres", "--gpus",
         "--requeue", "--no-requeue", "--signal", "--export", "--parsable", "--wrap")


class SlurmError(ExpError):
    """Slurm refused, or could not be asked, where exp cannot go on without it."""


# -- the workspace's defaults ---------------------------------------------------------------------
def check_option(key: str, value: Any, flag: str | None = None) -> str:
    """One option's value as text, or a UsageError naming the flag (or table key) and the form."""
    option, pattern, hint = OPTIONS[key]
    text = str(value).strip()
    if not re.fullmatch(pattern, text):
        raise UsageError(f"{flag or '--' + key.replace('_', '-')} {text!r} is not {hint}")
    return text


def check_extra(lines: Any, where: str = "[tool.exp.slurm] sbatch") -> tuple[str, ...]:
    """Extra ``#SBATCH`` lines such as ``["--exclusive", "--mail-type=END"]``: each one option."""
    if lines is None:
        return ()
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise UsageError(f'{where} must be a list of sbatch options, e.g. sbatch = ["--exclusive"]')
    out = []
    for line in lines:
        text = line.strip()
        if not re.fullmatch(r"--[a-z][a-z0-9\-]*(=[^\s'\"`$;\\]+)?", text):
            raise UsageError(f"{where}: {line!r} is not one sbatch option such as --exclusive or --mail-type=END")
        if text.split("=", 1)[0] in OWNED:
            raise UsageError(f"{where}: {text.split('=', 1)[0]} is set by exp itself; use the exp run option for it")
        out.append(text)
    return tuple(out)


def defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``[tool.exp.slurm]`` table, checked: option values as text, ``gpus``/``nodes`` as
    counts, ``sbatch`` as extra lines. Unknown keys are refused (a typo would be silently lost)."""
    table = settings.get("slurm") or {}
    if not isinstance(table, dict):
        raise UsageError("[tool.exp.slurm] in pyproject.toml must be a table")
    unknown = sorted(set(table) - set(OPTIONS) - set(OTHER_KEYS))
    if unknown:
        raise UsageError(f"[tool.exp.slurm] has unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join([*OPTIONS, *OTHER_KEYS])}")
    out: dict[str, Any] = {k: check_option(k, v, f"[tool.exp.slurm] {k} =") for k, v in table.items() if k in OPTIONS}
    for key in ("gpus", "nodes"):
        if key in table:
            if not isinstance(table[key], int) or isinstance(table[key], bool) or table[key] < (0 if key == "gpus" else 1):
                raise UsageError(f"[tool.exp.slurm] {key} = {table[key]!r} must be a count such as {1 if key == 'nodes' else 4}")
            out[key] = table[key]
    out["sbatch"] = check_extra(table.get("sbatch"))
    return out


def header(*, job_name: str, log: Path | str, nodes: int, gpus_per_node: int, options: dict[str, str],
           extra: tuple[str, ...] = ()) -> list[str]:
    """The ``#SBATCH`` lines, in a fixed order: one task per node (torchrun starts the processes),
    GPUs as a count per node, requeueable with a warning signal before the time limit."""
    lines = [f"--job-name={job_name}", f"--output={log}", "--open-mode=append", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if gpus_per_node:
        lines.append(f"--gres=gpu:{gpus_per_node}")
    for key, (option, _, _) in OPTIONS.items():
        if options.get(key):
            lines.append(f"{option}={options[key]}")
    lines += ["--requeue", f"--signal={SIGNAL}", *extra]
    return lines


# -- asking the scheduler -------------------------------------------------------------------------
def _run(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None


def sbatch_path() -> str | None:
    return shutil.which("sbatch")


def ping() -> tuple[bool, str]:
    """Whether the controller answers (``scontrol ping``), and its words."""
    res = _run(["scontrol", "ping"])
    if res is None:
        return False, "scontrol could not be run (not on PATH, or it hung)"
    text = (res.stdout.strip() or res.stderr.strip() or "no answer").splitlines()[0]
    return res.returncode == 0 and "UP" in res.stdout, text


def partitions() -> list[str] | None:
    """The partitions this user may submit to (``sinfo``), or None when Slurm could not be asked."""
    res = _run(["sinfo", "-h", "-o", "%P"])
    if res is None or res.returncode != 0:
        return None
    return sorted({p.strip().rstrip("*") for p in res.stdout.split() if p.strip()})


def submit_args(script: Path | str, exports: dict[str, str], after: list[str] | None = None, output: Path | str | None = None,
                job_name: str | None = None) -> list[str]:
    """The sbatch command line: ``after`` are jobs this one starts after, whatever their outcome
    (``--dependency=afterany:A:B``: a run queue's order and throttle); ``output`` and ``job_name``
    override the script's ``#SBATCH`` lines (a replicate's own log and name)."""
    export = ",".join(["ALL", *(f"{k}={v}" for k, v in exports.items())])
    args = ["sbatch", "--parsable", f"--export={export}"]
    if after:
        args.append("--dependency=afterany:" + ":".join(after))
    if output is not None:
        args.append(f"--output={output}")
    if job_name:
        args.append(f"--job-name={job_name}")
    return [*args, str(script)]


def submit(script: Path, exports: dict[str, str], env: dict[str, str], cwd: Path, after: list[str] | None = None,
           output: Path | str | None = None, job_name: str | None = None) -> str:
    """``sbatch --parsable`` the script with these variables added to the job's environment; the job id."""
    try:
        res = subprocess.run(submit_args(script, exports, after, output, job_name), capture_output=True, text=True,
                             env=env, cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmError(f"sbatch could not be run: {err}; check `sbatch --version` on this machine") from None
    if res.returncode != 0:
        why = " ".join((res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").split())
        raise SlurmError(f"sbatch refused the job: {why}")
    job = res.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {res.stdout.strip()!r}, not a job id")
    return job


def job_info(job_id: str) -> dict[str, str] | None:
    """``scontrol show job -o ID`` as KEY=VALUE fields, or None when Slurm could not be asked or
    no longer knows the job."""
    res = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if res is None or res.returncode != 0 or "JobId=" not in res.stdout:
        return None
    return dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)


def job_state(job_id: str) -> tuple[str | None, str]:
    """(the job's state — RUNNING, PENDING, COMPLETED, … — or "GONE" when the controller answered
    that it no longer knows the job, or None when Slurm could not be asked; and why not).
    squeue first, then scontrol for a job that has left the queue (accounting may be off: no sacct)."""
    try:
        q = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                           timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
        if q.returncode == 0 and q.stdout.strip():
            return q.stdout.strip().splitlines()[0], ""
        s = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True,
                           timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        return None, f"{Path(err.filename or 'squeue').name} is not on PATH"
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"{type(err).__name__}: {err}"
    if s.returncode == 0:
        for field in s.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1], ""
    said = " ".join((s.stderr or s.stdout or q.stderr).split())
    if "invalid job id" in said.lower():
        return "GONE", ""  # the controller answered: it has forgotten the job (it ended a while ago)
    return None, said[:200] or f"squeue exit {q.returncode}, scontrol exit {s.returncode}"


def cancel(job_id: str, signal: str | None = None) -> None:
    """``scancel`` the job, or with ``signal`` (e.g. "TERM") signal every process of it
    (``--full``: the batch shell too, which forwards it to the trainer). Raises SlurmError when
    scancel fails."""
    args = ["scancel", *([f"--signal={signal}", "--full"] if signal else []), str(job_id)]
    res = _run(args)
    if res is None:
        raise SlurmError("scancel could not be run (not on PATH, or it hung); cancel the job by hand: " + " ".join(args))
    if res.returncode != 0:
        raise SlurmError(f"scancel refused: {' '.join((res.stderr or res.stdout).split()) or res.returncode}")


def requeue_pending(job_id: str, attempt: int) -> bool:
    """Inside a job's EXIT trap: whether Slurm is requeueing this job (its restart count is past
    this attempt's ``SLURM_RESTART_COUNT``), so the run goes on in the next attempt."""
    info = job_info(job_id)
    if not info:
        return False
    try:
        return int(info.get("Restarts", "0")) > attempt and info.get("JobState") in ("COMPLETING", "REQUEUED", "PENDING",
                                                                                      "REQUEUE_FED", "REQUEUE_HOLD")
    except ValueError:
        return False
