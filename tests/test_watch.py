"""A status that never guesses, and a stop that signals the right thing (expkit/watch.py, procs.py).

Real processes throughout: the run's process is a real child (a `sleep`, a `true` that has ended,
a run script started by hand), and `exp` runs as a subprocess. A record is begun through
runner.begin (what `exp run` does before it launches) where the test is about what comes after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_exp
from test_runner import gitws, make, record  # noqa: F401  (gitws is a fixture)

from expkit import procs, records, runner, store
from expkit.script import LaunchOptions
from expkit.version import Version

V = Version.parse("0.1.0")


def begun(ws, pid: int | None, **run_fields) -> None:
    """A ready record begun as `exp run` begins it, with ``pid`` as its process; then the run
    fields a test needs (another host, a job id, an older start time)."""
    make(ws, steps=20)
    runner.begin(ws, V, LaunchOptions().check(), pid=pid)
    if run_fields:
        with records.update(ws, V) as rec:
            rec.meta["run"].update(run_fields)


def exited_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def sleeper():
    """A live process that is not the run (the pid a reused number now names)."""
    p = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def status_row(ws, env=None) -> dict:
    r = run_exp("status", "0.1.0", "--json", cwd=ws.root, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def one_line_error(r) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


# -- what the record keeps of its process --------------------------------------------------------
def test_the_record_keeps_host_pid_group_and_start_time(ws, sleeper):
    begun(ws, sleeper.pid)
    run = record(ws).meta["run"]
    assert run["pid"] == sleeper.pid and run["pgid"] == sleeper.pid and run["host"] == procs.hostname()
    assert abs(run["pid_started"] - procs.identity(sleeper.pid).started) < 0.05
    assert status_row(ws)["status"] == "running"  # alive: the same process


# -- a reused pid is never taken for the run, never signalled -------------------------------------
def test_a_reused_pid_is_not_the_run_and_stop_does_not_signal_it(ws, sleeper):
    # the run's process had this number an hour ago; the sleeper holds it now
    begun(ws, sleeper.pid)
    with records.update(ws, V) as rec:
        rec.meta["run"]["pid_started"] -= 3600
    r = run_exp("stop", "0.1.0", "--json", cwd=ws.root)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "interrupted" and "another process (not signalled)" in out["note"]
    assert sleeper.poll() is None  # still alive: not signalled
    assert record(ws).meta["run"]["ended_by"] == "exp stop"


def test_status_sees_a_reused_pid_as_gone(ws, sleeper):
    begun(ws, sleeper.pid)
    with records.update(ws, V) as rec:
        rec.meta["run"]["pid_started"] -= 3600
    row = status_row(ws)
    assert row["status"] == "interrupted" and "now belongs to another process" in row["note"]
    assert sleeper.poll() is None


# -- unknown is reported as unknown --------------------------------------------------------------
def test_a_run_on_another_host_is_left_alone_by_status_and_stop(ws, sleeper):
    # a shared home: the record says the run is on gpu07; the same pid here is someone else's
    begun(ws, sleeper.pid, host="gpu07")
    row = status_row(ws)
    assert row["status"] == "running" and row["alive"] is None and "gpu07" in row["note"]
    err = one_line_error(run_exp("stop", "0.1.0", cwd=ws.root))
    assert "runs on gpu07" in err and "exp never signals a process on another host" in err
    assert sleeper.poll() is None and record(ws).status == "running"


def test_a_record_without_a_pid_gets_one_line_from_stop(ws):
    begun(ws, None)
    err = one_line_error(run_exp("stop", "0.1.0", cwd=ws.root))
    assert "has no process recorded" in err
    assert status_row(ws)["status"] == "running"  # and status does not end it either


def test_slurm_that_does_not_answer_leaves_the_run_running(ws, tmp_path):
    """squeue and scontrol not on PATH (a shell without Slurm's module loaded)."""
    begun(ws, exited_pid(), job_id="4242")
    empty = tmp_path / "bin"
    empty.mkdir()
    row = status_row(ws, env={"PATH": str(empty)})
    assert row["status"] == "running" and row["alive"] is None
    assert "could not ask Slurm" in row["note"] and "squeue is not on PATH" in row["note"]
    assert record(ws).status == "running"
    err = one_line_error(run_exp("stop", "0.1.0", cwd=ws.root, env={"PATH": str(empty)}))
    assert "could not ask Slurm to stop job 4242" in err and "scancel could not be run" in err and record(ws).status == "running"


def test_the_scheduler_is_asked_at_most_every_ten_seconds(ws, tmp_path):
    """A logging squeue in front: an answer younger than the poll interval is reused, across
    processes (EXP_SCHEDULER_POLL_S raises the 10 s floor, so the test does not depend on speed)."""
    begun(ws, exited_pid(), job_id="4242")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho RUNNING\n")
    (bin_dir / "squeue").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "EXP_SCHEDULER_POLL_S": "3600"}
    for _ in range(3):
        assert status_row(ws, env=env)["where"] == "Slurm job 4242 RUNNING"
    assert calls.read_text().splitlines() == ["-h -j 4242 -o %T"]  # three looks, one question
    cache = ws.out_dir(V) / "scheduler.json"
    asked = json.loads(cache.read_text())
    asked["at"] -= 7200  # an answer older than the interval is asked again
    cache.write_text(json.dumps(asked))
    status_row(ws, env=env)
    assert len(calls.read_text().splitlines()) == 2
    # below the floor is not allowed: 1 s becomes 10 s
    assert run_exp("status", "0.1.0", cwd=ws.root, env={**env, "EXP_SCHEDULER_POLL_S": "1"}).returncode == 0
    assert len(calls.read_text().splitlines()) == 2


