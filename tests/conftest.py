"""Shared fixtures: a fresh workspace made by `exp init` in a temp dir, and ways to drive `exp`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXP = [sys.executable, "-m", "expkit.cli"]

FILLED = {
    "goal": "检验学习率减半是否让演示模型收敛更稳。",
    "hypothesis": "学习率从 3e-3 降到 1.5e-3 会减少损失尖峰，验证集损失不变差。",
    "expected": "预期：\n- val_loss < 6.5\n- tokens_per_s >= 100\n",
    "focus": "前 100 步的损失曲线与梯度范数。",
}


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """JSONL corpora are prepared once per session into a temporary cache, not into out/.data/
    of the checkout; trainer subprocesses inherit it."""
    saved = os.environ.get("EXP_DATA_CACHE")
    os.environ["EXP_DATA_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    yield
    if saved is None:
        os.environ.pop("EXP_DATA_CACHE", None)
    else:
        os.environ["EXP_DATA_CACHE"] = saved


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace created by the real scaffold, with EXP_ROOT pointing at it."""
    from expkit.workspace import Workspace, scaffold

    root = tmp_path / "ws"
    scaffold(root)
    monkeypatch.setenv("EXP_ROOT", str(root))
    monkeypatch.chdir(root)
    return Workspace.find()


def fill(path: Path, sections: dict[str, str] | None = None) -> None:
    """Write the human sections as a person would, through the file."""
    from expkit.record import Record

    record = Record.read(path)
    for name, text in (sections or FILLED).items():
        record.set_human(name, text)
    path.write_text(record.render(), encoding="utf-8")


def run_exp(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, input: str | None = None):
    """`exp ARGS` as a real subprocess (the console script's module entry)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*EXP, *args], cwd=cwd, env=full_env, capture_output=True, text=True, input=input, timeout=120
    )


@pytest.fixture
def cli():
    """In-process `exp` through click's CliRunner: returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from expkit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, list(args), catch_exceptions=False, prog_name="exp")
        return result.exit_code, result.stdout, result.stderr

    return invoke


SLURM_SKIP = ("the Slurm tests run against the local cluster only with EXP_TEST_SLURM=local "
              "(.ci/run sets it; scripts/slurm_local.sh start brings the cluster up, as root)")


def slurm_cluster() -> None:
    """Skip unless EXP_TEST_SLURM=local; then the local cluster, started (as root) if it is down.
    Nothing here touches /etc/slurm unless that variable asks for the local cluster."""
    import shutil

    if os.environ.get("EXP_TEST_SLURM") != "local":
        pytest.skip(SLURM_SKIP)
    script = REPO / "scripts" / "slurm_local.sh"
    if shutil.which("sbatch") and subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0:
        return
    if os.geteuid() != 0:
        pytest.skip("EXP_TEST_SLURM=local, but the local cluster is down and starting it needs root")
    r = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
