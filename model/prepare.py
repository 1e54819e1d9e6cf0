"""Tokenize a JSONL corpus once into memory-mapped token shards (``exp data prepare``).

    python -m model.prepare SRC [--out DIR] [--workers N] [--val-fraction F] [--field text]

SRC is JSONL or JSONL.gz (gzip by its magic bytes), one ``{"text": ...}`` object a line
(MiniMind's ``pretrain_hq.jsonl`` format). DIR (default: beside SRC, ``NAME.tokens/``) holds

    manifest.json        what was prepared from what: the source's path, size, mtime and sha256,
                         the tokenizer's sha256 and vocabulary, the dtype, the counts, the shards,
                         the validation split and the malformed lines that were skipped
    tokens_00000.bin     token ids (uint16 for vocabularies up to 65,535, uint32 above): each
                         document's ids followed by EOS, documents never split between shards
    docs_00000.bin       int64 end offset of each document in its shard (document boundaries)

The last ``val_fraction`` of the documents is the validation split (recorded as a count; the
shards hold one stream). Preparing again with the same source, tokenizer, field and fraction
does nothing; a change of any of them prepares again. The source is hashed while it is read;
an unchanged size and mtime is taken as an unchanged source without hashing it again.

A malformed line (not JSON, not UTF-8, no string field) is skipped and counted with its line
number; ``MAX_BAD_RUN`` of them in a row stop the preparation (the file is not what it should
be). The trainer's ``load_corpus`` prepares a JSONL ``data_path`` into ``out/.data/`` once
through ``ensure_prepared``, so neither a restart nor ``--resume`` tokenizes again.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from expkit.errors import DataError, ExpError
from expkit.files import atomic_write, file_lock, replace_dir
from expkit.workspace import data_cache_dir, resolve_data_path

from .tokenizer import EOS_ID, TOKENIZER_FILES

FORMAT = "expkit-tokens/1"
MANIFEST = "manifest.json"
#: Malformed lines in a row that stop a preparation (a file in the wrong format, not a stray line).
MAX_BAD_RUN = 20
#: Malformed lines kept (line and reason) in the manifest and shown.
SHOWN_BAD = 5
KEPT_BAD = 100
#: Tokens per shard (a shard ends at the first document boundary past it): 512 MiB of uint16.
SHARD_TOKENS = 1 << 28
#: Bytes of lines sent to a worker at once.
CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}

Note = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- one line --------------------------------------------------------------------------------


def parse_line(line: bytes, lineno: int, field: str = "text") -> tuple[str | None, str]:
    """The ``field`` of one JSONL line, or (None, why it is not one)."""
    form = f'each line must be a JSON object like {{"{field}": "..."}}'
    try:
        # utf-8-sig: tolerate the byte-order mark some editors put at the start of a file
        text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte {err.start}); save the file as UTF-8"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON ({err.msg}, column {err.colno}); {form}"
    if not isinstance(record, dict) or field not in record:
        return None, f'no "{field}" field; {form}'
    if not isinstance(record[field], str):
        return None, f'"{field}" is a {type(record[field]).__name__}, not a string; {form}'
    return record[field], ""


# -- hashes ----------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(directory: Path) -> str:
    """One hash over the tokenizer's files (names and bytes): what decides the token ids."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class _HashingReader(io.RawIOBase):
    """A binary file that hashes what is read from it and knows how far it got (progress)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.position = 0

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.position += n
        return n or 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()


# -- tokenizing a chunk (in a worker process, or in this one) --------------------------------

_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: N workers = N cores
    from tokenizers import Tokenizer

    _TOKENIZER = Tokenizer.from_file(tokenizer_json)


@dataclass
class Chunk:
    """The tokens of a run of lines: ``tokens`` [N] (EOS after each document), ``lengths`` [D]."""

    tokens: np.ndarray
    lengths: np.ndarray
    bad: list[tuple[int, str, int]]  # (line, why, good lines since the previous bad one in this chunk)
    trailing_good: int  # good lines after the chunk's last bad one
    max_id: int


def check_dtype(ids: np.ndarray, dtype: str) -> np.ndarray:
    """``ids`` as ``dtype``; ``DataError`` when one does not fit (a tokenizer bigger than it says)."""
    limit = int(np.iinfo(_DTYPES[dtype]).max)
    top = int(ids.max()) if len(ids) else 0
    if top > limit:
        raise DataError(f"the tokenizer produced token id {top}, beyond {dtype} (max {limit}); "
                        "its vocabulary is larger than it reports: check tokenizer.json")
    return ids.astype(_DTYPES[dtype])


def encode_chunk(first_line: int, lines: list[bytes], field: str, dtype: str) -> Chunk:
    texts: list[str] = []
    bad: list[tuple[int, str, int]] = []
    good = 0
    for lineno, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        text, why = parse_line(line, lineno, field)
        if text is None:
            bad.append((lineno, why, good))
            good = 0
        else:
            texts.append(text)
            good += 1
    encoded = _TOKENIZER.encode_batch_fast(texts, add_special_tokens=False) if texts else []
    lengths = np.fromiter((len(e.ids) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for e, n in zip(encoded, lengths):
        ids[pos : pos + n - 1] = e.ids
        ids[pos + n - 1] = EOS_ID
        pos += n
    max_id = int(ids.max()) if len(ids) else 0
    return Chunk(check_dtype(ids, dtype), lengths, bad, good, max_id)


def _encode_in_worker(args: tuple[int, list[bytes], str, str]) -> Chunk:
    return encode_chunk(*args)


# -- reading ---------------------------------------------------------------------------------


def _open_source(src: Path) -> tuple[_HashingReader, IO[bytes]]:
    if src.is_dir():
        raise DataError(f"{src}: is a directory; name a JSONL(.gz) file (a prepared directory needs no preparing)")
    if not src.is_file():
        raise DataError(f"{src}: corpus file not found; check the path")
    try:
        raw = open(src, "rb")
    except OSError as err:
        raise DataError(f"{src}: cannot read corpus ({err.strerror or err}); check the file's permissions") from err
    compressed = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    hashing = _HashingReader(raw)
    buffered = io.BufferedReader(hashing, buffer_size=1 << 20)
    lines: IO[bytes] = gzip.GzipFile(fileobj=buffered, mode="rb") if compressed else buffered  # type: ignore[assignment]
    return hashing, lines


def _chunks(src: Path, lines: IO[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    batch: list[bytes] = []
    size = 0
    first = 1
    lineno = 0
    try:
        for lineno, line in enumerate(lines, start=1):
            batch.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield first, batch
                batch, size, first = [], 0, lineno + 1
    except (OSError, EOFError, zlib.error) as err:  # truncated or corrupt gzip
        raise DataError(f"{src}:{lineno + 1}: corrupt gzip data ({err}); rebuild or re-download the file") from err
    if batch:
        yield first, batch


# -- the manifest ----------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def default_out(src: Path) -> Path:
    name = src.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return src.with_name(f"{name}.tokens")


def _why_stale(manifest: dict[str, Any] | None, src: Path, tok_sha: str, field: str, val_fraction: float) -> str | None:
    """None when ``manifest`` was prepared from these inputs, else what changed."""
    if manifest is None:
        return "not prepared yet"
    if manifest["tokenizer"]["sha256"] != tok_sha:
        return "the tokenizer changed"
    if manifest["field"] != field:
        return f"the field changed ({manifest['field']} -> {field})"
    if manifest["val_fraction"] != val_fraction:
        return f"the validation fraction changed ({manifest['val_fraction']} -> {val_fraction})"
    st = src.stat()
    source = manifest["source"]
    if source["size"] != st.st_size:
        return f"the source changed (size {source['size']} -> {st.st_size} bytes)"
    if source["mtime_ns"] != st.st_mtime_ns and source["sha256"] != file_sha256(src):
        return "the source changed (sha256)"
    return None


# -- preparing -------------------------------------------------------------------------------


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                desc="tokenizing", dynamic_ncols=True, file=sys.stderr)


def prepare(
    src: str | Path,
    out: str | Path | None = None,
    *,
    tokenizer: str | Path = "embedded",
    workers: int = 1,
    val_fraction: float = 0.0,
    field: str = "text",
    progress: bool | None = None,
    shard_tokens: int = SHARD_TOKENS,
    note: Note = _quiet,
) -> dict[str, Any]:
    """Prepare ``src`` into ``out``; returns the manifest plus ``up_to_date`` and ``why``.

    Safe to call from several processes at once (DDP ranks): one prepares, the others wait
    for it and find the result up to date.
    """
    src = Path(src)
    out = Path(out) if out is not None else default_out(src)
    if workers < 1:
        raise DataError(f"--workers must be at least 1, not {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    tok_dir = resolve_data_path(str(tokenizer), "tokenizer")
    if tok_dir is None or not (tok_dir / "tokenizer.json").is_file():
        raise DataError(f"tokenizer not found: {tok_dir} has no tokenizer.json; pass --tokenizer DIR")
    if not src.is_file():
        _open_source(src)  # raises the right message
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_prepared(out):
        raise DataError(f"{out} is not empty and holds no prepared corpus; choose another --out")
    tok_sha = tokenizer_sha256(tok_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.with_name(f".{out.name}.lock")):
        why = _why_stale(read_manifest(out), src, tok_sha, field, val_fraction)
        if why is None:
            return {**(read_manifest(out) or {}), "up_to_date": True, "why": "", "out": str(out)}
        manifest = _build(src, out, tok_dir, tok_sha, workers, val_fraction, field, progress, shard_tokens, note)
    return {**manifest, "up_to_date": False, "why": why, "out": str(out)}


def _build(src: Path, out: Path, tok_dir: Path, tok_sha: str, workers: int, val_fraction: float, field: str,
           progress: bool | None, shard_tokens: int, note: Note) -> dict[str, Any]:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    dtype = "uint16" if vocab <= 65_535 else "uint32"
    st = src.stat()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    writer = _ShardWriter(tmp, shard_tokens)
    bad_total, bad_run, kept_bad = 0, 0, []  # type: ignore[var-annotated]
    max_id = 0
    hashing, lines = _open_source(src)
    bar = _progress(st.st_size, sys.stderr.isatty() if progress is None else progress)
    try:
        with lines, bar:
            for chunk in _encoded(src, lines, tok_dir, field, dtype, workers):
                for lineno, why, good_before in chunk.bad:
                    bad_run = 1 if good_before else bad_run + 1
                    bad_total += 1
                    if len(kept_bad) < KEPT_BAD:
                        kept_bad.append({"line": lineno, "error": why})
                    if bad_run >= MAX_BAD_RUN:
                        shown = "; ".join(f"line {b['line']}: {b['error']}" for b in kept_bad[-bad_run:][:SHOWN_BAD])
                        raise DataError(f"{src}: {MAX_BAD_RUN} malformed lines in a row, stopped at line {lineno} "
                                        f"({shown}); is it JSONL with a \"{field}\" field? (--field NAME for another)")
                if chunk.trailing_good:
                    bad_run = 0
                writer.add(chunk)
                max_id = max(max_id, chunk.max_id)
                bar.update(hashing.position - bar.n)
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{_fmt(writer.n_tokens / elapsed)} tokens/s", refresh=False)
        writer.close()
        if writer.n_documents == 0:
            raise DataError(f"{src}: no documents (the corpus is empty{' but for malformed lines' if bad_total else ''}); "
                            f'each line must be a JSON object like {{"{field}": "..."}}')
        seconds = time.perf_counter() - started
        n_val = math.ceil(writer.n_documents * val_fraction) if val_fraction > 0 else 0
        if n_val >= writer.n_documents:
            raise DataError(f"{src}: {writer.n_documents} document(s) cannot be split into train and "
                            f"validation by --val-fraction {val_fraction}; lower it or use a larger corpus")
        manifest = {
            "format": FORMAT,
            "source": {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "sha256": hashing.digest.hexdigest()},
            "tokenizer": {"path": str(tok_dir), "sha256": tok_sha, "vocab_size": vocab},
            "field": field,
            "dtype": dtype,
            "eos_id": EOS_ID,
            "documents": writer.n_documents,
            "tokens": writer.n_tokens,
            "max_token_id": max_id,
            "val_fraction": val_fraction,
            "val_documents": n_val,
            "shards": writer.shards,
            "skipped": {"count": bad_total, "lines": kept_bad},
            "workers": workers,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(writer.n_tokens / max(seconds, 1e-9), 1),
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        atomic_write(tmp / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
        replace_dir(tmp, out)
    finally:
        writer.close()
        hashing.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if bad_total:
        note(skipped_line(src, manifest["skipped"]))
    return manifest


def _encoded(src: Path, lines: IO[bytes], tok_dir: Path, field: str, dtype: str, workers: int) -> Iterator[Chunk]:
    """The chunks' tokens in file order, from ``workers`` processes (this one when 1)."""
    tokenizer_json = str(tok_dir / "tokenizer.json")
    if workers == 1:
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        _init_worker(tokenizer_json)
        try:
            for first, batch in _chunks(src, lines):
                yield encode_chunk(first, batch, field, dtype)
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
        return
    # fork: a spawned worker would import the model package (torch, transformers: seconds each).
    # Forking is safe here: this process has run neither torch nor the tokenizer's thread pool
    # (the trainer prepares with one worker, in its own process).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,)) as pool:
        pending: deque[Any] = deque()
        for first, batch in _chunks(src, lines):
            pending.append(pool.apply_async(_encode_in_worker, ((first, batch, field, dtype),)))
            if len(pending) >= 2 * workers:  # bounded: the file is never read far ahead
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(async_result: Any) -> Chunk:
    try:
        return async_result.get()
    except ExpError:
        raise
    except Exception as err:  # a worker died: say so in one line
        raise DataError(f"a tokenizing worker failed ({type(err).__name__}: {err}); try --workers 1") from err


