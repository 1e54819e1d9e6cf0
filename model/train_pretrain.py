"""Pretrain a MiniMind-style causal LM, nanoGPT style, with outputs a supervisor can read.

    python -m model.train_pretrain --config CONFIG.json --out-dir DIR [--resume]
        [--name NAME] [--description TEXT] [--tag TAG ...]
    torchrun --standalone --nproc_per_node N -m model.train_pretrain ...   (DDP: gloo on CPU, NCCL on GPU)

One optimizer step = ``accumulation_steps`` micro-batches of ``batch_size`` packed blocks of
``max_seq_len`` tokens on each of ``world_size`` processes (no padding: every token is a target).

Outputs in DIR (rank 0 writes them all):

    metrics.jsonl    one JSON object per log line, flushed: step, loss (mean training loss of the steps
                     since the previous line), lr, grad_norm, tokens_per_s, tokens_seen, elapsed_s,
                     train_s, paused_s, and val_loss on eval steps (every eval step is a log step;
                     step 1 is always logged). tokens_per_s is the tokens since the previous line over
                     the training seconds since then (``throughput``); train_s and paused_s are cumulative
                     (over resumes too): training time, and the evaluation and checkpoint pauses (with
                     what the session's first step waits for SwanLab's start, which runs beside it)
    config.json      the TrainConfig it ran with (written when absent; the run script puts it there)
    train.log        the human-readable log, also echoed to stdout
    status.json      {"status": running|finished|failed|interrupted, "step", "error"?, "exit_code"?, "tracking", ...}
    heartbeat        {"time" (ISO 8601), "unix", "step", "pid", "status", "load"}, rewritten at log steps
                     and at least every 10 s of training; "load" is the machine's load at that moment
                     (``LoadSampler``: load average, other processes' CPU share, other GPU processes)
    checkpoints/     step_XXXXXXXX.pt (+ .json with its val loss): the best keep_top_k by val loss + the last
    summary.json     steps, final_loss, best_val_loss, val_loss, val_ppl, tokens_seen, wall_s, tokens_per_s
                     (this session's tokens over its training time, the log lines' definition), train_s,
                     paused_s, params, status, peak_mem_mb, mfu (GPU, on tokens_per_s), param_sha256 (+ per
                     rank under DDP), tracking,
                     load (the heartbeats' loads summarised: cpus, samples, loadavg_mean/max,
                     others_cpu_mean/max, gpu_others — what expkit compares before judging a
                     throughput, time or memory claim between runs)
    samples.json     greedy and seeded-sampling continuations of fixed Chinese and English prompts
    final/           save_pretrained model + tokenizer (``import model`` registers the Auto classes)
    swanlog/         the SwanLab mirror of metrics.jsonl (expkit.tracking), handed over in batches off the
                     hot path: inside the evaluation and checkpoint pauses, at least every TRACKING_FLUSH_S
                     of training, and before the run ends whichever way it ends. SwanLab starts in a thread
                     beside the session's first step, which waits for it at its end (``_Run.start_tracking``)

"tracking" in status.json and summary.json is {"requested": swanlab_mode (or SWANLAB_MODE), "mode":
what tracking got, "reason": why they differ, or null}, e.g. a cloud run tracked offline because the
SwanLab host did not answer; null itself when the run ended before tracking started.

Exit codes: 0 finished; 1 uncaught error (traceback in train.log); 2 bad input (config, data,
tokenizer, out dir: one line, no traceback); 3 loss became NaN/Inf (the last good checkpoint is
kept); 130 interrupted by SIGINT; 143 interrupted by SIGTERM or SIGUSR1 (both after saving a checkpoint at
the next step boundary; a second Ctrl-C exits at once, a repeated SIGTERM does not).

``--resume`` continues from the newest checkpoint that loads (a truncated one is skipped with a
warning) and truncates metrics.jsonl after its step; the continuation is exact (same losses as
an uninterrupted run, bitwise on CPU). Without ``--resume`` a directory holding checkpoints is
refused rather than overwritten.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import random
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from expkit import tracking
from expkit.names import METRICS_FILE
from expkit.config import TrainConfig, validate
from expkit.errors import ConfigError, ExpError
from expkit.files import atomic_file, atomic_write
from expkit.workspace import resolve_data_path

from .data import BatchStream, PackedBlocks, eval_batches, load_corpus
from .tokenizer import EOS_ID, load_tokenizer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_SIGINT = 130  # 128 + SIGINT, the shell's convention
EXIT_SIGTERM = 143  # 128 + SIGTERM

SAMPLE_PROMPTS = ("床前明月光", "人生", "The meaning of life")
HEARTBEAT_EVERY_S = 10.0
TRACKING_FLUSH_S = 30.0  # the longest a metric line waits for SwanLab when no evaluation or checkpoint comes
CHECKPOINT_FORMAT = 1

# Dense bf16 tensor-core peak per GPU, for MFU (nanoGPT's estimate); unknown GPUs get no MFU.
_PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
                    "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12}


class Diverged(Exception):
    """The training loss (or, seen at a checkpoint, the weights) became NaN or Inf at ``step``."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(f"{what} became NaN/Inf at step {step}")
        self.step = step


# -- the run directory -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    out: Path

    @property
    def metrics(self) -> Path:
        return self.out / METRICS_FILE

    @property
    def log(self) -> Path:
        return self.out / "train.log"

    @property
    def status(self) -> Path:
        return self.out / "status.json"

    @property
    def heartbeat(self) -> Path:
        return self.out / "heartbeat"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def samples(self) -> Path:
        return self.out / "samples.json"

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def final(self) -> Path:
        return self.out / "final"


