"""The trainer on a GPU: a 26M and a ~100M MiniMind shape in bf16, with and without torch.compile.

    python bench/bench_gpu.py                       # both shapes, compile off and on, 100 steps each
    python bench/bench_gpu.py --shapes 100M --steps 200 --batch 32 --seq 1024
    python bench/bench_gpu.py --repeats 3           # interleaved repeats, medians printed

Each run is ``model.train_pretrain.train`` itself (the embedded corpus, tracking off, one
evaluation and one checkpoint after the last step), so the figures are the trainer's own:
tokens/s over steps 2..N by its training clock (metrics.jsonl ``train_s``: the compilation in
step 1 and the pauses are outside), MFU on the same basis (``model_flops_utilization``, nanoGPT's
FLOPs per token over the GPU's dense bf16 peak), and the peak of torch.cuda.max_memory_allocated.
The goal (issue 17): MFU >= 40 % at the ~100M shape on an H100/H200-class GPU.

On a machine without CUDA it refuses with one line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# MiniMind's published shapes: MiniMind2-small (26M) and MiniMind2 (104M); vocabulary 6400
SHAPES = {
    "26M": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2},
    "100M": {"hidden_size": 768, "num_hidden_layers": 16, "num_attention_heads": 8, "num_key_value_heads": 2},
}


def run_once(shape: str, compiled: bool, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    import torch

    from expkit import tracking
    from expkit.config import TrainConfig
    from model import train_pretrain as tp

    cfg = TrainConfig(**SHAPES[shape], model_type="model_original", max_seq_len=args.seq, batch_size=args.batch,
                      max_steps=args.steps, warmup_steps=min(10, args.steps // 4), log_interval=10,
                      eval_interval=args.steps, save_interval=args.steps, eval_batches=2, sample_max_new_tokens=4,
                      dtype="bfloat16", device="cuda", compile=compiled, swanlab_mode="disabled")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = Path(tempfile.mkdtemp(dir=scratch))
    result = tp.train(cfg, out)
    if result.exit_code != 0:
        raise SystemExit(f"bench_gpu: the {shape} run (compile {compiled}) failed: {result.error}")
    rows = tracking.read_metrics(out / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    rate = tp.throughput(last["tokens_seen"] - first["tokens_seen"], last["train_s"] - first["train_s"])
    peak = tp.peak_flops(torch.device("cuda"))
    mfu = tp.model_flops_utilization(result.model.flops_per_token(), rate, peak)
    return {"tokens_per_s": rate, "mfu": mfu if mfu is not None else float("nan"),
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            "params": result.summary["params"], "compile_s": first["train_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="26M,100M", help="comma-separated, of " + ", ".join(SHAPES))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compile", default="off,on", help="off, on, or off,on")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine; run it where one is (see bench/README.md)", file=sys.stderr)
        return 2
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if unknown := [s for s in shapes if s not in SHAPES]:
        print(f"bench_gpu: unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    modes = [m.strip() == "on" for m in args.compile.split(",") if m.strip()]
    from model import train_pretrain as tp

    gpu = torch.cuda.get_device_name()
    peak = tp.peak_flops(torch.device("cuda"))
    print(f"{gpu}: bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else f"{gpu}: peak FLOP/s unknown (no MFU)")
    print(f"seq {args.seq}, batch {args.batch} ({args.seq * args.batch:,} tokens/step), {args.steps} steps, "
          f"{args.repeats} repeat(s), torch {torch.__version__}")
    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for i in range(args.repeats):
            jobs = [(s, c) for s in shapes for c in modes]
            jobs = jobs[i % len(jobs):] + jobs[: i % len(jobs)]  # rotated, so drift hits each alike
            for shape, compiled in jobs:
                results.setdefault((shape, compiled), []).append(run_once(shape, compiled, args, Path(tmp)))
    print(f"{'shape':>6} {'params':>8} {'compile':>7} {'tokens/s':>12} {'MFU':>7} {'peak MiB':>9} {'step 1 s':>8}")
    for (shape, compiled), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{shape:>6} {med['params'] / 1e6:7.1f}M {'on' if compiled else 'off':>7} {med['tokens_per_s']:12,.0f} "
              f"{med['mfu']:7.1%} {med['peak_mem_mb']:9,.0f} {med['compile_s']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
