"""The Slurm backend: the rendered batch script (always), and runs on the real local cluster
(scripts/slurm_local.sh start) when EXP_TEST_SLURM=local: sbatch, srun + torchrun with gloo,
the job's own preflight and environment, requeue with automatic resume. Time limits only
bound a failure; the assertions are on states, files and numbers."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_exp, slurm_cluster
from test_runner import gitws, make, record  # noqa: F401  (gitws is a fixture)


@pytest.fixture(scope="module")
def cluster():
    slurm_cluster()
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


def show_json(ws) -> dict:
    r = run_exp("show", "0.1.0", "--json", cwd=ws.root)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def scontrol(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def settled(ws):
    """The record once the job's EXIT trap has finalized and analysed it."""
    return wait_for(lambda: record(ws).status not in ("running", "finished") and record(ws), limit_s=600)


# -- the rendered script: no cluster needed -------------------------------------------------------
def dry(ws, *args):
    return run_exp("run", "0.1.0", "--dry-run", "--backend", "slurm", *args, cwd=ws.root)


def launch_line(script: str) -> list[str]:
    line = next(x for x in script.splitlines() if x.startswith("LAUNCH=(srun "))
    return shlex.split(line[len("LAUNCH=("):-1])


def test_gpu_ids_under_slurm_are_one_line_and_the_count_is_per_node(gitws):
    make(gitws)
    bad = dry(gitws, "--gpus", "0,1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "under Slurm --gpus is a count of GPUs per node" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # a GPU submit from a login node without GPUs is not refused: the GPUs are the job's to check
    r = dry(gitws, "--gpus", "4", "--nodes", "2")
    assert "#SBATCH --gres=gpu:4\n#SBATCH --nodes" not in r.stdout and "#SBATCH --gres=gpu:4\n" in r.stdout
    assert "#SBATCH --nodes=2\n" in r.stdout and "CUDA_VISIBLE_DEVICES" not in r.stdout
    assert "--cpus-per-task" not in r.stdout  # never the login node's core count
    assert "checked in the job, on the node that trains" in r.stdout
    argv = launch_line(r.stdout)
    assert argv[:2] == ["srun", "--ntasks-per-node=1"] and Path(argv[argv.index("--nnodes") - 1]).name == "torchrun"
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and argv[argv.index("--nnodes") + 1] == "$SLURM_NNODES"


def test_two_node_script_parses_and_launches_one_torchrun_per_node(gitws, tmp_path):
    """The 2-node job as rendered: bash -n, and its srun/torchrun line taken apart (it also runs,
    on the local cluster's two nodes: test_two_nodes_train_one_run)."""
    make(gitws)
    r = dry(gitws, "--nodes", "2", "--nproc", "2")
    script = r.stdout.split("\n# ---- preflight")[0]
    path = tmp_path / "two_nodes.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    argv = launch_line(script)
    assert argv[:4] == ["srun", "--ntasks-per-node=1", "--nodes=$SLURM_NNODES", "--kill-on-bad-exit=1"]
    assert argv[argv.index("--rdzv-backend") + 1] == "c10d"
    assert argv[argv.index("--rdzv-endpoint") + 1] == "$HEAD:$PORT"
    assert 'HEAD="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in script
    assert "PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))" in script  # the same on every node of the job
    assert "socket" not in script  # no bind-then-close
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
        assert line in script


def test_workspace_defaults_and_extra_sbatch_lines(gitws):
    make(gitws)
    pyproject = gitws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '\n[tool.exp.slurm]\npartition = "gpu"\ntime = "2-00:00:00"\naccount = "lab"\n'
                         'qos = "normal"\nmem = "64G"\ncpus_per_task = 8\nconstraint = "a100"\nsbatch = ["--exclusive"]\n')
    r = dry(gitws, "--time", "01:00:00")
    for line in ("--partition=gpu", "--time=01:00:00", "--account=lab", "--qos=normal", "--mem=64G", "--cpus-per-task=8",
                 "--constraint=a100", "--exclusive"):
        assert f"#SBATCH {line}\n" in r.stdout, line
    pyproject.write_text(pyproject.read_text().replace('sbatch = ["--exclusive"]', 'sbatch = ["--output=/tmp/x"]'))
    bad = dry(gitws)
    assert bad.returncode == 2 and "--output is set by exp itself" in bad.stderr and "Traceback" not in bad.stderr
    pyproject.write_text(pyproject.read_text().replace('sbatch = ["--output=/tmp/x"]', 'partitoin = "x"'))
    bad = dry(gitws)
    assert bad.returncode == 2 and "unknown key(s) partitoin" in bad.stderr


