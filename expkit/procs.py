"""Processes on this machine: who a pid is, whether it is still the same process, and signalling
it without hitting another one.

A pid alone names a process only while it lives: the kernel hands the number to the next process
once it ends. A run therefore records its pid *with* the process's start time (and its process
group), and every later look compares both, so a reused pid is never taken for the run and never
signalled. The only module that sends signals to a run's processes (``runner.interrupt`` signals
the child ``exp run`` itself started). Layer 2.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass

import psutil

#: How far a recorded start time may differ from the process table's (psutil rounds to 10 ms
#: ticks; a reused pid starts later by far more).
START_SLACK_S = 1.0


@dataclass(frozen=True)
class Identity:
    """A process as recorded: pid, its process group and its start time (seconds since the epoch)."""

    pid: int
    pgid: int | None
    started: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"pid": self.pid, "pgid": self.pgid, "pid_started": self.started}


def hostname() -> str:
    return socket.gethostname()


def identity(pid: int) -> Identity | None:
    """The identity of a live process, or None when there is no such process."""
    try:
        proc = psutil.Process(pid)
        started = round(proc.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        started = None
    try:
        pgid: int | None = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        pgid = None
    return Identity(pid, pgid, started)


def same_process(pid: int, started: float | None) -> bool | None:
    """Is ``pid`` still the process that started at ``started``? True, False (gone, a zombie, or
    the number now belongs to another process), or None (it exists but cannot be inspected)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        now = proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return None
    if started is None:
        return True  # recorded before start times were: the pid is all there is
    return abs(now - float(started)) <= START_SLACK_S


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def look(pid: int, pgid: int | None, started: float | None) -> str:
    """What became of a recorded process, in one word:

    - ``alive``: it is still that process;
    - ``orphans``: it ended, but the process group it led still has members (a run script killed
      alone while its trainer goes on). Linux never hands out a pid that still names a group, so
      that group is the run's;
    - ``reused``: the number now belongs to another process (and so no group of the run is left);
    - ``gone``: nothing of it is left;
    - ``unknown``: it exists but cannot be inspected.
    """
    same = same_process(pid, started)
    if same is None:
        return "unknown"
    if same:
        return "alive"
    if psutil.pid_exists(pid) and same_process(pid, None):
        return "reused"
    if pgid is not None and pgid == pid and _group_alive(pgid):
        return "orphans"
    return "gone"


def terminate(pid: int, pgid: int | None, started: float | None, sig: int = signal.SIGTERM) -> str:
    """Signal the recorded process — its whole group when it leads one, or what is left of that
    group — only if it is still the run's. Returns what ``look`` saw, or "signalled"."""
    seen = look(pid, pgid, started)
    if seen not in ("alive", "orphans"):
        return seen
    try:
        if pgid is not None and pgid == pid:
            os.killpg(pgid, sig)  # the script leads its group (exp run starts it in its own session)
        else:
            os.kill(pid, sig)  # started by hand inside someone's group: the script alone; its trap passes it on
    except ProcessLookupError:
        return "gone"
    return "signalled"


def main(argv: list[str]) -> int:
    """``python -m expkit.procs look|terminate PID PGID STARTED``: the same answers on a host
    reached over ssh (``remote``), from the exp installed there. Prints one word."""
    action, pid, pgid, started = argv[0], int(argv[1]), argv[2], argv[3]
    group = int(pgid) if pgid not in ("", "None") else None
    when = float(started) if started not in ("", "None") else None
    print(look(pid, group, when) if action == "look" else terminate(pid, group, when))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
