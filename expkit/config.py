"""``TrainConfig``: everything the run script and the trainer receive.

One pydantic model, ``extra="forbid"`` and ranges checked, so a typo or an impossible value
fails at ``exp set`` time rather than an hour into a run. The defaults are the CPU demo shape
(hidden 128, 2 layers, 4 heads, seq 128, batch 16, lr 3e-3) on the embedded corpus.

``model/train_pretrain.py`` loads the JSON dump of this model, so the trainer and the record
can never disagree about what a key means.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, UsageError
from .names import EMBEDDED



class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- model shape -----------------------------------------------------------------------
    model_type: Literal["model_original", "model", "model_moe"] = Field(
        "model_original",
        description="model_original: dense baseline; model: dense + knowledge memory; model_moe: routed experts",
    )
    hidden_size: int = Field(128, ge=16, le=16384, description="width of the residual stream")
    num_hidden_layers: int = Field(2, ge=1, le=256, description="transformer blocks")
    num_attention_heads: int = Field(4, ge=1, le=256, description="query heads")
    num_key_value_heads: int = Field(2, ge=1, le=256, description="key/value heads (GQA)")
    intermediate_size: int | None = Field(
        None, ge=16, le=65536, description="SwiGLU width; None = 8/3 * hidden rounded to 64"
    )
    vocab_size: int = Field(6400, ge=256, le=1_000_000, description="tokenizer vocabulary")
    max_seq_len: int = Field(128, ge=8, le=131072, description="tokens per packed block")
    rope_theta: float = Field(1e6, gt=0, description="RoPE base")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability")
    knowledge_num: int = Field(
        16384, ge=4, le=16_777_216, description="memory entries (model_type=model); a power of two or a perfect square"
    )
    knowledge_topk: int = Field(8, ge=1, le=256, description="memory entries read per token")
    num_experts: int = Field(4, ge=2, le=256, description="routed experts (model_type=model_moe)")
    num_experts_per_tok: int = Field(2, ge=1, le=64, description="experts chosen per token")
    aux_loss_coef: float = Field(0.01, ge=0.0, le=10.0, description="MoE balance-loss weight")

    # -- optimisation ----------------------------------------------------------------------
    batch_size: int = Field(16, ge=1, le=65536, description="sequences per micro-batch per process")
    accumulation_steps: int = Field(1, ge=1, le=4096, description="micro-batches per optimizer step")
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final lr as a fraction of the peak")
    warmup_steps: int = Field(100, ge=0, le=10_000_000, description="linear warmup steps")
    max_steps: int = Field(360, ge=1, le=100_000_000, description="optimizer steps")
    weight_decay: float = Field(0.1, ge=0.0, le=10.0, description="AdamW decay (not on norms/biases/embeddings)")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0.0, le=1e6, description="max gradient norm; 0 disables")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="autocast dtype; auto = bf16 where the device has it, else float32"
    )
    compile: bool = Field(False, description="torch.compile the model (GPU; checkpoints stay plain)")
    seed: int = Field(1337, ge=0, le=2**32 - 1, description="random seed")
    # exp run trains the record this many times, replicate i with seed + i in out/experiment_V/r{i}/
    replicates: int = Field(
        1, ge=1, le=64, description="seeds per run: exp run trains seed, seed+1, ... each in out/experiment_V/r{i}/"
    )

    # -- cadence ---------------------------------------------------------------------------
    log_interval: int = Field(10, ge=1, le=1_000_000, description="steps between metric lines")
    eval_interval: int = Field(120, ge=1, le=10_000_000, description="steps between validation passes")
    eval_batches: int = Field(20, ge=1, le=100_000, description="batches per validation pass")
    save_interval: int = Field(120, ge=1, le=10_000_000, description="steps between checkpoints")
    keep_top_k: int = Field(2, ge=1, le=1000, description="best checkpoints kept by val loss (plus the last)")
    sample_max_new_tokens: int = Field(48, ge=1, le=4096, description="tokens generated per sample prompt")

    # -- data and placement ----------------------------------------------------------------
    data_path: str = Field(EMBEDDED, min_length=1, description="JSONL(.gz) corpus; 'embedded' = dataset/")
    val_data_path: str = Field(
        EMBEDDED, description="validation JSONL(.gz); 'embedded' = dataset/; '' = hold out 1% of data_path"
    )
    tokenizer_path: str = Field(EMBEDDED, min_length=1, description="tokenizer dir; 'embedded' = dataset/tokenizer")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cuda_devices: str = Field("", description="CUDA_VISIBLE_DEVICES for the run, e.g. '0,1'")

    # -- tracking --------------------------------------------------------------------------
    swanlab_mode: Literal["offline", "cloud", "disabled"] = Field("offline", description="SwanLab mode")
    swanlab_project: str = Field("expkit", min_length=1, max_length=100, description="SwanLab project name")

    @model_validator(mode="after")
    def _shapes_fit(self) -> TrainConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("head dimension (hidden_size / num_attention_heads) must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("num_experts_per_tok cannot exceed num_experts")
        if self.model_type == "model":
            n1, n2 = product_key_shape(self.knowledge_num)
            if n1 > 4 * n2:
                raise ValueError(
                    f"knowledge_num {self.knowledge_num} does not factor into a near-square grid of product keys "
                    f"(best {n1}×{n2}); use a power of two (1048576, 2097152) or a perfect square"
                )
            if self.knowledge_topk > n2:
                raise ValueError(f"knowledge_topk {self.knowledge_topk} exceeds the {n2} sub-keys per half")
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.cuda_devices and not re.fullmatch(r"\d+(,\d+)*", self.cuda_devices):
            raise ValueError(f"cuda_devices {self.cuda_devices!r} must look like '0' or '0,1,2'")
        return self

    @property
    def ffn_size(self) -> int:
        """SwiGLU hidden width: explicit, or 8/3 * hidden rounded up to a multiple of 64."""
        if self.intermediate_size:
            return self.intermediate_size
        return 64 * math.ceil(8 * self.hidden_size / 3 / 64)


# -- the classify task's config ------------------------------------------------------------
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
    replicates: int = Field(
        1, ge=1, le=64, description="seeds per run: exp run trains seed, seed+1, ... each in out/experiment_V/r{i}/"
    )

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


def product_key_shape(n: int) -> tuple[int, int]:
    """Split ``n`` memory entries into an n1 × n2 product-key grid, n1 ≥ n2, as square as
    possible: 1M → 1024×1024, 2M → 2048×1024. The memory layer and the validator share it."""
    n2 = math.isqrt(n)
    while n % n2:
        n2 -= 1
    return n // n2, n2


#: A task's config schema: a pydantic model (``extra="forbid"``), or None for free-form keys.
Schema = "type[BaseModel] | None"


def field_names(schema: type[BaseModel] | None = TrainConfig) -> list[str]:
    return list(schema.model_fields) if schema is not None else []


def describe(key: str, schema: type[BaseModel] | None = TrainConfig) -> str:
    field = schema.model_fields.get(key) if schema is not None else None
    return (field.description or "") if field is not None else ""


def _explain(err: ValidationError, schema: type[BaseModel]) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}{suggest(loc, schema)}")
        else:
            parts.append(f"{loc}: {msg} (got {e.get('input')!r})" if loc != "config" else msg)
    return "; ".join(parts)


def suggest(key: str, schema: type[BaseModel] | None = TrainConfig) -> str:
    """' — did you mean a, b?' for an unknown key, or '' when nothing is close."""
    names = field_names(schema)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    if not close:
        # substring matches catch 'lr' -> learning_rate style abbreviations poorly; try parts
        close = [n for n in names if key and key.lower() in n][:3]
    return f" — did you mean {', '.join(close)}?" if close else " — see `exp set --help` for the keys"


def validate(data: dict[str, Any], schema: type[BaseModel] = TrainConfig) -> Any:
    """Build a config of ``schema`` (TrainConfig by default) from a mapping, turning pydantic's
    report into one ConfigError."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_explain(err, schema)}") from None


