"""The run queue: `exp run V1 V2 ...` / `exp run PARENT --members` with slots, GPU sets, a detached
supervisor, stop and resume; Slurm dependencies against the local cluster.

Real `exp` subprocesses and real tiny trainings; a time limit below only bounds a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_exp, slurm_cluster
from test_replicates import make_group

from expkit import records
from expkit.files import read_json
from expkit.version import Version


def wait_for(predicate, limit_s: float = 300.0, every: float = 0.3):
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


def status(v: str):
    return lambda ws: records.load(ws, Version.parse(v)).status


def test_dry_run_plan_for_four_gpus_two_per_run_on_a_machine_without_them(ws):
    make_group(ws, {"1.1.1": ["replicates=2", "learning_rate=0.002"], "1.1.2": ["learning_rate=0.001"]})
    before = _tree(ws.root)
    r = run_exp("run", "1.1.0", "--members", "--gpus", "0,1,2,3", "--gpus-per-run", "2", "--dry-run", "--json", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    units = plan["units"]
    assert [u["member"] for u in units] == ["1.1.1/r0", "1.1.1/r1", "1.1.2"]
    assert [u["seed"] for u in units] == [1337, 1338, 1337]
    assert plan["gpu_sets"] == ["0,1", "2,3"] and plan["parallel"] == 2
    # the two that run side by side hold disjoint GPU sets, each its own rendezvous (torchrun --standalone)
    first, second = units[0], units[1]
    assert set(first["gpus"].split(",")).isdisjoint(second["gpus"].split(","))
    assert all(u["backend"] == "torchrun" and u["rendezvous"] == "standalone" for u in units)
    assert first["command"] == "EXP_REPLICATE=0 EXP_GPUS=0,1 bash run_file/experiment_1.1.1.sh"
    assert second["command"] == "EXP_REPLICATE=1 EXP_GPUS=2,3 bash run_file/experiment_1.1.1.sh"
    assert units[2]["out_dir"] == "out/experiment_1.1.2" and first["out_dir"] == "out/experiment_1.1.1/r0"
    # this machine has no GPU: the preflight says what it could not find, the plan stays valid
    assert plan["valid"] is True and "gpus" in plan["not_found_here"]["1.1.1"]
    assert _tree(ws.root) == before  # nothing written: no script, no out/, no queue state, no record change
    text = run_exp("run", "1.1.0", "--members", "--gpus", "0,1,2,3", "--gpus-per-run", "2", "--dry-run", cwd=ws.root)
    assert text.returncode == 0, text.stderr
    assert "member" in text.stdout and "rendezvous" in text.stdout and "standalone" in text.stdout
    assert "EXP_GPUS=2,3" in text.stdout and "not found here: " in text.stdout and "nothing was started or written" in text.stdout
    assert _tree(ws.root) == before


def test_bad_input_starts_nothing(ws, cli):
    make_group(ws, {"1.1.1": ["learning_rate=0.002"], "1.1.2": ["learning_rate=0.001"]})
    before = _tree(ws.root)
    cases = [
        (("run", "1.1.1", "9.9.9", "1.1.2"), "no experiment 9.9.9"),
        (("run", "1.1.1", "1.1.2", "--gpus", "0,1,2,3", "--gpus-per-run", "3"), "does not divide"),
        (("run", "1.1.1", "1.1.2", "--gpus", "0,1", "--gpus-per-run", "4"), "exceeds the 2 GPU(s)"),
        (("run", "1.1.1", "1.1.2", "--gpus-per-run", "2"), "--gpus-per-run needs --gpus"),
        (("run", "1.1.1", "1.1.2", "--gpus", "0,1", "--gpus-per-run", "1", "--parallel", "3"), "--parallel 3 needs 3 GPU sets"),
        (("run", "1.1.1", "--members"), "1.1.1 has no members"),
        (("run", "1.1.1", "1.1.1"), "given twice"),
    ]
    for args, words in cases:
        code, out, err = cli(*args)
        assert code != 0 and words in err, (args, out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _tree(ws.root) == before


def test_a_failing_member_does_not_stop_the_other_and_the_status_says_why(ws, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n', encoding="utf-8")
    make_group(ws, {"1.1.1": ["learning_rate=0.002"], "1.1.2": [f"data_path={bad}", "val_data_path="]})
    r = run_exp("run", "1.1.0", "--members", "--parallel", "2", cwd=ws.root)
    assert r.returncode == 1, r.stdout + r.stderr
    assert status("1.1.1")(ws) == "analyzed", r.stdout + r.stderr
    failed = records.load(ws, Version.parse("1.1.2"))
    assert failed.status == "failed" and "corpus too small" in failed.meta["run"]["error"]
    assert "failed    1.1.2" in r.stdout and "corpus too small" in r.stdout
    s = run_exp("status", "1.1.0", "--json", cwd=ws.root)
    assert s.returncode == 0, s.stderr
    found = json.loads(s.stdout)
    units = {u["member"]: u for u in found["queues"][0]["units"]}
    assert units["1.1.1"]["status"] == "finished" and units["1.1.2"]["status"] == "failed"
    assert "corpus too small" in units["1.1.2"]["why"]
    assert [u["member"] for u in found["queues"][0]["failed"]] == ["1.1.2"]


def test_fail_fast_cancels_what_is_pending(ws, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n', encoding="utf-8")
    make_group(ws, {"1.1.1": [f"data_path={bad}", "val_data_path="], "1.1.2": ["learning_rate=0.002"]})
    r = run_exp("run", "1.1.0", "--members", "--fail-fast", cwd=ws.root)
    assert r.returncode == 1
    assert status("1.1.1")(ws) == "failed" and status("1.1.2")(ws) == "draft"  # never started: as it was
    assert "cancelled 1.1.2: --fail-fast" in r.stdout
    assert not ws.out_dir("1.1.2").exists()


def test_sigkill_of_the_supervisor_loses_nothing_and_resume_runs_only_what_did_not_finish(ws):
    make_group(ws, {"1.1.1": ["replicates=2", "learning_rate=0.002"], "1.1.2": ["learning_rate=0.002"]}, steps=30)
    r = run_exp("run", "1.1.0", "--members", "--detach", "--json", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    started = json.loads(r.stdout)
    assert started["units"] == ["1.1.1/r0", "1.1.1/r1", "1.1.2"]
    state = ws.queue_dir() / f"{started['queue']}.json"
    assert read_json(state)["supervisor"]["pid"] == started["pid"] and read_json(state)["supervisor"]["pid_started"]
    v1 = Version.parse("1.1.1")
    assert wait_for(lambda: (records.load(ws, v1).meta.get("run") or {}).get("replicates", [{}])[0].get("status") == "running")
    os.kill(started["pid"], signal.SIGKILL)
    # r0 goes on by itself and finalizes its own replicate; with the supervisor gone, r1 never starts
    assert wait_for(lambda: status("1.1.1")(ws) != "running" or None) is not None
    rec = records.load(ws, v1)
    reps = rec.meta["run"]["replicates"]
    assert rec.status == "interrupted" and reps[0]["status"] == "finished" and reps[1]["status"] == "pending"
    assert "replicate 1 (seed 1338) never started" in rec.meta["run"]["error"]
    r0_started = reps[0]["started"]
    s = run_exp("status", "1.1.0", "--json", cwd=ws.root)
    found = json.loads(s.stdout)
    q = found["queues"][0]
    assert "supervisor pid" in q["supervisor"] and q["supervisor"].endswith(f"gone on {q['supervisor'].split()[-1]}")
    assert {u["member"]: u["status"] for u in q["units"]} == {"1.1.1/r0": "finished", "1.1.1/r1": "pending", "1.1.2": "pending"}
    text = run_exp("status", "1.1.0", cwd=ws.root)
    assert "gone" in text.stdout and "pending" in text.stdout
    # resume: only 1.1.1/r1 and 1.1.2 run
    plan = json.loads(run_exp("run", "1.1.0", "--members", "--resume", "--dry-run", "--json", cwd=ws.root).stdout)
    assert [u["member"] for u in plan["units"]] == ["1.1.1/r1", "1.1.2"]
    r = run_exp("run", "1.1.0", "--members", "--resume", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = records.load(ws, v1)
    reps = rec.meta["run"]["replicates"]
    assert rec.status == "analyzed" and [x["status"] for x in reps] == ["finished", "finished"]
    assert reps[0]["started"] == r0_started  # the finished replicate did not run again
    assert len(rec.meta["analysis"]["replicates"]) == 2
    assert status("1.1.2")(ws) == "analyzed"


def test_stop_the_members_of_a_detached_group_pending_ones_never_start(ws):
    make_group(ws, {"1.1.1": ["learning_rate=0.002"], "1.1.2": ["learning_rate=0.001"]}, steps=200)
    r = run_exp("run", "1.1.0", "--members", "--detach", "--json", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_for(lambda: status("1.1.1")(ws) == "running" and (ws.out_dir("1.1.1") / "heartbeat").exists())
    s = run_exp("stop", "1.1.0", "--members", cwd=ws.root)
    assert s.returncode == 0, s.stdout + s.stderr
    assert status("1.1.1")(ws) == "interrupted" and status("1.1.2")(ws) == "draft"
    assert "1.1.2: draft (pending in a queue: it will not start)" in s.stdout
    sup = json.loads(r.stdout)["pid"]
    assert wait_for(lambda: not Path(f"/proc/{sup}").exists() or "zombie" in Path(f"/proc/{sup}/status").read_text().lower(), 60)
    assert status("1.1.2")(ws) == "draft" and not ws.out_dir("1.1.2").exists()


@pytest.mark.slow
def test_a_slurm_group_runs_as_dependent_jobs_on_the_local_cluster(ws):
    slurm_cluster()
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True)
    make_group(ws, {"1.1.1": ["replicates=2", "learning_rate=0.002"], "1.1.2": ["learning_rate=0.002"]}, steps=10)
    dry = run_exp("run", "1.1.0", "--members", "--backend", "slurm", "--dry-run", "--json", cwd=ws.root)
    assert dry.returncode == 0, dry.stderr
    cmds = [u["command"] for u in json.loads(dry.stdout)["units"]]
    assert cmds[1].startswith("sbatch --parsable") and "--dependency=afterany:<job of 1.1.1/r0>" in cmds[1]
    r = run_exp("run", "1.1.0", "--members", "--backend", "slurm", cwd=ws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("submitted")]
    assert len(jobs) == 3 and all(j.isdigit() for j in jobs)
    deps = subprocess.run(["scontrol", "show", "job", "-o", jobs[2]], capture_output=True, text=True).stdout
    assert f"afterany:{jobs[1]}" in deps or "Dependency=(null)" in deps  # met already once job 2 ended
    assert wait_for(lambda: all(status(m)(ws) == "analyzed" for m in ("1.1.1", "1.1.2")), 600)
    rec = records.load(ws, Version.parse("1.1.1"))
    assert [x["job_id"] for x in rec.meta["run"]["replicates"]] == jobs[:2]
    assert [x["seed"] for x in rec.meta["run"]["replicates"]] == [1337, 1338]
    assert json.loads((ws.replicate_dir("1.1.1", 1) / "config.json").read_text())["seed"] == 1338
    assert (ws.replicate_dir("1.1.1", 1) / "run.log").exists() and records.load(ws, Version.parse("1.1.2")).meta["run"]["job_id"] == jobs[2]
