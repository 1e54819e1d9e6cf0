"""Fine-tune a MiniMind model as a text classifier, with outputs a supervisor can read.

    python -m model.train_classify --config CONFIG.json --out-dir DIR [--resume]

CONFIG.json holds a ``ClassifyConfig`` (``expkit/config.py``, torch-free: the ``classify`` task's schema). The model is
the MiniMind backbone with a pooled linear head (``MiniMindForSequenceClassification``), from
``init_from`` (a pretraining run's ``final/`` directory) or from scratch (``none``). One process
(CPU, one GPU or MPS); no DDP.

One optimizer step = one batch of ``batch_size`` texts (right-padded, each ending in EOS), in a
seeded order per epoch (full batches only: an epoch is floor(n_train / batch_size) steps); the
step number alone says which batch, so ``--resume`` is exact. The
loop: loss (ce|focal, class weights, label smoothing) -> backward -> [FGM: perturb the
embeddings along their gradient, second backward, restore] -> clip -> AdamW (head and layer-wise
learning rates, warmup + cosine) -> [EMA]. Every ``eval_interval`` steps (default: each epoch)
and at the last step the validation set is scored (with the EMA weights when ``ema_decay``),
a checkpoint saved and ranked by ``monitor``; ``early_stop_patience`` evaluations without
improvement stop the run. At the end the best checkpoint (``best_step``) is scored on the test
set and saved as ``final/``.

Outputs in DIR:

    metrics.jsonl              step, loss (mean train loss since the previous line), lr, grad_norm,
                               epoch, elapsed_s; and val_loss, val_acc, val_macro_f1 on evaluation steps
    config.json                the ClassifyConfig it ran with (written when absent)
    train.log                  the human-readable log, also on stdout
    status.json, heartbeat     as the pretraining trainer's (``exp status`` reads them); status.json
                               also has max_steps
    checkpoints/               step_XXXXXXXX.pt (+ .json {"step", "monitor", "value"}): the best
                               keep_top_k by monitor, plus the last
    summary.json               test_acc, test_macro_f1, test_weighted_f1, test_loss, per_class
                               {label: precision, recall, f1, support}, majority_acc, majority_macro_f1,
                               majority_label (the majority-class baseline on the same test set),
                               best_step, early_stop_step (null unless stopped early), labels, ...
    classification_report.txt  per-class precision/recall/F1/support of the test set
    plots/confusion_matrix.png counts and row-normalised, test set
    samples.json               misclassified test examples (text, label, predicted, confidence)
    final/                     the best model, save_pretrained + tokenizer; after ``import model``,
                               ``AutoModelForSequenceClassification.from_pretrained(DIR/final)``

Exit codes as the pretraining trainer: 0 finished; 1 uncaught error (traceback in train.log);
2 bad input (config, data, init_from, out dir: one line); 3 loss NaN/Inf; 130 SIGINT; 143 SIGTERM
or SIGUSR1 (a checkpoint saved first; continue with --resume).
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from expkit import tracking
from expkit.errors import ConfigError, ExpError
from expkit.files import atomic_write

from .classify import (
    EMA,
    MiniMindForSequenceClassification,
    augment_ids,
    balanced_class_weights,
    classification_loss,
    collate,
    encode_texts,
    fgm_perturb,
    freeze,
    load_classify_data,
    param_groups,
    steps_per_epoch,
)
from expkit.config import ClassifyConfig
from expkit.config import validate as validate_config
from .classify_report import majority_baseline, plot_confusion, report_text, scores
from .modeling import MiniMindConfig
from .tokenizer import load_tokenizer
from .train_pretrain import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Checkpoints,
    Diverged,
    RunLog,
    Schedule,
    TrainResult,
    _ckpt_name,
    _finite_or_none,
    _rng_state,
    _Run,
    _safe,
    _set_rng_state,
    _StopFlag,
    _write_json_atomic,
    param_sha256,
    pick_device,
    pick_dtype,
    read_config_json,
    save_final,
)

CHECKPOINT_FORMAT = "classify-1"
EVAL_BATCH = 64


# -- checkpoints ranked by the monitor -----------------------------------------------------------


class RankedCheckpoints(Checkpoints):
    """``checkpoints/step_XXXXXXXX.pt`` + ``.json`` {"step", "monitor", "value"}, pruned to the best
    ``keep_top_k`` by value (its direction; on a tie the older, the one that reached it first)
    plus the last; a checkpoint without a value (saved on a signal) is kept only while last."""

    KEY = "value"
    FORMAT = CHECKPOINT_FORMAT

    def __init__(self, directory: Path, keep_top_k: int, monitor: str, higher_is_better: bool, log: RunLog) -> None:
        super().__init__(directory, keep_top_k, log)
        self.monitor, self.higher = monitor, higher_is_better

    def label(self, step: int, value: float | None) -> dict[str, Any]:
        return {"step": step, "monitor": self.monitor, "value": _finite_or_none(value)}

    def ranked(self) -> list[tuple[int, Path, float]]:
        """(step, path, value), best first."""
        rows = [(s, p, v) for s, p in self.listed() if (v := self.value(p)) is not None]
        return sorted(rows, key=lambda r: ((-r[2] if self.higher else r[2]), r[0]))


# -- batches and evaluation ----------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def train_batch(ids: list[list[int]], labels: list[int], cfg: ClassifyConfig, step: int, spe: int,
                order_cache: dict[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of optimizer step ``step`` (1-based): its epoch's seeded order, its slice, and
    the augmentation seeded by (seed, step) — a function of the step alone, so resume is exact."""
    epoch, b = divmod(step - 1, spe)
    if epoch not in order_cache:
        order_cache.clear()
        order_cache[epoch] = epoch_order(len(ids), cfg.seed, epoch)
    picked = order_cache[epoch][b * cfg.batch_size:(b + 1) * cfg.batch_size]
    seqs = [ids[i] for i in picked]
    if cfg.augment != "none" and cfg.augment_prob > 0:
        rng = random.Random(f"{cfg.seed}/augment/{step}")
        seqs = [augment_ids(s, cfg.augment, cfg.augment_prob, rng) for s in seqs]
    x, mask = collate(seqs)
    return x, mask, torch.tensor([labels[i] for i in picked], dtype=torch.long)


