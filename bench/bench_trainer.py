"""Benchmark the trainer (run on demand, not in CI). Prints medians and ratios measured in one run.

    python bench/bench_trainer.py                 # trainer (SwanLab offline and disabled) vs a bare loop:
                                                  # tokens/s, overhead %, memory, MFU (GPU)
    python bench/bench_trainer.py --demo          # the default CPU demo run: loss vs time, loss at 2 minutes

Overhead: ``model.train_pretrain.train`` against the barest loop over the same model, data,
optimizer, schedule, clipping and steps (no tracking, no checkpoints, no logging). Both are
timed over steps 2..N (step 1 is warm-up) from the end of step 1 to the end of step N; the
trainer's window comes from its own metrics.jsonl (train_s of the step-1 and step-N rows, ``tp.throughput``),
so it includes everything the trainer does per step: the log lines, metrics.jsonl, SwanLab
offline mirroring, heartbeats and NaN checks. Evaluation and the checkpoint happen once, after
step N, outside both windows; their cost is reported on its own. Each repeat runs the bare
loop and the trainer once per tracking mode (``--modes``, default offline and disabled), in an
order rotated from repeat to repeat, so that drift in the machine's load hits every loop alike.
With both ``offline`` and ``disabled``, a last line gives SwanLab's offline mirror on its own: the
trainer with it against the trainer without it, paired by repeat (median and spread).

Tokens are non-padding tokens: the data is packed, every position is a real token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from expkit import tracking  # noqa: E402
from expkit.config import TrainConfig  # noqa: E402
from model import train_pretrain as tp  # noqa: E402
from model.data import BatchStream  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

DEMO_TARGET_LOSS = 5.5
DEMO_BUDGET_S = 120.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(cfg: TrainConfig) -> dict[str, float]:
    """The same training without the trainer: tokens/s over steps 2..N and peak memory."""
    from model.modeling import MiniMindConfig, MiniMindForCausalLM

    dist = tp.Dist()
    device = tp.pick_device(cfg, dist)
    dtype = tp.pick_dtype(cfg, device, tp.RunLog(None))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    train_blocks, _ = tp.load_data(cfg, load_tokenizer(cfg.tokenizer_path), None)
    batches = BatchStream(train_blocks, cfg.batch_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    net = MiniMindForCausalLM(MiniMindConfig.from_train_config(cfg)).to(device)
    optimizer = tp.build_optimizer(net, cfg, device)
    schedule = tp.Schedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    t_first = t_mark = 0.0
    rates = []  # tokens/s of each log interval, the trainer's boundaries: (1, 10], (10, 20], ...
    tokens_per_step = cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps
    for step in range(1, cfg.max_steps + 1):
        tp.set_lr(optimizer, schedule.lr(cfg.learning_rate, step))
        for _ in range(cfg.accumulation_steps):
            x, y = batches.next_batch()
            x, y = tp.to_device(x, device), tp.to_device(y, device)
            with autocast:
                loss = net(x, targets=y).loss / cfg.accumulation_steps
            scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if step == 1:
            _sync(device)
            t_first = t_mark = time.perf_counter()
            last_mark = 1
        elif step % cfg.log_interval == 0 or step == cfg.max_steps:
            _sync(device)
            now = time.perf_counter()
            rates.append(tp.throughput((step - last_mark) * tokens_per_step, now - t_mark))
            t_mark, last_mark = now, step
    window = t_mark - t_first
    out = {"tokens_per_s": tp.throughput((cfg.max_steps - 1) * tokens_per_step, window), "rates": rates,
           "param_sha256": tp.param_sha256(net), "peak_mem_mb": tp.peak_memory_mb(device)}
    mfu = tp.model_flops_utilization(net.flops_per_token(), out["tokens_per_s"], tp.peak_flops(device))
    if mfu is not None:
        out["mfu"] = mfu
    return out


def trainer_run(cfg: TrainConfig, workdir: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = tp.train(cfg, out)
    if result.exit_code != 0:
        raise SystemExit(f"trainer failed ({result.exit_code}): {result.error}")
    rows = tracking.read_metrics(out / "metrics.jsonl")
    first = next(r for r in rows if r["step"] == 1)
    last = next(r for r in rows if r["step"] == cfg.max_steps)
    # the trainer's own clock: training seconds between the two lines (no evaluation or checkpoint inside)
    window = last["train_s"] - first["train_s"]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    return {"tokens_per_s": tp.throughput(tokens, window), "rates": [r["tokens_per_s"] for r in rows if r["step"] > 1],
            "param_sha256": result.summary["param_sha256"], "peak_mem_mb": result.summary["peak_mem_mb"],
            "mfu": result.summary.get("mfu", math.nan), "end_s": result.summary["wall_s"] - last["elapsed_s"]}


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _overhead_lines(name: str, runs: list[dict], bare: list[dict]) -> None:
    t_med = statistics.median(r["tokens_per_s"] for r in runs)
    b_med = statistics.median(r["tokens_per_s"] for r in bare)
    # the per-repeat ratio pairs runs made in the same repeat, so slow drift in load cancels
    ratios = [b["tokens_per_s"] / t["tokens_per_s"] - 1 for t, b in zip(runs, bare)]
    print(f"{name}: {t_med:,.0f} tok/s vs bare {b_med:,.0f} (medians of {len(runs)}) -> overhead "
          f"{100 * (b_med / t_med - 1):+.2f}% (medians), {100 * statistics.median(ratios):+.2f}% "
          f"(median of paired ratios; target <= 2%)")
    # per log interval, pooled over repeats: the upper quantiles are the intervals nothing else disturbed
    t_rates = sorted(r for run in runs for r in run["rates"])
    b_rates = sorted(r for run in bare for r in run["rates"])
    for q_name, q in (("median", 0.5), ("p75", 0.75), ("p90", 0.9)):
        t_q, b_q = _quantile(t_rates, q), _quantile(b_rates, q)
        print(f"  per-interval {q_name:>6}: {t_q:,.0f} vs bare {b_q:,.0f} tok/s -> overhead {100 * (b_q / t_q - 1):+.2f}%")


def _mirror_line(offline: list[dict], disabled: list[dict]) -> None:
    """SwanLab's offline mirror itself: the trainer with it against the trainer without it, paired by repeat."""
    cost = sorted(100 * (d["tokens_per_s"] / o["tokens_per_s"] - 1) for o, d in zip(offline, disabled))
    print(f"SwanLab offline vs disabled: {statistics.median(cost):+.2f}% slower (median of {len(cost)} paired "
          f"ratios; spread {cost[0]:+.2f}% .. {cost[-1]:+.2f}%; target <= 2%)")
    o_rates = sorted(r for run in offline for r in run["rates"])
    d_rates = sorted(r for run in disabled for r in run["rates"])
    print("  per-interval: " + ", ".join(
        f"{q_name} {100 * (_quantile(d_rates, q) / _quantile(o_rates, q) - 1):+.2f}%"
        for q_name, q in (("median", 0.5), ("p75", 0.75), ("p90", 0.9))))


