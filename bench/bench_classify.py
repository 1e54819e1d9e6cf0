"""What the embedded classification task reaches on this machine, against the majority baseline.

    python bench/bench_classify.py                              # ClassifyConfig() from scratch, English
    python bench/bench_classify.py --pretrain                   # first the demo pretraining (TrainConfig()),
                                                                # then fine-tune from its final/
    python bench/bench_classify.py --init-from out/experiment_0.1.0/final --set epochs=2
    python bench/bench_classify.py --set data_path=embedded-zh --set max_steps=300

Prints the validation scores against elapsed time (from metrics.jsonl), then the test scores of
the best checkpoint beside the majority-class baseline on the same test set, and the wall time
(data loading and the final test included). One run, no repeats: on a shared CPU the time
depends on the load, printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _assignments(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init-from", default="none", help="a pretraining run's final/ (default: from scratch)")
    p.add_argument("--pretrain", action="store_true", help="run the demo pretraining first and start from it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ClassifyConfig override")
    p.add_argument("--out-dir", type=Path, default=None, help="where the runs go (default: a temporary dir)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from model import train_classify, train_pretrain
    from expkit.config import ClassifyConfig, validate
    from expkit.config import TrainConfig

    out = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_classify_"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); runs in {out}")
    init_from = args.init_from
    if args.pretrain:
        t0 = time.perf_counter()
        res = train_pretrain.train(TrainConfig(swanlab_mode="disabled"), out / "pretrain")
        if res.exit_code:
            print(f"pretraining failed (exit {res.exit_code}): {res.error}")
            return 1
        print(f"pretraining (TrainConfig defaults): {res.step} steps, val_loss {res.summary.get('val_loss'):.3f}, "
              f"{time.perf_counter() - t0:.1f} s")
        init_from = str(out / "pretrain" / "final")
    cfg = validate({"init_from": init_from, **_assignments(args.set)}, ClassifyConfig)
    t0 = time.perf_counter()
    res = train_classify.train(cfg, out / "classify")
    wall = time.perf_counter() - t0
    if res.exit_code:
        print(f"fine-tuning failed (exit {res.exit_code}): {res.error}")
        return 1
    s = res.summary
    print("\nstep  elapsed_s  val_loss  val_acc  val_macro_f1")
    for line in (out / "classify" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_loss" in row:
            print(f"{row['step']:>4}  {row['elapsed_s']:>9.1f}  {row['val_loss']:>8.4f}  {row['val_acc']:>7.4f}  "
                  f"{row['val_macro_f1']:>12.4f}")
    print(f"\n{cfg.data_path}, init_from {'pretrained' if init_from != 'none' else 'none'}: {s['steps']} steps "
          f"({s['epochs']} epochs), best step {s['best_step']}, {wall:.1f} s")
    print(f"test ({s['n_test']} texts, {len(s['labels'])} labels):  acc {s['test_acc']:.4f}  macro-F1 "
          f"{s['test_macro_f1']:.4f}  weighted-F1 {s['test_weighted_f1']:.4f}")
    print(f"majority baseline ({s['majority_label']}):  acc {s['majority_acc']:.4f}  macro-F1 "
          f"{s['majority_macro_f1']:.4f}")
    print(f"macro-F1 over the baseline: +{s['test_macro_f1'] - s['majority_macro_f1']:.4f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
