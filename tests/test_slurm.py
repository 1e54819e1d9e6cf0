"""The Slurm backend against a real single-node cluster (scripts/slurm_local.sh start)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import REPO, run_exp
from test_runner import gitws, make, record  # noqa: F401  (gitws is a fixture)


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        pytest.skip("no Slurm here and not root: scripts/slurm_local.sh start needs root to install it")
    r = subprocess.run(["bash", str(REPO / "scripts/slurm_local.sh"), "start"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return True


def wait_for(predicate, limit_s: float = 300.0, every: float = 0.5):
    """Poll until predicate() is truthy; the limit only bounds a failure, it asserts nothing."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


def test_slurm_run_end_to_end(cluster, gitws):
    make(gitws, steps=10)
    r = run_exp("run", "0.1.0", "--backend", "slurm", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Slurm job" in r.stdout
    script = gitws.run_script_path("0.1.0").read_text()
    assert script.startswith("#!/usr/bin/env bash\n#SBATCH --job-name=exp-0.1.0\n")
    assert f"#SBATCH --output={gitws.out_dir('0.1.0')}/run.log" in script
    job = record(gitws).meta["run"]["job_id"]
    assert job.isdigit()
    # the job's EXIT trap records the end (finished), then analyses (analyzed): wait for the last state
    done = wait_for(lambda: json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)[0]["status"]
                    not in ("running", "finished"))
    assert done
    rec = record(gitws)
    assert rec.status == "analyzed" and rec.meta["run"]["status"] == "finished", rec.meta["run"]
    assert rec.meta["run"]["job_id"] == job and rec.meta["run"]["final"]["steps"] == 10
    # the record is written inside the job (its EXIT trap); Slurm marks the job done just after
    show = lambda: subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout  # noqa: E731
    assert wait_for(lambda: "JobState=COMPLETED" in show()), show()


def test_slurm_stop_cancels_and_interrupts(cluster, gitws):
    make(gitws, steps=2000, extra=["save_interval=10"])
    r = run_exp("run", "0.1.0", "--backend", "slurm", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    job = record(gitws).meta["run"]["job_id"]
    assert wait_for(lambda: list((gitws.out_dir("0.1.0") / "checkpoints").glob("*.pt")))
    stopped = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert stopped.returncode == 0, stopped.stderr
    rec = record(gitws)
    assert rec.status == "interrupted"
    assert wait_for(lambda: subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == "")
    state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in state or "JobState=CANCELLED" in state or "JobState=FAILED" in state
