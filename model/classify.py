"""Sequence classification on the MiniMind backbone, and the pieces of its fine-tuning.

    MiniMindForSequenceClassification   the backbone of ``modeling`` (same parameter names, so a
                                        pretraining run's final/ loads into it) + pooling + a head
    read_labelled / load_classify_data  {"text", "label"} JSONL(.gz): the shipped corpora or a user's
    encode_texts / collate / augment_ids  token ids, right-padded batches, token deletion and swap
    classification_loss                 ce | focal, class weights, label smoothing
    param_groups / freeze               differential (head) and layer-wise decayed learning rates
    EMA, fgm_perturb                    weight averaging; the adversarial step on the embeddings

``import model`` registers the class with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from expkit.errors import ConfigError, DataError
from expkit.workspace import dataset_dir

from expkit.config import EMBEDDED_CORPORA, ClassifyConfig
from .modeling import Block, MiniMindConfig, MiniMindForCausalLM, RMSNorm, attention_mask_for, rope_cos_sin
from .tokenizer import EOS_ID

POOLINGS = ("mean", "last")


# -----------------------------------------------------------------------------------------------
# the model


@dataclass
class MiniMindSequenceClassifierOutput(SequenceClassifierOutput):
    """SequenceClassifierOutput plus the MoE balance loss (zero for the dense variants)."""

    aux_loss: torch.FloatTensor | None = None


class MiniMindForSequenceClassification(PreTrainedModel):
    """The MiniMind backbone, pooled (``config.classifier_pooling``: mean of the real tokens, or the
    last real token, which the trainer makes an EOS) into ``classifier`` (C -> num_labels).

    Parameter names are those of ``MiniMindForCausalLM`` (``embed_tokens``, ``layers``, ``norm``)
    less ``lm_head``, so ``from_causal_lm`` copies a pretrained backbone key by key.
    """

    config: MiniMindConfig
    config_class = MiniMindConfig
    base_model_prefix = ""
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__(config)
        pooling = getattr(config, "classifier_pooling", None) or "mean"
        if pooling not in POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head_dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    _init_weights = MiniMindForCausalLM._init_weights  # N(0, 0.02), residual projections scaled, zero biases

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, C) -> (B, C): the mean over the real tokens, or the last real token."""
        if attention_mask is None:
            return hidden.mean(dim=1) if self.pooling == "mean" else hidden[:, -1]
        m = attention_mask.to(hidden.dtype)  # (B, T)
        if self.pooling == "mean":
            return (hidden * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        positions = torch.arange(hidden.shape[1], device=hidden.device)  # the highest real position
        last = (attention_mask.long() * (positions + 1)).argmax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs: Any) -> MiniMindSequenceClassifierOutput:
        """Logits (B, num_labels) for ``input_ids`` (B, T); ``loss`` (plain cross-entropy) with ``labels``.

        Right padding needs no attention mask beyond causality (a real token never looks right),
        so the fused causal kernel runs; any other padding gets the explicit mask.
        """
        B, T = input_ids.shape
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
            mask = None if right_padded else attention_mask_for(attention_mask, 0, T, input_ids.device)
        position_ids = torch.arange(T, device=input_ids.device)[None]
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        x = self.dropout(self.embed_tokens(input_ids))  # (B, T, C)
        aux_loss = torch.zeros((), device=x.device)
        for block in self.layers:
            x, aux = block(x, cos, sin, mask, None)
            if aux is not None:
                aux_loss = aux_loss + aux
        x = self.norm(x)
        logits = self.classifier(self.head_dropout(self.pool(x, attention_mask)))  # (B, K)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        return MiniMindSequenceClassifierOutput(loss=loss, logits=logits, aux_loss=aux_loss)

    @classmethod
    def from_causal_lm(cls, path: str | Path, **config_overrides: Any) -> MiniMindForSequenceClassification:
        """The classifier with the backbone of a pretrained ``MiniMindForCausalLM`` (its final/),
        a freshly initialised head, and ``config_overrides`` (num_labels, id2label, ...)."""
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"init_from={path}: no config.json there; name a pretraining run's final/ directory")
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar in train.log's stdout twin
        try:
            lm = MiniMindForCausalLM.from_pretrained(path)
        except Exception as err:
            raise ConfigError(f"init_from={path}: cannot load a MiniMind model there ({err})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        config = lm.config
        for key, value in config_overrides.items():
            setattr(config, key, value)
        net = cls(config)
        backbone = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
        missing, unexpected = net.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ConfigError(f"init_from={path}: parameters do not match the classifier "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return net


# -----------------------------------------------------------------------------------------------
# data


@dataclass
class LabelledData:
    labels: list[str]  # the label set, in order: index = class id
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    source: dict[str, str]  # split -> where it came from


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) of every line of a ``{"text": ..., "label": ...}`` JSONL(.gz) file.

    The label is a string or an integer (kept as its string). Blank lines are skipped; a bad
    line is a ``DataError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labelled data file not found; check data_path / val_data_path / test_data_path")
    form = 'each line must be a JSON object like {"text": "...", "label": "..."}'
    out: list[tuple[str, str]] = []
    lineno = 0
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise DataError(f"{path}:{lineno}: not a JSON line ({err}); {form}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f"{path}:{lineno}: no string \"text\"; {form}")
                label = row.get("label")
                if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
                    raise DataError(f"{path}:{lineno}: \"label\" must be a non-empty string or an integer, "
                                    f"got {label!r}; {form}")
                out.append((row["text"], str(label)))
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read it ({err})") from None
    if not out:
        raise DataError(f"{path}: no examples (the file is empty); {form}")
    return out


def _hash_order(pairs: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    return sorted(pairs, key=lambda p: hashlib.sha256(f"{seed}\0classify\0{p[0]}\0{p[1]}".encode()).digest())


def stratified_holdout(pairs: list[tuple[str, str]], fraction: float, seed: int
                       ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(rest, held out): per label, the first ``fraction`` (at least one, when the label has two
    or more examples) of its examples in seeded-hash order."""
    rest: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for label in sorted({label for _, label in pairs}):
        members = _hash_order([p for p in pairs if p[1] == label], seed)
        n = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held += members[:n]
        rest += members[n:]
    return _hash_order(rest, seed), _hash_order(held, seed)


def _label_key(label: str) -> tuple[int, float, str]:
    """Integer labels in numeric order ("2" before "10"), then the others alphabetically."""
    try:
        return (0, float(int(label)), "")
    except ValueError:
        return (1, 0.0, label)


def embedded_paths(lang: str) -> dict[str, Path]:
    base = dataset_dir()
    return {split: base / f"classify_{lang}_{split}.jsonl.gz" for split in ("train", "val", "test")} | {
        "labels": base / f"classify_{lang}_labels.json"}


def _resolve(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base or Path.cwd()) / path


def load_classify_data(cfg: ClassifyConfig, base: Path | None = None) -> LabelledData:
    """The train/val/test examples and the label set of ``cfg``.

    An embedded corpus uses its shipped splits and label order. A user's ``data_path`` gives
    train; ``val_data_path`` / ``test_data_path`` name files or, when '', are 10% each of
    ``data_path`` held out per label (seeded). The label set is the train labels, sorted
    (integers numerically); a val or test label not among them is an error.
    """
    if cfg.data_path in EMBEDDED_CORPORA:
        paths = embedded_paths(EMBEDDED_CORPORA[cfg.data_path])
        if not paths["train"].is_file():
            raise DataError(f"{paths['train']}: the embedded classification corpus is missing; "
                            "build it with `python scripts/build_corpus.py`")
        labels = json.loads(paths["labels"].read_text(encoding="utf-8"))["labels"]
        raw = {split: read_labelled(paths[split]) for split in ("train", "val", "test")}
        source = {split: f"{cfg.data_path}:{split}" for split in raw}
    else:
        train = read_labelled(_resolve(cfg.data_path, base))
        source = {"train": cfg.data_path}
        raw = {}
        for split, key in (("test", "test_data_path"), ("val", "val_data_path")):
            given = getattr(cfg, key)
            if given:
                raw[split] = read_labelled(_resolve(given, base))
                source[split] = given
            else:
                train, raw[split] = stratified_holdout(train, 0.1, cfg.seed + (split == "val"))
                source[split] = f"10% of {cfg.data_path}"
        raw["train"] = train
        labels = sorted({label for _, label in train}, key=_label_key)
        for split in ("val", "test"):
            if not raw[split]:
                raise DataError(f"{source[split]}: no examples left for {split}; give {split}_data_path or more data")
    index = {label: i for i, label in enumerate(labels)}
    if len(labels) < 2:
        raise DataError(f"{source['train']}: {len(labels)} label(s) in the training data; a classifier needs two or more")
    for split in ("train", "val", "test"):
        unknown = sorted({label for _, label in raw[split]} - set(index))
        if unknown:
            raise DataError(f"{source[split]}: label(s) {', '.join(map(repr, unknown[:5]))} not in the training "
                            f"labels ({', '.join(labels[:10])}); every label needs training examples")
    as_ids = {split: [(text, index[label]) for text, label in raw[split]] for split in raw}
    return LabelledData(labels, as_ids["train"], as_ids["val"], as_ids["test"], source)


def encode_texts(texts: Sequence[str], tokenizer: Any, max_seq_len: int) -> list[list[int]]:
    """Token ids of each text, cut to ``max_seq_len - 1``, with ``EOS_ID`` appended (what
    ``pooling: last`` reads; an empty text is the EOS alone)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ids = [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(seq[: max_seq_len - 1]) + [EOS_ID] for seq in ids]


def collate(seqs: Sequence[Sequence[int]], pad_id: int = EOS_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and the 1/0 attention mask (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def augment_ids(ids: Sequence[int], mode: str, prob: float, rng: random.Random) -> list[int]:
    """Random token deletion and/or swap of neighbours (EDA-style), on token ids.

    The final EOS stays where it is and at least one other token survives a deletion; "both"
    deletes, then swaps. ``rng`` makes it reproducible (the trainer seeds it per step).
    """
    body, tail = list(ids[:-1]), list(ids[-1:])
    if mode in ("delete", "both") and body:
        kept = [t for t in body if rng.random() >= prob]
        body = kept or [body[rng.randrange(len(body))]]
    if mode in ("swap", "both"):
        i = 0
        while i < len(body) - 1:
            if rng.random() < prob:
                body[i], body[i + 1] = body[i + 1], body[i]
                i += 2  # a token moves at most one place per pass
            else:
                i += 1
    return body + tail


# -----------------------------------------------------------------------------------------------
# the loss


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """sklearn's "balanced": w_c = n / (K * n_c); a class absent from ``labels`` gets weight 0."""
    counts = Counter(labels)
    n = len(labels)
    return torch.tensor([n / (n_classes * counts[c]) if counts[c] else 0.0 for c in range(n_classes)],
                        dtype=torch.float32)


def classification_loss(logits: torch.Tensor, target: torch.Tensor, loss: str = "ce", focal_gamma: float = 2.0,
                        weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean loss of a batch: cross-entropy, or focal loss (1 - p_t)^gamma * CE (Lin et al. 2017).

    Class weights and label smoothing act inside the CE term; both losses are normalised by the
    batch's summed target weights, so focal with gamma 0 is exactly the cross-entropy.
    """
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    ce = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction="none")  # (B,)
    p_t = F.softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)  # (B,)
    norm = weight[target].sum() if weight is not None else torch.tensor(float(len(target)), device=logits.device)
    return ((1.0 - p_t).clamp_min(0.0).pow(focal_gamma) * ce).sum() / norm


# -----------------------------------------------------------------------------------------------
# what trains, and how fast


def freeze(net: MiniMindForSequenceClassification, n: int) -> int:
    """Freeze the embeddings and the bottom ``n`` blocks; ``-1``: everything but the head.
    Returns how many parameters stay trainable."""
    L = len(net.layers)
    if n > L:
        raise ConfigError(f"freeze_layers={n} but the model has {L} blocks; use 0..{L}, or -1 for all but the head")
    if n == -1:
        for name, p in net.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    elif n > 0:
        net.embed_tokens.weight.requires_grad_(False)
        for block in net.layers[:n]:
            block.requires_grad_(False)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def lr_scale(name: str, n_layers: int, head_lr_mult: float, layer_lr_decay: float) -> float:
    """The learning-rate multiplier of parameter ``name``: the head x head_lr_mult; the top block
    and the final norm x 1; block i x decay^(L-1-i); the embeddings x decay^L."""
    if name.startswith("classifier."):
        return head_lr_mult
    if name.startswith("layers."):
        i = int(name.split(".")[1])
        return layer_lr_decay ** (n_layers - 1 - i)
    if name.startswith("embed_tokens."):
        return layer_lr_decay ** n_layers
    return 1.0


def param_groups(net: MiniMindForSequenceClassification, cfg: ClassifyConfig) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters by (lr scale, decay): weight decay on matrices only
    (not norms, biases or embedding tables); each group's ``lr`` = learning_rate x its scale."""
    embedding_ids = {id(p) for m in net.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        scale = lr_scale(name, len(net.layers), cfg.head_lr_mult, cfg.layer_lr_decay)
        decay = p.dim() >= 2 and id(p) not in embedding_ids
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr": cfg.learning_rate * scale, "lr_scale": scale,
             "weight_decay": cfg.weight_decay if decay else 0.0} for (scale, decay), ps in groups.items()]


class EMA:
    """Exponential moving average of the trainable weights: shadow = d * shadow + (1 - d) * w
    after each step. ``applied(net)`` swaps the averages in (evaluation, saving) and back out."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in net.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for n, p in net.named_parameters():
            if n in self.shadow:
                self.shadow[n].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @contextmanager
    def applied(self, net: nn.Module) -> Iterator[None]:
        params = dict(net.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, s in self.shadow.items():
                params[n].copy_(s.to(params[n].dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, s in saved.items():
                    params[n].copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {n: t.clone().float() for n, t in state.items()}


@torch.no_grad()
def fgm_perturb(embedding: nn.Embedding, epsilon: float) -> torch.Tensor | None:
    """FGM (Miyato et al. 2017): move the embedding table by epsilon * g / ||g|| along its current
    gradient g; returns the step to subtract afterwards, or None when there is no usable gradient."""
    grad = embedding.weight.grad
    if grad is None:
        return None
    norm = grad.norm()
    if not torch.isfinite(norm) or float(norm) == 0.0:
        return None
    r = epsilon * grad / norm
    embedding.weight.add_(r)
    return r


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch: the remainder (a different one each epoch, the order being
    reshuffled) is left out rather than taking a step on a handful of texts."""
    return max(1, n_train // batch_size)