@torch.no_grad()
def predict(net: MiniMindForSequenceClassification, ids: list[list[int]], labels: list[int], device: torch.device,
            autocast: Any) -> dict[str, Any]:
    """Plain (unweighted, unsmoothed) cross-entropy, predictions and their probabilities."""
    was = net.training
    net.eval()
    total, preds, conf = 0.0, [], []
    # batches of similar length: less padding; results go back in the original order
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pred_at = [0] * len(ids)
    conf_at = [0.0] * len(ids)
    for start in range(0, len(ids), EVAL_BATCH):
        chunk = order[start:start + EVAL_BATCH]
        x, mask = collate([ids[i] for i in chunk])
        y = torch.tensor([labels[i] for i in chunk], dtype=torch.long, device=device)
        with autocast:
            logits = net(x.to(device), mask.to(device)).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        probs = logits.softmax(-1)
        p, c = probs.max(-1)
        for i, pi, ci in zip(chunk, c.tolist(), p.tolist()):
            pred_at[i], conf_at[i] = pi, ci
    net.train(was)
    preds, conf = pred_at, conf_at
    return {"loss": total / max(1, len(ids)), "pred": preds, "confidence": conf}


def evaluate(net: MiniMindForSequenceClassification, ids: list[list[int]], labels: list[int], names: list[str],
             device: torch.device, autocast: Any) -> dict[str, Any]:
    out = predict(net, ids, labels, device, autocast)
    s = scores(labels, out["pred"], names)
    return {**out, **s}


# -- the run -------------------------------------------------------------------------------------


