"""Experiment tracking: ``metrics.jsonl`` is the record, SwanLab mirrors it.

The trainer writes every metric line to ``metrics.jsonl`` first (``MetricsFile``); a
``Tracker`` then mirrors the same line to SwanLab. The JSONL file is what analysis, review and
resume read; SwanLab is a view of it that may lag, fail or be turned off without losing
anything.

This is the only module that imports ``swanlab``, and only inside functions: ``exp --help``
and friends never pay for it.

Modes (``TrainConfig.swanlab_mode``, overridden by the ``SWANLAB_MODE`` environment variable):

- ``offline`` (default): SwanLab writes its run files under ``OUT/swanlog/``; no network, no
  prompt, no probes that shell out to git / pip / GPU tools. ``sync_command`` gives the
  ``swanlab sync`` line that uploads such a run later.
- ``cloud``: upload while training, only when an API key is configured (``SWANLAB_API_KEY``
  or ``swanlab login``), the API host (``SWANLAB_API_HOST``) answers an HTTP request below 500
  within ``PROBE_TIMEOUT_S``, and ``swanlab.init`` returns within ``CLOUD_START_TIMEOUT_S``;
  otherwise one warning line and the run is tracked offline. A cloud run never waits longer
  than the sum of the two for its start.
- ``disabled``: nothing is written but ``metrics.jsonl``.

``Tracker.describe()`` says what a run asked for, what it got and why not
(``{"requested": "cloud", "mode": "offline", "reason": "..."}``); the trainer writes it into
``status.json`` and ``summary.json``.

A tracker error never stops training: it is reported once and tracking goes on if it can.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import ExpError
from .files import atomic_write

#: Tracking modes a TrainConfig may name; ``SWANLAB_MODE`` accepts these and SwanLab's own names.
MODES = ("offline", "cloud", "disabled")
_MODE_ALIASES = {"offline": "offline", "local": "offline", "cloud": "cloud", "online": "cloud", "disabled": "disabled"}
#: Seconds the cloud probe (one HTTP request, name resolution included) may take in all.
PROBE_TIMEOUT_S = 3.0
#: Seconds ``swanlab.init`` in online mode (log in, create the project and the run) may take.
#: A start that works takes one or two; SwanLab alone would retry each request five times,
#: ten seconds each (86 s against a host that accepts connections and never answers).
CLOUD_START_TIMEOUT_S = 10.0
#: SwanLab's log directory inside a run's output directory.
SWANLOG_DIR = "swanlog"

Warn = Callable[[str], None]
T = TypeVar("T")


def _stderr_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# -- metrics.jsonl, the source of truth --------------------------------------------------------


class MetricsFile:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed as it is written.

    ``truncate_after(step)`` drops the lines of steps a resumed run will compute again, so the
    file never holds a step twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> MetricsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> list[dict[str, Any]]:
        """Keep the rows with ``step <= step`` (and drop a torn last line); returns the rows kept."""
        path = Path(path)
        kept = [row for row in read_metrics(path) if row.get("step", 0) <= step]
        atomic_write(path, "".join(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n" for row in kept))
        return kept


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a missing file is empty; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: everything before it is whole
                break
            if isinstance(row, dict):
                rows.append(row)
    return rows


# -- mode resolution and the cloud probe -------------------------------------------------------


def resolve_mode(config_mode: str, warn: Warn = _stderr_warn) -> str:
    """The effective mode: ``SWANLAB_MODE`` when set (and valid), else the config's."""
    env = os.environ.get("SWANLAB_MODE", "").strip().lower()
    if env:
        if env in _MODE_ALIASES:
            return _MODE_ALIASES[env]
        warn(f"SWANLAB_MODE={env!r} is not one of {', '.join(MODES)}; using swanlab_mode={config_mode}")
    return _MODE_ALIASES.get(config_mode, "offline")


class _Abandoned(Exception):
    """``_call_within`` stopped waiting for its call."""