def _write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (no NaN: a reader of status.json or summary.json is not Python alone), atomically."""
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False, default=str) + "\n")


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _now_iso(timespec: str = "seconds") -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec=timespec)


class RunLog:
    """train.log plus stdout. Rank 0 logs everything; other ranks only their warnings and errors."""

    def __init__(self, path: Path | None, rank: int = 0, append: bool = False) -> None:
        self.rank = rank
        self._fh = open(path, "a" if append else "w", encoding="utf-8") if path is not None else None

    def _emit(self, text: str, stream: Any) -> None:
        line = f"[{_dt.datetime.now():%H:%M:%S}] {text}"
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
        print(line if self.rank == 0 else f"[rank {self.rank}] {line}", file=stream, flush=True)

    def info(self, text: str) -> None:
        if self.rank == 0:
            self._emit(text, sys.stdout)

    def warn(self, text: str) -> None:
        self._emit(f"warning: {text}", sys.stderr)

    def error(self, text: str) -> None:
        self._emit(f"error: {text}", sys.stderr)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()


# -- processes, devices, precision -------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(t, op=op or torch_dist.ReduceOp.SUM)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out


def pick_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    want = cfg.device
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and not dist.enabled:
            return torch.device("mps")
        return torch.device("cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={want} but CUDA is not available here; use device=auto or cpu")
        if dist.enabled:  # torchrun: one GPU per local rank
            return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        return torch.device(want)
    if want == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps but MPS is not available here; use device=auto or cpu")
    return torch.device(want)


def pick_dtype(cfg: TrainConfig, device: torch.device, log: RunLog) -> torch.dtype:
    """The autocast dtype; float32 means no autocast. Parameters and checkpoints stay float32."""
    name = cfg.dtype
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # CPU bf16 autocast is slower than fp32 on most CPUs
    if name == "float16" and device.type != "cuda":
        log.warn(f"dtype=float16 needs CUDA; training in float32 on {device.type}")
        return torch.float32
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warn("this GPU has no bfloat16; training in float16 with loss scaling")
        return torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# -- optimisation ------------------------------------------------------------------------------


def build_optimizer(net: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, biases or embedding tables, tied or not)."""
    embedding_ids = {id(p) for m in net.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for _, p in net.named_parameters():  # named_parameters yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra: dict[str, Any] = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to the peak, then cosine down to ``min_lr_ratio`` of it at ``max_steps``.

    ``factor(i)`` multiplies the peak lr for optimizer step i (0-based). The trainer computes the
    lr of each step from its number (``set_lr``): no scheduler state is saved, so a resume takes the
    schedule from this run's config (``max_steps`` may have grown) and nothing needs patching.
    """

    warmup_steps: int
    max_steps: int
    min_lr_ratio: float

    def __call__(self, i: int) -> float:
        if i < self.warmup_steps:
            return (i + 1) / self.warmup_steps
        progress = min(1.0, (i - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, peak: float, step: int) -> float:
        """The lr of optimizer step ``step`` (1-based), as LambdaLR computed it: ``peak * factor``."""
        return peak * self(step - 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# -- throughput: the one definition ------------------------------------------------------------


class TrainClock:
    """Training time: wall time since ``start()`` minus the pauses the trainer records.

    Evaluation and checkpoints run inside ``with clock.pause():``, and so does the first step's wait
    for SwanLab's start; everything else the loop does (forward, backward, optimizer, data, log
    lines, tracking, heartbeats) is training time.
    ``train_s`` and ``paused_s`` carry over a resume (``before``) so metrics.jsonl stays cumulative.
    """

    def __init__(self, train_before: float = 0.0, paused_before: float = 0.0) -> None:
        self.train_before = train_before
        self.paused_before = paused_before
        self._t0 = time.perf_counter()
        self._paused = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._paused = 0.0

    @property
    def session_train_s(self) -> float:
        return max(0.0, time.perf_counter() - self._t0 - self._paused)

    @property
    def session_paused_s(self) -> float:
        return self._paused

    @property
    def train_s(self) -> float:
        return self.train_before + self.session_train_s

    @property
    def paused_s(self) -> float:
        return self.paused_before + self._paused

    @contextmanager
    def pause(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0


def throughput(tokens: float, train_s: float) -> float:
    """Tokens per second of training time (evaluation and checkpoint pauses excluded): the one
    definition behind ``tokens_per_s`` in metrics.jsonl, summary.json and the benches."""
    return tokens / train_s if train_s > 0 else 0.0


def model_flops_utilization(flops_per_token: float, tokens_per_s: float, peak_flops_total: float | None) -> float | None:
    """MFU on the same basis as ``throughput``: achieved model FLOP/s over the devices' peak."""
    if not peak_flops_total:
        return None
    return flops_per_token * tokens_per_s / peak_flops_total


# -- checkpoints -------------------------------------------------------------------------------


