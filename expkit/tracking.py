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
  or ``swanlab login``) and the API host answers a TCP connect within 3 s; otherwise one
  warning line and the run is tracked offline.
- ``disabled``: nothing is written but ``metrics.jsonl``.

A tracker error never stops training: it is reported once and tracking goes on if it can.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Tracking modes a TrainConfig may name; ``SWANLAB_MODE`` accepts these and SwanLab's own names.
MODES = ("offline", "cloud", "disabled")
_MODE_ALIASES = {"offline": "offline", "local": "offline", "cloud": "cloud", "online": "cloud", "disabled": "disabled"}
#: Seconds the cloud reachability probe waits before falling back to offline.
PROBE_TIMEOUT_S = 3.0
#: SwanLab's log directory inside a run's output directory.
SWANLOG_DIR = "swanlog"
METRICS_FILE = "metrics.jsonl"

Warn = Callable[[str], None]


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
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in kept:
                fh.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def cloud_available(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether cloud tracking can work now: (True, host) or (False, the reason in a few words).

    Needs an API key (``SWANLAB_API_KEY`` or the login swanlab saved) and a TCP connection to
    SwanLab's configured API host (``SWANLAB_API_HOST``, default api.swanlab.cn) within
    ``timeout`` seconds. A connect is enough: it proves a route and a listener without
    sending the key anywhere.
    """
    try:
        from swanlab import Settings

        settings = Settings()  # defaults + env + saved login (.netrc), as swanlab.init sees them
    except Exception as err:  # a malformed swanlab config file
        return False, f"cannot read SwanLab settings ({_one_line(err)})"
    if not settings.api_key:
        return False, "no SwanLab API key (set SWANLAB_API_KEY or run `swanlab login`)"
    host, port = _host_port(str(settings.api_host))
    if not host:
        return False, f"SwanLab API host {settings.api_host!r} has no host name"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        return False, f"SwanLab host {host}:{port} unreachable within {timeout:g} s ({_one_line(err)})"
    return True, f"{host}:{port}"


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

    ``mode`` is the effective mode (``cloud`` may have fallen back to ``offline``); ``run_dir``
    is SwanLab's directory for this run, or None when nothing is stored locally.
    """

    def __init__(self, mode: str = "disabled", run: Any = None, run_dir: Path | None = None, warn: Warn = _stderr_warn):
        self.mode = mode
        self.run_dir = run_dir
        self._run = run
        self._warn = warn
        self._warned = False
        self.errors = 0

    @property
    def active(self) -> bool:
        return self._run is not None

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
    mode = resolve_mode(mode, warn)
    if mode == "disabled":
        return Tracker("disabled", warn=warn)
    if mode == "cloud":
        ok, reason = cloud_available()
        if not ok:
            warn(f"SwanLab cloud unavailable: {reason}; tracking offline (upload later with `swanlab sync`)")
            mode = "offline"
    log_dir = Path(out_dir).resolve() / SWANLOG_DIR
    try:
        run = _init(mode, log_dir, project, name, description, tags, config)
    except Exception as err:
        if mode == "cloud":
            warn(f"SwanLab cloud start failed ({_one_line(err)}); tracking offline")
            mode = "offline"
            try:
                run = _init(mode, log_dir, project, name, description, tags, config)
            except Exception as err2:
                warn(f"SwanLab start failed ({_one_line(err2)}); tracking disabled, metrics.jsonl is complete")
                return Tracker("disabled", warn=warn)
        else:
            warn(f"SwanLab start failed ({_one_line(err)}); tracking disabled, metrics.jsonl is complete")
            return Tracker("disabled", warn=warn)
    tracker = Tracker(mode, run, _run_dir_of(run), warn)
    for row in history:
        if "step" in row:
            tracker.log(row, int(row["step"]))
    return tracker


def _init(mode: str, log_dir: Path, project: str, name: str | None, description: str | None,
          tags: Iterable[str], config: Mapping[str, Any] | None) -> Any:
    import swanlab

    return swanlab.init(
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
        from .errors import ExpError

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
