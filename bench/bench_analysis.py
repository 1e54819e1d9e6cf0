"""Speed of the analysis and the report on large inputs: medians of repeated runs.

Targets (2-core machine): ``exp analyze`` on a 100,000-step metrics.jsonl ≤ 1 s; ``exp report``
over 1,000 records ≤ 2 s. Both are measured as the commands' core functions in-process
(``results.analyze``: compute, plots, record, its state and analysis.json written;
``reporting.report``: every record's state read, CSV, markdown and PNG written) and as the real ``exp`` command in a fresh
process (Python start-up and the numpy/Pillow imports included; expkit's own modules are
byte-compiled first, as any machine without PYTHONDONTWRITEBYTECODE does on the first run).
The pure stages are printed too (``metrics``, ``anomalies``, ``verdicts``, ``plots``, ``report``),
and the import cost of the pure computation layer (metrics, anomalies, verdicts, comparison,
diagnosis, samples, plots, report, evidence, citations), which must not pull numpy or Pillow.
It measures the expkit of the tree it lives in (``bench/..``), whatever else is installed.

    python bench/bench_analysis.py [--steps 100000] [--records 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
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

REPO = Path(__file__).resolve().parent.parent
#: expkit.analysis before issue 13, split by concept: what `import expkit.analysis` used to load
PURE_MODULES = ("metrics", "anomalies", "verdicts", "comparison", "diagnosis", "samples", "plots", "report",
                "evidence", "citations")


def make_run(out: Path, steps: int, eval_every: int = 1000) -> None:
    """A plausible run: exponential decay to 2.5 plus noise, warmup + cosine lr, one line per step."""
    rnd = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    t = 0.0
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for s in range(1, steps + 1):
            loss = 2.5 + 6.0 * math.exp(-s / (steps / 8)) + rnd.gauss(0, 0.03)
            lr = 3e-4 * min(1.0, s / 2000) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
            tps = 50000 * (1 + rnd.gauss(0, 0.03))
            t += 4096 / tps
            row = {"step": s, "loss": loss, "lr": lr, "grad_norm": 0.4 + rnd.random() * 0.2, "tokens_per_s": round(tps, 1),
                   "tokens_seen": s * 4096, "elapsed_s": round(t, 3)}
            if s % eval_every == 0:
                row["val_loss"] = loss + 0.05
            fh.write(json.dumps(row) + "\n")
    summary = {"status": "finished", "steps": steps, "final_loss": loss, "best_val_loss": loss + 0.05,
               "val_loss": loss + 0.05, "val_ppl": math.exp(loss + 0.05), "tokens_seen": steps * 4096, "wall_s": t,
               "tokens_per_s": steps * 4096 / t, "params": {"total": 25_000_000}, "peak_mem_mb": 2048.0}
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    samples = [{"prompt": "人生", "mode": "greedy", "completion": "的意义在于不断地学习与成长，" * 3},
               {"prompt": "The meaning of life", "mode": "sample", "completion": " is to learn and to grow " * 3}]
    (out / "samples.json").write_text(json.dumps({"samples": samples}, ensure_ascii=False), encoding="utf-8")


def make_records(n: int) -> list[dict]:
    rnd = random.Random(1)
    records = []
    for i in range(n):
        version = f"1.{i // 10}.{i % 10}"
        parent = f"1.{i // 10}.0" if i % 10 else (f"1.{i // 10 - 1}.0" if i else None)
        config = {"model_type": "model_original", "hidden_size": 128, "num_hidden_layers": 2, "max_seq_len": 128,
                  "batch_size": 16, "learning_rate": rnd.choice([1e-3, 2e-3, 3e-3]), "max_steps": 360,
                  "warmup_steps": rnd.choice([50, 100])}
        metrics = {"steps": 360, "final_loss": 5 + rnd.random(), "best_val_loss": 5 + rnd.random(),
                   "val_loss": 5 + rnd.random(), "val_ppl": 180.0, "tokens_seen": 737280,
                   "tokens_per_s": 3000 + rnd.random() * 1000, "wall_s": 240.0, "peak_mem_mb": 700.0,
                   "params": 1213056, "distinct_2": 0.5, "repetition_rate": 0.3}
        verdicts = [{"claim": "val_loss < 5.5", "verdict": rnd.choice(["confirmed", "refuted", "inconclusive"]),
                     "observed": metrics["val_loss"], "reference": 5.5}]
        records.append({"version": version, "status": "analyzed", "description": f"实验 {i}：学习率扫描",
                        "parent": parent, "baseline": "1.0.0", "config": config, "metrics": metrics,
                        "verdicts": verdicts})
    return records


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _env(**extra: str) -> dict[str, str]:
    """This tree's expkit first, for every process the benchmark starts."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def import_cost(repeats: int) -> tuple[float, float, bool]:
    pure = ", ".join(f"expkit.{m}" for m in PURE_MODULES)
    code = (f"import sys,time; t=time.perf_counter(); import {pure}; d=time.perf_counter()-t; "
            "print(d, 'numpy' in sys.modules or 'PIL' in sys.modules)")
    base = "import sys,time; t=time.perf_counter(); import expkit.claims, expkit.errors; print(time.perf_counter()-t, False)"
    ours, theirs, heavy = [], [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()).stdout.split()
        ours.append(float(out[0]))
        heavy |= out[1] == "True"
        theirs.append(float(subprocess.run([sys.executable, "-c", base], capture_output=True, text=True,
                                           check=True, env=_env()).stdout.split()[0]))
    return statistics.median(ours), statistics.median(theirs), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))  # this tree's expkit, not another checkout's editable install
    tmp = Path(tempfile.mkdtemp(prefix="exp-bench-analysis-"))
    try:
        run_all(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the 100k-line file is 18 MB


def run_all(tmp: Path, args: argparse.Namespace) -> None:
    from expkit import metrics as M
    from expkit import plots, report
    from expkit.anomalies import detect_anomalies
    from expkit.claims import parse_claims
    from expkit.verdicts import verdicts

    run = tmp / "run"
    make_run(run, args.steps)
    claims, _ = parse_claims("- val_loss < 3\n- best_val_loss <= parent - 0.01\n- tokens_per_s >= baseline * 0.9\n")
    ref = {"best_val_loss": 2.6, "tokens_per_s": 40000.0}
    size_mb = (run / "metrics.jsonl").stat().st_size / 1e6

    def analyze() -> None:
        m = M.load_metrics(run / "metrics.jsonl")
        table = M.summarize(run, m)
        detect_anomalies(m, args.steps)
        verdicts(claims, table, ref, ref, run_ok=True)

    m = M.load_metrics(run / "metrics.jsonl")
    table = M.summarize(run, m)
    stages = {
        "metrics.load_metrics": lambda: M.load_metrics(run / "metrics.jsonl"),
        "metrics.summarize (metrics given)": lambda: M.summarize(run, m),
        "anomalies.detect_anomalies": lambda: detect_anomalies(m, args.steps),
        "verdicts.verdicts": lambda: verdicts(claims, table, ref, ref, run_ok=True),
    }
    plots.plot_run(m, tmp / "warm.png")  # Pillow's first import and font load are not the plot's cost
    charts = {
        "plots.plot_run (with 1 overlay)": lambda: plots.plot_run(m, tmp / "run.png", overlays={"parent": m}),
        "plots.plot_compare (3 runs)": lambda: plots.plot_compare({"a": m, "b": m, "c": m}, tmp / "cmp.png"),
    }
    records = make_records(args.records)

    def report_core() -> None:
        rows = report.report_rows(records)
        (tmp / "tracker.csv").write_text(report.tracker_csv(rows), encoding="utf-8")
        report.render_report_md(rows, "zh")

    print(f"metrics.jsonl: {args.steps:,} lines, {size_mb:.1f} MB; {len(records):,} records; median of {args.repeats}")
    total = median_time(analyze, args.repeats)
    verdict = "ok" if total <= 1 else "SLOW"
    print(f"{'analysis (load+summarize+anomalies+verdicts)':48s} {total:7.3f} s   target ≤ 1 s   {verdict}")
    for name, fn in stages.items():
        print(f"  {name:46s} {median_time(fn, args.repeats):7.3f} s")
    fast = M._json_loads()
    if len(fast) > 1:  # orjson is there (it comes with swanlab): what the stdlib alone would cost
        M._json_loads = lambda: (json.loads,)
        stdlib = median_time(lambda: M.load_metrics(run / "metrics.jsonl"), args.repeats)
        M._json_loads = lambda: fast
        print(f"  {'load_metrics with the stdlib json only':46s} {stdlib:7.3f} s")
    for name, fn in charts.items():
        print(f"{name:48s} {median_time(fn, args.repeats):7.3f} s")
    rep = median_time(report_core, args.repeats)
    print(f"{'report core over records (rows+csv+md)':48s} {rep:7.3f} s")
    commands(tmp, run, records, args)
    ours, theirs, heavy = import_cost(max(3, args.repeats))
    print(f"{'import the pure layer (fresh process)':48s} {ours:7.3f} s   (claims+errors alone: {theirs:.3f} s)"
          f"   numpy/Pillow imported: {heavy}")
    print(f"  ({', '.join(PURE_MODULES)})")


def _workspace(root: Path):
    from expkit.workspace import Workspace, scaffold

    scaffold(root)
    return Workspace.find(root.resolve())


def _record(ws, version: str, parent: str | None, meta_update: dict) -> None:
    """A record as `exp new` writes it, then the state a run and an analysis leave."""
    from expkit import lifecycle, records
    from expkit.version import Version

    v = Version.parse(version)
    lifecycle.create(ws, v, parent=Version.parse(parent) if parent and ws.record_path(parent).exists() else None,
                     description=meta_update.pop("description", ""))
    with records.update(ws, v) as r:  # a benchmark's setup: the state set directly, no state machine
        r.meta.update(meta_update)
        r.set_human("expected", "- val_loss < 3\n- best_val_loss <= parent - 0.01\n")


def _exp(args: list[str], cwd: Path, repeats: int) -> float:
    env = _env(EXP_ROOT=str(cwd))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "expkit.cli", *args], cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def commands(tmp: Path, run: Path, records: list[dict], args: argparse.Namespace) -> None:
    from expkit import reporting, results, store
    from expkit.version import Version

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "expkit")], check=True)
    ws = _workspace(tmp / "ws-analyze")
    finished = {"status": "finished", "run": {"status": "finished", "exit_code": 0}}
    _record(ws, "1.0.0", None, dict(finished))
    shutil.copytree(run, ws.out_dir("1.0.0"))
    v = Version.parse("1.0.0")
    inproc = median_time(lambda: results.analyze(ws, v), args.repeats)
    cmd = _exp(["analyze", "1.0.0", "--json"], ws.root, args.repeats)
    print(f"\nexp analyze, {args.steps:,}-step metrics.jsonl, PNG included (target ≤ 1 s):")
    print(f"  {'results.analyze (in-process)':46s} {inproc:7.3f} s   {'ok' if inproc <= 1 else 'SLOW'}")
    print(f"  {'`exp analyze` (fresh process, imports included)':46s} {cmd:7.3f} s   {'ok' if cmd <= 1 else 'SLOW'}")

    # every record's state (and the front matter rendered from it) as big as a real analysis
    # leaves it (diagnosis, anomalies, references, ...)
    real = store.read_meta(ws, v)
    full_analysis, full_config, full_run = real["analysis"], real["config"], real.get("run") or {}
    ws = _workspace(tmp / "ws-report")
    t = time.perf_counter()
    for r in records:
        _record(ws, r["version"], r["parent"], {
            "description": r["description"], "status": "analyzed", "config": {**full_config, **r["config"]},
            "run": dict(full_run), "analysis": {**copy.deepcopy(full_analysis), "metrics": r["metrics"], "verdicts": r["verdicts"]},
        })
    made = time.perf_counter() - t
    cache = ws.cache_dir() / reporting.CACHE_FILE

    def cold(fn):
        cache.unlink(missing_ok=True)  # every record read: the first report of a workspace
        return fn()

    cold_in = median_time(lambda: cold(lambda: reporting.report(ws)), args.repeats)
    cold_cmd = statistics.median(cold(lambda: _exp(["report"], ws.root, 1)) for _ in range(args.repeats))
    warm_in = median_time(lambda: reporting.report(ws), args.repeats)
    warm_cmd = _exp(["report"], ws.root, args.repeats)
    tree = _exp(["tree"], ws.root, args.repeats)
    ok = lambda x: "ok" if x <= 2 else "SLOW"  # noqa: E731
    print(f"\nexp report over {len(records):,} records (made in {made:.0f} s; target ≤ 2 s):")
    print(f"  {'reporting.report, cold (no row cache)':46s} {cold_in:7.3f} s   {ok(cold_in)}")
    print(f"  {'`exp report`, cold, fresh process':46s} {cold_cmd:7.3f} s   {ok(cold_cmd)}")
    print(f"  {'reporting.report, rows cached':46s} {warm_in:7.3f} s   {ok(warm_in)}")
    print(f"  {'`exp report`, rows cached, fresh process':46s} {warm_cmd:7.3f} s   {ok(warm_cmd)}")
    print(f"  {'`exp tree`, rows cached, fresh process':46s} {tree:7.3f} s")


if __name__ == "__main__":
    main()