def validate_free(data: Any) -> dict[str, Any]:
    """A free-form config (a task without a schema): a mapping of names to YAML scalars."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: expected a mapping of KEY: VALUE, got {type(data).__name__}")
    bad = [k for k, v in data.items() if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k))
           or not (v is None or isinstance(v, (str, int, float, bool)))]
    if bad:
        raise ConfigError(f"invalid config: {', '.join(map(repr, bad))} — a key is a name and a value a scalar "
                          "(number, string, true/false)")
    return dict(data)


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; the value stays a string until pydantic types it."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"expected KEY=VALUE, got {text!r} (for example learning_rate=8e-5)")
    return key, value.strip()


def _coerce(key: str, raw: str, schema: type[BaseModel]) -> Any:
    """Turn the command-line string into the Python value pydantic should see for ``key``."""
    annotation = schema.model_fields[key].annotation
    if raw.lower() in ("none", "null") and "None" in repr(annotation):
        return None
    if annotation is int or annotation == (int | None):
        # accept 1e6-style integers ("knowledge_num=1e6" is how people write a million)
        try:
            as_float = float(raw)
        except ValueError:
            return raw
        return int(as_float) if as_float.is_integer() else raw
    return raw


def _scalar(raw: str) -> Any:
    """A free-form value from the command line, typed as YAML would (3 -> int, 1e-3 -> float,
    true -> bool, anything else a string)."""
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", raw.strip()):
        return float(raw)  # YAML 1.1 reads 1e-3 as a string
    return value if value is None or isinstance(value, (str, int, float, bool)) else raw


def apply(config: BaseModel | dict[str, Any], assignments: list[str], schema: type[BaseModel] | None = TrainConfig
          ) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """Apply ``KEY=VALUE`` strings; returns the new config (a dump) and ``{key: (old, new)}`` for
    changed keys. Without a schema (a free-form task) every key is accepted, typed as YAML."""
    base = config.model_dump() if isinstance(config, BaseModel) else dict(config)
    updated = dict(base)
    for text in assignments:
        key, raw = parse_assignment(text)
        if schema is None:
            updated[key] = _scalar(raw)
            continue
        if key not in schema.model_fields:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, schema)}")
        updated[key] = _coerce(key, raw, schema)
    new_dump = validate(updated, schema).model_dump() if schema is not None else validate_free(updated)
    changed = {k: (base.get(k), new_dump[k]) for k in new_dump if base.get(k) != new_dump[k]}
    return new_dump, changed


def validate_for(task: Any, data: Any) -> dict[str, Any]:
    """A record's config as its task's run receives it (a dump), or one ConfigError line.
    ``task``: an ``expkit.tasks.Task`` (its ``schema``, or None for free-form keys)."""
    schema = task.schema
    if schema is None:
        return validate_free(data if data is not None else {})
    return validate(dict(data or {}), schema).model_dump()


def apply_for(task: Any, config: dict[str, Any], assignments: list[str]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """``apply`` with the schema of ``task``."""
    return apply(config, assignments, task.schema)


def diff(a: dict[str, Any], b: dict[str, Any], schema: type[BaseModel] | None = TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dumps, in the schema's field order."""
    names = field_names(schema)
    keys = names + sorted(set(a) | set(b) - set(names))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


