"""Writing files so that a reader sees the old file or the new one, never a mix.

The one atomic-write helper of expkit and the trainer: records, state, run scripts, JSON,
CSV, PNGs and checkpoints all go through ``atomic_write`` (bytes or text) or ``atomic_file``
(a handle for writers that stream: Pillow, csv, ``torch.save``). The temporary file is unique
per process and thread and lives beside the target, so two writers of one file at once both
finish and the survivor is whole. Layer 0: the standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, chmod: int | None = None,
                encoding: str | None = None, newline: str | None = None, durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it is synced and renamed over
    ``path``; on an exception it is removed and ``path`` is left as it was. ``durable=False``
    skips the syncs (still atomic, not crash-safe): for files rebuilt from others, such as the
    site's pages, where a thousand syncs would cost seconds and a crash costs only a rebuild."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if chmod is not None:
            os.chmod(tmp, chmod)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes, *, chmod: int | None = None, durable: bool = True) -> None:
    """Write ``data`` (text as UTF-8, newlines as given) to ``path`` atomically (``durable``: see atomic_file)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, "wb", chmod=chmod, durable=durable) as fh:
        fh.write(raw)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """``data`` as UTF-8 JSON (non-ASCII kept readable), atomically, ending in a newline."""
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def replace_dir(new: Path, target: Path) -> None:
    """Put the directory ``new`` (written beside ``target``) in ``target``'s place: a reader sees
    the old directory or the new one, never half of one (the old one is removed after the swap)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on ``path`` (created if missing) for the block:
    one writer of a record's state, one preparer of a corpus, at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