def _ckpt_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpoints:
    """``checkpoints/step_XXXXXXXX.pt``, written atomically, pruned to the best k plus the last.

    Each .pt has a small .json beside it ({"step", KEY}) so pruning never loads a checkpoint;
    the best are ranked by ``value`` (here the validation loss, lower is better; on a tie the
    newer). A .pt that does not load is skipped on resume (renamed ``.corrupt``). The
    classification trainer's ``RankedCheckpoints`` ranks by its monitor on the same files.
    """

    #: the .json's field ranked on, and the checkpoints' format
    KEY = "val_loss"
    FORMAT: Any = CHECKPOINT_FORMAT

    def __init__(self, directory: Path, keep_top_k: int, log: RunLog) -> None:
        self.dir = directory
        self.keep_top_k = keep_top_k
        self.log = log

    def path(self, step: int) -> Path:
        return self.dir / _ckpt_name(step)

    def save(self, state: dict[str, Any], step: int, val_loss: float | None) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        with atomic_file(path) as fh:
            torch.save(state, fh)
        _write_json_atomic(path.with_suffix(".json"), self.label(step, val_loss))
        self.prune()
        return path

    def label(self, step: int, value: float | None) -> dict[str, Any]:
        """What the .json beside a checkpoint says."""
        return {"step": step, self.KEY: _finite_or_none(value)}

    def listed(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.dir.glob("step_*.pt"):
            try:
                found.append((int(p.stem.split("_")[1]), p))
            except (IndexError, ValueError):
                continue
        return sorted(found)

    def value(self, path: Path) -> float | None:
        try:
            v = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get(self.KEY)
        except (OSError, ValueError, AttributeError):
            return None
        return float(v) if isinstance(v, (int, float)) else None

    def ranked(self) -> list[tuple[int, Path, float]]:
        """(step, path, value), best first: the lowest value, on a tie the newer."""
        rows = [(s, p, v) for s, p in self.listed() if (v := self.value(p)) is not None]
        return sorted(rows, key=lambda r: (r[2], -r[0]))

    def prune(self) -> None:
        ckpts = self.listed()
        if not ckpts:
            return
        keep = {ckpts[-1][1]} | {p for _, p, _ in self.ranked()[: self.keep_top_k]}  # the last, and the best k
        for _, p in ckpts:
            if p not in keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)

    def load(self, path: Path) -> dict[str, Any]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != self.FORMAT:
            raise ValueError("not an expkit checkpoint of this trainer")
        return state

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads; corrupt ones are renamed ``.corrupt`` with a warning."""
        for tmp in self.dir.glob(".step_*.tmp"):  # a save cut short by a kill
            tmp.unlink(missing_ok=True)
        for step, path in reversed(self.listed()):
            try:
                state = self.load(path)
                if state.get("step") != step:
                    raise ValueError("step does not match the file name")
            except Exception as err:  # truncated zip, bad pickle, wrong content
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                self.log.warn(f"skipping checkpoint {path.name}: cannot load it ({reason}); trying an older one")
                path.rename(path.with_name(path.name + ".corrupt"))
                path.with_suffix(".json").unlink(missing_ok=True)
                continue
            return state
        return None


# -- data (memoised per process: tests and benchmarks train many times on one corpus) ----------

_CORPUS_CACHE: dict[tuple[Any, ...], tuple[PackedBlocks, PackedBlocks]] = {}


def _file_key(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return str(path)
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def load_data(cfg: TrainConfig, tokenizer: Any, base: Path | None, note: Any = None) -> tuple[PackedBlocks, PackedBlocks]:
    key = (
        _file_key(resolve_data_path(cfg.data_path, "train", base)),
        _file_key(resolve_data_path(cfg.val_data_path, "val", base)),
        _file_key(resolve_data_path(cfg.tokenizer_path, "tokenizer", base) / "tokenizer.json"),
        cfg.max_seq_len,
        cfg.vocab_size,
    )
    if key not in _CORPUS_CACHE:
        if len(_CORPUS_CACHE) >= 4:
            _CORPUS_CACHE.clear()
        _CORPUS_CACHE[key] = load_corpus(cfg, tokenizer, base, note=note)
    return _CORPUS_CACHE[key]


# -- helpers of the loop -----------------------------------------------------------------------


def param_sha256(net: torch.nn.Module) -> str:
    """Digest of every parameter's bytes in name order: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, p in net.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS: bytes; Linux: KiB


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``: through pinned memory and an asynchronous copy on CUDA (the
    caching host allocator reuses the pinned blocks and keeps them until the copy is done)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# torch.compile's options; tests use the "eager" backend (dynamo without a C++ compiler)
COMPILE_OPTIONS: dict[str, Any] = {}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16_FLOPS.items() if k in name), None)


def _fmt_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


@torch.no_grad()
def evaluate(net: torch.nn.Module, val: PackedBlocks, cfg: TrainConfig, device: torch.device,
             autocast: Any, dist: Dist) -> float:
    """Mean loss over the fixed validation batches, shared out over the ranks."""
    was_training = net.training
    net.eval()
    # float32: Apple MPS has no float64 (the sum of eval_batches losses needs no more)
    total = torch.zeros(2, dtype=torch.float32, device=device)  # [sum of batch losses, batches]
    for b, (x, y) in enumerate(eval_batches(val, cfg.batch_size, cfg.eval_batches)):
        if b % dist.world_size != dist.rank:
            continue
        with autocast:
            out = net(to_device(x, device), targets=to_device(y, device))
        total[0] += out.loss.detach().float()
        total[1] += 1
    dist.all_reduce(total)
    net.train(was_training)
    return float(total[0] / total[1])


@torch.no_grad()
def generate_samples(net: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, device: torch.device,
                     autocast: Any, step: int) -> dict[str, Any]:
    """Greedy and seeded-sampling continuations of SAMPLE_PROMPTS."""
    net.eval()
    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], dtype=torch.long, device=device)
        for mode in ("greedy", "sample"):
            kwargs: dict[str, Any] = {"do_sample": False}
            if mode == "sample":
                torch.manual_seed(cfg.seed)
                kwargs = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 1.0}
            with autocast:
                out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.sample_max_new_tokens,
                                   eos_token_id=EOS_ID, pad_token_id=EOS_ID, **kwargs)
            new = out[0, ids.shape[1]:].tolist()
            completion = tokenizer.decode(new, skip_special_tokens=True)
            samples.append({"prompt": prompt, "mode": mode, "completion": completion,
                            "text": prompt + completion, "new_tokens": len(new)})
    return {"step": step, "seed": cfg.seed, "max_new_tokens": cfg.sample_max_new_tokens,
            "sampling": {"temperature": 0.8, "top_k": 50}, "samples": samples}


def save_final(net: torch.nn.Module, tokenizer: Any, final: Path) -> None:
    """save_pretrained into a fresh directory, then swap it in, so final/ is never half written."""
    import shutil

    from transformers.utils import logging as hf_logging

    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar in train.log's stdout twin
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


class _StopFlag:
    """SIGINT/SIGTERM set it; the loop saves a checkpoint at the next step boundary and exits.
    SIGUSR1 (Slurm's warning before the time limit, ``--signal=USR1@120``) does the same: the
    requeued job resumes from that checkpoint.

    A second Ctrl-C (SIGINT) restores the default handler's effect: an immediate exit. A repeated
    SIGTERM is the same request again, not an escalation: `exp stop` signals the run script's
    whole process group and the script forwards the signal to its child as well, and torchrun
    and Slurm forward theirs; dying on the echo would lose the checkpoint (SIGKILL forces).
    """

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            self._old.setdefault(sig, signal.getsignal(sig))  # a re-install keeps the true original
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            if signum != signal.SIGINT:
                return  # already stopping
            signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C: give up at once
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            except (TypeError, ValueError):
                pass
        self._old.clear()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    exit_code: int
    status: str
    step: int
    summary: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the trained model (rank 0), for tests and notebooks
    error: str | None = None


