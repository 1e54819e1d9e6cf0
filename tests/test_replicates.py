"""Replicates: a record with ``replicates=N`` trains N times (seed, seed+1, ...) in r0/, r1/, ...

Real `exp run` subprocesses and real tiny trainings (hidden 64, 20 steps), two CPU slots.
"""

from __future__ import annotations

import json
import subprocess
import time

import psutil
from conftest import EXP, FILLED, fill, run_exp

from expkit import lifecycle, records
from expkit.script import LaunchOptions, render_script
from expkit.version import Version

TINY = ["hidden_size=64", "max_seq_len=64", "batch_size=8", "log_interval=5", "eval_interval=10", "eval_batches=2",
        "save_interval=10", "warmup_steps=5", "sample_max_new_tokens=8"]
PARENT = Version.parse("1.1.0")


def make_group(ws, members: dict[str, list[str]], steps: int = 20) -> None:
    """A group X.Y.0 and its members (``exp new M --from PARENT``, then group/changes written
    through the record API, as `exp sweep` will)."""
    lifecycle.create(ws, PARENT, description="group")
    fill(ws.record_path(PARENT), FILLED)
    lifecycle.set_config(ws, PARENT, [*TINY, f"max_steps={steps}"])
    for member, settings in members.items():
        v = Version.parse(member)
        lifecycle.create(ws, v, parent=PARENT, description=f"member {member}")
        fill(ws.record_path(v), FILLED)
        lifecycle.set_config(ws, v, [*TINY, f"max_steps={steps}", *settings])
        with records.update(ws, v) as rec:
            rec.meta["group"] = str(PARENT)
            rec.meta["changes"] = {k: v for k, v in (s.split("=", 1) for s in settings)}


def test_replicates_one_keeps_todays_script_and_several_need_a_replicate_index(ws, tmp_path):
    v = Version.parse("0.1.0")
    lifecycle.create(ws, v, description="d")
    fill(ws.record_path(v), FILLED)
    lifecycle.set_config(ws, v, [*TINY, "max_steps=20"])
    one = render_script(ws, records.load(ws, v), LaunchOptions())
    assert "EXP_REPLICATE" not in one and "--replicate" not in one
    lifecycle.set_config(ws, v, ["replicates=3"])
    three = render_script(ws, records.load(ws, v), LaunchOptions())
    assert 'OUT_DIR="$OUT_DIR/r$REPLICATE"' in three and '_finalize "$VERSION" --exit-code "$rc" --replicate "$REPLICATE"' in three
    # started by hand without a replicate index: one line, nothing runs, nothing is written
    script = tmp_path / "s.sh"
    script.write_text(three)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ws.root, timeout=30)
    assert r.returncode != 0 and "3 replicates" in r.stderr and "EXP_REPLICATE=0..2" in r.stderr
    assert not ws.out_dir(v).exists() and records.load(ws, v).status != "running"


def _trainer_env(ws, versions: list[str], limit_s: float = 120.0) -> dict[str, str] | None:
    """The environment of a running trainer of one of ``versions`` (psutil), or None."""
    deadline = time.monotonic() + limit_s  # bounds a failure only
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if "model.train_pretrain" in cmd and any(f"experiment_{v}/" in cmd for v in versions) and str(ws.root) in cmd:
                try:
                    return proc.environ()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        time.sleep(0.1)
    return None


def test_a_group_of_two_members_with_two_replicates_runs_to_the_end_on_two_cpu_slots(ws):
    make_group(ws, {"1.1.1": ["replicates=2", "learning_rate=0.002"], "1.1.2": ["replicates=2", "learning_rate=0.001"]})
    proc = subprocess.Popen([*EXP, "run", "1.1.0", "--members", "--parallel", "2"], cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    env = _trainer_env(ws, ["1.1.1", "1.1.2"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    # two side by side on two cores: each trainer gets cores / 2 threads through its environment
    cores = psutil.cpu_count() or 1
    assert env is not None and env.get("OMP_NUM_THREADS") == str(max(1, cores // 2)) == env.get("MKL_NUM_THREADS")
    assert "1.1.1/r0" in out and "1.1.2/r1" in out and "2 at a time" in out
    for member, lr in (("1.1.1", 2e-3), ("1.1.2", 1e-3)):
        v = Version.parse(member)
        rec = records.load(ws, v)
        run = rec.meta["run"]
        assert rec.status == "analyzed" and run["status"] == "finished", run
        assert [(r["index"], r["seed"], r["status"]) for r in run["replicates"]] == [(0, 1337, "finished"), (1, 1338, "finished")]
        for i, seed in ((0, 1337), (1, 1338)):
            rdir = ws.replicate_dir(v, i)
            cfg = json.loads((rdir / "config.json").read_text())
            assert cfg["seed"] == seed and cfg["learning_rate"] == lr
            assert (rdir / "metrics.jsonl").exists() and json.loads((rdir / "status.json").read_text())["status"] == "finished"
            assert json.loads((rdir / "summary.json").read_text())["steps"] == 20
        summary = json.loads((ws.out_dir(v) / "summary.json").read_text())
        assert summary["replicates"]["n"] == 2 and summary["replicates"]["seeds"] == [1337, 1338]
        a, b = (json.loads((ws.replicate_dir(v, i) / "summary.json").read_text())["final_loss"] for i in (0, 1))
        assert abs(summary["final_loss"] - (a + b) / 2) < 1e-9
        # the analysis judged the claims on the two replicates
        verdicts = rec.meta["analysis"]["verdicts"]
        assert verdicts and all(x["n"] == 2 and x["method"] == "student_t" for x in verdicts), verdicts
        assert len(rec.meta["analysis"]["replicates"]) == 2
    # the one hook, once, when the group's last member ended
    events = (ws.queue_dir() / "events.log").read_text()
    assert events.count("group 1.1.0: its last member ended") == 1
    # and the group's analysis was written by the last member's end, with both members in it
    parent = records.load(ws, Version.parse("1.1.0"))
    group = parent.meta["group_analysis"]
    assert parent.status == "analyzed" and not group["partial"]
    assert [(m["version"], m["n"]) for m in group["members"]] == [("1.1.1", 2), ("1.1.2", 2)]
    assert "<!-- exp:generated group -->" in ws.record_path(Version.parse("1.1.0")).read_text(encoding="utf-8")


def test_exp_check_no_longer_warns_that_replicates_train_once(ws):
    v = Version.parse("0.1.0")
    lifecycle.create(ws, v, description="d")
    fill(ws.record_path(v), FILLED)
    lifecycle.set_config(ws, v, ["replicates=3"])
    r = run_exp("check", "0.1.0", cwd=ws.root)
    assert "trains once" not in r.stdout + r.stderr and "replicates runner" not in r.stdout + r.stderr
