"""Tasks: what a record trains and what it measures.

A record's ``task`` (front matter; ``exp new V --task NAME``, default ``pretrain``) names one
``Task``: its config schema (a pydantic model with ``extra="forbid"``, or free-form scalars),
the launch command its run script renders, the metrics it writes (name, direction, meaning,
zh/en label) and its artifacts (the files a review shows and a commit takes). Everything
downstream — verdicts, anomalies, tables, plots, the tracker CSV — reads metrics through the
task's table, never by a hard-coded name.

Built in: ``pretrain`` (``python -m model.train_pretrain``) and ``classify``
(``python -m model.train_classify``). A workspace declares its own in ``pyproject.toml``::

    [tool.exp.tasks.toy]
    command = "python toy_train.py --config {config} --out-dir {out_dir}"   # run from the workspace root
    metrics = { score = "higher", loss = "lower" }
    config = "toy_config:ToyConfig"     # optional: a pydantic model; without it, free-form scalars

The trainer's contract: append JSON lines with ``step`` and named metrics to
``{out_dir}/metrics.jsonl``, write ``{out_dir}/summary.json`` at the end, exit 0 on success.

Layer 1: reads nothing but the settings mapping it is handed (``Workspace.settings``); a
declared ``config = "module:Class"`` is imported from the workspace root when first needed.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

DEFAULT = "pretrain"
DIRECTIONS = ("lower", "higher")
#: The placeholders a declared command may hold.
PLACEHOLDERS = ("config", "out_dir")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TaskError(ConfigError):
    """A task is unknown, or a workspace's declaration of one is malformed."""