class LoadSampler:
    """The load a run ran under, sampled with each heartbeat: the 1-minute load average and the
    share of the whole machine's CPU time that other processes used since the last sample (all
    CPUs' busy time in /proc/stat minus this process's own CPU time; under DDP on CPU the other
    ranks count as other processes). Where /proc/stat is missing only the load average is kept.
    ``gpu_others``: processes on this run's GPU other than this one, through NVML when pynvml is
    installed (None otherwise, and on CPU) — the seam for a cheaper or richer probe."""

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self.device: torch.device | None = None
        self.loadavg: list[float] = []
        self.others: list[float] = []
        self.gpu: list[int] = []
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._prev = self._cpu_times()

    def _cpu_times(self) -> tuple[float, float, float] | None:
        """(busy seconds of all CPUs, total seconds of all CPUs, this process's CPU seconds)."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already inside user
        return (total - idle) / self._tick, total / self._tick, time.process_time()

    def _gpu_others(self) -> int | None:
        if self.device is None or self.device.type != "cuda":
            return None
        try:
            import pynvml  # optional: nvidia-ml-py

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            return sum(1 for p in procs if p.pid != os.getpid())
        except Exception:  # no NVML, no permission, a MIG slice: not known
            return None

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpus": self.cpus}
        try:
            out["loadavg"] = round(os.getloadavg()[0], 2)
            self.loadavg.append(out["loadavg"])
        except OSError:
            pass
        now = self._cpu_times()
        if now is not None and self._prev is not None and now[1] > self._prev[1]:
            busy, total, own = (a - b for a, b in zip(now, self._prev))
            out["others_cpu"] = round(min(1.0, max(0.0, (busy - own) / total)), 3)
            self.others.append(out["others_cpu"])
        self._prev = now
        gpu = self._gpu_others()
        if gpu is not None:
            out["gpu_others"] = gpu
            self.gpu.append(gpu)
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpus": self.cpus, "samples": max(len(self.loadavg), len(self.others))}
        if self.loadavg:
            out["loadavg_mean"] = round(sum(self.loadavg) / len(self.loadavg), 3)
            out["loadavg_max"] = max(self.loadavg)
        if self.others:
            out["others_cpu_mean"] = round(sum(self.others) / len(self.others), 3)
            out["others_cpu_max"] = max(self.others)
        out["gpu_others"] = max(self.gpu) if self.gpu else None
        return out


class _Run:
    """State shared by the phases of one train() call."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, dist: Dist) -> None:
        self.cfg = cfg
        self.files = RunFiles(out_dir)
        self.dist = dist
        self.step = 0
        self.status = "running"
        self.t_start = time.time()
        self.elapsed_before = 0.0  # wall seconds of earlier sessions (resume)
        self.last_heartbeat = 0.0
        self.owns_dir = False  # False until we know out_dir is ours to write (not another run's)
        self.tracker = tracking.Tracker("disabled")
        self._tracking: dict[str, Any] | None = None  # tracker.describe() once tracking started
        self._starting: threading.Thread | None = None  # start_tracking's thread, until tracking_ready
        self._started: dict[str, Any] = {}  # what that thread returns: {"tracker"} or {"error"}
        self._start_warnings: list[str] = []  # its warnings, logged by the main thread when it is joined
        self._warn: Any = None
        self._requested = "disabled"
        # metric lines not yet handed to the tracker: SwanLab gets them in batches, off the hot path
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.last_flush = time.monotonic()
        self.load = LoadSampler()

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def write_status(self, status: str, error: str | None = None, exit_code: int | None = None, **extra: Any) -> None:
        if not (self.dist.master and self.owns_dir):
            return
        self.status = status
        data: dict[str, Any] = {"status": status, "step": self.step, "pid": os.getpid(), "updated": _now_iso()}
        if error is not None:
            data["error"] = error
        if exit_code is not None:
            data["exit_code"] = exit_code
        data["tracking"] = self.tracking  # waits for a tracker still starting
        data.update(extra)
        _write_json_atomic(self.files.status, data)

    @property
    def tracking(self) -> dict[str, Any] | None:
        """What tracking got (``Tracker.describe()``), None before it started; waits for a start in progress."""
        self.tracking_ready()
        return self._tracking

    def start_tracking(self, out: Path, *, mode: str, history: Sequence[dict[str, Any]], warn: Any,
                       **kwargs: Any) -> bool:
        """Start the tracker (``tracking.start``); True when it is starting in a thread.

        SwanLab (offline or cloud) starts in a thread: its import and ``swanlab.init`` (about half
        a second of CPU, seconds for a cloud probe) run beside the first step instead of before it,
        and the session's first step waits for it at its end (``tracking_ready``, inside a pause:
        not training time), before its log line. ``history``, the rows a resumed run logs again,
        are queued and handed over in that pause, so SwanLab gets the same lines in the same order
        as before. The thread's warnings are logged when it is joined, by the main thread.
        """
        self._requested = tracking.resolve_mode(mode, lambda _: None)  # start() warns, once
        if self._requested == "disabled":
            self.tracker = tracking.start(out, mode=mode, warn=warn)
            self._tracking = self.tracker.describe()
            return False
        self._warn = warn
        self.pending[:0] = [(row, int(row["step"])) for row in history if "step" in row]

        def target() -> None:
            try:
                self._started["tracker"] = tracking.start(out, mode=mode, history=(),
                                                          warn=self._start_warnings.append, **kwargs)
            except BaseException as err:  # start() never raises; a thread must not die unreported
                self._started["error"] = err

        self._starting = threading.Thread(target=target, name="expkit-tracking-start", daemon=True)
        self._starting.start()
        return True

    @property
    def tracking_starting(self) -> bool:
        return self._starting is not None

    def tracking_ready(self) -> bool:
        """Wait for ``start_tracking``'s thread, if one is running (main thread only); True when it
        was. Then the tracker is the one it started, and the lines queued for a tracker that did not
        start are dropped (metrics.jsonl has them)."""
        thread = self._starting
        if thread is None:
            return False
        thread.join()
        self._starting = None
        tracker = self._started.get("tracker")
        if tracker is None:
            err = self._started.get("error")
            reason = f"SwanLab start failed ({type(err).__name__}: {err})"
            self._start_warnings.append(f"{reason}; tracking disabled, metrics.jsonl is complete")
            tracker = tracking.Tracker("disabled", requested=self._requested, reason=reason)
        for line in self._start_warnings:
            self._warn(line)
        self._start_warnings.clear()
        self.tracker = tracker
        self._tracking = tracker.describe()
        if not tracker.active:
            self.pending.clear()
        return True

    def track(self, row: dict[str, Any], step: int) -> None:
        """Queue a metric line for the tracker (a list append: nothing of SwanLab's runs per step)."""
        if self.tracker.active or self._starting is not None:
            self.pending.append((row, step))

    def flush_tracking(self) -> None:
        """Hand the queued lines to the tracker, in order. The loop calls this inside the evaluation
        and checkpoint pauses, at least every TRACKING_FLUSH_S of training (so a cloud dashboard stays
        current), and before the tracker finishes on every way out."""
        self.tracking_ready()
        pending, self.pending = self.pending, []
        for row, step in pending:
            self.tracker.log(row, step)
        self.last_flush = time.monotonic()

    def tracking_due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.last_flush >= TRACKING_FLUSH_S

    def finish_tracking(self, status: str, error: str | None = None) -> None:
        try:
            self.flush_tracking()
        finally:
            self.tracker.finish(status, error)

    def beat(self, force: bool = False) -> None:
        now = time.time()
        if self.dist.master and (force or now - self.last_heartbeat >= HEARTBEAT_EVERY_S):
            self.last_heartbeat = now
            _write_json_atomic(self.files.heartbeat, {"time": _now_iso("milliseconds"), "unix": round(now, 3), "step": self.step,
                                                      "pid": os.getpid(), "status": self.status,
                                                      "load": self.load.sample()})


