"""A run on another machine, reached over ssh: every ssh and rsync call of expkit lives here.

``exp run V --host HOST`` asks the remote what it lacks (``probe``), copies the snapshot the run
needs (``push``: the record and its state, the rendered script, pyproject, templates, relative
data paths; never ``out/`` or checkpoints), and starts ``exp run V --detach`` in the remote copy
of the workspace (``start``): the remote's own exp renders the script, preflights, begins its
copy of the record and starts the script in its own session, so the run survives the connection
dropping. The local record stays the truth: it keeps where the run lives (``run.remote``) and
learns the outcome by pulling the remote's outputs back (``pull``), never the remote's record.

HOST is what ssh understands (``user@host`` or a ``Host`` alias of the ssh config); the port is
``--port`` or the alias' ``Port``. ``EXP_SSH_CONFIG`` names an ssh config file to use instead of
``~/.ssh/config`` (passed as ``ssh -F``, to rsync too). ssh never prompts (``BatchMode=yes``) and
gives up on a host that does not answer (``ConnectTimeout``): a command never hangs on a password
or a dead machine. A host that cannot be reached is an unknown, never a dead run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import records
from .preflight import PROBE
from .errors import UsageError
from .files import read_json, write_json
from .script import LaunchOptions, RunError
from .version import Version
from .workspace import Workspace

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")
#: Never copied either way: the remote's checkpoints stay there (a resume runs there).
NOT_COPIED = ("--exclude=checkpoints/", "--exclude=*.pt", "--exclude=run.pid", "--exclude=.*.tmp-*")
DEFAULT_PYTHON = "python3"
#: The remote's ssh exit status when ssh itself failed (no connection, refused key).
SSH_FAILED = 255
#: What the remote probe adds to the preflight's: exp itself, and rsync at the other end.
_PROBE_EXTRA = r"""
import shutil
extra = {"rsync": shutil.which("rsync")}
try:
    import expkit
    extra["expkit"] = expkit.__version__
except Exception as err:
    extra["expkit_error"] = f"{type(err).__name__}: {err}"