# -- gone and stale, and the run's own finalize wins ---------------------------------------------
def test_gone_with_a_fresh_heartbeat_waits_for_the_runs_own_finalize(ws):
    begun(ws, exited_pid())
    # a heartbeat a second old from a trainer that is still alive here (this test's process stands for it)
    beat = {"time": "", "unix": time.time() - 1, "step": 7, "pid": os.getpid(), "status": "running"}
    (ws.out_dir(V) / "heartbeat").write_text(json.dumps(beat))
    row = status_row(ws)
    assert row["status"] == "running" and "waiting for the run's own finalize" in row["note"]
    beat["unix"] -= 120  # nobody has written it for two minutes
    (ws.out_dir(V) / "heartbeat").write_text(json.dumps(beat))
    row = status_row(ws)
    assert row["status"] == "interrupted" and "heartbeat" in row["note"]


def test_the_runs_own_finalize_replaces_a_partial_analysis_of_that_conclusion(ws):
    """`exp status` concluded interrupted, someone looked (a partial analysis), then the job's own
    EXIT trap reports: the trainer failed. The record says what the run said."""
    begun(ws, exited_pid())
    rows = [{"step": s, "loss": 8.0 - s / 10, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0, "tokens_seen": 128 * s,
             "elapsed_s": s / 10} for s in (5, 10)]
    (ws.out_dir(V) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert status_row(ws)["status"] == "interrupted"
    looked = run_exp("analyze", "0.1.0", "--json", cwd=ws.root)
    assert record(ws).status == "analyzed", looked.stdout + looked.stderr
    (ws.out_dir(V) / "status.json").write_text(json.dumps({"status": "failed", "error": "NCCL timeout"}))
    r = run_exp("_finalize", "0.1.0", "--exit-code", "1", cwd=ws.root)
    assert r.returncode == 0, r.stderr
    rec = record(ws)
    assert rec.status == "failed" and rec.meta["run"]["error"] == "NCCL timeout" and rec.meta["run"]["status"] == "failed"


def test_the_runs_own_finalize_replaces_a_conclusion_of_exp_status(ws):
    begun(ws, exited_pid())
    assert status_row(ws)["status"] == "interrupted"
    assert record(ws).meta["run"]["ended_by"] == "exp status"
    # then the run's own EXIT trap comes in: the trainer failed, with its reason
    (ws.out_dir(V) / "status.json").write_text(json.dumps({"status": "failed", "error": "CUDA error: out of memory"}))
    r = run_exp("_finalize", "0.1.0", "--exit-code", "1", cwd=ws.root)
    assert r.returncode == 0, r.stderr
    assert "replaces the conclusion of `exp status`" in r.stderr
    run = record(ws).meta["run"]
    assert record(ws).status == "failed" and run["error"] == "CUDA error: out of memory" and "ended_by" not in run


# -- the real things: a script started by hand, a script killed alone ----------------------------
def wait_for(predicate, limit_s: float = 300.0):
    deadline = time.monotonic() + limit_s  # bounds a failure; nothing is asserted on time
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_stop_reaches_a_script_started_by_hand(gitws):
    """`bash run_file/experiment_V.sh` from a shell: the script is not a group leader, so the
    stop signals it alone (its trap passes the signal to the trainer), not the shell's group."""
    make(gitws, steps=3000, extra=["save_interval=10"])
    dry = run_exp("run", "0.1.0", "--dry-run", cwd=gitws.root)
    assert dry.returncode == 0, dry.stderr
    text = dry.stdout
    script = gitws.run_script_path(V)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text[text.index("#!/usr/bin/env bash"):])
    # a "shell" whose group the script shares; the shell must survive the stop
    shell = subprocess.Popen(["bash", "-c", f"bash {script} > {gitws.root}/by-hand.log 2>&1; echo done"],
                             cwd=gitws.root, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert wait_for(lambda: list((gitws.out_dir(V) / "checkpoints").glob("*.pt"))), (gitws.root / "by-hand.log").read_text()
    run = record(gitws).meta["run"]
    assert run["pgid"] == shell.pid != run["pid"]
    r = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    assert "interrupted" in r.stdout
    assert shell.wait(timeout=120) == 0 and shell.stdout.read().strip() == "done"  # the shell went on
    rec = record(gitws)
    assert rec.status == "interrupted" and rec.meta["run"]["last_step"] >= 10
    assert "saved checkpoint" in (gitws.root / "by-hand.log").read_text()


def test_a_killed_script_whose_trainer_goes_on_is_never_interrupted(gitws):
    """SIGKILL to the run script alone: its trainer keeps running in the script's process group,
    so `exp status` sees the run alive; when the trainer finishes, the run is finished and analysed."""
    make(gitws, steps=60)
    r = run_exp("run", "0.1.0", "--detach", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    pid = int((gitws.out_dir(V) / "run.pid").read_text())
    assert wait_for(lambda: (gitws.out_dir(V) / "heartbeat").exists())
    os.kill(pid, signal.SIGKILL)  # the script only; the trainer is its child and goes on
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")
    trainer_done = lambda: json.loads((gitws.out_dir(V) / "status.json").read_text() or "{}").get("status") == "finished"  # noqa: E731
    if not trainer_done():
        row = status_row(gitws)
        assert row["status"] == "running" and (row["alive"] or trainer_done()), row
        assert "its process group (the trainer) still running" in row["where"] or trainer_done(), row
    assert wait_for(trainer_done)
    # once the trainer's process has exited too, the next look concludes: finished, analysed
    row = wait_for(lambda: (r := status_row(gitws))["status"] != "running" and r)
    assert row and row["status"] == "analyzed", row
    assert store.read_meta(gitws, V)["run"]["status"] == "finished"
