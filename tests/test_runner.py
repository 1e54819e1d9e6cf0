"""`exp run` end to end through real processes in a temporary git workspace.

Small model (hidden 64, 2 layers, seq 64) so each run takes seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FILLED, REPO, fill, run_exp

from expkit.script import LaunchOptions, write_script
from expkit import runner, tracking
from expkit.record import Record
from expkit.version import Version
from expkit import lifecycle, records

TINY = ["hidden_size=64", "max_seq_len=64", "batch_size=8", "log_interval=5", "eval_interval=10", "eval_batches=2",
        "save_interval=10", "warmup_steps=5", "sample_max_new_tokens=8"]
HOSTILE = {
    "goal": "目的 $(touch PWNED_GOAL) `touch PWNED_TICK` \"quoted\" 'single'",
    "hypothesis": "{{ config.learning_rate }} {% if true %}jinja{% endif %}\nline two; touch PWNED_SEMI",
    "expected": "- val_loss < 20\n- tokens_per_s >= 1\n$(touch PWNED_EXP)\n",
    "focus": "```bash\nrm -rf / # not really\n```",
}


@pytest.fixture
def gitws(ws):
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=ws.root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=ws.root, check=True)
    return ws


def make(ws, version="0.1.0", steps=20, sections=None, desc="tiny run", extra=()):
    v = Version.parse(version)
    rec = lifecycle.create(ws, v, description=desc)
    fill(rec.path, sections or FILLED)
    lifecycle.set_config(ws, v, [*TINY, f"max_steps={steps}", *extra])
    return rec.path


def record(ws, version="0.1.0") -> Record:
    return records.load(ws, Version.parse(version))


def no_pwned(root: Path) -> None:
    assert not [p for p in root.rglob("PWNED*")], "a value from the record was executed"


def test_unready_record_is_refused_with_lines_and_nothing_changes(gitws):
    lifecycle.create(gitws, Version.parse("0.1.0"), description="d")
    before = record(gitws).path.read_bytes()
    r = run_exp("run", "0.1.0", cwd=gitws.root)
    assert r.returncode == 1
    assert "not ready" in r.stderr and "line " in r.stderr and "exp check 0.1.0" in r.stderr
    assert record(gitws).path.read_bytes() == before
    assert not gitws.out_dir("0.1.0").exists()


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (the lock files aside) with its bytes and mtime."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


def test_dry_run_renders_a_safe_script_writes_nothing_and_renders_what_a_run_writes(gitws, tmp_path):
    make(gitws, sections=HOSTILE, desc="evil $(touch PWNED_DESC)\n`touch PWNED_DESC2`; touch PWNED_DESC3")
    before = _tree(gitws.root)
    r = run_exp("run", "0.1.0", "--dry-run", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    assert _tree(gitws.root) == before  # not the script, not out/, not the record: nothing
    assert not gitws.run_script_path("0.1.0").exists() and not gitws.out_dir("0.1.0").exists()
    assert "preflight (ok)" in r.stdout and "nothing was started or written" in r.stdout
    text = r.stdout[: r.stdout.index("\n# ---- preflight")]
    again = run_exp("run", "0.1.0", "--dry-run", cwd=gitws.root)
    assert again.stdout[: again.stdout.index("\n# ---- preflight")] == text  # the same record renders the same bytes
    shown = tmp_path / "shown.sh"
    shown.write_text(text)
    assert subprocess.run(["bash", "-n", str(shown)]).returncode == 0
    for line in text.splitlines():
        if "evil" in line and line.startswith("#"):
            assert "\n" not in line  # the description stayed inside its comment
    assert "# Experiment 0.1.0: evil $(touch PWNED_DESC) `touch PWNED_DESC2`; touch PWNED_DESC3" in text
    assert record(gitws).status == "draft"  # unchanged: a dry run starts nothing
    # what `exp run` writes (and records the hash of) is exactly what the dry run showed
    path, written = write_script(gitws, record(gitws), LaunchOptions().check())
    assert written == text and path.read_text() == text and os.stat(path).st_mode & stat.S_IXUSR
    no_pwned(gitws.root)


def test_tiny_run_finishes_and_fills_the_execution_record(gitws):
    make(gitws, sections=HOSTILE, desc="evil $(touch PWNED_DESC)\nnext line")
    r = run_exp("run", "0.1.0", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step " in r.stdout and "analyzed" in r.stdout
    rec = record(gitws)
    assert rec.status == "analyzed"  # a finished run analyses itself (the script's EXIT trap)
    run = rec.meta["run"]
    assert run["status"] == "finished"
    assert rec.meta["analysis"]["verdict_counts"]["confirmed"] + rec.meta["analysis"]["verdict_counts"]["refuted"] == 2
    assert "verdicts" in r.stdout and "plots/loss.png" in r.stdout and "exp review 0.1.0" in r.stdout
    for key in ("started", "ended", "duration_s", "exit_code", "host", "command", "git_sha", "git_dirty", "final", "env"):
        assert key in run, key
    assert run["exit_code"] == 0 and run["final"]["steps"] == 20
    assert len(run["git_sha"]) == 40
    assert run["env"]["torch"].startswith("2.")
    assert run.get("swanlab_dir", "").startswith("out/experiment_0.1.0/swanlog/run-")
    body = rec.path.read_text(encoding="utf-8")
    execution = rec.block("generated", "execution").text
    assert "finished" in execution and run["git_sha"] in execution and "final_loss" in execution
    assert "torch" in rec.block("generated", "environment").text
    out = gitws.out_dir("0.1.0")
    for name in ("config.json", "metrics.jsonl", "train.log", "summary.json", "samples.json", "env.json", "requirements.txt", "experiment_info.txt", "run.log", "heartbeat"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["max_steps"] == 20
    assert "torch==" in (out / "requirements.txt").read_text()
    # pre-registration: the human sections' hashes were stored at start, and still match
    assert set(rec.meta["prereg"]["sections"]) == {"goal", "hypothesis", "expected"}
    assert {k: rec.human(k) for k in HOSTILE} == HOSTILE  # human text untouched, byte for byte
    assert "PWNED" not in "".join(p.name for p in gitws.root.rglob("*"))
    no_pwned(gitws.root)
    # a finished record cannot run again; editing the hypothesis now is reported
    again = run_exp("run", "0.1.0", cwd=gitws.root)
    assert again.returncode == 1 and "exp new NEXT --from 0.1.0" in again.stderr
    fill(rec.path, {"hypothesis": "rewritten after the fact"})
    check = run_exp("check", "0.1.0", cwd=gitws.root)
    assert "changed after the run started" in check.stdout
    shown = json.loads(run_exp("show", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert shown["prereg_changed"] == ["hypothesis"]
    text = run_exp("show", "0.1.0", cwd=gitws.root).stdout
    assert "[run]" in text and "final_loss" in text and "pre-registration" in text
    assert body  # the record was readable throughout


def test_a_crashing_run_records_failed_with_the_error(gitws, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    make(gitws, extra=[f"data_path={bad}", "val_data_path="])
    r = run_exp("run", "0.1.0", cwd=gitws.root)
    assert r.returncode == 1
    rec = record(gitws)
    assert rec.status == "failed"
    run = rec.meta["run"]
    # the malformed line 2 is skipped (and counted); what is left is too small to train on: the
    # trainer's one-line error names the file and why
    assert f"{bad}: corpus too small" in run["error"], run["error"]
    assert run["exit_code"] != 0 and run["log_tail"]
    execution = rec.block("generated", "execution").text
    assert "failed" in execution and f"{bad}: corpus too small" in execution


V = Version.parse("0.1.0")


def _follow(ws, actions, resume=False):
    """The steps follow_metrics yields while ``actions`` run, one before each of its polls."""
    todo = list(actions)

    def alive():
        if todo:
            todo.pop(0)()
        return bool(todo)

    return [row["step"] for row in runner.follow_metrics(ws, V, alive, poll_s=0, resume=resume)]


def _append(path, *steps, tail=""):
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps({"step": s, "loss": 9.0 - s / 100}) + "\n" for s in steps) + tail)


def test_progress_of_a_fresh_run_skips_the_stale_metrics_and_follows_the_new_file(ws):
    metrics = ws.out_dir(V) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    _append(metrics, *range(10, 100, 10))  # a failed earlier run's lines
    steps = _follow(ws, [
        lambda: None,
        lambda: metrics.unlink(),  # the trainer, starting fresh, deletes them
        lambda: _append(metrics, 1, 10, tail='{"step": 2'),  # a line half written
        lambda: _append(metrics, tail='0, "loss": 8.8}\n'),  # ... and finished
        lambda: _append(metrics, 30),
    ])
    assert steps == [1, 10, 20, 30]


def test_progress_of_a_fresh_run_sees_a_new_file_it_did_not_see_deleted(ws):
    metrics = ws.out_dir(V) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    _append(metrics, *range(10, 100, 10))

    def replace_at_once():  # deleted and created between two polls (the inode may be reused)
        metrics.unlink()
        _append(metrics, 1)

    assert _follow(ws, [lambda: None, replace_at_once, lambda: _append(metrics, 10)]) == [1, 10]


def test_progress_of_a_resumed_run_shows_where_it_resumed_not_the_history(ws):
    metrics = ws.out_dir(V) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    _append(metrics, 1, *range(10, 100, 10))  # killed after step 90; the newest checkpoint is step 50

    def trainer_resumes():  # the trainer's own truncation, then its first new line
        tracking.MetricsFile.truncate_after(metrics, 50)
        _append(metrics, 60)

    steps = _follow(ws, [lambda: None, trainer_resumes, lambda: _append(metrics, 70), lambda: _append(metrics, 80)],
                    resume=True)
    assert steps == [60, 70, 80]


def test_detach_stop_resume_finishes(gitws):
    make(gitws, steps=150, extra=["save_interval=10"])
    r = run_exp("run", "0.1.0", "--detach", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    assert "exp stop 0.1.0" in r.stdout
    pid = int((gitws.out_dir("0.1.0") / "run.pid").read_text())
    assert os.getsid(pid) == pid  # its own session: closing the terminal does not reach it
    # a second run of a running version is refused
    second = run_exp("run", "0.1.0", cwd=gitws.root)
    assert second.returncode == 1 and "already running" in second.stderr
    ckpts = gitws.out_dir("0.1.0") / "checkpoints"
    for _ in range(1500):  # wait (a guard of 5 minutes, not a timing) until a checkpoint exists
        if list(ckpts.glob("*.pt")):
            break
        time.sleep(0.2)
    assert list(ckpts.glob("*.pt")), (gitws.out_dir("0.1.0") / "run.log").read_text()
    status = json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert status[0]["status"] == "running" and status[0]["step"] is not None
    stopped = run_exp("stop", "0.1.0", cwd=gitws.root)
    assert stopped.returncode == 0, stopped.stderr
    assert "interrupted" in stopped.stdout
    rec = record(gitws)
    assert rec.status == "interrupted"
    last_step = rec.meta["run"].get("last_step")
    assert last_step is not None and 10 <= last_step < 150, rec.meta["run"]
    # stop, look, resume: a partial analysis of the interrupted run says it is partial ...
    looked = run_exp("analyze", "0.1.0", "--json", cwd=gitws.root)
    assert looked.returncode == 0, looked.stderr
    partial = json.loads(looked.stdout)["partial"]
    assert partial["run_status"] == "interrupted" and partial["resumable"] and partial["max_steps"] == 150
    shown = json.loads(run_exp("show", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert shown["status"] == "analyzed" and shown["partial"]["run_status"] == "interrupted"
    assert all(v["verdict"] == "inconclusive" for v in shown["verdicts"])  # nothing is judged on half a run
    assert "部分分析" in record(gitws).block("ai", "analysis").text
    # ... and the run goes on from its checkpoint
    resumed = run_exp("run", "0.1.0", "--resume", cwd=gitws.root)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rec = record(gitws)
    assert rec.status == "analyzed" and rec.meta["run"]["status"] == "finished" and rec.meta["run"]["resumed"]
    assert "partial" not in rec.meta["analysis"]  # analysed again when it finished: whole now
    again = run_exp("run", "0.1.0", "--resume", cwd=gitws.root)  # a finished run has nothing to resume
    assert again.returncode == 1 and "its run finished" in again.stderr and len(again.stderr.splitlines()) == 1
    steps = [json.loads(line)["step"] for line in (gitws.out_dir("0.1.0") / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 150  # no step logged twice across the resume


def test_status_marks_a_dead_run_interrupted(gitws):
    make(gitws, steps=400)
    r = run_exp("run", "0.1.0", "--detach", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    pid = int((gitws.out_dir("0.1.0") / "run.pid").read_text())
    for _ in range(600):
        if (gitws.out_dir("0.1.0") / "metrics.jsonl").exists():
            break
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)  # nothing gets to finalize
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    rows = json.loads(run_exp("status", "0.1.0", "--json", cwd=gitws.root).stdout)
    assert rows[0]["status"] == "interrupted" and "died without finalizing" in record(gitws).meta["run"]["error"]


def test_torchrun_backend_with_two_cpu_processes(gitws):
    make(gitws, steps=10)
    r = run_exp("run", "0.1.0", "--backend", "torchrun", "--nproc", "2", cwd=gitws.root)
    assert r.returncode == 0, r.stdout + r.stderr
    script = gitws.run_script_path("0.1.0").read_text()
    assert "torchrun --standalone --nproc-per-node 2" in script  # torchrun binds its own free port
    assert "socket" not in script and "MASTER_PORT" not in script  # no bind-then-close
    rec = record(gitws)
    assert rec.status == "analyzed" and rec.meta["run"]["status"] == "finished" and rec.meta["run"]["processes"] == 2
    summary = json.loads((gitws.out_dir("0.1.0") / "summary.json").read_text())
    assert summary["steps"] == 10


def test_multinode_flags_are_rendered(gitws):
    make(gitws)
    r = run_exp("run", "0.1.0", "--dry-run", "--backend", "torchrun", "--nproc", "2", "--nnodes", "2", "--node-rank", "1",
                "--master-addr", "node0", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    assert "--nnodes 2 --node-rank 1 --nproc-per-node 2 --master-addr node0 --master-port " in r.stdout
    port = int(r.stdout.split("--master-port ")[1].split(")")[0])
    assert 20000 <= port < 40000  # a fixed port all nodes agree on
    assert "_start" not in r.stdout and "_finalize" not in r.stdout  # node 1 never touches the record
    bad = run_exp("run", "0.1.0", "--dry-run", "--nnodes", "2", "--node-rank", "2", "--backend", "torchrun", cwd=gitws.root)
    assert bad.returncode == 2 and "--node-rank" in bad.stderr


def test_the_dirty_check_looks_at_code_not_at_exps_own_files_and_the_run_records_the_trainer_code(gitws):
    make(gitws)  # a record, its state and (after set) its parameter table: exp's own files, uncommitted
    r = run_exp("doctor", "0.1.0", "--json", cwd=gitws.root)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["git"]["ok"] is True, checks["git"]  # records wait for review: they do not make the code dirty
    (gitws.root / "my_helper.py").write_text("def f():\n    return 1\n")  # code, untracked
    checks = {c["name"]: c for c in json.loads(run_exp("doctor", "0.1.0", "--json", cwd=gitws.root).stdout)["checks"]}
    assert checks["git"]["ok"] is None and "outside exp's records" in checks["git"]["detail"]
    # the trainer code that runs is this checkout (the editable install the tests use)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "model", "expkit"],
                                capture_output=True, text=True).stdout.strip())
    assert str(REPO) in checks["code"]["detail"] and head[:12] in checks["code"]["detail"]
    assert (checks["code"]["ok"] is None) == dirty
    r = run_exp("run", "0.1.0", cwd=gitws.root)
    assert r.returncode == 0, r.stderr
    run = record(gitws).meta["run"]
    assert run["code"]["location"] == str(REPO) and run["code"]["git_sha"] == head and run["code"]["dirty"] == dirty
    assert run["git_dirty"] is True  # the helper file
    diff = (gitws.out_dir("0.1.0") / "git.diff").read_text()
    assert "b/my_helper.py" in diff and "+    return 1" in diff  # untracked files are in the diff
    assert "experiment_0.1.0" not in diff  # exp's own files are not
    assert (gitws.out_dir("0.1.0") / "code.diff").exists() == dirty
