"""`exp run --host` over real OpenSSH and real rsync, with real processes.

A test sshd listens on a loopback port (generated host key, key-only login of the current user,
everything in a temp dir); an ssh config file names it ``exptest`` and reaches exp through
``EXP_SSH_CONFIG``, so ~/.ssh is never touched. The "remote" is a second directory on this
machine. Its Python is a wrapper that puts this checkout's expkit on the test venv's interpreter
— the way a real host has exp installed in its venv (``pip install -e`` of a checkout copied
there); sshd hands the login a clean environment, so nothing of the test's own leaks through.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXP, REPO, run_exp

from test_runner import gitws, make, record  # noqa: F401 (gitws is a fixture)

SSHD = Path("/usr/sbin/sshd")
MISSING = [what for what, ok in (("/usr/sbin/sshd (Debian openssh-server)", SSHD.exists()), ("ssh", shutil.which("ssh")),
                                 ("ssh-keygen", shutil.which("ssh-keygen")), ("rsync", shutil.which("rsync"))) if not ok]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: apt-get install openssh-server rsync (.ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """An OpenSSH server on 127.0.0.1 that lets the current user in with one generated key."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
        shutil.copy(home / "user_key.pub", home / "authorized_keys")
        (home / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\nPidFile {home / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {home / 'authorized_keys'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n")
        dead = _free_port()  # nothing listens there
        self.config = home / "ssh_config"
        self.config.write_text("".join(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n  IdentityFile {home / 'user_key'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {home / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n"
            for alias, port in (("exptest", self.port), ("exptest-dead", dead))))

    def start(self) -> None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory, as its service makes it
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.home / "sshd_config"), "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.home / "sshd.log", "ab"))
        for _ in range(200):  # a guard of 20 s for sshd to listen, not a timing
            if self.ssh("true").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {(self.home / 'sshd.log').read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", "-F", str(self.config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "exptest", command],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    home = tmp_path / "sshd"
    home.mkdir()
    server = Sshd(home)
    server.start()
    monkeypatch.setenv("EXP_SSH_CONFIG", str(server.config))
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def _python(path: Path, flags: str = "", pythonpath: str | None = str(REPO)) -> Path:
    """A remote machine's Python: the venv's interpreter, with (or without) this checkout's expkit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = f"export PYTHONPATH={pythonpath}\n" if pythonpath else ""
    path.write_text(f"#!/bin/sh\n{env}exec {sys.executable} {flags} \"$@\"\n")
    path.chmod(0o755)
    return path


def _wait(what, guard_s: float = 300):
    """Poll ``what()`` until it is true; the guard bounds a failure, it is not a timing."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.5)
    raise AssertionError(f"not reached within {guard_s} s: {what.__doc__ or what}")


def test_host_port_is_refused_with_the_ssh_way_to_say_it(gitws):
    make(gitws)
    r = run_exp("run", "0.1.0", "--host", "gpu01:2222", cwd=gitws.root)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert "not ssh syntax" in r.stderr and "--host gpu01 --port 2222" in r.stderr and "ssh config alias" in r.stderr
    assert record(gitws).status == "draft" and not gitws.out_dir("0.1.0").exists()


def test_remote_preflight_says_what_is_missing_there_and_starts_nothing(gitws, sshd, tmp_path):
    make(gitws)
    before = record(gitws).path.read_bytes()
    remote = tmp_path / "remote"
    cases = [
        (["--remote-python", str(tmp_path / "no" / "python3")], ["not found", "--remote-python"]),
        (["--remote-python", str(_python(tmp_path / "bare" / "python", flags="-S", pythonpath=None))],
         ["exp is not installed", "pip install"]),
        (["--remote-python", str(_python(tmp_path / "venv" / "python")), "--gpus", "0"], ["GPUs 0 asked for", "has none"]),
    ]
    for flags, said in cases:
        r = run_exp("run", "0.1.0", "--host", "exptest", "--remote-dir", str(remote), *flags, cwd=gitws.root)
        assert r.returncode == 1, r.stdout + r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(s in r.stderr for s in said), r.stderr
        assert "nothing was copied or started" in r.stderr
        assert not remote.exists()  # nothing copied
    dead = run_exp("run", "0.1.0", "--host", "exptest-dead", "--remote-dir", str(remote), cwd=gitws.root)
    assert dead.returncode == 1 and len(dead.stderr.splitlines()) == 1 and "could not reach exptest-dead" in dead.stderr
    assert record(gitws).path.read_bytes() == before and not gitws.out_dir("0.1.0").exists() and not remote.exists()


def test_remote_run_status_logs_stop_resume_lost_connection_pull_analysis(gitws, sshd, tmp_path):
    make(gitws, steps=120, extra=["save_interval=10"])
    remote = tmp_path / "remote"
    py = _python(tmp_path / "venv" / "bin" / "python")
    r = run_exp("run", "0.1.0", "--host", "exptest", "--remote-dir", str(remote), "--remote-python", str(py), cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "started   0.1.0 on exptest" in r.stdout and "exp pull 0.1.0" in r.stdout
    rec = record(gitws)
    run = rec.meta["run"]
    assert rec.status == "running" and run["remote"]["host"] == "exptest" and run["remote"]["dir"] == str(remote)
    assert run["remote"]["python"] == str(py) and run["command"].startswith("exp run 0.1.0 --host exptest")
    pid = run["remote"]["pid"]
    assert os.getsid(pid) == pid == run["remote"]["pgid"]  # its own session there: the ssh connection is long gone
    there, here = remote / "out" / "experiment_0.1.0", gitws.out_dir("0.1.0")
    # the snapshot went there (record, state, script, pyproject, templates), not out/; the host's environment came back
    assert (remote / "pyproject.toml").exists() and (remote / "templates").is_dir()
    theirs = json.loads((remote / "experiment" / "experiment_0.1.0.state.json").read_text())["meta"]["run"]
    assert "remote" not in theirs and theirs["pid"] == pid  # there, the copy describes a run on that machine
    assert (here / "env.json").read_bytes() == (there / "env.json").read_bytes()
    assert (here / "requirements.txt").read_bytes() == (there / "requirements.txt").read_bytes()
    assert json.loads((here / "env.json").read_text())["executable"] == sys.executable
    assert run["code"]["location"] == str(REPO)  # the trainer code the host ran, from its own record
    assert f'ROOT={remote}' in gitws.run_script_path("0.1.0").read_text()  # the script that runs there

    def checkpoint_there():
        """a checkpoint on the remote"""
        return list((there / "checkpoints").glob("*.pt"))

    _wait(checkpoint_there)
    rows = json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert rows[0]["status"] == "running" and "alive" in rows[0]["where"] and rows[0]["step"] is not None, rows
    logs = run_exp("logs", "0.1.0", cwd=gitws.root)
    assert logs.returncode == 0 and "exp: " in logs.stdout and "model.train_pretrain" in logs.stdout

    stopped = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "interrupted" in stopped.stdout and "exp run 0.1.0 --resume" in stopped.stdout
    rec = record(gitws)
    assert rec.status == "interrupted" and rec.meta["run"]["status"] == "interrupted"
    assert 10 <= rec.meta["run"]["last_step"] < 120
    assert checkpoint_there() and not list(here.rglob("*.pt"))  # checkpoints stay there

    resumed = run_exp("run", "0.1.0", "--resume", "--json", cwd=gitws.root)  # no --host: the checkpoints are on exptest
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["host"] == "exptest"
    rec = record(gitws)
    assert rec.status == "running" and rec.meta["run"]["resumed"] and rec.meta["run"]["remote"]["pid"] != pid

    sshd.kill()  # the connection is lost mid-run
    rows = json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert rows[0]["status"] == "running" and "could not reach exptest" in rows[0]["where"], rows
    text = run_exp("status", "0.1.0", cwd=gitws.root)
    assert "running" in text.stdout and "could not reach exptest" in text.stdout
    cannot = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert cannot.returncode == 1 and "nothing was stopped" in cannot.stderr and len(cannot.stderr.splitlines()) == 1
    assert record(gitws).status == "running"

    sshd.start()
    follow = subprocess.run([*EXP, "logs", "0.1.0", "-f"], cwd=gitws.root, capture_output=True, text=True, timeout=900)
    assert follow.returncode == 0, follow.stderr  # ends when the script there ends
    assert "finished" in follow.stdout or "exit 0" in follow.stdout, follow.stdout[-2000:]
    pulled = run_exp("pull", "0.1.0", cwd=gitws.root)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    rec = record(gitws)
    run = rec.meta["run"]
    assert rec.status == "analyzed" and run["status"] == "finished" and run["final"]["steps"] == 120, run
    assert run["exit_code"] == 0 and run["remote"]["host"] == "exptest"
    for name in ("metrics.jsonl", "summary.json", "samples.json", "train.log", "run.log", "status.json", "env.json"):
        assert (here / name).exists(), name
    assert not list(here.rglob("*.pt"))
    assert (here / "plots" / "loss.png").exists()  # analysed here
    steps = [json.loads(line)["step"] for line in (here / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # the resume went on from the checkpoint there
    shown = json.loads(run_exp("show", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert shown["verdicts"] and shown["run"]["remote"]["host"] == "exptest"


# -- a run queue on the host -----------------------------------------------------------------------
def test_a_bad_queue_plan_for_a_host_pushes_nothing_and_a_dry_run_starts_nothing(gitws, sshd, tmp_path):
    from test_replicates import make_group

    make_group(gitws, {"1.1.1": ["learning_rate=0.002"], "1.1.2": ["learning_rate=0.001"]})
    remote = tmp_path / "remote"
    py = str(_python(tmp_path / "venv" / "bin" / "python"))
    host = ["--host", "exptest", "--remote-dir", str(remote), "--remote-python", py]
    before = {v: gitws.record_path(v).read_bytes() for v in ("1.1.0", "1.1.1", "1.1.2")}
    for args, said in ((["1.1.1", "9.9.9"], "no experiment 9.9.9"), (["1.1.1", "1.1.1"], "given twice"),
                       (["1.1.1", "1.1.2", "--gpus", "0,1,2", "--gpus-per-run", "2"], "does not divide"),
                       (["1.1.0", "--members", "--backend", "slurm"], "log in to the cluster")):
        r = run_exp("run", *args, *host, cwd=gitws.root)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and said in r.stderr, (args, r.stderr)
    dry = run_exp("run", "1.1.0", "--members", "--parallel", "2", "--dry-run", *host, cwd=gitws.root)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"on        exptest:{remote}: exp run 1.1.1 1.1.2 --detach --parallel 2" in dry.stdout
    assert "1.1.1" in dry.stdout and "1.1.2" in dry.stdout and "nothing was copied, started or written" in dry.stdout
    assert not remote.exists()  # nothing was copied
    assert {v: gitws.record_path(v).read_bytes() for v in before} == before
    assert not gitws.out_dir("1.1.1").exists() and not list(gitws.queue_dir().glob("q*.json"))


def test_a_group_queued_on_the_host_runs_there_and_each_member_is_pulled_finished_and_analysed_here(gitws, sshd, tmp_path):
    from test_replicates import make_group

    make_group(gitws, {"1.1.1": ["learning_rate=0.002"], "1.1.2": ["learning_rate=0.001"]}, steps=30)
    remote = tmp_path / "remote"
    py = str(_python(tmp_path / "venv" / "bin" / "python"))
    r = run_exp("run", "1.1.1", "1.1.2", "--host", "exptest", "--remote-dir", str(remote), "--remote-python", py, cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queue     q" in r.stdout and "on exptest" in r.stdout and "exp pull V" in r.stdout
    queue_id = r.stdout.split("queue     ", 1)[1].split()[0]
    assert (remote / "out" / ".queue" / f"{queue_id}.json").exists()  # the queue's state is there, its supervisor too
    assert not (gitws.queue_dir() / f"{queue_id}.json").exists()
    for v in ("1.1.1", "1.1.2"):
        rec = record(gitws, v)
        info = rec.meta["run"]["remote"]
        assert rec.status == "running" and info["host"] == "exptest" and info["dir"] == str(remote) and info["queue"] == queue_id
        assert rec.meta["run"]["command"].startswith("exp run 1.1.1 1.1.2 --host exptest")
        assert (remote / "experiment" / f"experiment_{v}.md").exists()
    assert (remote / "experiment" / "experiment_1.1.0.md").exists()  # the group's parent went with them

    rows = json.loads(run_exp("status", "1.1.2", "--json", cwd=gitws.root).stdout)  # pending, running or ended there
    assert "on exptest" in rows[0]["where"] and queue_id in rows[0]["where"], rows
    still = rows[0]["status"] == "running"  # else `exp status` found it ended there and pulled it (analyzed)
    assert still or rows[0]["status"] == "analyzed", rows

    def both_ended_there():
        """both members ended on the host"""
        return all(json.loads((remote / "experiment" / f"experiment_{v}.state.json").read_text())["meta"].get("status")
                   not in ("draft", "ready", "running") for v in ("1.1.1", "1.1.2"))

    _wait(both_ended_there)
    assert record(gitws, "1.1.1").status == "running"  # the record here learns the outcome by pulling, not before
    logs = run_exp("logs", "1.1.1", cwd=gitws.root)  # read there, through ssh
    assert logs.returncode == 0 and "model.train_pretrain" in logs.stdout, logs.stdout + logs.stderr
    one = run_exp("pull", "1.1.1", cwd=gitws.root)
    assert one.returncode == 0 and "1.1.1: analyzed (pulled from exptest" in one.stdout, one.stdout + one.stderr
    assert "group_analysis" not in record(gitws, "1.1.0").meta or not still  # its other member is still running here
    rest = run_exp("pull", "1.1.0", "--members", "--json", cwd=gitws.root)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert {r["version"]: r["status"] for r in json.loads(rest.stdout)} == {"1.1.1": "analyzed", "1.1.2": "analyzed"}
    for v in ("1.1.1", "1.1.2"):
        rec = record(gitws, v)
        run = rec.meta["run"]
        assert run["status"] == "finished" and run["final"]["steps"] == 30 and run["exit_code"] == 0, run
        assert run["remote"]["pid"] and run["remote"]["queue"] == queue_id
        assert run["code"]["location"] == str(REPO)  # what the host ran, learnt from its record there
        here = gitws.out_dir(v)
        assert (here / "metrics.jsonl").exists() and (here / "plots" / "loss.png").exists() and not list(here.rglob("*.pt"))
    assert record(gitws, "1.1.0").meta["group_analysis"]  # the group's analysis, written here by the last member's end