def _call_within(seconds: float, fn: Callable[[], T], name: str, on_late: Callable[[T], None] | None = None) -> T:
    """``fn()`` run in a daemon thread: its value or its exception, or ``_Abandoned`` after ``seconds``.

    Python cannot interrupt a thread blocked in getaddrinfo, connect or recv, and a timeout
    given to a socket bounds each operation, not their sum. So the caller stops waiting and the
    call is left to end on its own (a daemon thread does not keep the process alive); should it
    return after all, ``on_late`` gets the value to close what it opened.
    """
    lock = threading.Lock()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            value = fn()
        except BaseException as err:
            with lock:
                outcome.setdefault("error", err)
            return
        with lock:
            late = "abandoned" in outcome
            outcome.setdefault("value", value)
        if late and on_late is not None:
            on_late(value)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    with lock:  # decided under the lock: either the caller takes the value or on_late does
        if not outcome:
            outcome["abandoned"] = True
            raise _Abandoned(f"{name} did not return within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def cloud_available(timeout: float | None = None) -> tuple[bool, str]:
    """Whether cloud tracking can work now: (True, the URL that answered) or (False, why not, in a few words).

    Needs an API key (``SWANLAB_API_KEY`` or the login swanlab saved) and an answer below HTTP
    500 from SwanLab's API host (``SWANLAB_API_HOST``, default https://api.swanlab.cn) to the
    request ``swanlab ping`` makes, ``GET {host}/api``, within ``timeout`` seconds in all
    (default ``PROBE_TIMEOUT_S``), name resolution and TLS included. No answer, a refused
    connection, an unknown name, a failed TLS handshake or a 5xx mean unavailable. The key is
    not sent: the login is swanlab.init's, under its own deadline.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        from swanlab import Settings

        settings = Settings()  # defaults + env + saved login (.netrc), as swanlab.init sees them
    except Exception as err:  # a malformed swanlab config file
        return False, f"cannot read SwanLab settings ({_one_line(err)})"
    if not settings.api_key:
        return False, "no SwanLab API key (set SWANLAB_API_KEY or run `swanlab login`)"
    url = f"{str(settings.api_host).rstrip('/')}/api"
    try:
        status = _call_within(timeout, functools.partial(_http_status, url, timeout), "expkit-swanlab-probe")
    except _Abandoned:
        return False, _no_answer(url, timeout)
    except Exception as err:
        return False, _unreachable(url, timeout, err)
    if status >= 500:
        return False, f"{url} answered HTTP {status}"
    return True, url


def _http_status(url: str, timeout: float) -> int:
    # requests is SwanLab's own HTTP stack: the same proxies (from the environment) and CA
    # bundle (certifi), so the probe fails where SwanLab's requests would
    import requests

    return requests.get(url, timeout=timeout, allow_redirects=False).status_code


def _no_answer(url: str, timeout: float) -> str:
    return f"no answer from {url} within {timeout:g} s"


def _unreachable(url: str, timeout: float, err: BaseException) -> str:
    """The probe's failure in a few words, named by its first recognisable cause."""
    parts = urlsplit(url)
    for cause in _causes(err):
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {parts.hostname} ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return f"{parts.netloc} refused the connection"
        if isinstance(cause, ssl.SSLError):
            return f"TLS with {parts.netloc} failed ({_one_line(cause)})"
        if isinstance(cause, TimeoutError):  # a socket timeout that beat the probe's own deadline
            return _no_answer(url, timeout)
    return f"{url} unreachable ({_one_line(err)})"


def _causes(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and what it wraps: requests wraps urllib3, whose MaxRetryError keeps its cause in ``reason``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        reason = getattr(err, "reason", None)
        wrapped = next((a for a in err.args if isinstance(a, BaseException)), None)
        err = reason if isinstance(reason, BaseException) else err.__cause__ or err.__context__ or wrapped


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- the tracker -------------------------------------------------------------------------------


def _settings(mode: str, log_dir: Path) -> Any:
    """swanlab.Settings for a batch job: no prompt, no shelling out, no terminal capture."""
    from swanlab import Settings

    return Settings(
        mode="online" if mode == "cloud" else "offline",
        log_dir=log_dir,
        interactive=False,
        # hardware: GPU tools (nvidia-smi ...); requirements: pip; git; conda: all subprocesses.
        # monitor: a sampling thread; the trainer reports its own throughput and memory.
        probe=Settings.Probe(hardware=False, requirements=False, conda=False, git=False, monitor=False),
        # train.log is the console record; swapping sys.stdout would also fight pytest and torchrun.
        terminal=Settings.Terminal(proxy_type="none"),
    )


class Tracker:
    """Mirror of the metric lines in SwanLab. Every method swallows errors (reported once).

    ``mode`` is the effective mode, ``requested`` the one asked for (``cloud`` may have fallen
    back to ``offline``, anything to ``disabled``) and ``reason`` why they differ (None when they
    do not); ``run_dir`` is SwanLab's directory for this run, or None when nothing is stored
    locally.
    """

    def __init__(self, mode: str = "disabled", run: Any = None, run_dir: Path | None = None, warn: Warn = _stderr_warn,
                 *, requested: str | None = None, reason: str | None = None):
        self.mode = mode
        self.requested = requested or mode
        self.reason = reason
        self.run_dir = run_dir
        self._run = run
        self._warn = warn
        self._warned = False
        self.errors = 0

    @property
    def active(self) -> bool:
        return self._run is not None

    def describe(self) -> dict[str, str | None]:
        """``{"requested": ..., "mode": ..., "reason": ...}``: what the run asked for, got, and why not."""
        return {"requested": self.requested, "mode": self.mode, "reason": self.reason}

    def _report(self, what: str, err: BaseException) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            self._warn(f"SwanLab {what} failed ({type(err).__name__}: {_one_line(err)}); "
                       "training goes on, metrics.jsonl has every line")

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Mirror one metric line (its numeric fields other than ``step``) at ``step``."""
        if self._run is None:
            return
        data = {k: float(v) for k, v in row.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        try:
            self._run.log(data, step=int(step))
        except Exception as err:
            self._report("log", err)

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Close the SwanLab run with the trainer's status (finished / failed / interrupted)."""
        if self._run is None:
            return
        run, self._run = self._run, None
        state = {"finished": "success", "failed": "crashed", "interrupted": "aborted"}.get(status, "success")
        try:
            run.finish(state=state, error=error if state == "crashed" else None)
        except Exception as err:
            self._report("finish", err)


def start(
    out_dir: Path,
    *,
    mode: str = "offline",
    project: str = "expkit",
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    config: Mapping[str, Any] | None = None,
    history: Iterable[Mapping[str, Any]] = (),
    warn: Warn = _stderr_warn,
) -> Tracker:
    """Open the SwanLab run of ``out_dir``; never raises (a failure gives a disabled Tracker).

    ``mode`` is the config's ``swanlab_mode`` (``SWANLAB_MODE`` overrides it). ``config`` must
    be plain data (``TrainConfig.model_dump()``). ``history`` are the ``metrics.jsonl`` rows
    written before a resume: they are logged again first, so that each SwanLab run of the
    directory mirrors the whole file and the newest one is complete.
    """
    requested = resolve_mode(mode, warn)
    if requested == "disabled":
        return Tracker("disabled", warn=warn)
    log_dir = Path(out_dir).resolve() / SWANLOG_DIR
    open_run = functools.partial(_init, log_dir=log_dir, project=project, name=name, description=description,
                                 tags=tags, config=config)
    run, reason = None, None
    if requested == "cloud":
        run, reason = _start_cloud(open_run, log_dir)
        if run is None:
            warn(f"SwanLab cloud unavailable: {reason}; tracking offline (upload later with `swanlab sync`)")
    if run is None:
        try:
            run = open_run("offline")
        except Exception as err:
            failed = f"SwanLab start failed ({_one_line(err)})"
            warn(f"{failed}; tracking disabled, metrics.jsonl is complete")
            return Tracker("disabled", requested=requested, reason=f"{reason}; {failed}" if reason else failed,
                           warn=warn)
    tracker = Tracker("offline" if reason else requested, run, _run_dir_of(run), warn,
                      requested=requested, reason=reason)
    for row in history:
        if "step" in row:
            tracker.log(row, int(row["step"]))
    return tracker


def _start_cloud(open_run: Callable[..., Any], log_dir: Path) -> tuple[Any, str | None]:
    """The online SwanLab run, or (None, why not) after at most PROBE_TIMEOUT_S + CLOUD_START_TIMEOUT_S."""
    ok, reason = cloud_available()
    if not ok:
        return None, reason
    before = {d.name for d in log_dir.glob("run-*")}
    run, reason = _init_cloud(open_run)
    if run is None:
        # swanlab.init makes the run's directory before it logs in; left empty, it would sort
        # among the real runs' directories (exp run records the last run-* as the SwanLab run).
        # rmdir removes only an empty one, never a run that started late after all.
        for directory in log_dir.glob("run-*"):
            if directory.name not in before:
                try:
                    directory.rmdir()
                except OSError:
                    pass
    return run, reason


def _init_cloud(open_run: Callable[..., Any]) -> tuple[Any, str | None]:
    """``open_run("cloud")`` within CLOUD_START_TIMEOUT_S: (the run, None) or (None, why not)."""

    def attempt() -> Any:
        # This thread may be abandoned (_call_within), so the attempt must not hold what the
        # offline start that follows needs: swanlab.init's command lock, which its undecorated
        # function does not take. And since a retry cannot fit in the deadline, each of its
        # requests is tried once: SwanLab's per-request override, a context variable set here
        # in this thread's own context (uploads during training keep SwanLab's retries).
        try:
            from swanlab.sdk.internal.pkg.client.session import request_retries_ctx

            request_retries_ctx.set(0)
        except ImportError:  # another SwanLab layout: its retries, still under the deadline
            pass
        return open_run("cloud", unlocked=True)

    timeout = CLOUD_START_TIMEOUT_S
    try:
        return _call_within(timeout, attempt, "expkit-swanlab-cloud-start", on_late=_close_late_run), None
    except _Abandoned:
        return None, f"swanlab.init did not return within {timeout:g} s"
    except Exception as err:
        return None, f"swanlab.init failed ({type(err).__name__}: {_one_line(err)})"


def _close_late_run(run: Any) -> None:
    """A cloud run that started after start() gave up on it: nobody logs to it, so it ends now."""
    try:
        if run.alive:  # the offline start (reinit=True) may have finished it already
            run.finish(state="aborted")
    except Exception:
        pass  # a thread nobody waits for: there is no one to tell


def _init(mode: str, log_dir: Path, project: str, name: str | None, description: str | None,
          tags: Iterable[str], config: Mapping[str, Any] | None, unlocked: bool = False) -> Any:
    import swanlab

    init = getattr(swanlab.init, "__wrapped__", swanlab.init) if unlocked else swanlab.init
    return init(
        reinit=True,
        project=project,
        name=name or None,
        description=description or None,
        tags=list(tags) or None,
        # SwanLab stores None as {} (an empty table); "None" reads as what it is
        config={k: "None" if v is None else v for k, v in config.items()} if config else None,
        settings=_settings(mode, log_dir),
    )


def _run_dir_of(run: Any) -> Path | None:
    try:
        path = Path(run.dir) if getattr(run, "dir", None) else None
    except Exception:
        return None
    # run.dir may be files/ of the run directory in some versions; the run file sits one level up
    if path is not None and not list(path.glob("run-*.swanlab")) and list(path.parent.glob("run-*.swanlab")):
        path = path.parent
    return path


# -- reading back and syncing ------------------------------------------------------------------


def run_dirs(path: Path) -> list[Path]:
    """SwanLab run directories under ``path`` (an output dir, its swanlog/, or one run dir), oldest first."""
    path = Path(path)
    if list(path.glob("run-*.swanlab")):
        return [path]
    base = path / SWANLOG_DIR if (path / SWANLOG_DIR).is_dir() else path
    found = [d for d in base.glob("run-*") if d.is_dir() and list(d.glob("run-*.swanlab"))]
    # directory names start with the start time (run-YYYYMMDD_HHMMSS-id); mtime breaks ties
    return sorted(found, key=lambda d: (d.name.split("-")[1] if d.name.count("-") >= 2 else "", d.stat().st_mtime))


def latest_run_dir(path: Path) -> Path:
    dirs = run_dirs(path)
    if not dirs:
        raise ExpError(f"no SwanLab run under {path} (was the run tracked with swanlab_mode=disabled?)")
    return dirs[-1]


def read_run(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What SwanLab stored for a run: ``{key: [(step, value), ...]}`` in step order.

    ``run_dir`` is a SwanLab run directory, or an output directory / its ``swanlog/``, in
    which case the newest run is read (after a resume it mirrors the whole ``metrics.jsonl``).
    Reads the run file with SwanLab's own ``DataStoreReader``; a step logged twice keeps the
    last value.
    """
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    directory = latest_run_dir(run_dir)
    series: dict[str, dict[int, float]] = {}
    for run_file in sorted(directory.glob("run-*.swanlab")):
        reader = DataStoreReader()
        reader.open(run_file)
        try:
            for raw in reader:
                record = Record()
                record.ParseFromString(raw)
                if record.HasField("scalar"):
                    scalar = record.scalar
                    series.setdefault(scalar.key, {})[int(scalar.step)] = float(scalar.value.number)
        finally:
            reader.close()
    return {key: sorted(points.items()) for key, points in series.items()}


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """The run's identity as SwanLab stored it: project, name, description, tags, state, config."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.proto.swanlab.run.v1.run_pb2 import RunState
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    directory = latest_run_dir(run_dir)
    meta: dict[str, Any] = {"run_dir": str(directory), "state": None}
    for run_file in sorted(directory.glob("run-*.swanlab")):
        reader = DataStoreReader()
        reader.open(run_file)
        try:
            for raw in reader:
                record = Record()
                record.ParseFromString(raw)
                if record.HasField("start"):
                    s = record.start
                    meta.update(project=s.project, name=s.name, description=s.description, tags=list(s.tags), id=s.id)
                elif record.HasField("finish"):
                    meta["state"] = RunState.Name(record.finish.state).removeprefix("RUN_STATE_").lower()
        finally:
            reader.close()
    config_file = directory / "files" / "config.yaml"
    if config_file.is_file():
        import yaml

        raw_config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        meta["config"] = {k: v.get("value") if isinstance(v, dict) else v for k, v in raw_config.items()}
    return meta


def sync_command(run_dir: Path) -> list[str]:
    """The ``swanlab sync`` command line that uploads the (newest) offline run of ``run_dir``."""
    directory = latest_run_dir(run_dir).resolve()
    script = Path(sys.executable).with_name("swanlab")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "swanlab"]
    return [*prefix, "sync", str(directory)]
