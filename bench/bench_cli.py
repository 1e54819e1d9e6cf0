"""Cold-start cost of the CLI: medians of fresh processes, and their ratio to `python -c pass`.

Targets on a 2-core machine: `exp --help` ≤ 0.15 s, `exp list` over 1,000 records ≤ 0.35 s.

    python bench/bench_cli.py [--records 1000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXP = str(Path(sys.executable).with_name("exp"))


def median_wall(cmd: list[str], repeats: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_workspace(n: int) -> Path:
    from expkit import store
    from expkit.version import Version
    from expkit.workspace import Workspace, scaffold

    root = Path(tempfile.mkdtemp(prefix="exp-bench-")) / "ws"
    scaffold(root)
    ws = Workspace(root)
    template = store.create(ws, Version.parse("1.0.0"), description="benchmark record").path.read_text(encoding="utf-8")
    for i in range(1, n):
        v = f"1.{i // 10 + 1}.{i % 10}"
        (root / "experiment" / f"experiment_{v}.md").write_text(
            template.replace('version: "1.0.0"', f'version: "{v}"', 1), encoding="utf-8"
        )
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    root = make_workspace(args.records)
    env = {**os.environ, "EXP_ROOT": str(root)}
    try:
        base = median_wall([sys.executable, "-c", "pass"], args.repeats, env)
        rows = [
            ("python -c pass", base, None),
            ("exp --help", median_wall([EXP, "--help"], args.repeats, env), 0.15),
            (f"exp list ({args.records} records)", median_wall([EXP, "list"], args.repeats, env), 0.35),
            (f"exp list --json ({args.records})", median_wall([EXP, "list", "--json"], args.repeats, env), 0.35),
            ("exp show 1.0.0", median_wall([EXP, "show", "1.0.0"], args.repeats, env), None),
            ("exp tree", median_wall([EXP, "tree"], args.repeats, env), None),
        ]
    finally:
        shutil.rmtree(root.parent)
    print(f"cold-start medians over {args.repeats} runs, {os.cpu_count()} cores")
    print(f"{'command':34} {'median s':>9} {'× python':>9} {'target s':>9}  ok")
    for name, t, target in rows:
        ok = "" if target is None else ("yes" if t <= target else "NO")
        print(f"{name:34} {t:9.3f} {t / base:9.2f} {target if target else '':>9}  {ok}")


if __name__ == "__main__":
    main()