def train(cfg: ClassifyConfig, out_dir: Path, resume: bool = False, *, base: Path | None = None) -> TrainResult:
    """Fine-tune per ``cfg`` into ``out_dir``; never raises for a training problem, returns its
    exit code (and, for tests and notebooks, the model)."""
    out_dir = Path(out_dir)
    run = _Run(cfg, out_dir, _single())  # type: ignore[arg-type]  # duck-typed: status, heartbeat, files
    log: RunLog | None = None
    stop = _StopFlag()
    state: dict[str, Any] = {}
    try:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ExpError(f"cannot create --out-dir {out_dir}: {err.strerror or err}") from err
        if not resume and any((out_dir / "checkpoints").glob("step_*.pt")):
            raise ExpError(f"{out_dir} already holds checkpoints of a run; pass --resume to continue it "
                           "or choose an empty --out-dir")
        run.owns_dir = True
        log = RunLog(run.files.log, 0, append=resume)
        stop.install()
        run.write_status("running")
        run.beat(force=True)
        code = _train(run, log, stop, state, resume, base)
        return TrainResult(code, run.status, run.step, state.get("summary", {}), state.get("model"))
    except ExpError as err:
        msg = str(err)
        (log or RunLog(None)).error(msg)
        _safe(lambda: run.write_status("failed", error=msg, exit_code=EXIT_BAD_INPUT))
        return TrainResult(EXIT_BAD_INPUT, "failed", run.step, error=msg)
    except Exception as err:
        msg = f"{type(err).__name__}: {err}"
        lg = log or RunLog(None)
        lg.error(f"training failed at step {run.step}: {msg}")
        lg.error(traceback.format_exc().rstrip())
        _safe(lambda: run.write_status("failed", error=msg, exit_code=EXIT_FAILED))
        return TrainResult(EXIT_FAILED, "failed", run.step, state.get("summary", {}), state.get("model"), msg)
    finally:
        stop.restore()
        if log is not None:
            log.close()


def _resolve(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base or Path.cwd()) / path


def _single() -> Any:
    from .train_pretrain import Dist

    return Dist()


def build_model(cfg: ClassifyConfig, labels: list[str], vocab_size: int,
                base: Path | None = None) -> MiniMindForSequenceClassification:
    """The classifier: the backbone of ``init_from`` (relative to ``base``, else the current
    directory) with a new head, or a fresh model of the config's shape."""
    extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
             "label2id": {label: i for i, label in enumerate(labels)},
             "classifier_pooling": cfg.pooling, "classifier_dropout": cfg.head_dropout}
    if cfg.init_from != "none":
        net = MiniMindForSequenceClassification.from_causal_lm(_resolve(cfg.init_from, base), dropout=cfg.dropout,
                                                                **extra)
        if net.config.vocab_size < vocab_size:
            raise ConfigError(f"init_from={cfg.init_from}: its vocabulary ({net.config.vocab_size}) is smaller "
                              f"than its tokenizer's ({vocab_size})")
        return net
    hidden = cfg.hidden_size or 128
    shape = {"variant": cfg.model_type or "model_original", "vocab_size": vocab_size, "hidden_size": hidden,
             "num_hidden_layers": cfg.num_hidden_layers or 2, "num_attention_heads": cfg.num_attention_heads or 4,
             "num_key_value_heads": cfg.num_key_value_heads or 2, "max_position_embeddings": cfg.max_seq_len,
             "intermediate_size": cfg.intermediate_size or 64 * math.ceil(8 * hidden / 3 / 64),
             "dropout": cfg.dropout}
    try:
        config = MiniMindConfig(**shape, **extra)
    except Exception as err:  # the architecture validator: heads that do not divide, ...
        raise ConfigError(f"invalid model shape: {err}") from None
    return MiniMindForSequenceClassification(config)