class _ShardWriter:
    def __init__(self, directory: Path, shard_tokens: int) -> None:
        self.directory = directory
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.n_tokens = 0
        self.n_documents = 0
        self._fh: IO[bytes] | None = None
        self._ends: list[np.ndarray] = []
        self._in_shard = 0

    def add(self, chunk: Chunk) -> None:
        start = 0
        while start < len(chunk.lengths):
            if self._fh is None:
                name = f"tokens_{len(self.shards):05d}.bin"
                self._fh = open(self.directory / name, "wb")
                self.shards.append({"tokens": name, "documents": f"docs_{len(self.shards):05d}.bin",
                                    "n_tokens": 0, "n_documents": 0})
                self._in_shard = 0
            ends = np.cumsum(chunk.lengths[start:])
            room = self.shard_tokens - self._in_shard
            take = int(np.searchsorted(ends, room, side="left")) + 1  # documents up to and past the limit
            take = min(take, len(ends))
            lo = int(chunk.lengths[:start].sum())
            hi = lo + int(ends[take - 1])
            chunk.tokens[lo:hi].tofile(self._fh)
            self._ends.append(self._in_shard + ends[:take])
            self._in_shard += hi - lo
            self.n_tokens += hi - lo
            self.n_documents += take
            start += take
            if self._in_shard >= self.shard_tokens:
                self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        ends = np.concatenate(self._ends) if self._ends else np.empty(0, dtype=np.int64)
        shard = self.shards[-1]
        ends.astype(np.int64).tofile(self.directory / shard["documents"])
        shard["n_tokens"], shard["n_documents"] = int(self._in_shard), len(ends)
        self._ends = []

    def close(self) -> None:
        if self._fh is not None:
            self._finish_shard()


