"""Cold-process wall time of `exp` commands: this tree against an older revision, in one run.

Issue 13's speed contract: ``exp --help``, ``exp list`` (1,000 records), ``exp show``,
``exp analyze`` and ``exp report`` are no slower than before the restructuring (6c676cc).

The old revision is checked out with ``git worktree add --detach`` into a temporary directory
(removed at the end). Each side — "old" (that revision) and "new" (this working tree, uncommitted
changes included) — builds its own workspace with its own code (bench/make_workspace.py run with
``PYTHONPATH=<its tree>``): two records written, run and analysed through its API, copied up to
``--records``. Before anything is timed, each side's workspace is checked: ``exp list --json``
lists every record as analysed, ``exp show`` of the copies timed below leaves their files as
they were, says nothing on stderr and warns of nothing, and ``exp report`` writes a row per record.

Every command then runs as a fresh ``python -m expkit.cli`` process (the same interpreter, with
``PYTHONPATH`` set to that side's tree; both trees byte-compiled first), once untimed per side,
then ``--repeats`` times per side, old and new interleaved (old, new, new, old, ...) so that the
machine's drift hits both. The table gives the medians, their ratio, the median of the ratios of
the pairs run back to back, and a verdict: "no slower" when new ≤ old; "within noise" when the
new median is inside the old repeats' spread (≤ their upper quartile); else "SLOWER". The first
row, ``python -c pass`` run as both sides, shows how far two identical commands drift apart.

    python bench/bench_cli.py [--against 6c676cc] [--repeats 9] [--records 1000] [--steps 10000]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
SIDES = ("old", "new")


@dataclass
class Side:
    name: str
    tree: Path  # the checkout whose expkit this side runs
    ws: Path  # the workspace it built
    info: dict = field(default_factory=dict)  # what make_workspace.py printed

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.tree), "EXP_ROOT": str(self.ws)}

    def exp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``exp ARGS`` in this side's workspace, output captured."""
        done = subprocess.run([PY, "-m", "expkit.cli", *args], cwd=self.ws, env=self.env(), capture_output=True, text=True)
        if check and done.returncode != 0:
            raise SystemExit(f"{self.name}: `exp {' '.join(args)}` failed ({done.returncode}):\n{done.stderr.strip()}")
        return done


