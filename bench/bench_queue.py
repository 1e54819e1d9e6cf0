"""Scheduling overhead of the run queue: 8 tiny members (20 steps) with ``--parallel 2`` on the CPU,
against the same runs started back to back by hand, two at a time, each with 1 thread.

Target: the queue takes ≤ 5 % more wall time than by hand. Both sides run the real ``exp``
(record bookkeeping, the run script, the trainer, the automatic analysis): by hand is two
shells each running ``OMP_NUM_THREADS=1 exp run V`` for its four members one after another;
the queue is one ``exp run PARENT --members --parallel 2`` (which gives each run cores / 2
threads). Each repeat uses fresh workspaces. A loaded machine moves both sides; the ratio of
medians is what to read. It measures the expkit of the tree it lives in (``bench/..``).

    python bench/bench_queue.py [--members 8] [--steps 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from expkit import lifecycle, records  # noqa: E402
from expkit.record import Record  # noqa: E402
from expkit.version import Version  # noqa: E402
from expkit.workspace import Workspace, scaffold  # noqa: E402

TINY = ["hidden_size=64", "max_seq_len=64", "batch_size=8", "log_interval=5", "eval_interval=10", "eval_batches=2",
        "save_interval=10", "warmup_steps=5", "sample_max_new_tokens=8"]
FILLED = {"goal": "bench", "hypothesis": "bench", "expected": "- val_loss < 20\n", "focus": "bench"}
EXP = [sys.executable, "-m", "expkit.cli"]


def make_workspace(root: Path, members: int, steps: int) -> list[str]:
    """A group 1.1.0 with ``members`` members, each a different learning rate."""
    scaffold(root)
    os.environ["EXP_ROOT"] = str(root)
    ws = Workspace.find(root)
    parent = Version.parse("1.1.0")
    versions = []
    for k in range(members + 1):
        v = Version.parse(f"1.1.{k}")
        lifecycle.create(ws, v, parent=parent if k else None, description=f"bench {k}")
        rec = Record.read(ws.record_path(v))
        for name, text in FILLED.items():
            rec.set_human(name, text)
        ws.record_path(v).write_text(rec.render(), encoding="utf-8")
        lifecycle.set_config(ws, v, [*TINY, f"max_steps={steps}", f"learning_rate={0.003 - 0.0001 * k}"])
        if k:
            with records.update(ws, v) as r:
                r.meta["group"], r.meta["changes"] = "1.1.0", {"learning_rate": 0.003 - 0.0001 * k}
            versions.append(str(v))
    return versions


def env_for(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "EXP_ROOT": str(root), "PYTHONPATH": str(REPO), **extra}


def by_hand(root: Path, versions: list[str]) -> float:
    """Two shells, each running its half back to back with one thread."""
    halves = [versions[0::2], versions[1::2]]
    codes: list[int] = []

    def shell(vs: list[str]) -> None:
        for v in vs:
            codes.append(subprocess.run([*EXP, "run", v], cwd=root, env=env_for(root, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
                                        capture_output=True).returncode)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=shell, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert codes == [0] * len(versions), f"a run by hand failed: {codes}"
    return wall


def queued(root: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*EXP, "run", "1.1.0", "--members", "--parallel", "2"], cwd=root, env=env_for(root), capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("EXP_DATA_CACHE", tempfile.mkdtemp(prefix="bench-queue-data-"))
    hand, queue = [], []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        for i in range(args.repeats):
            a, b = Path(tmp) / f"hand{i}", Path(tmp) / f"queue{i}"
            versions = make_workspace(a, args.members, args.steps)
            make_workspace(b, args.members, args.steps)
            if i == 0:  # the corpus is tokenized once (EXP_DATA_CACHE), by a run outside the timings
                warm = Path(tmp) / "warm"
                make_workspace(warm, 1, args.steps)
                subprocess.run([*EXP, "run", "1.1.1"], cwd=warm, env=env_for(warm), capture_output=True)
            order = [("hand", lambda: by_hand(a, versions)), ("queue", lambda: queued(b))]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                (hand if name == "hand" else queue).append(fn())
            print(f"repeat {i + 1}: by hand {hand[-1]:.1f} s, queue {queue[-1]:.1f} s", flush=True)
    h, q = statistics.median(hand), statistics.median(queue)
    print(f"{args.members} members x {args.steps} steps, 2 at a time, cores {os.cpu_count()}: "
          f"by hand median {h:.1f} s, queue median {q:.1f} s, ratio {q / h:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