# -- the trainer's cache ---------------------------------------------------------------------


def ensure_prepared(path: Path, tok_dir: Path, base: Path | None = None, note: Note = _quiet) -> Path:
    """A prepared directory for ``path``: itself when it is one, else its cache under ``out/.data/``.

    The cache is keyed by the source's path and the tokenizer's hash; its manifest by the
    source's size and hash, so a changed file is prepared again and an unchanged one never is.
    """
    if path.is_dir():
        if not is_prepared(path):
            raise DataError(f"{path}: a directory without {MANIFEST}; prepare a corpus into it with "
                            "`exp data prepare SRC --out DIR`, or name a JSONL(.gz) file")
        return path
    if not path.is_file():
        _open_source(path)  # raises the right message
    tok_sha = tokenizer_sha256(tok_dir)
    key = hashlib.sha256(f"{path.resolve()}\0{tok_sha}".encode()).hexdigest()[:16]
    name = path.name.split(".")[0] or "corpus"
    cache = data_cache_dir(base) / f"{name}-{key}"
    result = prepare(path, cache, tokenizer=tok_dir, workers=1, progress=False, note=note)
    if not result["up_to_date"]:
        note(f"prepared {path} once into {cache}: {result['documents']} documents, {_fmt(result['tokens'])} tokens "
             f"in {result['seconds']:.1f} s")
    return cache


