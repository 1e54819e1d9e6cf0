"""A normal install works far from the checkout (issue 13).

The wheel is built from the repository as `pip wheel .` builds it and installed into a fresh
venv; the dependencies already installed for the tests are made visible to that venv by a
``.pth`` file instead of being installed again (torch alone would take minutes). Everything
expkit ships must then come from the installed package: the templates, CLAUDE.md, the manual,
the embedded corpus and tokenizer.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, fill

#: The files expkit ships, by their path in the repository; the wheel holds each under expkit/_data/.
SHIPPED = ["CLAUDE.md", "experiment/README.md", "templates", "dataset"]
TINY = ["hidden_size=64", "num_hidden_layers=1", "max_seq_len=32", "batch_size=4", "max_steps=3", "warmup_steps=0",
        "log_interval=1", "eval_interval=3", "eval_batches=1", "save_interval=3", "sample_max_new_tokens=4"]
TRAP = "raise RuntimeError('the workspace shadowed an installed package: {}')\n"


def shipped_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for rel in SHIPPED:
        path = REPO / rel
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[f.relative_to(REPO).as_posix()] = f
    return files


def check(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


def build_wheel(tmp: Path) -> Path:
    # setuptools' build/ and egg-info go to tmp, not into the checkout: nothing stale from an
    # earlier build can slip into this wheel, and the working tree stays clean
    tmp.mkdir(parents=True, exist_ok=True)
    extra = tmp / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp}\n")
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(REPO)],
          env={**os.environ, "DIST_EXTRA_CONFIG": str(extra)})
    (wheel,) = (tmp / "dist").glob("expkit-*.whl")
    return wheel


def fresh_venv(tmp: Path) -> Path:
    """A venv that sees this interpreter's site-packages (torch, transformers, ...) but not expkit.

    The directories a ``.pth`` line adds are not scanned for ``.pth`` files themselves, so the
    editable install's finder there stays inactive; expkit can only come from the wheel.
    """
    venv = tmp / "venv"
    check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(check([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (purelib / "_test_dependencies.pth").write_text("".join(f"{d}\n" for d in ours if Path(d).is_dir()))
    return venv


@pytest.mark.slow
def test_wheel_install_inits_a_workspace_and_trains_far_from_the_checkout(tmp_path):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    wheel = build_wheel(tmp_path / "wheel")
    timings["wheel"] = time.monotonic() - t0

    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        for rel, source in shipped_files().items():
            info = infos.get(f"expkit/_data/{rel}")
            assert info is not None, f"{rel} is missing from the wheel"
            assert not stat.S_ISLNK(info.external_attr >> 16), f"{rel} is a symlink in the wheel"
            assert zf.read(info) == source.read_bytes(), rel

    t0 = time.monotonic()
    venv = fresh_venv(tmp_path)
    python, exp = venv / "bin" / "python", venv / "bin" / "exp"
    check([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
           "--disable-pip-version-check", "-q", str(wheel)])
    timings["venv+install"] = time.monotonic() - t0

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "EXP_ROOT", "PYTHONSAFEPATH", "VIRTUAL_ENV") and not k.startswith("SWANLAB_")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               SWANLAB_ROOT=str(tmp_path / "swanlab_home"))
    home = tmp_path / "far"
    home.mkdir()
    where = json.loads(check([str(python), "-c", (
        "import json, expkit, model, expkit.workspace as w; print(json.dumps([expkit.__file__, model.__file__, "
        "str(w.package_templates_dir()), str(w.embedded_train_path()), str(w.embedded_tokenizer_dir()), "
        "str(w.shipped_path('CLAUDE.md'))]))")], cwd=home, env=env).stdout)
    site = str(venv.resolve())
    assert all(p.startswith(site) for p in where), where  # the wheel's, not the checkout's

    exp_ok = lambda *args, cwd: check([str(exp), *args], cwd=cwd, env=env)  # noqa: E731
    out = exp_ok("init", "ws", cwd=home).stdout
    root = home / "ws"
    assert "workspace ready" in out
    for rel, source in shipped_files().items():
        if rel.startswith("templates/") or rel in ("CLAUDE.md", "experiment/README.md"):
            assert (root / rel).read_bytes() == source.read_bytes(), rel
    assert "[tool.exp]" in (root / "pyproject.toml").read_text()
    assert "out/**/checkpoints/" in (root / ".gitignore").read_text()

    # A workspace may hold a model of its own; the run must still use the installed trainer.
    (root / "model.py").write_text(TRAP.format("model.py"))
    (root / "model").mkdir()
    (root / "model" / "__init__.py").write_text(TRAP.format("model/"))
    (root / "expkit.py").write_text(TRAP.format("expkit.py"))
    exp_ok("new", "0.1.0", "--desc", "installed from a wheel", cwd=root)
    fill(root / "experiment" / "experiment_0.1.0.md")
    exp_ok("set", "0.1.0", *TINY, cwd=root)
    exp_ok("check", "0.1.0", cwd=root)
    t0 = time.monotonic()
    r = subprocess.run([str(exp), "run", "0.1.0"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    timings["exp run"] = time.monotonic() - t0
    outdir = root / "out" / "experiment_0.1.0"
    logs = "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(outdir.glob("*.log")))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    for check_name in ("data_path", "val_data_path", "tokenizer_path"):  # the preflight names the files it will read
        (line,) = [ln for ln in r.stdout.splitlines() if ln.split()[1:2] == [check_name]]
        assert f"{site}/lib/" in line, line
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary, summary
    shown = json.loads(exp_ok("show", "0.1.0", "--json", cwd=root).stdout)
    assert shown["run"]["status"] == "finished" and shown["status"] == "analyzed", shown.get("run")
    assert "shadowed" not in logs
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

