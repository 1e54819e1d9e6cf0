"""The local Slurm cluster (scripts/slurm_local.sh) with the real daemons: sbatch, squeue, scontrol, scancel.

These are the calls the Slurm backend of `exp run` makes. Accounting is off (no slurmdbd), so a
finished job is read with `scontrol show job ID`, which answers while slurmctld keeps the job's
record: MinJobAge=600 s in the generated slurm.conf (Slurm's default is 300 s). The cluster is
started once per module and left running for the other modules; `slurm_local.sh stop` is for people.
Time limits below only bound a failure; the assertions are on states and contents.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, slurm_cluster

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "slurm_local.sh"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    slurm_cluster()


def submit(*args: str) -> str:
    r = sh("sbatch", "--parsable", *args)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    assert job.isdigit(), r.stdout
    return job


def show(job: str) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict of its KEY=VALUE fields."""
    r = sh("scontrol", "show", "job", "-o", job)
    assert r.returncode == 0, r.stderr
    return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)


def squeue_state(job: str) -> str:
    return sh("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").stdout.strip()


def wait_until(predicate, limit_s: float = 120.0, every: float = 0.2):
    """Poll until predicate() is truthy; returns its last value (the limit only bounds a failure)."""
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def ended(job: str) -> dict[str, str]:
    fields = wait_until(lambda: (f := show(job))["JobState"] in ENDED and f)
    assert fields, f"job {job} did not end: {show(job)}"
    return fields


def test_status_says_up(cluster):
    r = sh("bash", str(SCRIPT), "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("up: node ")


def test_wrap_job_writes_its_output_and_completes(cluster, tmp_path):
    out = tmp_path / "out-%j.txt"
    job = submit(f"--chdir={tmp_path}", f"--output={out}", "--wrap", 'echo "hello $SLURM_JOB_ID from $(pwd)"')
    fields = ended(job)
    assert fields["JobState"] == "COMPLETED"
    assert fields["ExitCode"] == "0:0"
    assert (tmp_path / f"out-{job}.txt").read_text() == f"hello {job} from {tmp_path}\n"
    assert squeue_state(job) == "COMPLETED"


def test_running_job_is_reported_then_scancel_ends_it_cancelled(cluster, tmp_path):
    marker = "86417"  # an unusual sleep length, to find the job's process
    job = submit(f"--output={tmp_path / 'sleep.txt'}", "--job-name=slurm-cluster-test-sleep", "--wrap", f"sleep {marker}")
    assert wait_until(lambda: show(job)["JobState"] == "RUNNING"), show(job)
    assert squeue_state(job) == "RUNNING"
    assert sh("squeue", "-h", "-j", job, "-o", "%j").stdout.strip() == "slurm-cluster-test-sleep"
    assert wait_until(lambda: sleeping(marker)), "the job's sleep process never appeared"

    r = sh("scancel", job)
    assert r.returncode == 0, r.stderr
    fields = ended(job)
    assert fields["JobState"] == "CANCELLED"
    assert wait_until(lambda: not sleeping(marker)), "scancel left the job's sleep running"
    assert wait_until(lambda: sh("squeue", "-h", "-j", job).stdout.strip() == "")


def test_exit_code_is_visible_after_the_job_ends(cluster, tmp_path):
    job = submit(f"--output={tmp_path / 'exit.txt'}", "--wrap", "exit 3")
    fields = ended(job)
    assert fields["JobState"] == "FAILED"
    assert fields["ExitCode"] == "3:0"
    # still served from the retained record, not just at the moment it ended
    assert show(job)["ExitCode"] == "3:0"


def test_start_again_is_quick_and_harmless(cluster):
    if os.geteuid() != 0:
        pytest.skip("start needs root")
    job = submit("--output=/dev/null", "--wrap", "exit 0")
    ended(job)
    r = sh("bash", str(SCRIPT), "start", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already up" in r.stdout
    assert show(job)["JobState"] == "COMPLETED"  # the running cluster kept its state


def sleeping(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                    return True
            except OSError:
                continue
    return False