print(json.dumps(extra))
"""


@dataclass(frozen=True)
class Target:
    """Where a remote run lives: the ssh host (and port), the workspace copy there, its Python."""

    host: str
    port: int | None = None
    dir: str | None = None
    python: str = DEFAULT_PYTHON

    def check(self) -> Target:
        host = self.host.strip()
        if not host or host.startswith("-") or re.search(r"\s", host):
            raise UsageError(f"--host {self.host!r} is not a host: give user@host or an ssh config alias")
        if host.count(":") == 1:  # host:port (one colon; a bare IPv6 address has several)
            name, _, port = host.partition(":")
            hint = f"--host {name} --port {port}" if port.isdigit() else f"--host {name}"
            raise UsageError(f"--host {host}: host:port is not ssh syntax; use {hint}, or an ssh config alias "
                           f"(Host NAME / HostName / Port in ~/.ssh/config)")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a port (1-65535)")
        return self

    @classmethod
    def of(cls, run: dict[str, Any]) -> Target:
        r = run.get("remote") or {}
        return cls(r["host"], r.get("port"), r.get("dir"), r.get("python") or DEFAULT_PYTHON)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "dir": self.dir, "python": self.python}


# -- ssh and rsync -------------------------------------------------------------------------------
def _ssh_base(target: Target) -> list[str]:
    argv = ["ssh"]
    config = os.environ.get("EXP_SSH_CONFIG")
    if config:
        argv += ["-F", config]
    if target.port:
        argv += ["-p", str(target.port)]
    return argv + list(SSH_OPTIONS)


def _ssh(target: Target, command: str, *, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``command`` run by the remote's shell; an unreachable host raises ``Unreachable``."""
    try:
        res = subprocess.run([*_ssh_base(target), target.host, command], input=input, capture_output=True, text=True,
                             timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Unreachable(target, f"no answer within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise RunError("ssh is not installed here: install OpenSSH's client (apt-get install openssh-client)") from None
    if res.returncode == SSH_FAILED:
        raise Unreachable(target, _last_line(res.stderr) or "ssh failed")
    return res


def _rsync(target: Target, args: list[str], timeout: float = 3600) -> None:
    shell = shlex.join(_ssh_base(target))
    try:
        res = subprocess.run(["rsync", "-a", "--partial", *NOT_COPIED, "-e", shell, *args], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RunError("rsync is not installed here: install it (apt-get install rsync)") from None
    except subprocess.TimeoutExpired:
        raise Unreachable(target, f"rsync made no end within {timeout:.0f} s") from None
    if res.returncode != 0:
        why = _last_line(res.stderr) or f"rsync exit {res.returncode}"
        if res.returncode in (12, 30, 35, SSH_FAILED) or "connection" in why.lower():
            raise Unreachable(target, why)
        raise RunError(f"rsync with {target.host} failed: {why}")


class Unreachable(RunError):
    """ssh could not reach the host: nothing is known about the run there."""

    def __init__(self, target: Target, why: str) -> None:
        self.target, self.why = target, why
        super().__init__(f"could not reach {target.host} over ssh ({why}); check that `ssh {target.host} true` works "
                         "without a password (exp uses BatchMode)")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _sh_path(path: str) -> str:
    """A remote path for the remote shell: quoted, with a leading ~/ left to the shell."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


# -- preflight on the remote ---------------------------------------------------------------------
def probe(target: Target, opts: LaunchOptions) -> dict[str, Any]:
    """The remote Python's environment (the preflight's probe, run there) plus exp and rsync;
    what is missing raises one line with the command that fixes it. Nothing is copied or started."""
    py = target.python
    res = _ssh(target, f"exec {_sh_path(py)} -P -", input=PROBE + _PROBE_EXTRA, timeout=300)
    fix_ssh = f"ssh {target.host}"
    if res.returncode != 0 and ("not found" in res.stderr or "No such file" in res.stderr or res.returncode == 127):
        raise RunError(f"remote preflight on {target.host}: python {py} not found there; install Python 3.11+ there "
                       f"or pass --remote-python /path/to/venv/bin/python (nothing was copied or started)")
    try:
        lines = res.stdout.strip().splitlines()
        env, extra = json.loads(lines[-2]), json.loads(lines[-1])
    except (ValueError, IndexError):
        raise RunError(f"remote preflight on {target.host}: {py} did not run the probe "
                       f"({_last_line(res.stderr) or 'no output'}); try `{fix_ssh} {py} -V`") from None
    problems = []
    if extra.get("expkit_error"):
        problems.append(f"exp is not installed for {py} ({extra['expkit_error']}); install it there: "
                        f"`{fix_ssh} '{py} -m pip install -e PATH/TO/expkit'` (a checkout copied there) or pass --remote-python")
    if env.get("torch_error"):
        problems.append(f"torch is missing for {py} ({env['torch_error']}); install it there: `{fix_ssh} '{py} -m pip install torch'`")
    if opts.gpus and not env.get("gpus"):
        problems.append(f"GPUs {opts.gpus} asked for, {target.host} has none visible to torch; pick a host with GPUs or drop --gpus")
    elif opts.gpus and len(env.get("gpus") or []) < len(opts.gpus.split(",")):
        problems.append(f"GPUs {opts.gpus} asked for, {target.host} has {len(env['gpus'])}; ask only for GPUs that exist")
    if not extra.get("rsync"):
        problems.append(f"rsync is not installed on {target.host}; install it there: `{fix_ssh} 'sudo apt-get install rsync'`")
    if problems:
        raise RunError(f"remote preflight on {target.host} failed, nothing was copied or started: " + "; ".join(problems))
    return env


# -- copy, start, ask, stop ----------------------------------------------------------------------
def workdir(target: Target, default: str) -> Target:
    """Make the remote workspace directory; the target with its absolute path."""
    where = target.dir or default
    res = _ssh(target, f"mkdir -p {_sh_path(where)} && cd {_sh_path(where)} && pwd")
    path = _last_line(res.stdout)
    if res.returncode != 0 or not path.startswith("/"):
        raise RunError(f"cannot make the remote directory {where} on {target.host}: {_last_line(res.stderr)}; "
                       "pass --remote-dir DIR where you may write")
    return Target(target.host, target.port, path, target.python)


def snapshot_paths(ws: Workspace, version: Version) -> list[Path]:
    """What the run needs from the workspace, relative to its root: pyproject, templates, the
    record, its parent's and baseline's (the remote's analysis reads them), the rendered script,
    and the data paths given relative to the workspace. Absolute paths must exist there already."""
    record = records.load(ws, version)
    wanted = [ws.root / "pyproject.toml", ws.root / "templates", ws.run_script_path(version)]
    for v in (version, record.meta.get("parent"), record.meta.get("baseline")):
        if v:
            wanted += [ws.record_path(v), ws.state_path(v)]
    config = record.meta.get("config") or {}
    for key in ("data_path", "val_data_path", "tokenizer_path"):
        value = str(config.get(key, "embedded"))
        if value not in ("embedded", "") and not Path(os.path.expanduser(value)).is_absolute():
            wanted.append(ws.root / value)
    return [p.relative_to(ws.root) for p in wanted if p.exists() and ws.root in p.resolve().parents]


def push(ws: Workspace, versions: list[Version], target: Target) -> list[str]:
    """Copy the snapshot the runs need to the remote workspace, once for all of them (rsync; out/
    and checkpoints stay).

    Each record's state goes without ``run.remote``: there, the copy describes a run on that
    machine (a resume there must not go looking for a remote of its own)."""
    paths = list(dict.fromkeys(p for v in versions for p in snapshot_paths(ws, v)))
    states = [Path(ws.rel(ws.state_path(v))) for v in dict.fromkeys(
        w for v in versions for w in (v, *(records.load(ws, v).meta.get(k) for k in ("parent", "baseline"))) if w)]
    with tempfile.TemporaryDirectory(prefix="exp-push-") as stage:
        sources = [f"{ws.root}/./{p}" for p in paths if p not in states]
        for state_rel in states:
            state = read_json(ws.root / state_rel)
            if isinstance(state, dict):
                ((state.get("meta") or {}).get("run") or {}).pop("remote", None)
                write_json(Path(stage) / state_rel, state)
                sources.append(f"{stage}/./{state_rel}")
        _rsync(target, ["--relative", *sources, f"{target.host}:{target.dir}/"])
    return [str(p) for p in paths]


def run_args(versions: list[Version] | list[str], opts: LaunchOptions, queue_flags: list[str] | None = None) -> list[str]:
    """The ``exp`` arguments that start the run (or the queue) on the host, detached."""
    flags = ["--detach", *(queue_flags or [])]
    if opts.backend != "local":
        flags += ["--backend", opts.backend]
    if opts.gpus:
        flags += ["--gpus", opts.gpus]
    if opts.nproc:
        flags += ["--nproc", str(opts.nproc)]
    if opts.resume:
        flags.append("--resume")
    return ["run", *[str(v) for v in versions], *flags]


def start(target: Target, versions: list[Version], opts: LaunchOptions, queue_flags: list[str] | None = None) -> dict[str, Any]:
    """``exp run V --detach`` in the remote workspace: the remote preflights, begins its copy of
    the record and starts the script in its own session (setsid), then ssh returns. With
    ``queue_flags`` (``--parallel N`` at least), ``exp run V1 V2 ... --detach``: the remote's run
    queue, its supervisor in its own session there; the answer names the queue (``queue``)."""
    names = [str(v) for v in versions]
    command = (f"cd {_sh_path(target.dir or '.')} && EXP_ROOT=\"$PWD\" exec {_sh_path(target.python)} -m expkit.cli "
               f"{shlex.join(run_args(versions, opts, queue_flags) + ['--json'])}")
    res = _ssh(target, command, timeout=600)
    try:
        started = json.loads(res.stdout)
    except ValueError:
        started = {}
    if res.returncode != 0 or not isinstance(started, dict) or not started.get("pid") or (queue_flags and not started.get("queue")):
        why = _last_line(res.stderr).removeprefix("exp: error: ") or f"exit {res.returncode}"
        raise RunError(f"on {target.host}, `exp run {' '.join(names)}` refused: {why}")
    return started


def stop_there(target: Target, versions: list[Version]) -> str:
    """``exp stop V...`` in the remote workspace, by the exp there: a member still pending in the
    queue there never starts, a running one gets SIGTERM (and checkpoints)."""
    said = []
    for v in versions:
        res = _ssh(target, f"cd {_sh_path(target.dir or '.')} && EXP_ROOT=\"$PWD\" exec {_sh_path(target.python)} "
                           f"-m expkit.cli stop {shlex.quote(str(v))}", timeout=300)
        said.append(_last_line(res.stdout) or _last_line(res.stderr) or f"exit {res.returncode}")
    return "; ".join(said)


def remote_run(ws: Workspace, version: Version, target: Target) -> dict[str, Any]:
    """The remote copy of the record's state: its status and ``run`` (the host, code, environment, outcome there)."""
    res = _ssh(target, f"cat {_sh_path(f'{target.dir}/{ws.rel(ws.state_path(version))}')}")
    try:
        state = json.loads(res.stdout)
    except ValueError:
        return {}
    meta = state.get("meta") if isinstance(state, dict) else None
    return meta if isinstance(meta, dict) else {}


def _procs(target: Target, action: str, remote: dict[str, Any]) -> str:
    """``procs.look`` / ``procs.terminate`` on the host, by the exp installed there: the same rules
    as here (pid, group and start time: a reused pid is never taken for the run nor signalled)."""
    args = " ".join(shlex.quote(str(x)) for x in (action, int(remote["pid"]), remote.get("pgid"), remote.get("pid_started")))
    res = _ssh(target, f"exec {_sh_path(target.python)} -m expkit.procs {args}", timeout=60)
    return _last_line(res.stdout) or f"no answer ({_last_line(res.stderr) or f'exit {res.returncode}'})"


#: ``procs.look``'s word → alive (True), gone (False) or unknown (None).
ALIVE = {"alive": True, "orphans": True, "gone": False, "reused": False}


def state(run: dict[str, Any]) -> tuple[bool | None, str]:
    """Is the run's process (or what is left of its group) alive on its host? True alive, False
    gone, None could not ask."""
    target = Target.of(run)
    remote = run.get("remote") or {}
    if remote.get("queue") and not remote.get("pid"):
        try:
            return _queued_state(target, remote)
        except Unreachable as err:
            return None, f"could not reach {target.host} ({err.why}); the queue is left running there"
    pid = remote.get("pid")
    if not pid:
        return None, f"starting on {target.host} (no process id yet)"
    try:
        seen = _procs(target, "look", remote)
    except Unreachable as err:
        return None, f"could not reach {target.host} ({err.why}); the run is left running there"
    if seen in ALIVE:
        words = {"alive": "alive", "orphans": "gone, its process group still running", "gone": "gone",
                 "reused": "gone (the number now belongs to another process)"}[seen]
        return ALIVE[seen], f"pid {pid} on {target.host} {words}"
    return None, f"{target.host} did not say whether pid {pid} lives ({seen})"


#: How ``state`` begins its words for a member that waits in the queue on its host (nothing to pull yet).
QUEUED_WORDS = "pending in queue"
#: The remote record's statuses of a run still to end there.
_NOT_ENDED = ("draft", "ready", "running")
_QUEUE_FILE_MARK = "@@exp-queue@@"


def _queued_state(target: Target, remote: dict[str, Any]) -> tuple[bool | None, str]:
    """A member of a run queue on its host: its record there (pending, running with its process,
    ended) and its unit in the queue's state there (cancelled, failed to start). One ssh call, and
    one more to look at its process once it has one."""
    queue_id = remote["queue"]
    res = _ssh(target, f"cd {_sh_path(target.dir or '.')} && cat {_sh_path(remote['state'])}; echo; echo {_QUEUE_FILE_MARK}; "
                       f"cat {_sh_path(remote['queue_file'])}")
    record_text, _, queue_text = res.stdout.partition(_QUEUE_FILE_MARK)
    try:
        theirs = json.loads(record_text).get("meta") or {}
    except (ValueError, AttributeError):
        return None, f"{target.host} did not show the record of queue {queue_id} ({_last_line(res.stderr) or 'no answer'})"
    try:
        units = [u for u in json.loads(queue_text).get("units", []) if u.get("version") == remote.get("version")]
    except (ValueError, AttributeError):
        units = []
    status, trun = theirs.get("status"), theirs.get("run") or {}
    mine = trun.get("queue") == queue_id
    if status == "running" and mine:
        if trun.get("pid"):
            seen = _procs(target, "look", trun)
            if seen in ALIVE:
                return ALIVE[seen], f"pid {trun['pid']} on {target.host} {'alive' if ALIVE[seen] else 'gone'} (queue {queue_id})"
            return None, f"{target.host} did not say whether pid {trun['pid']} lives ({seen})"
        return True, f"running on {target.host} (queue {queue_id})"
    if status not in _NOT_ENDED and mine:
        return False, f"ended on {target.host} ({trun.get('status') or status}; queue {queue_id})"
    unit = units[0] if units else {}
    if unit.get("state") == "cancelled":
        return False, f"cancelled in queue {queue_id} on {target.host} before it started ({unit.get('error') or 'exp stop'})"
    if unit.get("state") == "ended":
        return False, f"did not start on {target.host}: {unit.get('error') or unit.get('outcome')} (queue {queue_id})"
    return True, f"{QUEUED_WORDS} {queue_id} on {target.host}"


def stop(run: dict[str, Any]) -> None:
    """SIGTERM to the run's process group on its host (only if it is still the run's): the script
    passes it on, the trainer checkpoints."""
    target = Target.of(run)
    remote = run.get("remote") or {}
    if remote.get("queue") and not remote.get("pid"):  # a member of a queue there: the exp there stops it
        stop_there(target, [Version.parse(remote["version"])])
        return
    if not remote.get("pid"):
        raise RunError(f"the run on {target.host} has no process id yet; try again in a moment")
    _procs(target, "terminate", remote)


def log_lines(ws: Workspace, version: Version, run: dict[str, Any], follow: bool) -> Iterator[str]:
    """The run's log on its host, read through ssh; following ends when the run's script ends."""
    target = Target.of(run)
    info = run.get("remote") or {}
    pid = int(info.get("pid") or 0)
    if info.get("queue") and not pid:  # a queue's member: its process, once it started there, is in its record there
        res = _ssh(target, f"cd {_sh_path(target.dir or '.')} && cat {_sh_path(info['state'])}")
        try:
            trun = (json.loads(res.stdout).get("meta") or {}).get("run") or {}
        except (ValueError, AttributeError):
            trun = {}
        pid = int(trun.get("pid") or 0) if trun.get("queue") == info["queue"] else 0
    path = _sh_path(f"{target.dir}/{ws.rel(ws.out_dir(version))}/run.log")
    command = f"tail -n +1 -F --pid={pid} {path} 2>/dev/null" if follow and pid else f"cat {path}"
    proc = subprocess.Popen([*_ssh_base(target), target.host, command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for line in proc.stdout:
            yield line.decode("utf-8", errors="replace")
        err = proc.stderr.read().decode("utf-8", errors="replace")
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if code == SSH_FAILED:
        raise Unreachable(target, _last_line(err) or "the connection was lost")
    if code != 0 and not follow:
        raise RunError(f"{version} has no log on {target.host} yet ({_last_line(err)}); `exp status {version}`")


def pull(ws: Workspace, version: Version) -> dict[str, Any]:
    """Bring the run's outputs back (rsync; checkpoints stay there): metrics, summary, samples,
    logs, status, env.json, requirements.txt, the small artifacts; and the script that ran. The
    remote's record is read, never copied over the local one. Returns the remote's ``run``."""
    run = records.load(ws, version).meta.get("run") or {}
    if not run.get("remote"):
        raise RunError(f"{version} did not run on a remote host; its outputs are in {ws.rel(ws.out_dir(version))}/")
    target = Target.of(run)
    out = ws.out_dir(version)
    if (run.get("remote") or {}).get("queue"):  # a queue's member that has not started there has nothing to bring back
        res = _ssh(target, f"cd {_sh_path(target.dir or '.')} && test -d {_sh_path(ws.rel(out))} && echo started")
        if "started" not in res.stdout:
            theirs = remote_run(ws, version, target)
            return {"status": theirs.get("status"), "run": theirs.get("run") or {}}
    out.mkdir(parents=True, exist_ok=True)
    _rsync(target, [f"{target.host}:{target.dir}/{ws.rel(out)}/", f"{out}/"])
    script = ws.run_script_path(version)
    _rsync(target, [f"{target.host}:{target.dir}/{ws.rel(script)}", str(script)])
    theirs = remote_run(ws, version, target)
    return {"status": theirs.get("status"), "run": theirs.get("run") or {}}
