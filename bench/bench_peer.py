"""Ours against MiniMind's own trainer, same shape, tokenizer and corpus, interleaved in one run.

    python bench/bench_peer.py --minimind DIR                  # CPU: hidden 128, 2 layers, seq 128, batch 16
    python bench/bench_peer.py --minimind DIR --pairs 5 --steps 80 --threads 2
    python bench/bench_peer.py --minimind DIR --with-offline    # + ours with SwanLab offline, its cost
    python bench/bench_peer.py --minimind DIR --device cuda --hidden 512 --layers 8 --seq 512 --batch 32

DIR is a checkout of jingyaogong/minimind that you provide (nothing is downloaded); its
``trainer/train_pretrain.py`` runs unmodified, in a subprocess, from a scratch directory (so its
checkpoints land there, not in DIR), driven by this file (``--drive-minimind``), which:

- gives it our tokenizer (``init_model``'s ``tokenizer_path``) and a JSONL of the first
  ``steps * batch`` documents of the embedded corpus, so its one epoch is exactly ``--steps`` steps;
- records, through hooks that do not change its computation, each micro-batch's loss and its
  non-padding tokens (labels != -100) and the time of each optimizer step;
- supplies a minimal JSONL reader as ``datasets.load_dataset`` when the ``datasets`` package is
  not installed (it only loads the file, before training).

Ours is ``python -m model.train_pretrain`` on the same JSONL (packed: every token is a target),
the same shape, steps and peak learning rate, tracking off, one evaluation and one checkpoint after
the last step. Both are timed over steps 2..N (step 1 is warm-up): ours by its own clock
(metrics.jsonl ``train_s``, ``throughput``), MiniMind's by the optimizer-step hook. MiniMind pads
each document to the sequence length, so its non-padding tokens/s is lower than its tokens/s.

Each pair runs the two trainers back to back, the order alternating from pair to pair; the
ratios are ours / MiniMind within a pair, and the last two lines are their medians. The loss
comparison: each trainer's mean training loss over its last ``log_every`` steps when it has seen
as many non-padding tokens as MiniMind's whole run. Peak memory is each process's ru_maxrss
(CPU) or torch.cuda.max_memory_allocated (GPU). On a shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# -- the MiniMind side (runs in its own process) ---------------------------------------------


def _datasets_shim() -> Any:
    """``datasets.load_dataset('json', data_files=PATH, split='train')`` as a list of dicts."""
    import types

    mod = types.ModuleType("datasets")

    def load_dataset(kind: str, data_files: str, split: str = "train", **_: Any) -> list[dict[str, Any]]:
        assert kind == "json", kind
        opener = gzip.open if str(data_files).endswith(".gz") else open
        with opener(data_files, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def _any(*args: Any, **kwargs: Any) -> None:
        return None

    mod.load_dataset = load_dataset
    mod.Features = mod.Sequence = mod.Value = _any
    return mod


def drive_minimind(argv: list[str]) -> None:
    """Run MiniMind's trainer/train_pretrain.py with recording hooks; write the record as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--minimind", required=True, type=Path)
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--workdir", required=True, type=Path)
    args, theirs = p.parse_known_args(argv)
    import resource
    import runpy

    import torch

    mm = args.minimind.resolve()
    sys.path.insert(0, str(mm))
    try:
        import datasets  # noqa: F401
    except ImportError:
        sys.modules["datasets"] = _datasets_shim()
        print("bench: the datasets package is not installed; MiniMind reads the JSONL through the bench's reader",
              file=sys.stderr)
    import trainer.trainer_utils as tu
    from model.model_minimind import MiniMindForCausalLM

    init_model = tu.init_model

    def init_with_our_tokenizer(lm_config: Any, from_weight: str = "pretrain", tokenizer_path: str = "../model",
                                **kw: Any) -> Any:
        return init_model(lm_config, from_weight, tokenizer_path=args.tokenizer, **kw)

    tu.init_model = init_with_our_tokenizer

    micro: list[tuple[Any, Any, int]] = []  # (loss tensor, non-pad count tensor, all tokens) per micro-batch
    forward = MiniMindForCausalLM.forward

    def recording_forward(self: Any, input_ids: Any, *a: Any, labels: Any = None, **kw: Any) -> Any:
        out = forward(self, input_ids, *a, labels=labels, **kw)
        if labels is not None and self.training:
            micro.append((out.loss.detach(), (labels != -100).sum(), labels.numel()))
        return out

    MiniMindForCausalLM.forward = recording_forward
    cuda = torch.cuda.is_available() and "cpu" not in theirs
    marks: list[Any] = []  # per optimizer step: perf_counter (CPU) or a CUDA event
    steps_micro: list[int] = []  # micro-batches recorded when each optimizer step ended

    def on_step(optimizer: Any, *_: Any) -> None:
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append(ev)
        else:
            marks.append(time.perf_counter())
        steps_micro.append(len(micro))

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)
    work = args.workdir / "trainer"  # their relative paths (../checkpoints, ../out) land in workdir
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.argv = [str(mm / "trainer" / "train_pretrain.py"), *theirs]
    runpy.run_path(str(mm / "trainer" / "train_pretrain.py"), run_name="__main__")
    if cuda:
        torch.cuda.synchronize()
        times = [0.0] + [marks[0].elapsed_time(e) / 1000 for e in marks[1:]]
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        times = [t - marks[0] for t in marks]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    steps, start = [], 0
    for end in steps_micro:
        batch = micro[start:end]
        steps.append({"loss": sum(float(m[0]) for m in batch) / max(1, len(batch)),
                      "nonpad": sum(int(m[1]) for m in batch), "all": sum(m[2] for m in batch)})
        start = end
    args.record.write_text(json.dumps({"times": times, "steps": steps, "peak_mem_mb": peak}))