def train(
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    base: Path | None = None,
) -> TrainResult:
    """Train per ``cfg`` into ``out_dir``; never raises for a training problem, returns its exit code.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes the outputs.
    ``base`` resolves relative data paths (default: the current directory).
    """
    dist = Dist.from_env()
    out_dir = Path(out_dir)
    run = _Run(cfg, out_dir, dist)
    log: RunLog | None = None
    stop = _StopFlag()
    state: dict[str, Any] = {}
    try:
        if dist.master:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ExpError(f"cannot create --out-dir {out_dir}: {err.strerror or err}") from err
            if not resume and any(run.files.checkpoints.glob("step_*.pt")):
                raise ExpError(f"{out_dir} already holds checkpoints of a run; pass --resume to continue it "
                               "or choose an empty --out-dir")
        run.owns_dir = True
        log = RunLog(run.files.log if dist.master else None, dist.rank, append=resume)
        stop.install()  # before the slow setup: a signal there ends the run cleanly too
        if dist.master:
            run.write_status("running")
            run.beat(force=True)
        code = _train(run, log, stop, state, resume, name, description, tags, base)
        return TrainResult(code, run.status, run.step, state.get("summary", {}), state.get("model"))
    except ExpError as err:  # bad input: one line, no traceback
        msg = str(err)
        (log or RunLog(None, dist.rank)).error(msg)
        _safe(lambda: run.write_status("failed", error=msg, exit_code=EXIT_BAD_INPUT))
        _safe(lambda: run.finish_tracking("failed", msg))
        return TrainResult(EXIT_BAD_INPUT, "failed", run.step, error=msg)
    except Exception as err:
        msg = f"{type(err).__name__}: {err}"
        tb = traceback.format_exc()
        lg = log or RunLog(None, dist.rank)
        lg.error(f"training failed at step {run.step}: {msg}")
        lg.error(tb.rstrip())
        _safe(lambda: run.write_status("failed", error=msg, exit_code=EXIT_FAILED))
        _safe(lambda: _write_summary(run, state, "failed"))
        _safe(lambda: run.finish_tracking("failed", msg))
        return TrainResult(EXIT_FAILED, "failed", run.step, state.get("summary", {}), state.get("model"), msg)
    finally:
        stop.restore()
        if log is not None:
            log.close()
        if dist.enabled and torch_dist.is_initialized():
            _safe(torch_dist.destroy_process_group)


