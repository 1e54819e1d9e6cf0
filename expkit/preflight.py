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
from .script import LaunchOptions, code_state, git_state
from .workspace import Workspace


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


def preflight(ws: Workspace, record: Record | None, opts: LaunchOptions, probe: dict[str, Any] | None = None) -> tuple[list[Check], dict[str, Any]]:
    """Everything a run needs, checked before anything starts. Returns (checks, environment)."""
    checks: list[Check] = []
    config = (record.meta.get("config") if record else None) or {}
    cuda = opts.gpus or config.get("cuda_devices") or ""
    env = probe if probe is not None else probe_environment({"CUDA_VISIBLE_DEVICES": cuda} if cuda else None)

    checks.append(Check("python", True, f"{env.get('python')} at {env.get('executable')}"))
    fix_install = f"install the environment: cd {ws.rel(ws.root) or '.'} && make venv (or pip install -e .)"
    if "torch_error" in env or "probe_error" in env:
        checks.append(Check("torch", False, env.get("torch_error") or env.get("probe_error", "?"), fix_install))
    else:
        checks.append(Check("torch", True, f"torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else ", CPU build")))
    if "transformers_error" in env:
        checks.append(Check("transformers", False, env["transformers_error"], fix_install))
    elif "transformers" in env:
        checks.append(Check("transformers", True, f"transformers {env['transformers']}"))

    gpus = env.get("gpus") or []
    wants_gpu = bool(cuda) or str(config.get("device", "auto")).startswith("cuda")
    if wants_gpu and not gpus:
        checks.append(Check("gpus", False, f"GPUs {cuda or 'cuda'} asked for, none visible", "drop --gpus / set device=auto, or run where the GPUs are"))
    elif cuda and len(gpus) < len(cuda.split(",")):
        checks.append(Check("gpus", False, f"asked for GPUs {cuda}; visible: {', '.join(gpus) or 'none'}", "ask only for GPUs that exist"))
    elif gpus:
        checks.append(Check("gpus", True, ", ".join(f"{i}: {n}" for i, n in enumerate(gpus))))
    else:
        checks.append(Check("gpus", True, "none; training on CPU"))
    if opts.backend in ("torchrun", "slurm") and gpus and opts.procs > len(gpus) and not opts.gpus:
        checks.append(Check("processes", False, f"{opts.procs} processes for {len(gpus)} GPUs", "use --gpus or a smaller --nproc"))

    for key, kind, build in (
        ("data_path", "train", "python scripts/build_corpus.py"),
        ("val_data_path", "val", "python scripts/build_corpus.py"),
        ("tokenizer_path", "tokenizer", "python scripts/build_tokenizer.py"),
    ):
        value = config.get(key, "embedded")
        path = ws.resolve(value, kind)
        if path is None:
            checks.append(Check(key, True, "held out from data_path"))
        elif path.exists():
            checks.append(Check(key, True, str(path)))
        else:
            fix = f"build it: {build} (in the expkit checkout)" if value == "embedded" else f"fix the path: exp set VERSION {key}=PATH"
            checks.append(Check(key, False, f"{path} is missing", fix))

    params = _estimate_params(config) if config else 0
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
    if mode == "cloud" and not (os.environ.get("SWANLAB_API_KEY") or swanlab_logged_in()):
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

    if opts.backend == "slurm":
        sbatch = shutil.which("sbatch")
        if not sbatch:
            checks.append(Check("slurm", False, "sbatch not found", "install Slurm, or start the local cluster: scripts/slurm_local.sh start"))
        else:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
            up = ping.returncode == 0 and "UP" in ping.stdout
            checks.append(Check("slurm", up, (ping.stdout.strip() or ping.stderr.strip()).splitlines()[0] if (ping.stdout or ping.stderr) else "no answer", "" if up else "start slurmctld (scripts/slurm_local.sh start)"))
    return checks, env


def swanlab_logged_in() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "swanlab" in netrc.read_text(errors="ignore")


def failed_checks(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.ok is False]