@dataclass
class Bench:
    label: str
    args: list[str]  # after `python -m expkit.cli`
    before: str | None = None  # "drop-cache": out/.cache removed before each run (untimed)
    command: list[str] | None = None  # instead of exp ARGS (the control)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def build(side: Side, run_dir: Path, records: int) -> None:
    done = subprocess.run([PY, str(HERE / "make_workspace.py"), str(side.ws), "--run", str(run_dir), "--records", str(records)],
                          env={**os.environ, "PYTHONPATH": str(side.tree)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side.name}: make_workspace.py failed:\n{done.stderr.strip()}")
    side.info = json.loads(done.stdout)
    where = Path(side.info["expkit"]).resolve()
    if where != (side.tree / "expkit").resolve():
        raise SystemExit(f"{side.name}: the generator imported expkit from {where}, not from {side.tree}")


def _digests(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def verify(side: Side, records: int) -> None:
    """A broken workspace (a copy the code cannot read, a command that fails early) must not
    produce a fast time: check what the timed commands will see."""
    where = subprocess.run([PY, "-c", "import expkit; print(expkit.__file__)"], cwd=side.ws, env=side.env(),
                           capture_output=True, text=True, check=True).stdout.strip()
    if Path(where).resolve().parent != (side.tree / "expkit").resolve():
        raise SystemExit(f"{side.name}: `python -m expkit.cli` would import expkit from {where}, not from {side.tree}")
    listed = json.loads(side.exp("list", "--json").stdout)
    statuses = {r["status"] for r in listed}
    if len(listed) != records or statuses != {"analyzed"}:
        raise SystemExit(f"{side.name}: exp list --json gives {len(listed)} records with statuses {statuses}; "
                         f"expected {records}, all analyzed")
    for version in (side.info["no_parent"], side.info["with_parent"]):
        files = sorted(side.ws.glob(f"experiment/experiment_{version}.*"))
        before = _digests(files)
        shown = side.exp("show", version)
        if shown.stderr.strip() or not shown.stdout.startswith(f"experiment {version}"):
            raise SystemExit(f"{side.name}: exp show {version} printed {shown.stderr.strip() or shown.stdout[:200]!r}")
        if _digests(files) != before:
            raise SystemExit(f"{side.name}: exp show {version} rewrote its files: the copy was not as the tool writes it")
        info = json.loads(side.exp("show", version, "--json").stdout)
        if info.get("warnings") or info.get("version") != version or info.get("status") != "analyzed":
            raise SystemExit(f"{side.name}: exp show {version} --json: version {info.get('version')}, "
                             f"status {info.get('status')}, warnings {info.get('warnings')}")
    side.exp("report")
    with open(side.ws / "experiment" / "experiment_tracker.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != records:
        raise SystemExit(f"{side.name}: exp report wrote {len(rows)} rows, expected {records}")
    side.exp("analyze", side.info["analyze"])  # the analysis timed below is then a re-analysis on both sides


def run_once(side: Side, bench: Bench) -> float:
    if bench.before == "drop-cache":
        shutil.rmtree(side.ws / "out" / ".cache", ignore_errors=True)
    cmd = bench.command or [PY, "-m", "expkit.cli", *bench.args]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=side.ws, env=side.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{side.name}: `{' '.join(cmd[2:])}` failed ({done.returncode}):\n{done.stderr.decode().strip()}")
    return elapsed


def measure(sides: dict[str, Side], bench: Bench, repeats: int) -> dict[str, list[float]]:
    for name in SIDES:  # untimed: the first run after a change (a cache written, a file read from disk)
        run_once(sides[name], bench)
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    for i in range(repeats):
        for name in SIDES if i % 2 == 0 else SIDES[::-1]:
            times[name].append(run_once(sides[name], bench))
    return times


def verdict(old: list[float], new: list[float]) -> tuple[float, float, float, str]:
    """(ratio of medians, median of paired ratios, old's noise as a fraction, verdict)."""
    old_med, new_med = statistics.median(old), statistics.median(new)
    q3 = statistics.quantiles(old, n=4)[2] if len(old) > 1 else old_med
    noise = q3 / old_med - 1
    ratio = new_med / old_med
    paired = statistics.median(n / o for o, n in zip(old, new))
    if ratio <= 1:
        word = "no slower"
    elif new_med <= q3:
        word = "within noise"
    else:
        word = "SLOWER"
    return ratio, paired, noise, word


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--against", default="6c676cc", metavar="REF", help="the old revision (default: 6c676cc, before issue 13)")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs per command and side (default 9)")
    ap.add_argument("--records", type=int, default=1000, help="records in each workspace (default 1000)")
    ap.add_argument("--steps", type=int, default=10_000,
                    help="lines of the analysed run's metrics.jsonl (default 10000; bench_analysis.py's size is 100000)")
    ap.add_argument("--only", action="append", metavar="WORD",
                    help="time only the commands whose label contains WORD (repeatable), e.g. --only analyze")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (workspaces, old checkout)")
    args = ap.parse_args()
    if args.records < 14:
        ap.error("--records must be at least 14 (two families of records)")

    old_sha = git("rev-parse", "--short", args.against)
    new_desc = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain", "--", "expkit") else "")
    tmp = Path(tempfile.mkdtemp(prefix="exp-bench-cli-"))
    old_tree = tmp / "old-checkout"
    git("worktree", "add", "--detach", str(old_tree), args.against)
    try:
        load0 = os.getloadavg()
        sides = {"old": Side("old", old_tree, tmp / "ws-old"), "new": Side("new", REPO, tmp / "ws-new")}
        for side in sides.values():  # PYTHONDONTWRITEBYTECODE may be set: without .pyc every run compiles
            subprocess.run([PY, "-m", "compileall", "-q", str(side.tree / "expkit")], check=True)
        sys.path.insert(0, str(HERE))
        from bench_analysis import make_run

        run_dir = tmp / "run"
        make_run(run_dir, args.steps)
        t = time.perf_counter()
        for side in sides.values():
            build(side, run_dir, args.records)
            verify(side, args.records)
        built = time.perf_counter() - t
        info = sides["new"].info
        root, child, target = info["no_parent"], info["with_parent"], info["analyze"]
        n = f"{args.records:,}"
        benches = [
            Bench("(control) python -c pass", [], command=[PY, "-c", "pass"]),
            Bench("exp --help", ["--help"]),
            Bench(f"exp list ({n} records)", ["list"]),
            Bench(f"exp list --json ({n})", ["list", "--json"]),
            Bench(f"exp show {root} (no parent)", ["show", root]),
            Bench(f"exp show {child} (with parent)", ["show", child]),
            Bench(f"exp analyze {target} ({args.steps:,} steps)", ["analyze", target]),
            Bench(f"exp report ({n}), cold", ["report"], before="drop-cache"),
            Bench(f"exp report ({n}), warm", ["report"]),
            Bench(f"exp tree ({n}), warm", ["tree"]),
        ]
        if args.only:
            benches = [b for b in benches if b.command or any(w in b.label for w in args.only)]
        results = []
        for b in benches:
            load = os.getloadavg()[0]  # another process on a 2-core machine shows in every column
            results.append((b, load, measure(sides, b, args.repeats)))
        load1 = os.getloadavg()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"old = {args.against} ({old_sha}, api: {sides['old'].info['api']}); "
          f"new = {REPO} ({new_desc}, api: {info['api']})")
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores; {args.records:,} records per side, built and "
          f"checked in {built:.0f} s; median of {args.repeats} fresh processes per side, interleaved")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load0)} at the start, "
          f"{', '.join(f'{x:.2f}' for x in load1)} at the end\n")
    head = f"{'command':36} {'load':>5} {'old s':>7} {'new s':>7} {'new/old':>8} {'paired':>7} {'noise':>7}  verdict"
    print(head)
    print("-" * len(head))
    for bench, load, times in results:
        ratio, paired, noise, word = verdict(times["old"], times["new"])
        if bench.command:
            word = "control: the same command on both sides"
        print(f"{bench.label:36} {load:5.2f} {statistics.median(times['old']):7.3f} {statistics.median(times['new']):7.3f} "
              f"{ratio:8.2f} {paired:7.2f} {noise:+7.1%}  {word}")
    print("\nload: the 1-minute load average as the command's runs began; new/old: ratio of the medians;")
    print("paired: median of new/old over the pairs run back to back;")
    print("noise: the old repeats' upper quartile over their median (new within it: 'within noise').")


if __name__ == "__main__":
    main()