def _safe(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


def _train(run: _Run, log: RunLog, stop: _StopFlag, state: dict[str, Any], resume: bool, name: str | None,
           description: str | None, tags: Sequence[str], base: Path | None) -> int:
    cfg, dist, files = run.cfg, run.dist, run.files
    from .modeling import MiniMindConfig, MiniMindForCausalLM

    # -- processes and device ----------------------------------------------------------------
    if cfg.cuda_devices and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg.cuda_devices  # before CUDA initialises
    device = pick_device(cfg, dist)
    run.load.device = device
    if dist.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dtype = pick_dtype(cfg, device, log)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # -- data and model ----------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer_path if cfg.tokenizer_path == "embedded"
                               else resolve_data_path(cfg.tokenizer_path, "tokenizer", base) or "")
    train_blocks, val_blocks = load_data(cfg, tokenizer, base, note=lambda line: log.info(f"data: {line}"))
    batches = BatchStream(train_blocks, cfg.batch_size, cfg.seed, dist.rank, dist.world_size)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    net = MiniMindForCausalLM(MiniMindConfig.from_train_config(cfg)).to(device)
    state["model"] = net if dist.master else None
    counts = net.param_counts()
    optimizer = build_optimizer(net, cfg, device)
    schedule = Schedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    tokens_per_step = batches.tokens_per_batch * cfg.accumulation_steps * dist.world_size

    ckpts = Checkpoints(files.checkpoints, cfg.keep_top_k, log)
    best_val = math.inf
    last_val: float | None = None
    history: list[dict[str, Any]] = []
    window = (0.0, 0)  # (sum, steps) of the training losses since the last log line
    clock = TrainClock()
    if resume:
        ckpt = ckpts.load_latest() if dist.master else None
        if dist.enabled:  # rank 0 chose it; the others read the same file
            box = [ckpt["step"] if ckpt is not None else None]
            torch_dist.broadcast_object_list(box, src=0)
            if not dist.master and box[0] is not None:
                ckpt = torch.load(files.checkpoints / _ckpt_name(box[0]), map_location="cpu", weights_only=True)
        if ckpt is None:
            log.info("resume: no usable checkpoint; starting from step 0")
        else:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            # the lr of each step comes from its number and this run's config; an older checkpoint's
            # "scheduler" state (LambdaLR) is not needed and is ignored
            scaler.load_state_dict(ckpt["scaler"])
            batches.load_state_dict(ckpt["data"])
            rngs = ckpt["rng"]
            if len(rngs) == dist.world_size:
                _set_rng_state(rngs[dist.rank], device)
            else:
                log.warn(f"checkpoint has RNG states of {len(rngs)} processes, this run has {dist.world_size}; "
                         "re-seeding (dropout noise will differ from an uninterrupted run)")
                torch.manual_seed(cfg.seed + 7919 * dist.rank + ckpt["step"])
            run.step = int(ckpt["step"])
            best_val = float(ckpt["best_val_loss"]) if ckpt.get("best_val_loss") is not None else math.inf
            last_val = ckpt.get("val_loss")
            run.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
            # older checkpoints have no train_s: their wall time stands in for it
            clock = TrainClock(float(ckpt.get("train_s", run.elapsed_before)), float(ckpt.get("paused_s", 0.0)))
            window = tuple(ckpt.get("loss_window", window))
            log.info(f"resume: continuing from checkpoint step {run.step} ({_ckpt_name(run.step)})")
        if dist.master:
            history = tracking.MetricsFile.truncate_after(files.metrics, run.step)
    elif dist.master:
        files.metrics.unlink(missing_ok=True)
    if dist.master and not files.config.exists():
        _write_json_atomic(files.config, cfg.model_dump())
    raw_net = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # MoE runs every expert, on an empty batch if need be: all parameters get a gradient
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    ddp_net = net
    if cfg.compile:
        # the compiled module shares raw_net's parameters; checkpoints, evaluation, samples and
        # final/ use raw_net, so their keys have no "_orig_mod." prefix and load anywhere
        net = torch.compile(net, **COMPILE_OPTIONS)

    # -- the start banner, and tracking (rank 0), which starts beside step 1 -------------------
    requested = tracking.resolve_mode(cfg.swanlab_mode, warn=lambda _: None) if dist.master else "disabled"
    log.info(f"{cfg.model_type}: device {device}, autocast {str(dtype).removeprefix('torch.')}, "
             f"{dist.world_size} process(es), tracking {requested}")
    log.info("params: " + ", ".join(f"{k} {_fmt_count(v)}" for k, v in counts.items()))
    log.info(f"data: {len(train_blocks)} train blocks ({_fmt_count(train_blocks.n_tokens)} tokens), "
             f"{len(val_blocks)} val blocks; {tokens_per_step} tokens per step, {cfg.max_steps} steps")
    if dist.master and not run.start_tracking(
            files.out, mode=cfg.swanlab_mode, project=cfg.swanlab_project, name=name or files.out.name,
            description=description, tags=tags, config=cfg.model_dump(), history=history, warn=log.warn):
        run.write_status("running")  # with the tracking the run got (a starting tracker: at step 1)

    # -- the loop ----------------------------------------------------------------------------
    metrics = tracking.MetricsFile(files.metrics) if dist.master else None
    run.beat(force=True)
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss, 0 = none
    loss_acc = torch.zeros((), device=device)  # this step's loss (mean over its micro-batches)
    loss_sum = torch.full((), window[0], device=device)  # the log line reports the mean since the last one
    window_steps = int(window[1])
    grad_norm: torch.Tensor | None = None
    session_start_step = run.step
    clock.start()
    train_last, step_last = clock.train_before, run.step  # the previous log line's training time and step
    last_loss = math.nan
    net.train()

    def check_finite() -> None:
        bad = first_bad.clone()
        if dist.enabled:
            bad = torch.where(bad == 0, torch.full_like(bad, 2**62), bad)
            dist.all_reduce(bad, op=torch_dist.ReduceOp.MIN)
            bad = torch.where(bad == 2**62, torch.zeros_like(bad), bad)
        if int(bad):
            run.step = int(bad)
            raise Diverged(int(bad))

    def check_weights() -> None:
        # a finite loss can still come with an update that overflowed the weights: never save those
        finite = torch.stack([p.isfinite().all() for p in raw_net.parameters()]).all().to(torch.long)
        if not int(dist.all_reduce(finite, op=torch_dist.ReduceOp.MIN) if dist.enabled else finite):
            raise Diverged(run.step, "weights")

    def stop_requested(sync_point: bool) -> int:
        if not dist.enabled:
            return stop.signum
        if not sync_point:
            return 0
        flag = torch.tensor([stop.signum], dtype=torch.long, device=device)
        dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return int(flag)

    saved_at = [session_start_step]  # the step of the newest checkpoint, known on every rank

    def train_end() -> float:
        """Training seconds at the end of the session's last step: the last log line's reading when
        that step was logged (so summary.json and metrics.jsonl agree exactly), else the clock now."""
        return train_last if step_last == run.step else clock.train_s

    def checkpoint(val_loss: float | None) -> None:
        check_weights()
        rngs = dist.gather_objects(_rng_state(device))
        if dist.master:
            ckpts.save({
                "format": CHECKPOINT_FORMAT, "step": run.step, "model": raw_net.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rngs, "data": batches.state_dict(),
                "best_val_loss": _finite_or_none(best_val), "val_loss": _finite_or_none(val_loss),
                "elapsed_s": run.elapsed, "train_s": clock.train_s, "paused_s": clock.paused_s,
                "tokens_seen": run.step * tokens_per_step, "config": cfg.model_dump(),
                "loss_window": (float(loss_sum), window_steps),
            }, run.step, val_loss)
        dist.barrier()
        saved_at[0] = run.step

    try:
        signum = stop_requested(True)
        while run.step < cfg.max_steps and not signum:
            step = run.step + 1
            lr = schedule.lr(cfg.learning_rate, step)
            set_lr(optimizer, lr)
            loss_acc.zero_()
            for micro in range(cfg.accumulation_steps):
                x, y = batches.next_batch()  # [B, T] each
                x, y = to_device(x, device), to_device(y, device)
                last_micro = micro == cfg.accumulation_steps - 1
                sync = ddp_net.no_sync() if dist.enabled and not last_micro else nullcontext()
                with sync:
                    with autocast:
                        loss = net(x, targets=y).loss / cfg.accumulation_steps
                    scaler.scale(loss).backward()
                loss_acc += loss.detach().float()
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss_acc), step, first_bad)
            loss_sum += loss_acc
            window_steps += 1

            is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
            is_log = step % cfg.log_interval == 0 or step == 1 or is_eval
            is_save = step % cfg.save_interval == 0 or step == cfg.max_steps
            if cfg.grad_clip > 0 or is_log:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_net.parameters(), cfg.grad_clip or math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.step = step
            if dist.master and run.tracking_starting:  # the session's first step ran beside SwanLab's start
                with clock.pause():
                    run.tracking_ready()
                    run.flush_tracking()  # a resumed run's history, logged again (as start() did before the loop)
                    stop.install()  # swanlab.init leaves the SIGINT handler alone off the main thread; to be sure
                    run.write_status("running")  # now with the tracking the run got

            if is_log or is_save:
                check_finite()  # reads one number: the only per-interval sync besides the log line
            if is_log:
                row = _log_row(run, step, loss_sum / window_steps, lr, grad_norm, tokens_per_step, dist)
                # after the row's device->host read: the steps it covers have finished on the device
                train_now = clock.train_s
                row.update(_rate_fields((step - step_last) * tokens_per_step, train_now - train_last, train_now,
                                        clock.paused_s))
                last_loss = row["loss"]
                loss_sum.zero_()
                window_steps = 0
                train_last, step_last = train_now, step
                if is_eval:
                    with clock.pause():
                        last_val = evaluate(raw_net, val_blocks, cfg, device, autocast, dist)
                    best_val = min(best_val, last_val)
                    row["val_loss"] = last_val
                if dist.master:
                    metrics.write(row)
                    run.track(row, step)
                    log.info(_log_line(row, cfg.max_steps))
            if is_save:
                with clock.pause():
                    checkpoint(last_val if is_eval else None)
            if dist.master and run.pending and (is_eval or is_save):
                with clock.pause():  # SwanLab's share of the pause that evaluation or the checkpoint makes
                    run.flush_tracking()
            elif dist.master and run.tracking_due():
                run.flush_tracking()
            run.beat(force=is_log)
            signum = stop_requested(is_log or is_save)

        if signum:  # -- interrupted: checkpoint, report, exit 130/143 --------------------------
            code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM  # USR1 (Slurm's warning) as SIGTERM
            sig_name = signal.Signals(signum).name
            if run.step > session_start_step:
                check_finite()
                if saved_at[0] != run.step:
                    checkpoint(None)
                log.info(f"{sig_name}: saved checkpoint {_ckpt_name(run.step)}; resume with --resume")
            else:
                log.info(f"{sig_name} before the first step: nothing to save")
            run.write_status("interrupted", error=f"stopped by {sig_name}", exit_code=code)
            run.beat(force=True)
            _write_summary(run, state, "interrupted", extra=_summary_fields(
                run, last_loss, best_val, last_val, counts, tokens_per_step, session_start_step, clock,
                train_end(), device,
                raw_net))
            run.finish_tracking("interrupted")
            return code
    except Diverged as bad:
        run.step = bad.step
        last_good = ckpts.listed()[-1][0] if dist.master and ckpts.listed() else None
        msg = (f"{bad}; stopped. Last good checkpoint: "
               + (f"step {last_good}" if last_good is not None else "none") + ". Lower learning_rate or check the data")
        log.error(msg)
        run.write_status("failed", error=msg, exit_code=EXIT_DIVERGED)
        run.beat(force=True)
        _write_summary(run, state, "failed", extra=_summary_fields(
            run, last_loss, best_val, last_val, counts, tokens_per_step, session_start_step, clock,
                train_end(), device,
            raw_net))
        run.finish_tracking("failed", msg)
        return EXIT_DIVERGED
    finally:
        if metrics is not None:
            metrics.close()

    # -- finished: summary, samples, final model ---------------------------------------------
    if run.step == session_start_step and last_val is None:  # resumed a finished run: nothing trained
        last_val = evaluate(raw_net, val_blocks, cfg, device, autocast, dist)
        best_val = min(best_val, last_val)
    if math.isnan(last_loss) and run.step > 0:
        rows = tracking.read_metrics(files.metrics) if dist.master else []
        last_loss = next((r["loss"] for r in reversed(rows) if r.get("loss") is not None), math.nan)
    extra = _summary_fields(run, last_loss, best_val, last_val, counts, tokens_per_step,
                            session_start_step, clock, train_end(), device, raw_net)
    digests = dist.gather_objects(extra["param_sha256"])
    if dist.enabled:
        extra["param_sha256_by_rank"] = digests
        extra["ddp_params_equal"] = len(set(digests)) == 1
        log.info(f"parameter sha256 by rank: {', '.join(d[:16] for d in digests)} "
                 f"({'equal' if len(set(digests)) == 1 else 'DIFFERENT'})")
    if dist.master:
        samples = generate_samples(raw_net, tokenizer, cfg, device, autocast, run.step)
        _write_json_atomic(files.samples, samples)
        for s in samples["samples"]:
            if s["mode"] == "greedy":
                log.info(f"sample {s['prompt']!r} -> {s['completion'][:80]!r}")
        save_final(raw_net, tokenizer, files.final)
        run.status = "finished"
        _write_summary(run, state, "finished", extra=extra)
        run.write_status("finished", exit_code=EXIT_OK)
        run.beat(force=True)
        run.finish_tracking("finished")
        s = state["summary"]
        log.info(f"finished: {run.step} steps, loss {s['final_loss']}, val_loss {s['val_loss']}, "
                 f"{_fmt_count(s['tokens_per_s'])} tok/s, {s['wall_s']:.1f}s")
    dist.barrier()
    return EXIT_OK