def overhead(args: argparse.Namespace) -> None:
    base = TrainConfig().model_dump()
    shape = {"max_steps": args.steps, "warmup_steps": min(base["warmup_steps"], args.steps // 4),
             # one evaluation and one checkpoint, after the timed window
             "eval_interval": args.steps, "save_interval": args.steps, "sample_max_new_tokens": 8}
    if args.device:
        shape["device"] = args.device
    shape.update(_overrides(args.set))
    if "swanlab_mode" in shape:  # each trainer run sets its own mode; a --set would be overridden unseen
        raise SystemExit("--set swanlab_mode=...: use --modes to choose the trainer's tracking modes")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in tracking.MODES]
    if unknown or not modes:
        raise SystemExit(f"--modes: {', '.join(unknown) or 'none given'}; choose from {', '.join(tracking.MODES)}")
    configs = {m: TrainConfig(**{**base, **shape, "swanlab_mode": m}) for m in modes}
    cfg = configs[modes[0]]
    tokens_per_step = cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cpus")
    print(f"shape: {cfg.model_type} hidden {cfg.hidden_size} layers {cfg.num_hidden_layers} seq {cfg.max_seq_len} "
          f"batch {cfg.batch_size}x{cfg.accumulation_steps} ({tokens_per_step} tokens/step), {cfg.max_steps} steps, "
          f"log every {cfg.log_interval}, trainer with tracking {' / '.join(modes)}, threads {torch.get_num_threads()}")
    bare_loop(cfg)  # warm caches: corpus, allocator, kernels
    trainer: dict[str, list[dict]] = {m: [] for m in modes}
    bare: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            # rotate the order each repeat, so an order effect (and slow drift) hits every loop alike
            jobs = ["bare", *modes]
            shift = i % len(jobs)
            for name in jobs[shift:] + jobs[:shift]:
                if name == "bare":
                    bare.append(bare_loop(cfg))
                else:
                    trainer[name].append(trainer_run(configs[name], Path(tmp)))
            print(f"  repeat {i + 1}: " + ", ".join(f"trainer/{m} {trainer[m][-1]['tokens_per_s']:,.0f}" for m in modes)
                  + f", bare {bare[-1]['tokens_per_s']:,.0f} tok/s (load {os.getloadavg()[0]:.2f})", flush=True)
    for m in modes:
        _overhead_lines(f"trainer (tracking {m})", trainer[m], bare)
    if "offline" in modes and "disabled" in modes:
        _mirror_line(trainer["offline"], trainer["disabled"])
    print(f"load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    first = trainer[modes[0]][0]
    same = all(runs[0]["param_sha256"] == bare[0]["param_sha256"] for runs in trainer.values())
    print(f"same work: final parameters {'bitwise equal' if same else 'DIFFER'} (sha256 {bare[0]['param_sha256'][:12]})")
    end_s = statistics.median(r["end_s"] for r in trainer[modes[0]])
    print(f"after the window (eval, checkpoint, samples, final/): {end_s:.2f}s")
    device = tp.pick_device(cfg, tp.Dist())
    if device.type == "cuda":
        print(f"peak memory: trainer {max(r['peak_mem_mb'] for runs in trainer.values() for r in runs):,.0f} MiB, "
              f"bare {max(r['peak_mem_mb'] for r in bare):,.0f} MiB (torch.cuda.max_memory_allocated)")
        if not math.isnan(first["mfu"]):
            print(f"MFU (nanoGPT formula): trainer {statistics.median(r['mfu'] for r in trainer[modes[0]]):.2%}, "
                  f"bare {statistics.median(r['mfu'] for r in bare):.2%}")
    else:
        print(f"peak memory: {tp.peak_memory_mb(device):,.0f} MiB RSS for this process (all loops; CPU has no "
              "per-loop peak); MFU: n/a without a GPU")


def demo(args: argparse.Namespace) -> None:
    cfg = TrainConfig(**_overrides(args.set))  # the defaults, unless tuning them with --set
    out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="expkit-demo-"))
    print(f"demo: TrainConfig defaults ({cfg.model_type}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"seq {cfg.max_seq_len}, batch {cfg.batch_size}, lr {cfg.learning_rate}, warmup {cfg.warmup_steps}, "
          f"{cfg.max_steps} steps) -> {out}")
    t0 = time.time()
    result = tp.train(cfg, out, resume=(out / "checkpoints").is_dir())
    wall = time.time() - t0
    rows = tracking.read_metrics(out / "metrics.jsonl")
    print(f"\n{'elapsed_s':>9} {'step':>5} {'loss':>7} {'val_loss':>8}")
    for r in rows:
        if r["step"] % 50 == 0 or r["step"] == 1 or "val_loss" in r:
            val = f"{r['val_loss']:8.4f}" if "val_loss" in r else " " * 8
            print(f"{r['elapsed_s']:9.1f} {r['step']:5d} {r['loss']:7.4f} {val}")
    within = [r for r in rows if r["elapsed_s"] <= DEMO_BUDGET_S]
    at_budget = within[-1] if within else None
    reached = next((r for r in rows if r["loss"] <= DEMO_TARGET_LOSS), None)
    print()
    if at_budget:
        print(f"loss at {DEMO_BUDGET_S:.0f}s: {at_budget['loss']:.4f} (step {at_budget['step']}, "
              f"elapsed {at_budget['elapsed_s']:.1f}s)")
    print("first loss <= {:.1f}: {}".format(DEMO_TARGET_LOSS, f"step {reached['step']} at {reached['elapsed_s']:.1f}s"
                                           if reached else "never"))
    s = result.summary
    print(f"final: loss {s.get('final_loss')}, val_loss {s.get('val_loss')}, {s.get('tokens_per_s'):,.0f} tok/s, "
          f"training {rows[-1]['elapsed_s']:.1f}s, whole run {wall:.1f}s (samples and final/ included)")
    ok = bool(rows) and rows[-1]["loss"] <= DEMO_TARGET_LOSS and rows[-1]["elapsed_s"] <= DEMO_BUDGET_S
    print(f"target (train loss <= {DEMO_TARGET_LOSS} within {DEMO_BUDGET_S:.0f}s): {'met' if ok else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="run the default demo config and print loss vs time")
    p.add_argument("--out-dir", help="--demo: output directory (default: a new temp dir)")
    p.add_argument("--steps", type=int, default=150, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    p.add_argument("--device", default="", help="device for the overhead runs (default: the config's auto)")
    p.add_argument("--modes", default="offline,disabled",
                   help="the trainer's tracking modes to time, comma-separated, each against the same bare loop")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig value")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo(args) if args.demo else overhead(args)


if __name__ == "__main__":
    main()
