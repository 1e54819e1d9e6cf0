"""Preflight: everything a run needs, checked before anything starts — the Python environment
(probed in a subprocess, so the CLI never imports torch), GPUs, data and tokenizer, disk,
SwanLab, git and the scheduler. ``exp doctor`` prints it on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .record import Record
from . import slurm, store, tasks
from .errors import ConfigError
from .script import LaunchOptions, code_state, git_state
from .version import Version
from .workspace import Workspace, dataset_dir


# -- preflight -------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool | None  # None: a warning, the run may go on
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROBE = r"""
import json, os, platform, socket, sys
info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "host": socket.gethostname(), "cpus": os.cpu_count()}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    info["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
except Exception as err:
    info["torch_error"] = f"{type(err).__name__}: {err}"
for name in ("transformers", "tokenizers", "swanlab"):
    try:
        info[name] = __import__(name).__version__
    except Exception as err:
        info[name + "_error"] = f"{type(err).__name__}: {err}"
import importlib.util
spec = importlib.util.find_spec("model")  # the trainer package, found as the run will find it
info["model_path"] = spec.origin if spec and spec.origin else None
print(json.dumps(info))
"""


def probe_environment(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Versions and GPUs as seen by the Python that will run the trainer (a subprocess, so the
    CLI never imports torch itself)."""
    try:
        out = subprocess.run(
            # -P: like the trainer (PYTHONSAFEPATH=1 in the run script), not importing from the current directory
            [sys.executable, "-P", "-c", PROBE], capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError) as err:
        return {"probe_error": f"{type(err).__name__}: {err}", "python": sys.version.split()[0], "executable": sys.executable}


def _estimate_params(config: dict[str, Any]) -> int:
    h, layers, v = config.get("hidden_size", 128), config.get("num_hidden_layers", 2), config.get("vocab_size", 6400)
    ffn = config.get("intermediate_size") or 64 * -(-8 * h // 3 // 64)
    per_layer = 4 * h * h + 3 * h * ffn
    if config.get("model_type") == "model_moe":
        per_layer += (config.get("num_experts", 4) - 1) * 3 * h * ffn
    extra = config.get("knowledge_num", 0) * h if config.get("model_type") == "model" else 0
    return v * h + layers * per_layer + extra


def preflight(ws: Workspace, record: Record | None, opts: LaunchOptions, probe: dict[str, Any] | None = None,
              stage: str = "local") -> tuple[list[Check], dict[str, Any]]:
    """Everything a run needs, checked before anything starts. Returns (checks, environment).

    ``stage``: ``local`` (the machine that trains, before it starts), ``submit`` (a Slurm submit
    on a login node that may have no GPU: files, disk, config, sbatch and the partition; torch
    and GPUs are the job's to check) or ``job`` (inside the Slurm job, on the node that trains:
    torch, CUDA and the GPUs Slurm bound to the job).
    """
    checks: list[Check] = []
    config = (record.meta.get("config") if record else None) or {}
    slurm_gpus = opts.backend == "slurm"
    cuda = "" if slurm_gpus else (opts.gpus or config.get("cuda_devices") or "")
    env = probe if probe is not None else probe_environment({"CUDA_VISIBLE_DEVICES": cuda} if cuda else None)

    checks.append(Check("python", True, f"{env.get('python')} at {env.get('executable')}"))
    fix_install = f"install the environment: cd {ws.rel(ws.root) or '.'} && make venv (or pip install -e .)"
    if "torch_error" in env or "probe_error" in env:
        ok = None if stage == "submit" else False  # the job's node checks it again, where it matters
        checks.append(Check("torch", ok, env.get("torch_error") or env.get("probe_error", "?"), fix_install))
    else:
        checks.append(Check("torch", True, f"torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else ", CPU build")))
    if "transformers_error" in env:
        checks.append(Check("transformers", False, env["transformers_error"], fix_install))
    elif "transformers" in env:
        checks.append(Check("transformers", True, f"transformers {env['transformers']}"))

    gpus = env.get("gpus") or []
    wants_gpu = bool(cuda) or str(config.get("device", "auto")).startswith("cuda")
    if stage == "submit":
        asked = f"{opts.gpu_count} GPU(s) per node" if opts.gpu_count else "no GPU (CPU)"
        checks.append(Check("gpus", True, f"{asked} asked of Slurm; checked in the job, on the node that trains"))
    elif slurm_gpus:
        if opts.gpu_count and len(gpus) < opts.gpu_count:
            checks.append(Check("gpus", False, f"the job asked for {opts.gpu_count} GPU(s) per node; CUDA sees "
                                f"{len(gpus)} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                                "check the partition's GPUs (sinfo -o '%P %G') and the job's --gres"))
        elif str(config.get("device", "auto")).startswith("cuda") and not gpus:
            checks.append(Check("gpus", False, "device is cuda, but the job got no GPU", "add --gpus N (a count per node)"))
        else:
            checks.append(Check("gpus", True, ", ".join(f"{i}: {n}" for i, n in enumerate(gpus)) or "none; training on CPU"))
    elif wants_gpu and not gpus:
        checks.append(Check("gpus", False, f"GPUs {cuda or 'cuda'} asked for, none visible", "drop --gpus / set device=auto, or run where the GPUs are"))
    elif cuda and len(gpus) < len(cuda.split(",")):
        checks.append(Check("gpus", False, f"asked for GPUs {cuda}; visible: {', '.join(gpus) or 'none'}", "ask only for GPUs that exist"))
    elif gpus:
        checks.append(Check("gpus", True, ", ".join(f"{i}: {n}" for i, n in enumerate(gpus))))
    else:
        checks.append(Check("gpus", True, "none; training on CPU"))
    if stage != "submit" and opts.backend in ("torchrun", "slurm") and gpus and opts.procs > len(gpus) and not opts.gpus:
        checks.append(Check("processes", False, f"{opts.procs} processes for {len(gpus)} GPUs", "use --gpus or a smaller --nproc"))

    try:
        task = tasks.of(ws, record.meta) if record is not None else tasks.PRETRAIN
    except ConfigError as err:
        checks.append(Check("task", False, str(err), "fix the task's declaration in pyproject.toml [tool.exp.tasks]"))
        task = None
    if task is not None and task.name != tasks.DEFAULT:
        checks += _task_checks(ws, task, config)
    for key, kind, build in (
        ("data_path", "train", "python scripts/build_corpus.py"),
        ("val_data_path", "val", "python scripts/build_corpus.py"),
        ("tokenizer_path", "tokenizer", "python scripts/build_tokenizer.py"),
    ) if task is not None and task.name == tasks.DEFAULT else ():
        value = config.get(key, "embedded")
        path = ws.resolve(value, kind)
        if path is None:
            checks.append(Check(key, True, "held out from data_path"))
        elif path.exists():
            checks.append(Check(key, True, str(path)))
        else:
            fix = f"build it: {build} (in the expkit checkout)" if value == "embedded" else f"fix the path: exp set VERSION {key}=PATH"
            checks.append(Check(key, False, f"{path} is missing", fix))

    params = _estimate_params(config) if config and task is not None and task.name == tasks.DEFAULT else 0
    need = params * 16 * (int(config.get("keep_top_k", 2)) + 2) + 200 * 2**20  # fp32 weights + Adam, per checkpoint kept
    where = next(p for p in (ws.out_root, *ws.out_root.parents) if p.exists())  # nothing is created by a check
    free = shutil.disk_usage(where).free
    checks.append(
        Check(
            "disk", free >= need, f"{free / 2**30:.1f} GiB free in {ws.out_root}, about {need / 2**30:.2f} GiB needed",
            "free space, or lower keep_top_k" if free < need else "",
        )
    )

    mode = os.environ.get("SWANLAB_MODE") or config.get("swanlab_mode", "offline")
    if task is not None and not task.builtin:
        pass  # the workspace's own trainer tracks what it wants
    elif mode == "cloud" and not (os.environ.get("SWANLAB_API_KEY") or swanlab_logged_in()):
        checks.append(Check("swanlab", None, "cloud mode without an API key: the run will log offline", "swanlab login, or exp set VERSION swanlab_mode=offline"))
    else:
        checks.append(Check("swanlab", True, f"mode {mode}" + (" (SWANLAB_MODE)" if os.environ.get("SWANLAB_MODE") else "")))

    repo = git_state(ws)
    if repo is None:
        checks.append(Check("git", None, "the workspace is not a git repository: records cannot be committed", "git init && git commit"))
    elif repo.get("dirty"):
        checks.append(Check("git", None, f"{(repo.get('sha') or 'no commit')[:12]} with uncommitted changes outside exp's "
                            "records and outputs (saved to git.diff)", "commit that code before running; records wait for review"))
    else:
        checks.append(Check("git", True, f"{(repo.get('sha') or 'no commit yet')[:12]} on {repo.get('branch') or 'detached HEAD'}"
                            " (exp's records and outputs aside)"))
    code = code_state(env)
    where = code.get("package") or f"{code['location']} at {str(code.get('git_sha'))[:12]}"
    if code.get("dirty"):
        checks.append(Check("code", None, f"trainer code {where} has uncommitted changes (saved to code.diff)",
                            f"commit them in {code['location']} for a clean trace"))
    else:
        checks.append(Check("code", True, f"trainer code {where}"))

    if opts.backend == "slurm" and stage != "job":
        checks += _slurm_checks(opts)
    return checks, env


#: classify's ``data_path`` names of the shipped corpora -> their language (expkit.config.EMBEDDED_CORPORA's keys)
_CLASSIFY_EMBEDDED = {"embedded": "en", "embedded-en": "en", "embedded-zh": "zh"}


def _task_checks(ws: Workspace, task: tasks.Task, config: dict[str, Any]) -> list[Check]:
    """What a run of a task other than pretraining needs: classify's corpus and starting model,
    a declared task's command (its program and script found)."""
    checks = []
    if task.name == "classify":
        data = str(config.get("data_path", "embedded"))
        if data in _CLASSIFY_EMBEDDED:
            split = dataset_dir() / f"classify_{_CLASSIFY_EMBEDDED[data]}_train.jsonl.gz"
            checks.append(Check("data_path", split.exists(), f"{data}: {split}",
                                "" if split.exists() else "build it: python scripts/build_corpus.py (in the expkit checkout; it builds the classification corpus too)"))
        for key in ("data_path", "val_data_path", "test_data_path"):
            value = str(config.get(key) or "")
            if value and value not in _CLASSIFY_EMBEDDED:
                path = Path(value) if Path(value).is_absolute() else ws.root / value
                checks.append(Check(key, path.exists(), str(path), "" if path.exists() else f"fix the path: exp set VERSION {key}=PATH"))
        source = str(config.get("init_from", "none"))
        if Version.is_valid(source):
            try:
                checks.append(Check("init_from", True, f"{source}: {ws.rel(init_model_dir(ws, source))}/"))
            except ConfigError as err:
                checks.append(Check("init_from", False, str(err), f"run {source} first, or exp set VERSION init_from=none"))
        elif source != "none":
            path = Path(source) if Path(source).is_absolute() else ws.root / source
            ok = (path / "config.json").exists()
            checks.append(Check("init_from", ok, str(path), "" if ok else "name a pretraining record (X.Y.Z) or a model directory"))
        return checks
    words = task.launch_words("CONFIG", "OUT_DIR", sys.executable)
    program = words[0] if words else ""
    found = shutil.which(program) if "/" not in program else (program if Path(program).exists() or (ws.root / program).exists() else None)
    checks.append(Check("command", bool(found), f"{task.name}: {' '.join(words)}",
                        "" if found else f"{program!r} is not on PATH: fix command in {task.source}"))
    for word in words[1:]:
        if word.endswith(".py") and not word.startswith("-"):
            script = Path(word) if Path(word).is_absolute() else ws.root / word
            checks.append(Check("trainer", script.exists(), str(script),
                                "" if script.exists() else f"the command names {word}, which is not in the workspace root; fix {task.source}"))
    return checks


def init_model_dir(ws: Workspace, source: str) -> Path:
    """The ``final/`` model of pretraining record ``source`` (a classify record's ``init_from``),
    or a ConfigError saying which step comes first."""
    if not ws.record_path(source).exists():
        raise ConfigError(f"init_from {source}: no such experiment ({ws.rel(ws.record_path(source))}); "
                          "set init_from to a pretraining record of this workspace, or none")
    meta = store.read_meta(ws, source)
    if tasks.name_of(meta) != tasks.DEFAULT:
        raise ConfigError(f"init_from {source}: it is a {tasks.name_of(meta)} record; a classifier starts from a pretraining record's model")
    final = ws.out_dir(source) / "final"
    if not (final / "config.json").exists():
        raise ConfigError(f"init_from {source}: {ws.rel(final)}/ holds no model (status {meta.get('status')}); "
                          f"finish its run first (`exp run {source}`)")
    return final


def _slurm_checks(opts: LaunchOptions) -> list[Check]:
    """At submit: sbatch is there, the controller answers, the partition asked for exists."""
    if not slurm.sbatch_path():
        return [Check("slurm", False, "sbatch not found on PATH", "run exp on the cluster's login node (or start a local "
                      "cluster: scripts/slurm_local.sh start)")]
    up, said = slurm.ping()
    checks = [Check("slurm", up, said, "" if up else "the Slurm controller does not answer: ask the admins, or `scontrol ping` again")]
    if up and opts.partition:
        known = slurm.partitions()
        if known is None:
            checks.append(Check("partition", None, f"could not list partitions to check {opts.partition}", "sinfo -s"))
        else:
            missing = [p for p in opts.partition.split(",") if p not in known]
            checks.append(Check("partition", not missing, f"{opts.partition}" + (f" not among {', '.join(known)}" if missing else ""),
                                f"pick one of {', '.join(known)} (--partition, or [tool.exp.slurm] partition)" if missing else ""))
    return checks


def swanlab_logged_in() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "swanlab" in netrc.read_text(errors="ignore")


def failed_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.ok is False]
