"""Cold-process wall time of a group's analysis: `exp analyze PARENT` over 50 members × 3 replicates.

Issue 15's speed point: the group's analysis over 50 members with 3 replicates each (synthetic
metrics) takes ≤ 2 s in a fresh process.

Set-up (not timed): a workspace made by the real scaffold; a parent ``1.1.0`` and 50 members
``1.1.k`` created through the API (``lifecycle.create`` --from the parent, ``group``/``changes``
set through ``records.update``, ``replicates=3``); each member's run begins (``runner.begin``),
leaves one trainer output per replicate in ``out/experiment_V/r{i}/`` (metrics.jsonl with
``--steps`` lines, summary.json, status.json) and ends through ``runner.start_replicate`` and
``runner.conclude(..., replicate=i)`` (finalize and the member's own analysis), as its run
script's steps would. The parent's expected result names
members (``- val_loss@1.1.2 < val_loss@1.1.1`` ...).

Timed: ``python -m expkit.cli analyze 1.1.0 --json`` as a fresh process, ``--repeats`` times
(the first untimed); the median and the spread are printed, with the machine's load average.
The machine this was written on is shared: the figure is indicative.

    python bench/bench_group.py [--members 50] [--replicates 3] [--steps 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


def build(root: Path, members: int, replicates: int, steps: int) -> None:
    sys.path.insert(0, str(REPO))
    os.environ["EXP_ROOT"] = str(root)
    from expkit import lifecycle, records, runner
    from expkit.record import Record
    from expkit.script import LaunchOptions
    from expkit.version import Version
    from expkit.workspace import Workspace, scaffold

    scaffold(root)
    ws = Workspace.find(root)
    parent = Version.parse("1.1.0")
    human = {"goal": "Sweep the learning rate.", "hypothesis": "A middle learning rate is best.",
             "expected": "- val_loss@1.1.2 < val_loss@1.1.1\n- tokens_per_s@1.1.3 >= tokens_per_s@1.1.1 * 0.9\n",
             "focus": "The loss curves."}

    def fill(path: Path, sections: dict[str, str]) -> None:
        rec = Record.read(path)
        for name, text in sections.items():
            rec.set_human(name, text)
        path.write_text(rec.render(), encoding="utf-8")

    rec = lifecycle.create(ws, parent, description="lr sweep", lang="en")
    fill(rec.path, human)
    lifecycle.set_config(ws, parent, [f"max_steps={steps}", "warmup_steps=2"])
    rng = random.Random(0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for k in range(1, members + 1):
        v = Version.parse(f"1.1.{k}")
        lr = 1e-4 * (1.1 ** k)
        rec = lifecycle.create(ws, v, parent=parent, description=f"lr {lr:.3g}", lang="en")
        fill(rec.path, {**human, "expected": "- val_loss < 5.5\n- tokens_per_s >= 500\n"})
        lifecycle.set_config(ws, v, [f"learning_rate={lr:.6g}", f"replicates={replicates}", f"max_steps={steps}",
                                     "warmup_steps=2"])
        with records.update(ws, v) as r:
            r.meta["group"] = str(parent)
            r.meta["changes"] = {"learning_rate": float(f"{lr:.6g}")}
        lifecycle.check_record(ws, v)
        runner.begin(ws, v, LaunchOptions().check(), pid=dead.pid)
        out = ws.out_dir(v)
        center = 5.0 + 0.3 * math.cos(k / 8)
        for i in range(replicates):
            sub = out / f"r{i}"
            sub.mkdir(parents=True, exist_ok=True)  # runner.begin made it, with the replicate's config.json
            val = center + rng.gauss(0, 0.03)
            tps = 1000 + rng.gauss(0, 20)
            lines = [{"step": s, "loss": 8.0 - 3.0 * s / steps + (val - 5.0), "lr": lr, "grad_norm": 1.0,
                      "tokens_per_s": tps, "tokens_seen": 256 * s, "elapsed_s": 256 * s / tps,
                      **({"val_loss": val + 0.2 * (steps - s) / steps} if s % 50 == 0 else {})} for s in range(1, steps + 1)]
            (sub / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            (sub / "summary.json").write_text(json.dumps({"status": "finished", "steps": steps, "val_loss": val,
                                                          "best_val_loss": val, "final_loss": lines[-1]["loss"],
                                                          "tokens_per_s": tps, "wall_s": 256 * steps / tps,
                                                          "tokens_seen": 256 * steps}))
            (sub / "status.json").write_text(json.dumps({"status": "finished", "step": steps}))
        # each replicate starts and ends as its script's `exp _start/_finalize V --replicate i` would
        os.environ["EXP_RUN_TOKEN"] = records.load(ws, v).meta["run"]["token"]
        for i in range(replicates):
            runner.start_replicate(ws, v, LaunchOptions(), i, pid=dead.pid)
        del os.environ["EXP_RUN_TOKEN"]
        for i in range(replicates):
            record, _, why = runner.conclude(ws, v, 0, replicate=i)
        assert record.status == "analyzed", why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_group_")) / "ws"
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "EXP_ROOT": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "--_build", str(root), str(args.members), str(args.replicates), str(args.steps)],
                   env=env, check=True)
    print(f"set-up: {args.members} members × {args.replicates} replicates, {args.steps} steps each, "
          f"in {time.perf_counter() - t0:.1f} s ({root})")
    cmd = [sys.executable, "-m", "expkit.cli", "analyze", "1.1.0", "--json"]
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"exp analyze failed: {proc.stderr}")
        if i == 0:
            result = json.loads(proc.stdout)
            assert len(result["members"]) == args.members and not result["partial"], result.get("pending")
            assert all(m["n"] == args.replicates for m in result["members"])
            continue
        times.append(elapsed)
    load = os.getloadavg()
    med = statistics.median(times)
    print(f"exp analyze 1.1.0 (fresh process), {args.repeats} runs: median {med:.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}); target {TARGET_S:.1f} s → ratio {med / TARGET_S:.2f}")
    print(f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs: a shared machine, "
          "the figure is indicative")
    if not args.keep:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_build":
        build(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