def _rate_fields(tokens: int, train_s: float, train_total_s: float, paused_total_s: float) -> dict[str, float]:
    """``tokens_per_s`` of ``tokens`` trained in ``train_s`` seconds (``throughput``), and the
    cumulative training and pause seconds it rests on, as metrics.jsonl and summary.json write them."""
    return {"tokens_per_s": round(throughput(tokens, train_s), 1), "train_s": round(train_total_s, 6),
            "paused_s": round(paused_total_s, 6)}


def _log_row(run: _Run, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None,
             tokens_per_step: int, dist: Dist) -> dict[str, Any]:
    vals = torch.stack([loss.float(), (grad_norm if grad_norm is not None else torch.zeros_like(loss)).float()])
    if dist.enabled:
        vals[0:1] = dist.all_reduce(vals[0:1].clone()) / dist.world_size  # mean loss over ranks
    loss, gnorm = vals.tolist()  # the one device->host read of a log step
    return {"step": step, "loss": _finite_or_none(loss), "lr": lr, "grad_norm": _finite_or_none(gnorm),
            "tokens_seen": step * tokens_per_step, "elapsed_s": round(run.elapsed, 3)}


def _log_line(row: dict[str, Any], max_steps: int) -> str:
    width = len(str(max_steps))
    parts = [f"step {row['step']:>{width}}/{max_steps}",
             f"loss {row['loss']:.4f}" if row["loss"] is not None else "loss nan",
             f"lr {row['lr']:.2e}", f"grad {row['grad_norm']:.3f}" if row["grad_norm"] is not None else "grad nan",
             f"{_fmt_count(row['tokens_per_s'])} tok/s", f"{row['elapsed_s']:.1f}s"]
    if "val_loss" in row:
        parts.append(f"val_loss {row['val_loss']:.4f} (ppl {math.exp(min(row['val_loss'], 50)):.1f})")
    return " | ".join(parts)


