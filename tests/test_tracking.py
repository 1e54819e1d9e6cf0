"""expkit.tracking against the real SwanLab (offline, no network): what is logged is what is stored."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expkit import tracking

ROWS = [
    {"step": 1, "loss": 8.5, "lr": 1e-4, "grad_norm": 1.5, "tokens_per_s": 1000.0},
    {"step": 10, "loss": 7.25, "lr": 1e-3, "grad_norm": 0.9, "tokens_per_s": 1200.0},
    {"step": 20, "loss": 6.0, "lr": 9e-4, "grad_norm": 0.7, "tokens_per_s": 1250.0, "val_loss": 6.5},
]


@pytest.fixture(autouse=True)
def _isolated_swanlab(tmp_path, monkeypatch):
    """No saved login, no host or mode from the person running the tests."""
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab_home"))
    for var in ("SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_API_HOST", "SWANLAB_WEB_HOST", "SWANLAB_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def log_rows(tracker: tracking.Tracker, out: Path, rows=ROWS) -> None:
    with tracking.MetricsFile(out / tracking.METRICS_FILE) as metrics:
        for row in rows:
            metrics.write(row)
            tracker.log(row, row["step"])


def test_offline_run_is_stored_and_read_back(tmp_path):
    warnings = Warnings()
    config = {"learning_rate": 3e-3, "intermediate_size": None, "model_type": "model_original"}
    tracker = tracking.start(tmp_path, mode="offline", project="expkit-test", name="1.2.3",
                             description="学习率减半", tags=["lr", "demo"], config=config, warn=warnings)
    assert tracker.mode == "offline" and tracker.active
    log_rows(tracker, tmp_path)
    tracker.finish("finished")

    assert tracker.run_dir is not None and tracker.run_dir.parent == tmp_path / "swanlog"
    stored = tracking.read_run(tmp_path)
    assert stored["loss"] == [(1, 8.5), (10, 7.25), (20, 6.0)]
    assert stored["val_loss"] == [(20, 6.5)]
    assert [s for s, _ in stored["tokens_per_s"]] == [1, 10, 20]
    assert "step" not in stored

    meta = tracking.read_run_meta(tmp_path)
    assert meta["name"] == "1.2.3" and meta["project"] == "expkit-test"
    assert meta["description"] == "学习率减半" and meta["tags"] == ["lr", "demo"]
    assert meta["state"] == "finished"
    assert meta["config"]["learning_rate"] == 3e-3 and meta["config"]["intermediate_size"] == "None"
    assert warnings == []

    cmd = tracking.sync_command(tmp_path)
    assert cmd[-2:] == ["sync", str(tracker.run_dir.resolve())]
    assert Path(cmd[0]).name in ("swanlab", Path(sys.executable).name)


def test_history_is_replayed_so_the_newest_run_mirrors_the_file(tmp_path):
    first = tracking.start(tmp_path, mode="offline", warn=Warnings())
    log_rows(first, tmp_path, ROWS[:2])
    first.finish("interrupted")
    time.sleep(1.1)  # run directories are named by the second they start

    kept = tracking.MetricsFile.truncate_after(tmp_path / tracking.METRICS_FILE, 1)
    assert kept == ROWS[:1]
    second = tracking.start(tmp_path, mode="offline", history=kept, warn=Warnings())
    log_rows(second, tmp_path, ROWS[1:])
    second.finish()

    assert len(tracking.run_dirs(tmp_path)) == 2
    assert tracking.read_run(tmp_path)["loss"] == [(1, 8.5), (10, 7.25), (20, 6.0)]
    assert tracking.read_run_meta(tracking.run_dirs(tmp_path)[0])["state"] == "aborted"
    assert tracking.read_metrics(tmp_path / tracking.METRICS_FILE) == ROWS


def test_disabled_writes_nothing(tmp_path):
    tracker = tracking.start(tmp_path, mode="disabled", name="x", config={"a": 1})
    assert tracker.mode == "disabled" and not tracker.active
    tracker.log({"step": 1, "loss": 1.0}, 1)
    tracker.finish()
    assert list(tmp_path.iterdir()) == []


def test_env_overrides_the_config_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_MODE", "disabled")
    assert tracking.start(tmp_path, mode="offline").mode == "disabled"
    assert not (tmp_path / "swanlog").exists()
    monkeypatch.setenv("SWANLAB_MODE", "online")
    assert tracking.resolve_mode("offline") == "cloud"
    warnings = Warnings()
    monkeypatch.setenv("SWANLAB_MODE", "bogus")
    assert tracking.resolve_mode("disabled", warn=warnings) == "disabled"
    assert len(warnings) == 1 and "bogus" in warnings[0]


def test_cloud_with_unreachable_host_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_API_KEY", "k" * 21)
    monkeypatch.setenv("SWANLAB_API_HOST", f"http://127.0.0.1:{closed_port()}")
    warnings = Warnings()
    t0 = time.monotonic()
    tracker = tracking.start(tmp_path, mode="cloud", name="cloudy", warn=warnings)
    started_s = time.monotonic() - t0
    log_rows(tracker, tmp_path)
    tracker.finish()

    assert tracker.mode == "offline"
    assert len(warnings) == 1 and "offline" in warnings[0] and "127.0.0.1" in warnings[0]
    assert tracking.read_run(tmp_path)["loss"][-1] == (20, 6.0)
    assert tracking.read_run_meta(tmp_path)["state"] == "finished"
    assert started_s < 15  # the probe gives up after 3 s; a refused connect is immediate


def test_cloud_without_api_key_falls_back_to_offline(tmp_path):
    warnings = Warnings()
    tracker = tracking.start(tmp_path, mode="cloud", warn=warnings)
    tracker.finish()
    assert tracker.mode == "offline"
    assert "API key" in warnings[0]


class Exploding:
    """A SwanLab run whose every call fails, as a broken disk or SDK bug would."""

    def __init__(self) -> None:
        self.dir = None
        self.calls = 0

    def log(self, data, step=None):
        self.calls += 1
        raise OSError("disk full")

    def finish(self, state="success", error=None):
        raise RuntimeError("finish failed")


def test_a_tracker_that_raises_never_stops_logging(tmp_path, monkeypatch):
    run = Exploding()
    monkeypatch.setattr(tracking, "_init", lambda *args, **kwargs: run)
    warnings = Warnings()
    tracker = tracking.start(tmp_path, mode="offline", warn=warnings)
    log_rows(tracker, tmp_path)
    tracker.finish()

    assert run.calls == len(ROWS)  # it kept trying
    assert tracker.errors == len(ROWS) + 1
    assert len(warnings) == 1 and "disk full" in warnings[0]  # reported once
    assert tracking.read_metrics(tmp_path / tracking.METRICS_FILE) == ROWS


def test_a_tracker_that_cannot_start_is_disabled(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no space left")

    monkeypatch.setattr(tracking, "_init", fail)
    warnings = Warnings()
    tracker = tracking.start(tmp_path, mode="offline", warn=warnings)
    tracker.log({"step": 1, "loss": 1.0}, 1)
    tracker.finish()
    assert tracker.mode == "disabled" and "no space left" in warnings[0]


def test_metrics_file_survives_a_torn_line_and_truncates(tmp_path):
    path = tmp_path / tracking.METRICS_FILE
    with tracking.MetricsFile(path) as metrics:
        for row in ROWS:
            metrics.write(row)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 30, "loss": 5.')  # killed mid-line
    assert tracking.read_metrics(path) == ROWS
    assert tracking.MetricsFile.truncate_after(path, 10) == ROWS[:2]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 10]


def test_importing_tracking_does_not_import_swanlab():
    code = "import sys, expkit.tracking; print('swanlab' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