@dataclass(frozen=True)
class Metric:
    """One metric a task writes: its name, which way is better, what it means."""

    name: str
    direction: str  # "lower" | "higher"
    meaning: str = ""
    zh: str = ""

    def label(self, lang: str) -> str:
        return (self.zh if lang == "zh" and self.zh else self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "meaning": self.meaning,
                "label": {"zh": self.zh or self.name, "en": self.name}}


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[Metric, ...]
    #: a built-in trainer module (``python -m MODULE --config ... --out-dir ...``), or None
    module: str | None = None
    #: a declared task's command, with ``{config}`` and ``{out_dir}``
    command: str | None = None
    #: ``module:Class`` of the config schema (a pydantic model), imported when first needed;
    #: None: free-form keys (a declared task without ``config``)
    config_ref: str | None = None
    #: files of the run directory (globs) that the review shows and the commit takes
    artifacts: tuple[str, ...] = ()
    #: metrics.jsonl series drawn over steps (a declared task: every metric)
    curves: tuple[str, ...] = ()
    #: the report's and the index's metric columns
    key_metrics: tuple[str, ...] = ()
    #: the metric "best record" means
    primary: str = ""
    #: torchrun/DDP launches allowed
    distributed: bool = False
    #: metric -> the same run's baseline value (classify: the majority class on the same test set);
    #: a claim's ``baseline`` is that value when the record names no baseline record
    own_baseline: Mapping[str, str] = field(default_factory=dict)
    source: str = "built-in"

    @property
    def builtin(self) -> bool:
        return self.source == "built-in"

    # -- config (validate and apply: expkit.config's ``validate_for`` / ``apply_for``) ---------
    @property
    def schema(self) -> type[BaseModel] | None:
        """The config schema, imported on first use (the listing commands never need pydantic)."""
        return _import_schema(self.name, self.config_ref) if self.config_ref is not None else None

    def defaults(self) -> dict[str, Any]:
        schema = self.schema
        return schema().model_dump() if schema is not None else {}

    def field_names(self) -> list[str]:
        schema = self.schema
        return list(schema.model_fields) if schema is not None else []

    # -- metrics ------------------------------------------------------------------------------
    def metric(self, name: str) -> Metric | None:
        base = name.removeprefix("best_")
        for m in self.metrics:
            if m.name in (name, base):
                return m
        return None

    def direction(self, name: str) -> str | None:
        m = self.metric(name)
        return m.direction if m is not None else None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def known_metrics(self) -> tuple[str, ...]:
        """Names a claim may use: the task's metrics, their ``best_`` forms where they are
        curves, and the run's own counts."""
        names = list(self.metric_names)
        if self.name != DEFAULT:  # pretraining's best_ forms are in its table already
            names += [f"best_{n}" for n in self.curves if f"best_{n}" not in names]
        return tuple(dict.fromkeys(names + ["steps", "wall_s"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "command": self.launch_words("CONFIG", "OUT_DIR", "python"),
                "config": self.config_ref or "free-form",
                "metrics": [m.to_dict() for m in self.metrics], "artifacts": list(self.artifacts)}

    # -- launch -------------------------------------------------------------------------------
    def launch_words(self, config_path: str, out_dir: str, python: str) -> list[str]:
        """The trainer's command line as words, placeholders filled (a declared command's
        leading ``python``/``python3`` is the run's Python, like a built-in's)."""
        if self.module is not None:
            return [python, "-m", self.module, "--config", config_path, "--out-dir", out_dir]
        words = shlex.split(self.command or "")
        if words and words[0] in ("python", "python3"):
            words[0] = python
        return [w.replace("{config}", config_path).replace("{out_dir}", out_dir) for w in words]


# -- built-in tasks ----------------------------------------------------------------------------
PRETRAIN = Task(
    name="pretrain",
    module="model.train_pretrain",
    config_ref="expkit.config:TrainConfig",
    metrics=(
        Metric("val_loss", "lower", "validation loss at the last evaluation", "验证损失"),
        Metric("best_val_loss", "lower", "lowest validation loss of the run", "最佳验证损失"),
        Metric("final_loss", "lower", "training loss at the last step", "最终训练损失"),
        Metric("train_loss", "lower", "training loss at the last step (= final_loss)", "训练损失"),
        Metric("loss", "lower", "training loss (the curve; its last value = final_loss)", "训练损失"),
        Metric("best_train_loss", "lower", "lowest logged training loss", "最低训练损失"),
        Metric("val_ppl", "lower", "validation perplexity, exp(val_loss)", "验证困惑度"),
        Metric("tokens_per_s", "higher", "training tokens per second of training time", "吞吐 tokens/s"),
        Metric("tokens_seen", "higher", "tokens trained on", "训练 token 数"),
        Metric("mfu", "higher", "model FLOPs utilisation", "MFU"),
        Metric("peak_mem_mb", "lower", "peak memory (MB)", "峰值内存 MB"),
        Metric("wall_s", "lower", "wall time of the run (s)", "用时 s"),
        Metric("params", "lower", "parameters", "参数量"),
        Metric("grad_norm", "lower", "gradient norm at the last step", "梯度范数"),
        Metric("distinct_1", "higher", "distinct unigrams in the samples", "distinct-1"),
        Metric("distinct_2", "higher", "distinct bigrams in the samples", "distinct-2"),
        Metric("repetition_rate", "lower", "repeated n-grams in the samples", "重复率"),
    ),
    artifacts=("summary.json", "samples.json", "plots/*.png"),
    curves=("loss", "val_loss"),
    key_metrics=("final_loss", "val_loss", "best_val_loss", "tokens_per_s"),
    primary="best_val_loss",
    distributed=True,
)

CLASSIFY = Task(
    name="classify",
    module="model.train_classify",
    config_ref="expkit.config:ClassifyConfig",
    metrics=(
        Metric("test_macro_f1", "higher", "macro-averaged F1 on the test set (best checkpoint)", "测试集宏 F1"),
        Metric("test_acc", "higher", "accuracy on the test set (best checkpoint)", "测试集准确率"),
        Metric("test_weighted_f1", "higher", "support-weighted F1 on the test set", "测试集加权 F1"),
        Metric("test_loss", "lower", "cross-entropy on the test set", "测试集损失"),
        Metric("val_macro_f1", "higher", "macro-F1 on the validation set at the last evaluation", "验证集宏 F1"),
        Metric("val_acc", "higher", "accuracy on the validation set at the last evaluation", "验证集准确率"),
        Metric("val_loss", "lower", "validation loss at the last evaluation", "验证损失"),
        Metric("loss", "lower", "training loss (mean since the previous log line)", "训练损失"),
        Metric("majority_acc", "higher", "accuracy of always predicting the majority class, same test set", "多数类基线准确率"),
        Metric("majority_macro_f1", "higher", "macro-F1 of the majority-class baseline, same test set", "多数类基线宏 F1"),
        Metric("wall_s", "lower", "wall time of the run (s)", "用时 s"),
    ),
    artifacts=("summary.json", "samples.json", "classification_report.txt", "plots/*.png"),
    curves=("loss", "val_loss", "val_acc", "val_macro_f1"),
    key_metrics=("test_macro_f1", "test_acc", "majority_macro_f1", "best_val_macro_f1"),
    primary="test_macro_f1",
    own_baseline={"test_acc": "majority_acc", "test_macro_f1": "majority_macro_f1",
                  "test_weighted_f1": "majority_weighted_f1"},
)

BUILTIN: dict[str, Task] = {t.name: t for t in (PRETRAIN, CLASSIFY)}


# -- declared tasks ----------------------------------------------------------------------------
def declared(settings: Mapping[str, Any]) -> dict[str, Task]:
    """The tasks ``[tool.exp.tasks.NAME]`` declares; a malformed one is one TaskError line."""
    table = settings.get("tasks") or {}
    if not isinstance(table, Mapping):
        raise TaskError("pyproject.toml [tool.exp.tasks] must be a table of tasks ([tool.exp.tasks.NAME])")
    return {name: _declared(name, spec) for name, spec in table.items()}


def _declared(name: str, spec: Any) -> Task:
    where = f"pyproject.toml [tool.exp.tasks.{name}]"
    if not _NAME.fullmatch(name):
        raise TaskError(f"{where}: a task name is lowercase letters, digits, - and _ (at most 40)")
    if name in BUILTIN:
        raise TaskError(f"{where}: {name!r} is a built-in task; give yours another name")
    if not isinstance(spec, Mapping):
        raise TaskError(f"{where}: expected a table with command and metrics")
    unknown = sorted(set(spec) - {"command", "config", "metrics", "artifacts", "description"})
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {', '.join(unknown)} (a task has command, metrics, config, artifacts)")
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        raise TaskError(f'{where}: command is missing, e.g. command = "python train.py --config {{config}} --out-dir {{out_dir}}"')
    try:
        shlex.split(command)
    except ValueError as err:
        raise TaskError(f"{where}: command does not parse as a command line ({err})") from None
    used = set(re.findall(r"\{([^{}]*)\}", command))
    if used - set(PLACEHOLDERS):
        raise TaskError(f"{where}: command has unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(used - set(PLACEHOLDERS)))}; "
                        "the placeholders are {config} and {out_dir}")
    if "out_dir" not in used:
        raise TaskError(f"{where}: command never says where to write: put {{out_dir}} in it (metrics.jsonl and summary.json go there)")
    metrics = spec.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        raise TaskError(f'{where}: metrics is missing, e.g. metrics = {{ score = "higher", loss = "lower" }}')
    table: list[Metric] = []
    for metric, value in metrics.items():
        if isinstance(value, Mapping):  # { direction = "higher", meaning = "...", zh = "..." }
            direction, meaning, zh = value.get("direction"), str(value.get("meaning", "")), str(value.get("zh", ""))
        else:
            direction, meaning, zh = value, "", ""
        if not _METRIC.fullmatch(str(metric)):
            raise TaskError(f"{where}: metric name {metric!r} is not an identifier")
        if direction not in DIRECTIONS:
            raise TaskError(f"{where}: metric {metric!r} has direction {direction!r}; write \"lower\" or \"higher\" (which is better)")
        table.append(Metric(str(metric), str(direction), meaning, zh))
    config_ref = spec.get("config")
    if config_ref is not None and (not isinstance(config_ref, str) or not re.fullmatch(r"[\w.]+:\w+", config_ref)):
        raise TaskError(f'{where}: config is "module:Class" (a pydantic model), got {config_ref!r}')
    artifacts = spec.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(isinstance(a, str) and a and not a.startswith(("/", "..")) for a in artifacts):
        raise TaskError(f"{where}: artifacts is a list of file names or globs inside the run directory")
    names = tuple(m.name for m in table)
    return Task(name=name, metrics=tuple(table), command=command.strip(), config_ref=config_ref,
                artifacts=tuple(dict.fromkeys(["summary.json", *artifacts, "plots/*.png"])), curves=names,
                key_metrics=names[:4], primary=names[0], source=where)


def _import_schema(name: str, ref: str) -> type[BaseModel]:
    module_name, _, cls_name = ref.partition(":")
    where = f"pyproject.toml [tool.exp.tasks.{name}] config = {ref!r}"
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the workspace's own code: any error is the user's to see, in one line
        raise TaskError(f"{where}: cannot import {module_name} ({type(err).__name__}: {err}); it is imported "
                        "from the workspace root") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and hasattr(cls, "model_validate") and hasattr(cls, "model_fields")):
        raise TaskError(f"{where}: {cls_name} in {module_name} is not a pydantic model")
    if getattr(cls, "model_config", {}).get("extra") != "forbid":
        raise TaskError(f'{where}: {cls_name} must forbid unknown keys (model_config = ConfigDict(extra="forbid"))')
    return cls


# -- lookups -----------------------------------------------------------------------------------
def available(settings: Mapping[str, Any]) -> dict[str, Task]:
    return {**BUILTIN, **declared(settings)}


def get(settings: Mapping[str, Any], name: str | None, root: Any = None) -> Task:
    """The task called ``name`` (None: pretrain). ``root``: the workspace root, put on the
    module path so a declared ``config = "module:Class"`` imports from there."""
    name = name or DEFAULT
    if name in BUILTIN:
        return BUILTIN[name]
    tasks = declared(settings)
    if name not in tasks:
        names = ", ".join([*BUILTIN, *tasks])
        raise TaskError(f"unknown task {name!r}: the tasks are {names}; declare yours in pyproject.toml "
                        f"[tool.exp.tasks.{name}] (see `exp tasks`)")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return tasks[name]


def name_of(meta: Mapping[str, Any]) -> str:
    return str(meta.get("task") or DEFAULT)


def of(ws: Any, meta: Mapping[str, Any]) -> Task:
    """The task of a record (its front matter's ``task``) in workspace ``ws``."""
    return get(ws.settings, name_of(meta), ws.root)
