"""The config of classification fine-tuning (``python -m model.train_classify``), torch-free.

``ClassifyConfig`` is a pydantic model with ``extra="forbid"``: the schema of the ``classify``
task. This module imports neither torch nor transformers (nor anything of ``model`` that does),
so expkit can import the schema to validate, describe and set keys without the trainer's
weight: ``from model.classify_config import ClassifyConfig, validate``.

Every switch is off by default; the defaults give plain fine-tuning with cross-entropy, AdamW,
linear warmup and cosine decay, gradient clipping and checkpoints ranked by ``monitor``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from expkit.errors import ConfigError

#: ``data_path`` values that name the shipped corpora (dataset/classify_{en,zh}_*.jsonl.gz).
EMBEDDED_CORPORA = {"embedded": "en", "embedded-en": "en", "embedded-zh": "zh"}

#: ``monitor`` -> is higher better?
MONITORS = {"val_macro_f1": True, "val_acc": True, "val_loss": False}


class ClassifyConfig(BaseModel):
    """What one classification fine-tuning run does. Shape keys (``hidden_size`` ...) are
    ``None`` = "the pretrained model's" (``init_from``) or the small default shape (``none``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- data ----------------------------------------------------------------------------------
    data_path: str = Field("embedded", min_length=1, description=(
        "train JSONL(.gz) of {\"text\", \"label\"}; 'embedded' (= 'embedded-en') = the shipped English "
        "corpus (15 fortune categories), 'embedded-zh' = the Chinese one (唐诗/宋词/其他)"))
    val_data_path: str = Field("", description=(
        "validation JSONL(.gz); '' = the shipped val split for an embedded corpus, else 10% of data_path "
        "held out (stratified, seeded)"))
    test_data_path: str = Field("", description=(
        "test JSONL(.gz); '' = the shipped test split for an embedded corpus, else another 10% of data_path"))
    tokenizer_path: str = Field("embedded", min_length=1, description=(
        "tokenizer dir; 'embedded' = dataset/tokenizer; with init_from, the model's own tokenizer is used"))
    max_seq_len: int = Field(128, ge=8, le=131072, description="tokens per text (longer texts are cut)")

    # -- model ---------------------------------------------------------------------------------
    init_from: str = Field("none", min_length=1, description=(
        "'none' = from scratch, or the directory of a pretrained model (a pretraining run's final/)"))
    pooling: Literal["mean", "last"] = Field("mean", description="sequence representation: mean of the tokens, or the last (EOS)")
    model_type: Literal["model_original", "model", "model_moe"] | None = Field(None, description="variant (from scratch)")
    hidden_size: int | None = Field(None, ge=16, le=16384, description="width (from scratch; default 128)")
    num_hidden_layers: int | None = Field(None, ge=1, le=256, description="blocks (from scratch; default 2)")
    num_attention_heads: int | None = Field(None, ge=1, le=256, description="query heads (from scratch; default 4)")
    num_key_value_heads: int | None = Field(None, ge=1, le=256, description="key/value heads (from scratch; default 2)")
    intermediate_size: int | None = Field(None, ge=16, le=1_000_000, description="SwiGLU width (from scratch)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout in the blocks")
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the classification head")

    # -- optimisation --------------------------------------------------------------------------
    batch_size: int = Field(32, ge=1, le=65536, description="texts per step")
    learning_rate: float = Field(5e-4, ge=0.0, le=1.0, description="peak learning rate (of the blocks; see head_lr_mult)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final lr as a fraction of the peak (cosine)")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="linear warmup steps (0: warmup_ratio decides)")
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0, description="warmup as a share of the steps when warmup_steps is 0")
    weight_decay: float = Field(0.01, ge=0.0, le=10.0, description="AdamW decay (not on norms, biases, embeddings)")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0.0, le=1e6, description="max gradient norm; 0 disables")
    epochs: int = Field(3, ge=1, le=100_000, description="passes over the train set (unless max_steps)")
    max_steps: int = Field(0, ge=0, le=100_000_000, description="optimizer steps; 0 = epochs decide")
    seed: int = Field(1337, ge=0, le=2**32 - 1, description="random seed (weights of the head, order, dropout, augmentation)")

    # -- switches (each off by default) --------------------------------------------------------
    loss: Literal["ce", "focal"] = Field("ce", description="cross-entropy, or focal loss (Lin et al. 2017)")
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0, description="focal loss focusing parameter (loss=focal)")
    class_weights: Literal["none", "balanced"] = Field("none", description="balanced: weight class c by n/(K*n_c)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the targets")
    fgm_epsilon: float = Field(0.0, ge=0.0, le=100.0, description="FGM adversarial step on the embeddings; 0 = off")
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="EMA of the weights (eval and saved model use it); 0 = off")
    head_lr_mult: float = Field(1.0, gt=0.0, le=1000.0, description="the head's learning rate = this x learning_rate")
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="block i from the top gets learning_rate x decay^i")
    freeze_layers: int = Field(0, ge=-1, le=256, description="freeze the embeddings and the bottom N blocks; -1 = all but the head")
    augment: Literal["none", "delete", "swap", "both"] = Field("none", description="random token deletion/swap (train side only)")
    augment_prob: float = Field(0.1, ge=0.0, le=1.0, description="per-token probability of the augmentation")

    # -- evaluation, checkpoints, stopping -----------------------------------------------------
    eval_interval: int = Field(0, ge=0, le=10_000_000, description="steps between evaluations; 0 = once per epoch")
    log_interval: int = Field(10, ge=1, le=1_000_000, description="steps between train-loss lines")
    monitor: Literal["val_macro_f1", "val_acc", "val_loss"] = Field("val_macro_f1", description="what ranks checkpoints and stops early")
    early_stop_patience: int = Field(0, ge=0, le=100_000, description="stop after N evaluations without improvement; 0 = off")
    keep_top_k: int = Field(3, ge=1, le=1000, description="best checkpoints kept by monitor (plus the last)")
    n_misclassified: int = Field(20, ge=0, le=100_000, description="misclassified test examples in samples.json")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="autocast dtype; auto = bf16 on GPU")
    cuda_devices: str = Field("", description="CUDA_VISIBLE_DEVICES for the run")

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyConfig:
        if self.init_from != "none":
            given = [k for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                 "num_key_value_heads", "intermediate_size") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set with init_from={self.init_from!r}: the shape is the "
                                 "pretrained model's; unset them or use init_from=none")
        if self.fgm_epsilon > 0 and self.freeze_layers != 0:
            raise ValueError("fgm_epsilon perturbs the embeddings along their gradient, which freeze_layers "
                             f"={self.freeze_layers} freezes; use freeze_layers=0 with FGM, or fgm_epsilon=0")
        if self.data_path in EMBEDDED_CORPORA:
            for key in ("val_data_path", "test_data_path"):
                if getattr(self, key) in EMBEDDED_CORPORA:
                    raise ValueError(f"{key} is '' for an embedded corpus (its shipped split), not {getattr(self, key)!r}")
        return self

    @property
    def higher_is_better(self) -> bool:
        return MONITORS[self.monitor]


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            import difflib

            close = difflib.get_close_matches(loc, list(ClassifyConfig.model_fields), n=3, cutoff=0.5)
            parts.append(f"unknown key {loc!r}" + (f" — did you mean {', '.join(close)}?" if close else ""))
        else:
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})" if loc != "config" else msg)
    return "; ".join(parts)


def validate(data: dict[str, Any]) -> ClassifyConfig:
    """A ClassifyConfig from a mapping; pydantic's report becomes one ``ConfigError`` line."""
    try:
        return ClassifyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid classify config: {_explain(err)}") from None
