"""expkit.tracking against the real SwanLab (offline, no network): what is logged is what is stored.

Cloud mode is tested against SwanLab hosts these tests start on 127.0.0.1, each failing the way
a real network does (``FAILING_HOSTS``, which bench/bench_tracking.py times): a cloud run
falls back to offline, says why, and is tracked offline in full.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from expkit import tracking
from expkit.names import METRICS_FILE

REPO = Path(__file__).resolve().parent.parent

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


def log_rows(tracker: tracking.Tracker, out: Path, rows=ROWS) -> None:
    with tracking.MetricsFile(out / METRICS_FILE) as metrics:
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
    assert tracker.describe() == {"requested": "offline", "mode": "offline", "reason": None}

    cmd = tracking.sync_command(tmp_path)
    assert cmd[-2:] == ["sync", str(tracker.run_dir.resolve())]
    assert Path(cmd[0]).name in ("swanlab", Path(sys.executable).name)


def test_history_is_replayed_so_the_newest_run_mirrors_the_file(tmp_path):
    first = tracking.start(tmp_path, mode="offline", warn=Warnings())
    log_rows(first, tmp_path, ROWS[:2])
    first.finish("interrupted")
    time.sleep(1.1)  # run directories are named by the second they start

    kept = tracking.MetricsFile.truncate_after(tmp_path / METRICS_FILE, 1)
    assert kept == ROWS[:1]
    second = tracking.start(tmp_path, mode="offline", history=kept, warn=Warnings())
    log_rows(second, tmp_path, ROWS[1:])
    second.finish()

    assert len(tracking.run_dirs(tmp_path)) == 2
    assert tracking.read_run(tmp_path)["loss"] == [(1, 8.5), (10, 7.25), (20, 6.0)]
    assert tracking.read_run_meta(tracking.run_dirs(tmp_path)[0])["state"] == "aborted"
    assert tracking.read_metrics(tmp_path / METRICS_FILE) == ROWS


def test_disabled_writes_nothing(tmp_path):
    tracker = tracking.start(tmp_path, mode="disabled", name="x", config={"a": 1})
    assert tracker.mode == "disabled" and not tracker.active
    assert tracker.describe() == {"requested": "disabled", "mode": "disabled", "reason": None}
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


def test_cloud_without_api_key_falls_back_to_offline(tmp_path):
    warnings = Warnings()
    tracker = tracking.start(tmp_path, mode="cloud", warn=warnings)
    tracker.finish()
    assert tracker.mode == "offline"
    assert "API key" in tracker.describe()["reason"] and len(warnings) == 1 and "API key" in warnings[0]


# -- cloud mode against hosts that fail -------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@contextmanager
def refusing_host() -> Iterator[str]:
    """A port with nothing listening: the connection is refused."""
    yield f"http://127.0.0.1:{closed_port()}"


@contextmanager
def silent_host() -> Iterator[str]:
    """Accepts connections and never answers, as a captive portal, a firewall or a hung proxy does.

    Nothing calls accept(): the kernel completes the handshake of a listening socket by itself.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def unresolvable_host() -> Iterator[str]:
    """A name no resolver knows (RFC 6761 reserves .invalid)."""
    yield "http://swanlab.expkit-test.invalid"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output is not a web server's access log
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def http_host(handler: type[_Handler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a handler still waiting must not hold up server_close
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def host_503() -> Iterator[str]:
    """Answers every request with 503 Service Unavailable."""

    class Unavailable(_Handler):
        def do_GET(self) -> None:
            self.reply(503, b"unavailable")

        do_POST = do_GET

    with http_host(Unavailable) as url:
        yield url


@contextmanager
def host_that_never_logs_in() -> Iterator[str]:
    """Answers the probe (GET /api: OK, as SwanLab's server does) and never the login, until the block ends."""
    release = threading.Event()

    class ProbeOnly(_Handler):
        def do_GET(self) -> None:
            self.reply(200, b"OK")

        def do_POST(self) -> None:
            release.wait(120)  # then the connection closes without an answer

    with http_host(ProbeOnly) as url:
        try:
            yield url
        finally:
            release.set()


#: Each way the SwanLab host can fail, and the words the fallback reason names it with.
FAILING_HOSTS = {
    "refused": (refusing_host, "refused the connection"),
    "silent": (silent_host, "no answer from"),
    "unresolvable": (unresolvable_host, "cannot resolve swanlab.expkit-test.invalid"),
    "http_503": (host_503, "answered HTTP 503"),
}


@pytest.fixture
def cloud_env(monkeypatch):
    """A cloud run's environment: an API key (a dummy: it never reaches a real host)."""
    monkeypatch.setenv("SWANLAB_API_KEY", "k" * 21)
    return monkeypatch


def assert_fell_back_and_tracked_offline(tracker: tracking.Tracker, warnings: Warnings, out: Path, cause: str) -> None:
    info = tracker.describe()
    assert info["requested"] == "cloud" and info["mode"] == "offline" and tracker.mode == "offline"
    assert cause in info["reason"], info["reason"]
    assert warnings == [f"SwanLab cloud unavailable: {info['reason']}; tracking offline "
                        "(upload later with `swanlab sync`)"]
    assert tracking.read_run(out)["loss"] == [(1, 8.5), (10, 7.25), (20, 6.0)]
    assert tracking.read_run_meta(out)["state"] == "finished"
    # the cloud attempt's directory, made before its login failed, is not left among the runs
    assert [d.name for d in (out / "swanlog").glob("run-*")] == [tracker.run_dir.name]


@pytest.mark.parametrize("failure", sorted(FAILING_HOSTS))
def test_cloud_falls_back_to_offline_when_the_host_fails(failure, tmp_path, cloud_env):
    host, cause = FAILING_HOSTS[failure]
    cloud_env.setattr(tracking, "PROBE_TIMEOUT_S", 1.0)  # the silent host costs the whole deadline
    warnings = Warnings()
    with host() as url:
        cloud_env.setenv("SWANLAB_API_HOST", url)
        tracker = tracking.start(tmp_path, mode="cloud", name=failure, warn=warnings)
        log_rows(tracker, tmp_path)
        tracker.finish()
    assert_fell_back_and_tracked_offline(tracker, warnings, tmp_path, cause)


def test_the_probe_counts_a_failed_tls_handshake_as_unavailable(cloud_env):
    with host_503() as url:  # plain HTTP: a TLS client gets no handshake from it
        cloud_env.setenv("SWANLAB_API_HOST", url.replace("http://", "https://"))
        ok, reason = tracking.cloud_available(timeout=5.0)
    assert not ok and reason.startswith("TLS with 127.0.0.1:")


def test_a_cloud_start_that_does_not_return_in_time_is_abandoned_for_offline(tmp_path, cloud_env):
    """The probe passes, then swanlab.init waits on a login that never comes.

    The attempt is abandoned in its thread; the offline run that follows is complete, and
    SwanLab still works after the abandoned attempt has failed on its own.
    """
    cloud_env.setattr(tracking, "CLOUD_START_TIMEOUT_S", 1.0)
    warnings = Warnings()
    with host_that_never_logs_in() as url:
        cloud_env.setenv("SWANLAB_API_HOST", url)
        tracker = tracking.start(tmp_path / "run", mode="cloud", warn=warnings)
        attempt = next(t for t in threading.enumerate() if t.name == "expkit-swanlab-cloud-start")
        assert attempt.is_alive()  # still waiting for the login while the run is tracked offline
        log_rows(tracker, tmp_path / "run")
        tracker.finish()
    attempt.join(60)  # the login's connection closed: the attempt fails and its thread ends
    assert not attempt.is_alive()
    assert_fell_back_and_tracked_offline(tracker, warnings, tmp_path / "run",
                                         "swanlab.init did not return within 1 s")

    import swanlab

    assert not swanlab.has_run()  # the abandoned attempt left no run behind
    again = tracking.start(tmp_path / "again", mode="offline", warn=warnings)
    log_rows(again, tmp_path / "again")
    again.finish()
    assert tracking.read_run(tmp_path / "again")["loss"][-1] == (20, 6.0)


def test_call_within_hands_a_late_value_to_on_late():
    release, late = threading.Event(), []

    def open_slowly() -> str:
        release.wait(60)
        return "opened"

    with pytest.raises(tracking._Abandoned):
        tracking._call_within(0.05, open_slowly, "late-call", on_late=late.append)
    release.set()
    thread = next((t for t in threading.enumerate() if t.name == "late-call"), None)
    if thread is not None:
        thread.join(60)
    assert late == ["opened"]  # the caller gave up, so the one who closes it is on_late
    assert tracking._call_within(5.0, lambda: 42, "prompt-call", on_late=late.append) == 42 and late == ["opened"]


def tiny_trainer_run(directory: Path, swanlab_mode: str,
                     api_host: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a trainer run of a few seconds into ``directory/run``:
    a tiny model on a slice of the embedded corpus, with SwanLab's state under ``directory``."""
    from expkit.config import TrainConfig

    data = {}
    for kind, n in (("train", 300), ("val", 40)):  # a slice of the embedded corpus: less to tokenize
        with gzip.open(REPO / "dataset" / f"pretrain_{kind}.jsonl.gz", "rt", encoding="utf-8") as src:
            (directory / f"{kind}.jsonl").write_text("".join(next(src) for _ in range(n)), encoding="utf-8")
        data[kind] = str(directory / f"{kind}.jsonl")
    cfg = TrainConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_seq_len=64, batch_size=4, max_steps=3, warmup_steps=1, log_interval=1, eval_interval=3,
                      save_interval=3, eval_batches=1, sample_max_new_tokens=2, knowledge_num=1024,
                      data_path=data["train"], val_data_path=data["val"], swanlab_mode=swanlab_mode)
    config = directory / "config.json"
    config.write_text(json.dumps(cfg.model_dump()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    env.update(SWANLAB_ROOT=str(directory / "swanlab_home"), SWANLAB_API_KEY="k" * 21, OMP_NUM_THREADS="1")
    if api_host is not None:
        env["SWANLAB_API_HOST"] = api_host
    cmd = [sys.executable, "-m", "model.train_pretrain", "--config", str(config), "--out-dir", str(directory / "run")]
    return cmd, env


@pytest.mark.slow
def test_the_trainer_records_why_it_tracked_a_cloud_run_offline(tmp_path):
    """A real trainer process against the silent host: it trains, and says where its tracking went and why."""
    with silent_host() as url:
        cmd, env = tiny_trainer_run(tmp_path, "cloud", api_host=url)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    out = tmp_path / "run"
    expected = {"requested": "cloud", "mode": "offline",
                "reason": f"no answer from {url}/api within {tracking.PROBE_TIMEOUT_S:g} s"}
    assert json.loads((out / "summary.json").read_text())["tracking"] == expected
    assert json.loads((out / "status.json").read_text())["tracking"] == expected
    fallback = [line for line in (out / "train.log").read_text().splitlines() if "SwanLab cloud unavailable" in line]
    assert len(fallback) == 1
    assert f"warning: SwanLab cloud unavailable: {expected['reason']}; tracking offline" in fallback[0]
    assert [step for step, _ in tracking.read_run(out)["loss"]] == [1, 2, 3]
    assert tracking.read_run_meta(out)["state"] == "finished"


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
    assert tracking.read_metrics(tmp_path / METRICS_FILE) == ROWS


def test_a_tracker_that_cannot_start_is_disabled(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no space left")

    monkeypatch.setattr(tracking, "_init", fail)
    warnings = Warnings()
    tracker = tracking.start(tmp_path, mode="offline", warn=warnings)
    tracker.log({"step": 1, "loss": 1.0}, 1)
    tracker.finish()
    assert tracker.mode == "disabled" and "no space left" in warnings[0]
    assert tracker.describe()["requested"] == "offline" and "no space left" in tracker.describe()["reason"]


def test_metrics_file_survives_a_torn_line_and_truncates(tmp_path):
    path = tmp_path / METRICS_FILE
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
