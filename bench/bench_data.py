"""Data at scale: ``exp data prepare`` throughput, and the trainer's start-up and peak memory on
a large prepared corpus against the embedded one, in one run.

    python bench/bench_data.py [--mb 64] [--repeats 3]

1. A synthetic corpus of ``--mb`` MB of JSONL (the embedded corpus's documents, repeated with a
   counter so no two lines are equal) is prepared by ``python -m model.prepare`` with 1 and 2
   workers; tokens/s is the tool's own figure (reading, hashing, tokenizing and writing; the
   interpreter's start-up excluded).
2. The trainer (hidden 64, 2 layers, seq 64, batch 8, CPU, tracking off) runs 3 steps on the
   large prepared corpus and on the embedded corpus prepared the same way, alternately,
   ``--repeats`` times: start-up = from the process's start to its first metrics line (step 1),
   peak memory = the process's own peak RSS (``wait4``). Targets: large / small peak ≤ 1.2,
   start-up < 5 s.
3. Resume: the checkpoints after step 1 are removed and the run is resumed; start-up = from
   the start to its first new metrics line.
4. Imports alone: a process that imports ``model.train_pretrain`` as the trainer does and exits
   (without the interpreter's teardown), timed alternately with the above: what the interpreter
   needs before the trainer's own start-up (tokenizer, data mapping, model, optimizer, tracking)
   begins.

``--startup-only`` skips step 1's throughput runs (the corpus is prepared once, 2 workers) and
times the start-ups alone; ``--tracking offline`` times them with SwanLab's offline mirror on
(the default of a run), ``disabled`` (the default here) without it.

It measures the tree it lives in (``bench/..``). The issue asks for 1 GB; on a 2-core machine
that takes long, hence ``--mb``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}, "PYTHONPATH": str(REPO),
       "OMP_NUM_THREADS": "1"}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_seq_len=64,
            batch_size=8, warmup_steps=1, log_interval=1, eval_interval=1000, save_interval=1, keep_top_k=10,
            eval_batches=1, sample_max_new_tokens=2, max_steps=3, swanlab_mode="disabled", val_data_path="")


def synthetic(path: Path, mb: int) -> None:
    with gzip.open(REPO / "dataset" / "pretrain_train.jsonl.gz", "rt", encoding="utf-8") as src:
        texts = [json.loads(line)["text"] for line in src]
    target, size, i = mb * 2**20, 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while size < target:
            line = json.dumps({"text": f"{texts[i % len(texts)]} {i}"}, ensure_ascii=False) + "\n"
            out.write(line)
            size += len(line.encode())
            i += 1


def prepare(src: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "model.prepare", str(src), "--out", str(out), "--workers", str(workers),
                        "--val-fraction", "0.001", "--json"], env=ENV, capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        sys.exit(f"prepare failed: {r.stderr}")
    return json.loads(r.stdout)


def last_step(metrics: Path) -> int | None:
    try:
        lines = metrics.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def run_trainer(data: Path, out: Path, resume: bool = False, tracking: str = "disabled") -> tuple[float, float]:
    """(seconds from start to the first new metrics line, peak RSS MB of the process)."""
    cfg = out.with_suffix(".json")
    cfg.write_text(json.dumps({**TINY, "data_path": str(data), "swanlab_mode": tracking}))
    want = 2 if resume else 1
    args = [sys.executable, "-m", "model.train_pretrain", "--config", str(cfg), "--out-dir", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args + (["--resume"] if resume else []), env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while first is None:
        if last_step(out / "metrics.jsonl") == want and (out / "metrics.jsonl").stat().st_mtime > time.time() - (time.perf_counter() - t0):
            first = time.perf_counter() - t0
        elif proc.poll() is not None:
            sys.exit(f"the trainer exited with {proc.returncode} before its first step: {out}/train.log")
        time.sleep(0.01)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        sys.exit(f"the trainer failed ({status}): {out}/train.log")
    return first, usage.ru_maxrss / 1024


# The trainer's imports as ``python -m model.train_pretrain`` does them (``sys.argv[0]`` is "-m"
# while -m imports the package: see model/__init__.py), then an exit without the interpreter's
# teardown (freeing a million objects takes about a second the trainer does not spend before step 1).
IMPORTS = "import sys; sys.argv[0] = '-m'; import os, model.train_pretrain; os._exit(0)"


def time_imports() -> float:
    """Seconds from the start of a process that imports the trainer to its exit (teardown skipped)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=ENV, cwd=REPO, check=True)
    return time.perf_counter() - t0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=64, help="size of the synthetic corpus in MB (the issue's 1 GB: --mb 1024)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--startup-only", action="store_true", help="skip the prepare throughput runs: start-ups only")
    p.add_argument("--tracking", default="disabled", choices=("disabled", "offline"),
                   help="the trainer runs' swanlab_mode (default disabled)")
    args = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}  load: {load()}  cpus: {os.cpu_count()}  tracking: {args.tracking}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp_:
        tmp = Path(tmp_)
        src = tmp / "synthetic.jsonl"
        synthetic(src, args.mb)
        print(f"corpus: {src.stat().st_size / 2**20:.0f} MB of JSONL")
        if args.startup_only:
            m = prepare(src, tmp / "big", 2)
        else:
            rates = {}
            for workers in (1, 2):
                m = prepare(src, tmp / "big", workers)
                rates[workers] = m["tokens_per_s"]
                print(f"prepare workers={workers}: {m['tokens']:,} tokens in {m['seconds']:.1f} s = "
                      f"{m['tokens_per_s']:,.0f} tokens/s")
            print(f"prepare ratio workers 2/1: {rates[2] / rates[1]:.2f}")
        small = prepare(REPO / "dataset" / "pretrain_train.jsonl.gz", tmp / "small", 1)
        print(f"small (embedded) corpus: {small['tokens']:,} tokens; large: {m['tokens']:,} tokens "
              f"({m['tokens'] / small['tokens']:.0f}x)")
        start: dict[str, list[float]] = {"small": [], "large": []}
        peak: dict[str, list[float]] = {"small": [], "large": []}
        resume: list[float] = []
        imports: list[float] = []
        for r in range(args.repeats):
            for name in (("small", "large") if r % 2 == 0 else ("large", "small")):
                out = tmp / f"run_{name}_{r}"
                s, mb = run_trainer(tmp / ("big" if name == "large" else "small"), out, tracking=args.tracking)
                start[name].append(s)
                peak[name].append(mb)
                if name == "large":
                    for ckpt in (out / "checkpoints").glob("step_*"):
                        if not ckpt.name.startswith("step_00000001."):
                            ckpt.unlink()
                    resume.append(run_trainer(tmp / "big", out, resume=True, tracking=args.tracking)[0])
            imports.append(time_imports())
            print(f"  repeat {r + 1}: small {start['small'][-1]:.2f} s, large {start['large'][-1]:.2f} s, "
                  f"resume {resume[-1]:.2f} s, imports alone {imports[-1]:.2f} s  (load {load()})", flush=True)
        med = {k: statistics.median(v) for k, v in start.items()}
        mem = {k: statistics.median(v) for k, v in peak.items()}
        print(f"start-up to step 1 (median of {args.repeats}): small {med['small']:.2f} s, large {med['large']:.2f} s "
              f"(target < 5 s; spread small {min(start['small']):.2f}-{max(start['small']):.2f}, "
              f"large {min(start['large']):.2f}-{max(start['large']):.2f})")
        print(f"resume start-up to its first step (large, median): {statistics.median(resume):.2f} s "
              f"(spread {min(resume):.2f}-{max(resume):.2f})")
        print(f"imports alone (median): {statistics.median(imports):.2f} s; "
              f"the trainer's own start-up to step 1: small {med['small'] - statistics.median(imports):.2f} s, "
              f"large {med['large'] - statistics.median(imports):.2f} s")
        print(f"peak RSS (median): small {mem['small']:.0f} MB, large {mem['large']:.0f} MB")
        print(f"ratio peak large/small: {mem['large'] / mem['small']:.2f} (target <= 1.2)")
        print(f"ratio start-up large/small: {med['large'] / med['small']:.2f}")
        print(f"load at the end: {load()}")


if __name__ == "__main__":
    main()