# -- reporting -------------------------------------------------------------------------------


def _fmt(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def skipped_line(src: Path | str, skipped: dict[str, Any]) -> str:
    shown = "; ".join(f"line {b['line']}: {b['error'].split(';')[0]}" for b in skipped["lines"][:SHOWN_BAD])
    more = ", …" if skipped["count"] > SHOWN_BAD else ""
    return f"{src}: skipped {skipped['count']} malformed line(s) ({shown}{more})"


def describe(result: dict[str, Any]) -> list[str]:
    """What a preparation did, for people: the lines ``exp data prepare`` prints."""
    out, src = result["out"], result["source"]["path"]
    if result["up_to_date"]:
        return [f"up to date  {out} (from {src}, sha256 {result['source']['sha256'][:12]}, tokenizer "
                f"{result['tokenizer']['sha256'][:12]}); nothing to do"]
    lines = [
        f"prepared    {src} -> {out}  ({result['why']})",
        f"            {result['documents']} documents, {_fmt(result['tokens'])} tokens ({result['dtype']}, "
        f"vocabulary {result['tokenizer']['vocab_size']}), {len(result['shards'])} shard(s); "
        f"validation: the last {result['val_documents']} documents",
        f"            {result['seconds']:.1f} s, {_fmt(result['tokens_per_s'])} tokens/s with {result['workers']} worker(s)",
    ]
    if result["skipped"]["count"]:
        lines.append(f"skipped     {skipped_line(src, result['skipped']).split(': skipped ', 1)[1]}")
    lines.append(f"use it      exp set VERSION data_path={out}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="SRC", help="JSONL or JSONL.gz corpus")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: SRC's name + .tokens beside it)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes (default 1)")
    parser.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                        help="share of the documents (the last ones) held out for validation (default 0)")
    parser.add_argument("--field", default="text", help='the JSON field holding the text (default "text")')
    parser.add_argument("--tokenizer", default="embedded", metavar="DIR", help="tokenizer directory (default embedded)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    try:
        result = prepare(args.src, args.out, tokenizer=args.tokenizer, workers=args.workers,
                         val_fraction=args.val_fraction, field=args.field,
                         note=lambda line: print(f"note: {line}", file=sys.stderr))
    except ExpError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("prepare: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else "\n".join(describe(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