# -- the bench --------------------------------------------------------------------------------


def write_corpus(path: Path, n_docs: int) -> int:
    with gzip.open(REPO / "dataset" / "pretrain_train.jsonl.gz", "rt", encoding="utf-8") as src:
        lines = [line for _, line in zip(range(n_docs), src)]
    if len(lines) < n_docs:
        raise SystemExit(f"the embedded corpus has {len(lines)} documents; ask for fewer --steps or --batch")
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def run_ours(args: argparse.Namespace, corpus: Path, scratch: Path, tracking: str = "disabled") -> dict[str, Any]:
    from expkit.config import TrainConfig

    out = Path(tempfile.mkdtemp(prefix="ours-", dir=scratch))
    cfg = TrainConfig(
        # MiniMind's defaults for what the shape leaves open: 8 heads, 4 kv heads, its FFN width
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=math.ceil(args.hidden * math.pi / 64) * 64, model_type="model_original",
        max_seq_len=args.seq, batch_size=args.batch, accumulation_steps=1, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=0, log_interval=args.log_every, eval_interval=args.steps,
        save_interval=args.steps, eval_batches=2, sample_max_new_tokens=4, data_path=str(corpus),
        val_data_path="", swanlab_mode=tracking, device=args.device, dtype=args.dtype,
    )
    (out / "config.json").write_text(json.dumps(cfg.model_dump()), encoding="utf-8")
    cmd = [sys.executable, "-m", "model.train_pretrain", "--config", str(out / "config.json"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"our trainer failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    first, last = rows[0], rows[-1]
    assert first["step"] == 1 and last["step"] == args.steps, (first["step"], last["step"])
    from model.train_pretrain import throughput

    rate = throughput(last["tokens_seen"] - first["tokens_seen"], last["train_s"] - first["train_s"])
    # (tokens seen, mean loss of the log interval ending there)
    curve = [(r["tokens_seen"], r["loss"]) for r in rows if r["step"] > 1]
    return {"all": rate, "nonpad": rate, "peak_mem_mb": summary["peak_mem_mb"], "curve": curve}


def run_minimind(args: argparse.Namespace, corpus: Path, scratch: Path, tokenizer: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="minimind-", dir=scratch))
    record = work / "record.json"
    device = "cuda:0" if args.device.startswith("cuda") else "cpu"
    theirs = ["--hidden_size", str(args.hidden), "--num_hidden_layers", str(args.layers), "--max_seq_len", str(args.seq),
              "--batch_size", str(args.batch), "--accumulation_steps", "1", "--epochs", "1",
              "--learning_rate", str(args.lr), "--device", device, "--dtype", args.dtype if args.dtype != "auto"
              else "bfloat16", "--num_workers", str(args.workers), "--log_interval", str(args.log_every),
              "--save_interval", str(10 * args.steps), "--data_path", str(corpus), "--from_weight", "none",
              "--save_dir", str(work / "out")]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--drive-minimind", "--minimind", str(args.minimind),
           "--record", str(record), "--tokenizer", str(tokenizer), "--workdir", str(work), *theirs]
    proc = subprocess.run(cmd, cwd=work, env=_env(args.threads), capture_output=True, text=True)
    if proc.returncode != 0 or not record.exists():
        raise SystemExit(f"MiniMind's trainer failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    rec = json.loads(record.read_text())
    steps, times = rec["steps"], rec["times"]
    if len(steps) != args.steps:
        raise SystemExit(f"MiniMind ran {len(steps)} steps, expected {args.steps}")
    from model.train_pretrain import throughput

    window = times[-1] - times[0]
    nonpad = throughput(sum(s["nonpad"] for s in steps[1:]), window)
    every = throughput(sum(s["all"] for s in steps[1:]), window)
    curve, seen = [], 0
    for i, s in enumerate(steps):
        seen += s["nonpad"]
        if (i + 1) % args.log_every == 0:
            recent = steps[i + 1 - args.log_every: i + 1]
            curve.append((seen, sum(r["loss"] for r in recent) / len(recent)))
    return {"all": every, "nonpad": nonpad, "peak_mem_mb": rec["peak_mem_mb"], "curve": curve,
            "nonpad_total": seen}


def loss_at(curve: list[tuple[int, float]], tokens: int) -> tuple[float, int] | None:
    """The first logged (loss, tokens seen) at or past ``tokens`` non-padding tokens."""
    return next(((loss, seen) for seen, loss in curve if seen >= tokens), None)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive-minimind":
        drive_minimind(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minimind", required=True, type=Path, help="a checkout of jingyaogong/minimind")
    p.add_argument("--pairs", type=int, default=3, help="interleaved pairs (ours, MiniMind)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of both")
    p.add_argument("--log-every", type=int, default=10, help="both trainers' log interval")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each process (OMP_NUM_THREADS)")
    p.add_argument("--workers", type=int, default=0, help="MiniMind's DataLoader workers (0 on a small CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32 on CPU; bfloat16 on a GPU")
    p.add_argument("--with-offline", action="store_true",
                   help="also run ours with SwanLab offline in each pair: its cost against tracking off")
    args = p.parse_args()
    script = args.minimind / "trainer" / "train_pretrain.py"
    if not script.is_file():
        raise SystemExit(f"bench_peer: {script} not found; --minimind must name a checkout of jingyaogong/minimind")
    if args.hidden % 8:
        raise SystemExit("bench_peer: --hidden must be a multiple of 8 (MiniMind's 8 attention heads)")
    tokenizer = REPO / "dataset" / "tokenizer"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cpus")
    print(f"shape: hidden {args.hidden}, {args.layers} layers, seq {args.seq}, batch {args.batch}, {args.steps} steps, "
          f"device {args.device}, threads {args.threads}, {args.pairs} interleaved pairs; our tokenizer, "
          f"the first {args.steps * args.batch} documents of the embedded corpus; tracking off")
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        scratch = Path(tmp)
        corpus = scratch / "corpus.jsonl"
        write_corpus(corpus, args.steps * args.batch)
        offline_ratios: list[float] = []
        for i in range(args.pairs):
            names = ["ours", "minimind", *(["offline"] if args.with_offline else [])]
            order = names[i % len(names):] + names[: i % len(names)]  # rotated from pair to pair
            got = {name: run_ours(args, corpus, scratch) if name == "ours" else
                   run_ours(args, corpus, scratch, "offline") if name == "offline" else
                   run_minimind(args, corpus, scratch, tokenizer) for name in order}
            if args.with_offline:
                offline_ratios.append(got["offline"]["all"] / got["ours"]["all"])
                print(f"  ours with SwanLab offline: {got['offline']['all']:,.0f} tok/s "
                      f"({100 * (1 - offline_ratios[-1]):+.1f}% against tracking off)")
            ours, mm = got["ours"], got["minimind"]
            pairs.append((ours, mm))
            print(f"pair {i + 1} ({' then '.join(order)}): ours {ours['all']:,.0f} tok/s | MiniMind {mm['all']:,.0f} "
                  f"tok/s, {mm['nonpad']:,.0f} non-pad | ratio all {ours['all'] / mm['all']:.2f}, "
                  f"non-pad {ours['nonpad'] / mm['nonpad']:.2f}", flush=True)
    med = statistics.median
    ours_all, mm_all, mm_np = (med(p[0]["all"] for p in pairs), med(p[1]["all"] for p in pairs),
                               med(p[1]["nonpad"] for p in pairs))
    print(f"tokens/s (medians): ours {ours_all:,.0f} (every token a target) | MiniMind {mm_all:,.0f}, of which "
          f"{mm_np:,.0f} non-padding ({mm_np / mm_all:.0%})")
    print(f"peak memory (medians): ours {med(p[0]['peak_mem_mb'] for p in pairs):,.0f} MB | MiniMind "
          f"{med(p[1]['peak_mem_mb'] for p in pairs):,.0f} MB")
    if offline_ratios:
        cost = sorted(100 * (1 - r) for r in offline_ratios)
        print(f"SwanLab offline: median {100 * (1 - med(offline_ratios)):+.1f}% slower than tracking off "
              f"(spread {cost[0]:+.1f}% .. {cost[-1]:+.1f}%; pairs {', '.join(f'{r:.3f}' for r in offline_ratios)}; "
              f"target <= 2%)")
    budget = min(p[1]["nonpad_total"] for p in pairs)
    ours_loss = [loss_at(p[0]["curve"], budget) for p in pairs]
    mm_loss = [loss_at(p[1]["curve"], budget) for p in pairs]
    if all(ours_loss) and all(mm_loss):
        print(f"training loss after {budget:,} non-padding tokens (mean of the last {args.log_every} steps, median of "
              f"pairs): ours {med(x[0] for x in ours_loss):.4f} | MiniMind {med(x[0] for x in mm_loss):.4f}")
    print(f"load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ratio non-pad: {med(p[0]['nonpad'] / p[1]['nonpad'] for p in pairs):.2f}")
    print(f"ratio all: {med(p[0]['all'] / p[1]['all'] for p in pairs):.2f}")


if __name__ == "__main__":
    main()