def _summary_fields(run: _Run, last_loss: float, best_val: float, last_val: float | None, counts: dict[str, int],
                    tokens_per_step: int, session_start_step: int, clock: TrainClock, train_end_s: float,
                    device: torch.device, net: torch.nn.Module) -> dict[str, Any]:
    # this session's steps over this session's training time (up to ``train_end_s``, the clock
    # when its last step was logged): the definition of the log lines, over the whole session
    session_tokens = (run.step - session_start_step) * tokens_per_step
    session_train_s = max(0.0, train_end_s - clock.train_before)
    rates = _rate_fields(session_tokens, session_train_s, train_end_s, clock.paused_s)
    out: dict[str, Any] = {
        "steps": run.step,
        "final_loss": _finite_or_none(last_loss),
        "best_val_loss": _finite_or_none(best_val),
        "val_loss": _finite_or_none(last_val),
        "val_ppl": _finite_or_none(math.exp(min(last_val, 700))) if last_val is not None else None,
        "tokens_seen": run.step * tokens_per_step,
        "wall_s": round(run.elapsed, 3),
        **rates,
        "params": int(counts.get("total", sum(p.numel() for p in net.parameters()))),
        "param_counts": {k: int(v) for k, v in counts.items()},
        "world_size": run.dist.world_size,
        "device": str(device),
        "peak_mem_mb": round(peak_memory_mb(device), 1),
        "param_sha256": param_sha256(net),
    }
    peak = peak_flops(device)
    if peak and hasattr(net, "flops_per_token"):
        mfu = model_flops_utilization(net.flops_per_token(), throughput(session_tokens, session_train_s),
                                      peak * run.dist.world_size)
        out["mfu"] = round(mfu, 4) if mfu is not None else None
    return out


def _write_summary(run: _Run, state: dict[str, Any], status: str, extra: dict[str, Any] | None = None) -> None:
    if not run.dist.master:
        return
    summary = {"status": status, **(extra or state.get("summary_fields", {})), "tracking": run.tracking,
               "load": run.load.summary()}
    if "steps" not in summary:
        summary["steps"] = run.step
    state["summary"] = summary
    _write_json_atomic(run.files.summary, summary)


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train_pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit codes: 0 finished, 1 uncaught error, 2 bad input, 3 loss NaN/Inf, "
                                       "130 SIGINT, 143 SIGTERM or SIGUSR1 (checkpoint saved)")
    p.add_argument("--config", required=True, type=Path, help="TrainConfig JSON (its model_dump)")
    p.add_argument("--out-dir", required=True, type=Path, help="run output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out-dir")
    p.add_argument("--name", default=None, help="tracker run name (the record's version)")
    p.add_argument("--description", default=None, help="tracker run description (the record's description)")
    p.add_argument("--tag", action="append", default=[], help="tracker tag (repeatable)")
    return p.parse_args(argv)


def read_config_json(path: Path, schema: str) -> dict[str, Any]:
    """A trainer's --config file as a dict, or one ConfigError line saying what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of {schema} keys")
    return data


def load_config(path: Path) -> TrainConfig:
    return validate(read_config_json(path, "TrainConfig"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ExpError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = train(cfg, args.out_dir, resume=args.resume, name=args.name, description=args.description,
                   tags=args.tag)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