def test_slurm_options_need_the_slurm_backend(gitws):
    make(gitws)
    bad = run_exp("run", "0.1.0", "--dry-run", "--partition", "debug", cwd=gitws.root)
    assert bad.returncode == 2 and "--partition is a Slurm option; add --backend slurm" in bad.stderr


# -- the real cluster -----------------------------------------------------------------------------
def test_slurm_run_end_to_end_with_the_jobs_environment(cluster, gitws):
    make(gitws, steps=10)
    r = run_exp("run", "0.1.0", "--backend", "slurm", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Slurm job" in r.stdout
    script = gitws.run_script_path("0.1.0").read_text()
    assert script.startswith("#!/usr/bin/env bash\n#SBATCH --job-name=exp-0.1.0\n")
    assert f"#SBATCH --output={gitws.out_dir('0.1.0')}/run.log" in script
    job = record(gitws).meta["run"]["job_id"]
    assert job.isdigit()
    rec = settled(gitws)
    assert rec.status == "analyzed" and rec.meta["run"]["status"] == "finished", rec.meta["run"]
    run = rec.meta["run"]
    assert run["job_id"] == job and run["final"]["steps"] == 10 and run["processes"] == 1
    # the environment is the job's node's, taken in the job
    node = scontrol(job)["NodeList"]
    assert run["host"] == node and run["gpus"] == "none (CPU)"
    env = json.loads((gitws.out_dir("0.1.0") / "env.json").read_text())
    assert env["host"] == node and (gitws.out_dir("0.1.0") / "requirements.txt").read_text().strip()
    assert "preflight" in (gitws.out_dir("0.1.0") / "run.log").read_text()  # the job's own preflight ran
    assert wait_for(lambda: scontrol(job).get("JobState") == "COMPLETED"), scontrol(job)


def test_two_gloo_processes_through_srun_and_torchrun(cluster, gitws):
    make(gitws, steps=10)
    r = run_exp("run", "0.1.0", "--backend", "slurm", "--nproc", "2", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = settled(gitws)
    assert rec.status == "analyzed", rec.meta["run"]
    summary = json.loads((gitws.out_dir("0.1.0") / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    assert rec.meta["run"]["processes"] == 2
    log = (gitws.out_dir("0.1.0") / "run.log").read_text()
    assert "exp: srun --ntasks-per-node=1" in log and "--nproc-per-node 2 --rdzv-backend c10d" in log


def test_two_nodes_train_one_run(cluster, gitws):
    """--nodes 2 on the local cluster's two nodes (two slurmd on this machine): srun starts one
    torchrun per node, they meet at the c10d rendezvous on the first node, one record."""
    if subprocess.run(["sinfo", "-h", "-o", "%D"], capture_output=True, text=True).stdout.split()[:1] != ["2"]:
        pytest.skip("the local cluster has one node (scripts/slurm_local.sh start brings up two)")
    make(gitws, steps=10)
    r = run_exp("run", "0.1.0", "--backend", "slurm", "--nodes", "2", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    job = record(gitws).meta["run"]["job_id"]
    rec = settled(gitws)
    assert rec.status == "analyzed", rec.meta["run"]
    nodes = subprocess.run(["scontrol", "show", "hostnames", scontrol(job)["NodeList"]], capture_output=True, text=True).stdout.split()
    assert scontrol(job)["NumNodes"] == "2" and len(set(nodes)) == 2, scontrol(job)
    summary = json.loads((gitws.out_dir("0.1.0") / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    assert rec.meta["run"]["processes"] == 2
    log = (gitws.out_dir("0.1.0") / "run.log").read_text()
    assert "exp: srun --ntasks-per-node=1 --nodes=2" in log and "--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d" in log
    assert f"--rdzv-endpoint {nodes[0]}:" in log  # the rendezvous on the job's first node


def test_a_failed_job_preflight_fails_the_run_with_its_reason(cluster, gitws):
    make(gitws, steps=10, extra=["device=cuda"])
    r = run_exp("run", "0.1.0", "--backend", "slurm", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr  # the login node does not refuse a GPU run: the job decides
    rec = wait_for(lambda: record(gitws).status != "running" and record(gitws), limit_s=300)
    run = rec.meta["run"]
    assert rec.status == "failed" and run["status"] == "failed", run
    assert "the job's preflight failed on " in run["error"] and "the job got no GPU" in run["error"]
    assert run["host"] == scontrol(run["job_id"])["NodeList"]


def running_job_with_a_checkpoint(ws, steps: int, extra=()) -> tuple[Path, str]:
    """A Slurm run of ``steps`` steps submitted through exp, once it has saved a checkpoint: (out dir, job id)."""
    make(ws, steps=steps, extra=["save_interval=10", *extra])
    r = run_exp("run", "0.1.0", "--backend", "slurm", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    out = ws.out_dir("0.1.0")
    job = record(ws).meta["run"]["job_id"]
    assert wait_for(lambda: list((out / "checkpoints").glob("step_*.pt")), limit_s=300), (out / "run.log").read_text()
    return out, job


def released_and_finished(ws, job: str, steps: int) -> dict:
    """Let the requeued job start now (Slurm holds it back a while: BeginTime); the finished run."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, text=True)
    rec = settled(ws)
    run = rec.meta["run"]
    assert rec.status == "analyzed" and run["status"] == "finished", run
    assert run["final"]["steps"] == steps and run["restarts"] >= 1 and run["job_id"] == job
    return run


def test_requeue_resumes_from_the_checkpoint_and_ends_like_an_uninterrupted_run(cluster, gitws, tmp_path):
    steps = 60
    out, job = running_job_with_a_checkpoint(gitws, steps, extra=["keep_top_k=100"])
    assert subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True).returncode == 0
    assert wait_for(lambda: scontrol(job).get("JobState") == "PENDING", limit_s=120), scontrol(job)
    released_and_finished(gitws, job, steps)
    log = (out / "run.log").read_text()
    assert "DUE TO JOB REQUEUE" in log and "resume: continuing from checkpoint step" in log
    # the same record config, trained without interruption
    reference = tmp_path / "reference"
    ref = subprocess.run([sys.executable, "-m", "model.train_pretrain", "--config", str(out / "config.json"), "--out-dir",
                          str(reference)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    from safetensors.torch import load_file

    got, want = load_file(out / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    assert max(float((got[k].float() - want[k].float()).abs().max()) for k in got) <= 1e-6
    steps_logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps


def test_the_time_limit_warning_checkpoints_requeues_and_the_run_goes_on(cluster, gitws):
    """USR1 to the batch shell, as Slurm sends it 120 s before the time limit (--signal=B:USR1@120):
    the script stops the trainer at a checkpoint and requeues its own job; the next attempt resumes."""
    steps = 60
    out, job = running_job_with_a_checkpoint(gitws, steps)
    sent = subprocess.run(["scancel", "--signal=USR1", "--batch", job], capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: scontrol(job).get("JobState") == "PENDING", limit_s=300), scontrol(job)
    assert record(gitws).status == "running"  # the first attempt's end did not end the run
    released_and_finished(gitws, job, steps)
    log = (out / "run.log").read_text()
    assert "time limit near: checkpointing, then requeueing job" in log and "resume: continuing from checkpoint step" in log


def test_slurm_stop_cancels_and_interrupts(cluster, gitws):
    _, job = running_job_with_a_checkpoint(gitws, 2000)
    # a shell without Slurm on its PATH: status cannot ask, says so, and leaves the run running
    (gitws.out_dir("0.1.0") / "scheduler.json").unlink(missing_ok=True)  # no cached answer to fall back on
    no_slurm = gitws.root.parent / "no-slurm-bin"
    no_slurm.mkdir()
    blind = run_exp("status", "0.1.0", "--json", cwd=gitws.root, env={"PATH": str(no_slurm)})
    assert blind.returncode == 0, blind.stderr
    row = json.loads(blind.stdout)[0]
    assert row["status"] == "running" and row["alive"] is None and "could not ask Slurm" in row["note"], row
    assert record(gitws).status == "running"
    (gitws.out_dir("0.1.0") / "scheduler.json").unlink()  # that "could not ask" is cached for 10 s too
    seen = json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)[0]  # Slurm answers again
    assert seen["status"] == "running" and seen["alive"] is True and seen["where"] == f"Slurm job {job} RUNNING", seen
    stopped = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert stopped.returncode == 0, stopped.stderr
    rec = record(gitws)
    assert rec.status == "interrupted"
    assert wait_for(lambda: subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == "")
    state = scontrol(job).get("JobState")
    assert state in ("COMPLETED", "CANCELLED", "FAILED")