#: Parameter-table sections of the record, in order, with their labels.
GROUPS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "model": (
        {"zh": "模型结构", "en": "Model"},
        (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_seq_len", "rope_theta", "dropout", "knowledge_num",
            "knowledge_topk", "num_experts", "num_experts_per_tok", "aux_loss_coef",
        ),
    ),
    "optim": (
        {"zh": "训练优化", "en": "Optimisation"},
        (
            "batch_size", "accumulation_steps", "learning_rate", "min_lr_ratio", "warmup_steps", "max_steps",
            "weight_decay", "beta1", "beta2", "grad_clip", "dtype", "compile", "seed",
        ),
    ),
    "cadence": (
        {"zh": "日志与保存", "en": "Cadence"},
        ("log_interval", "eval_interval", "eval_batches", "save_interval", "keep_top_k", "sample_max_new_tokens"),
    ),
    "data": (
        {"zh": "数据与设备", "en": "Data and device"},
        ("data_path", "val_data_path", "tokenizer_path", "device", "cuda_devices"),
    ),
    "tracking": ({"zh": "实验跟踪", "en": "Tracking"}, ("swanlab_mode", "swanlab_project")),
}


#: The classify task's parameter-table sections.
CLASSIFY_GROUPS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "data": ({"zh": "数据", "en": "Data"}, ("data_path", "val_data_path", "test_data_path", "tokenizer_path", "max_seq_len")),
    "model": (
        {"zh": "模型", "en": "Model"},
        ("init_from", "pooling", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "intermediate_size", "dropout", "head_dropout"),
    ),
    "optim": (
        {"zh": "训练优化", "en": "Optimisation"},
        ("batch_size", "learning_rate", "min_lr_ratio", "warmup_steps", "warmup_ratio", "weight_decay", "beta1", "beta2",
         "grad_clip", "epochs", "max_steps", "seed", "replicates"),
    ),
    "tricks": (
        {"zh": "微调技巧", "en": "Fine-tuning switches"},
        ("loss", "focal_gamma", "class_weights", "label_smoothing", "fgm_epsilon", "ema_decay", "head_lr_mult",
         "layer_lr_decay", "freeze_layers", "augment", "augment_prob"),
    ),
    "eval": (
        {"zh": "评估与保存", "en": "Evaluation and checkpoints"},
        ("eval_interval", "log_interval", "monitor", "early_stop_patience", "keep_top_k", "n_misclassified"),
    ),
    "device": ({"zh": "设备", "en": "Device"}, ("device", "dtype", "cuda_devices")),
}


def table_rows(config: dict[str, Any], parent: dict[str, Any] | None, lang: str,
               schema: type[BaseModel] | None = TrainConfig) -> list[dict[str, Any]]:
    """Rows of the record's parameter table: group, key, value, parent's value when different."""
    sections = GROUPS if schema is TrainConfig else CLASSIFY_GROUPS if schema is ClassifyConfig else {
        "all": ({"zh": "参数", "en": "Parameters"}, tuple(field_names(schema)))}
    rows = []
    seen: set[str] = set()
    for labels, keys in sections.values():
        for key in keys:
            seen.add(key)
            rows.append(_row(labels[lang], key, config, parent, schema))
    extra = [k for k in config if k not in seen]  # keys of a newer schema (or a free-form config), still shown
    rows.extend(_row("—" if schema is not None else labels[lang], k, config, parent, schema) for k in extra)
    return rows


def _row(group: str, key: str, config: dict[str, Any], parent: dict[str, Any] | None,
         schema: type[BaseModel] | None = TrainConfig) -> dict[str, Any]:
    value = config.get(key)
    changed = parent is not None and parent.get(key) != value
    return {
        "group": group,
        "key": key,
        "value": value,
        "changed": changed,
        "parent_value": parent.get(key) if changed and parent is not None else None,
        "help": describe(key, schema),
    }