def _train(run: _Run, log: RunLog, stop: _StopFlag, state: dict[str, Any], resume: bool, base: Path | None) -> int:
    cfg: ClassifyConfig = run.cfg  # type: ignore[assignment]
    files = run.files
    import os

    if cfg.cuda_devices and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg.cuda_devices
    device = pick_device(cfg, run.dist)  # type: ignore[arg-type]
    run.load.device = device
    dtype = pick_dtype(cfg, device, log)  # type: ignore[arg-type]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # -- data, tokenizer, model --------------------------------------------------------------
    data = load_classify_data(cfg, base)
    if cfg.init_from != "none" and not (_resolve(cfg.init_from, base) / "config.json").is_file():
        raise ConfigError(f"init_from={cfg.init_from}: no model there (no config.json); name a pretraining "
                          "run's final/ directory, or use init_from=none")
    tok_path: Any = cfg.init_from if cfg.init_from != "none" else cfg.tokenizer_path
    tokenizer = load_tokenizer(tok_path if tok_path == "embedded" else _resolve(tok_path, base))
    enc = {split: encode_texts([t for t, _ in getattr(data, split)], tokenizer, cfg.max_seq_len)
           for split in ("train", "val", "test")}
    ys = {split: [y for _, y in getattr(data, split)] for split in ("train", "val", "test")}

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, data.labels, len(tokenizer), base).to(device)
    state["model"] = net
    trainable = freeze(net, cfg.freeze_layers)
    if trainable == 0:
        raise ConfigError("nothing to train: every parameter is frozen")
    groups = param_groups(net, cfg)
    extra: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)
    spe = steps_per_epoch(len(enc["train"]), cfg.batch_size)
    max_steps = cfg.max_steps or cfg.epochs * spe
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * max_steps)
    schedule = Schedule(warmup, max_steps, cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    weight = (balanced_class_weights(ys["train"], len(data.labels)).to(device)
              if cfg.class_weights == "balanced" else None)
    ema = EMA(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
    eval_every = cfg.eval_interval or spe
    ckpts = RankedCheckpoints(files.checkpoints, cfg.keep_top_k, cfg.monitor, cfg.higher_is_better, log)

    best: dict[str, Any] = {"value": None, "step": None}
    bad_evals = 0
    early_stop_step: int | None = None
    window = [0.0, 0]  # train loss sum and steps since the last log line
    if resume:
        ckpt = ckpts.load_latest()
        if ckpt is None:
            log.info("resume: no usable checkpoint; starting from step 0")
        else:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict({**ckpt["scheduler"], "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
            scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.load_state_dict(ckpt["ema"])
            _set_rng_state(ckpt["rng"], device)
            run.step = int(ckpt["step"])
            best = dict(ckpt["best"])
            bad_evals = int(ckpt["bad_evals"])
            early_stop_step = ckpt.get("early_stop_step")
            window = list(ckpt.get("loss_window", window))
            run.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
            log.info(f"resume: continuing from checkpoint step {run.step} ({_ckpt_name(run.step)})")
        tracking.MetricsFile.truncate_after(files.metrics, run.step)
    else:
        files.metrics.unlink(missing_ok=True)
    if not files.config.exists():
        _write_json_atomic(files.config, cfg.model_dump())
    run.write_status("running", max_steps=max_steps)

    counts = {"total": sum(p.numel() for p in net.parameters()), "trainable": trainable}
    log.info(f"classify: {len(data.labels)} labels, {len(enc['train'])} train / {len(enc['val'])} val / "
             f"{len(enc['test'])} test texts ({data.source['train']}); init_from {cfg.init_from}; "
             f"pooling {cfg.pooling}; device {device}")
    log.info(f"params {counts['total']:,} ({trainable:,} trainable); {spe} steps per epoch, {max_steps} steps, "
             f"warmup {warmup}, evaluation every {eval_every} steps by {cfg.monitor}")

    metrics = tracking.MetricsFile(files.metrics)
    order_cache: dict[int, list[int]] = {}
    trainable_params = [p for p in net.parameters() if p.requires_grad]
    saved_at = [run.step]

    def checkpoint(value: float | None) -> None:
        if not all(bool(p.isfinite().all()) for p in trainable_params):
            raise Diverged(run.step, "weights")
        eval_model = None
        if ema is not None:
            with ema.applied(net):
                eval_model = {k: v.detach().clone() for k, v in net.state_dict().items()}
        ckpts.save({
            "format": CHECKPOINT_FORMAT, "step": run.step, "model": net.state_dict(), "eval_model": eval_model,
            "ema": ema.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(device),
            "best": best, "bad_evals": bad_evals, "early_stop_step": early_stop_step, "value": value,
            "elapsed_s": run.elapsed, "loss_window": window, "config": cfg.model_dump(),
        }, run.step, value)
        saved_at[0] = run.step

    def improved(value: float) -> bool:
        if best["value"] is None:
            return True
        return value > best["value"] if cfg.higher_is_better else value < best["value"]

    net.train()
    last_loss = math.nan
    try:
        signum = stop.signum
        while run.step < max_steps and early_stop_step is None and not signum:
            step = run.step + 1
            lr = cfg.learning_rate * schedule(step - 1)  # the base rate; groups scale it (head, layers)
            x, mask, y = (t.to(device) for t in train_batch(enc["train"], ys["train"], cfg, step, spe, order_cache))
            with autocast:
                out = net(x, mask)
                loss = classification_loss(out.logits, y, cfg.loss, cfg.focal_gamma, weight, cfg.label_smoothing)
                if net.config.variant == "model_moe":
                    loss = loss + net.config.aux_loss_coef * out.aux_loss
            scaler.scale(loss).backward()
            if cfg.fgm_epsilon > 0:  # the direction g/|g| is the same scaled or not
                r = fgm_perturb(net.embed_tokens, cfg.fgm_epsilon)
                if r is not None:
                    with autocast:
                        adv = classification_loss(net(x, mask).logits, y, cfg.loss, cfg.focal_gamma, weight,
                                                  cfg.label_smoothing)
                    scaler.scale(adv).backward()  # the gradients add up: clean + adversarial
                    with torch.no_grad():
                        net.embed_tokens.weight.sub_(r)
            scaler.unscale_(optimizer)  # a no-op unless float16 loss scaling is on
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params, cfg.grad_clip or math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(net)
            run.step = step
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise Diverged(step)
            window[0] += loss_value
            window[1] += 1

            is_eval = step % eval_every == 0 or step == max_steps
            if step % cfg.log_interval == 0 or step == 1 or is_eval:
                row: dict[str, Any] = {"step": step, "loss": window[0] / window[1], "lr": lr,
                                       "grad_norm": _finite_or_none(float(grad_norm)),
                                       "epoch": round(step / spe, 4), "elapsed_s": round(run.elapsed, 3)}
                last_loss = row["loss"]
                window = [0.0, 0]
                if is_eval:
                    with (ema.applied(net) if ema is not None else nullcontext()):
                        ev = evaluate(net, enc["val"], ys["val"], data.labels, device, autocast)
                    row.update(val_loss=ev["loss"], val_acc=ev["acc"], val_macro_f1=ev["macro_f1"])
                    value = row[cfg.monitor]
                    if improved(value):
                        best, bad_evals = {"value": value, "step": step, "val_loss": ev["loss"], "val_acc": ev["acc"],
                                           "val_macro_f1": ev["macro_f1"]}, 0
                    else:
                        bad_evals += 1
                        if cfg.early_stop_patience and bad_evals >= cfg.early_stop_patience:
                            early_stop_step = step
                metrics.write(row)
                log.info(_log_line(row, max_steps))
                if is_eval:
                    checkpoint(row[cfg.monitor])
                    if early_stop_step is not None:
                        log.info(f"early stop at step {step}: {cfg.monitor} has not improved for {bad_evals} "
                                 f"evaluations (best {best['value']:.4f} at step {best['step']})")
            run.beat(force=step == 1)
            signum = stop.signum

        if signum:
            code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
            name = signal.Signals(signum).name
            if run.step == 0:
                log.info(f"{name} before the first step: nothing to save")
            else:
                if saved_at[0] != run.step:
                    checkpoint(None)
                log.info(f"{name}: saved checkpoint {_ckpt_name(run.step)}; resume with --resume")
            run.write_status("interrupted", error=f"stopped by {name}", exit_code=code, max_steps=max_steps)
            run.beat(force=True)
            return code
    except Diverged as bad:
        msg = f"{bad}; stopped. Lower learning_rate or check the data"
        log.error(msg)
        run.write_status("failed", error=msg, exit_code=EXIT_DIVERGED, max_steps=max_steps)
        run.beat(force=True)
        return EXIT_DIVERGED
    finally:
        metrics.close()

    # -- finished: the best checkpoint on the test set, reports, final/ --------------------------
    best_step = best["step"]
    ckpt = ckpts.load(ckpts.path(best_step))
    net.load_state_dict(ckpt["eval_model"] if ckpt.get("eval_model") is not None else ckpt["model"])
    test = evaluate(net, enc["test"], ys["test"], data.labels, device, autocast)
    majority = majority_baseline(ys["train"], ys["test"], data.labels)
    if math.isnan(last_loss):
        rows = tracking.read_metrics(files.metrics)
        last_loss = next((r["loss"] for r in reversed(rows) if r.get("loss") is not None), math.nan)
    summary = {
        "status": "finished", "task": "classify", "steps": run.step, "max_steps": max_steps,
        "epochs": round(run.step / spe, 4), "best_step": best_step, "early_stop_step": early_stop_step,
        "monitor": cfg.monitor, "best_monitor": best["value"],
        "best_val_loss": best.get("val_loss"), "best_val_acc": best.get("val_acc"),
        "best_val_macro_f1": best.get("val_macro_f1"), "final_loss": _finite_or_none(last_loss),
        "test_loss": test["loss"], "test_acc": test["acc"], "test_macro_f1": test["macro_f1"],
        "test_weighted_f1": test["weighted_f1"],
        "majority_label": majority["label"], "majority_acc": majority["acc"], "majority_macro_f1": majority["macro_f1"],
        "labels": data.labels, "n_train": len(enc["train"]), "n_val": len(enc["val"]), "n_test": len(enc["test"]),
        "per_class": test["per_class"], "confusion_matrix": test["confusion"],
        "data": data.source, "init_from": cfg.init_from, "pooling": cfg.pooling,
        "params": counts["total"], "trainable_params": trainable, "device": str(device),
        "wall_s": round(run.elapsed, 3), "param_sha256": param_sha256(net), "tracking": None,
        "load": run.load.summary(),
    }
    atomic_write(files.out / "classification_report.txt", report_text(test, data.labels))
    plot_confusion(test["confusion"], data.labels, files.out / "plots" / "confusion_matrix.png",
                   title=f"test set, step {best_step}: acc {test['acc']:.3f}, macro-F1 {test['macro_f1']:.3f}")
    texts = [t for t, _ in data.test]
    wrong = [i for i, (p, y) in enumerate(zip(test["pred"], ys["test"])) if p != y]
    wrong.sort(key=lambda i: -test["confidence"][i])  # the most confident mistakes first
    _write_json_atomic(files.samples, {
        "split": "test", "step": best_step, "n_test": len(texts), "n_misclassified": len(wrong),
        "misclassified": [{"text": texts[i], "label": data.labels[ys["test"][i]],
                           "predicted": data.labels[test["pred"][i]], "confidence": round(test["confidence"][i], 4)}
                          for i in wrong[: cfg.n_misclassified]]})
    save_final(net, tokenizer, files.final)
    run.status = "finished"
    _write_json_atomic(files.summary, summary)
    state["summary"] = summary
    run.write_status("finished", exit_code=EXIT_OK, max_steps=max_steps)
    run.beat(force=True)
    log.info(f"finished: {run.step} steps, best step {best_step}; test acc {test['acc']:.4f}, macro-F1 "
             f"{test['macro_f1']:.4f} (majority baseline acc {majority['acc']:.4f}, macro-F1 "
             f"{majority['macro_f1']:.4f}), {summary['wall_s']:.1f}s")
    return EXIT_OK


def _log_line(row: dict[str, Any], max_steps: int) -> str:
    width = len(str(max_steps))
    parts = [f"step {row['step']:>{width}}/{max_steps}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.2e}",
             f"grad {row['grad_norm']:.3f}" if row["grad_norm"] is not None else "grad nan", f"{row['elapsed_s']:.1f}s"]
    if "val_loss" in row:
        parts.append(f"val_loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} macro-F1 {row['val_macro_f1']:.4f}")
    return " | ".join(parts)


# -- command line ------------------------------------------------------------------------------


def load_config(path: Path) -> ClassifyConfig:
    return validate_config(read_config_json(path, "ClassifyConfig"), ClassifyConfig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train_classify", description=__doc__.split("\n\n")[0],
                                epilog="exit codes: 0 finished, 1 uncaught error, 2 bad input, 3 loss NaN/Inf, "
                                       "130 SIGINT, 143 SIGTERM or SIGUSR1 (checkpoint saved)")
    p.add_argument("--config", required=True, type=Path, help="ClassifyConfig JSON")
    p.add_argument("--out-dir", required=True, type=Path, help="run output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out-dir")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ExpError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return train(cfg, args.out_dir, resume=args.resume).exit_code


if __name__ == "__main__":
    sys.exit(main())
