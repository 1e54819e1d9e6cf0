"""Build the embedded pretraining corpus in ``dataset/`` from Debian's fortune files.

    python scripts/build_corpus.py                 # writes dataset/ (the shipped files)
    python scripts/build_corpus.py --out-dir DIR   # anywhere else, e.g. to compare a rebuild

Sources (``/usr/share/games/fortunes/``; ``sudo apt-get install fortunes-zh fortunes``):
``chinese``, ``tang300`` and ``song100`` from ``fortunes-zh`` (GPL-3.0+) and the English files of
``fortunes`` (BSD). Each file is cleaned (ANSI colour codes, typewriter overstrikes, stray
control characters and double-encoded UTF-8 removed), split on ``%`` lines; very short and
duplicate entries are dropped; the rest is shuffled with a fixed seed and split into train and
validation.

Outputs, all deterministic (running twice gives the same bytes):

- ``pretrain_train.jsonl.gz``, ``pretrain_val.jsonl.gz``: one ``{"text": ...}`` per line
  (MiniMind's pretraining form), gzip with mtime 0 and no file name in the header;
- ``sources.sha256``: the exact inputs, in ``sha256sum -c`` form (run it from the source dir);
- ``README.md``: sources, licences, counts and how to regenerate.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from expkit.files import atomic_write  # noqa: E402
from expkit.workspace import dataset_dir  # noqa: E402

SOURCE_DIR = Path("/usr/share/games/fortunes")
TRAIN_NAME = "pretrain_train.jsonl.gz"
VAL_NAME = "pretrain_val.jsonl.gz"
SEED = 1337
VAL_FRACTION = 0.02
#: Entries shorter than this (after trimming) are emoticons and one-word zippyisms ("Yow!"):
#: too little text to teach anything. Eight characters still keeps Chinese proverbs.
MIN_CHARS = 8


@dataclass(frozen=True)
class Source:
    package: str
    licence: str
    files: tuple[str, ...]


SOURCES = (
    Source("fortunes-zh", "GPL-3.0-or-later", ("chinese", "tang300", "song100")),
    # Every file of Debian's `fortunes` package (1:1.99.1) except `ascii-art`, which holds
    # drawings rather than text. Listed explicitly, not globbed, so that other installed
    # fortune packages (fortunes-off, fortunes-min, other languages) never leak in.
    Source(
        "fortunes",
        "BSD-3-Clause (UC Berkeley, advertising clause rescinded)",
        (
            "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
            "education", "ethnic", "food", "goedel", "humorists", "kids", "knghtbrd", "law",
            "linux", "linuxcookie", "love", "magic", "medicine", "men-women", "miscellaneous",
            "news", "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett",
            "science", "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom",
            "work", "zippy",
        ),
    ),
)

# fortunes-zh colours titles and authors; one entry nests a sequence inside another
# ("\x1b[;\x1b[34;1mm"), hence the removal is repeated until nothing changes.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Old fortune files underline and embolden with typewriter overstrikes: "_\bw" or "w\bw".
_OVERSTRIKE = re.compile(r".\x08")
# Control characters other than tab and newline (a few entries ring the terminal bell).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# A few English entries hold UTF-8 that was decoded as Latin-1 and encoded again ("donâ€™t"):
# a lead byte followed by continuation bytes, all as Latin-1 characters.
_MOJIBAKE = re.compile(r"[\u00c2-\u00f4][\u0080-\u00bf]+")
_SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)


class MissingSources(Exception):
    """Some fortune files are not installed."""


def _repeat_sub(pattern: re.Pattern[str], text: str) -> str:
    while True:
        cleaned = pattern.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned


def _undo_mojibake(text: str) -> str:
    def fix(match: re.Match[str]) -> str:
        try:
            return match.group().encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return match.group()  # genuine Latin-1 text, leave it alone

    for _ in range(3):  # one entry in `law` was double-encoded twice over
        fixed = _MOJIBAKE.sub(fix, text)
        if fixed == text:
            break
        text = fixed
    return text


def clean(text: str) -> str:
    """Plain text of a fortune file: no colours, overstrikes, control characters or mojibake."""
    text = text.replace("\r\n", "\n")
    text = _repeat_sub(_ANSI, text)
    text = _repeat_sub(_OVERSTRIKE, text)
    text = _CONTROL.sub("", text)
    return _undo_mojibake(text)


def split_entries(text: str) -> list[str]:
    """The entries of a cleaned fortune file, trailing spaces and surrounding blank lines removed.

    Leading indentation inside an entry is kept: poems and attributions ("\\t-- Mark Twain")
    are laid out with it.
    """
    entries = []
    for chunk in _SEPARATOR.split(text):
        lines = [line.rstrip() for line in chunk.split("\n")]
        entry = "\n".join(lines).strip("\n")
        if len(entry.strip()) >= MIN_CHARS:
            entries.append(entry)
    return entries


def source_paths(source_dir: Path) -> list[tuple[Source, Path]]:
    return [(src, source_dir / name) for src in SOURCES for name in src.files]


def check_sources(source_dir: Path) -> None:
    missing = [(src, path) for src, path in source_paths(source_dir) if not path.is_file()]
    if missing:
        packages = sorted({src.package for src, _ in missing})
        shown = ", ".join(str(path) for _, path in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise MissingSources(
            f"missing fortune files: {shown} (from Debian package(s) {', '.join(packages)}); "
            f"install them with: sudo apt-get install {' '.join(src.package for src in SOURCES)}"
        )


def collect(source_dir: Path) -> tuple[list[str], dict[str, int]]:
    """All entries in source order, first occurrence of each duplicate kept; entries per package."""
    seen: set[str] = set()
    docs: list[str] = []
    per_package: dict[str, int] = {src.package: 0 for src in SOURCES}
    for src, path in source_paths(source_dir):
        # errors="replace": the files are UTF-8 today; a stray byte should not stop the build
        for entry in split_entries(clean(path.read_bytes().decode("utf-8", errors="replace"))):
            if entry not in seen:
                seen.add(entry)
                docs.append(entry)
                per_package[src.package] += 1
    return docs, per_package


def shuffle_and_split(docs: list[str], seed: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """Order by a seeded hash of each text, then take the first ``val_fraction`` as validation.

    A hash rather than ``random.shuffle``: the order depends only on the seed and the text
    itself, not on the Python version or on the order the files were read in.
    """
    order = sorted(docs, key=lambda text: hashlib.sha256(f"{seed}\0{text}".encode()).digest())
    n_val = max(1, round(len(order) * val_fraction))
    return order[n_val:], order[:n_val]


def jsonl_gz_bytes(docs: list[str]) -> bytes:
    """MiniMind JSONL, gzip-compressed with a fixed header (mtime 0, no name) for exact rebuilds."""
    body = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in docs).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(body)
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, data, chmod=0o644)  # readable by all: these files are shipped


def package_version(package: str) -> str:
    if shutil.which("dpkg-query"):
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return "unknown version"


def sha256_manifest(source_dir: Path) -> str:
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n" for _, path in source_paths(source_dir)
    ]
    return "".join(lines)


README = """\
# Embedded pretraining corpus

The default corpus of expkit (`data_path: embedded`, `val_data_path: embedded`) and its
tokenizer (`tokenizer_path: embedded`): small enough to ship in git, large enough to see a
MiniMind-style model learn on a CPU in minutes.

| file | holds |
|---|---|
| `pretrain_train.jsonl.gz` | {n_train} documents, one `{{"text": ...}}` per line |
| `pretrain_val.jsonl.gz` | {n_val} documents, same form |
| `sources.sha256` | SHA-256 of every source file; check with `sha256sum -c` run in `/usr/share/games/fortunes/` |
| `tokenizer/` | byte-level BPE, 6400 tokens, `<\\|endoftext\\|>` `<\\|im_start\\|>` `<\\|im_end\\|>` at ids 0, 1, 2 |

{n_docs} documents in all ({n_zh} from fortunes-zh, {n_en} from fortunes), {n_chars:,} characters,
{size_kb:,} KiB compressed.

## Sources and licences

The text is the fortune cookies of two Debian packages, installed under `/usr/share/games/fortunes/`:

| package | version | files | licence |
|---|---|---|---|
{source_rows}

- **fortunes-zh** is free software under the GNU General Public License, version 3 or (at your
  option) any later version (Copyright 2001-2009 Yu Guanghui, 2015-2019 Mo Zhou, 2020-2021
  xiao sheng wen); see `/usr/share/common-licenses/GPL-3` and `/usr/share/doc/fortunes-zh/copyright`.
- **fortunes** (fortune-mod, Ken Arnold et al.) is under the BSD licence of the Regents of the
  University of California, advertising clause rescinded; see `/usr/share/doc/fortunes/copyright`.

Both corpus files mix the two sources, so as a whole they (and the tokenizer trained on them)
are distributed under GPL-3.0-or-later, with which the BSD licence is compatible; the BSD part
keeps its notice above. This is the licence of the data in this directory only, not of
expkit's code.

## How it was built

`scripts/build_corpus.py`: each file is stripped of ANSI colour codes, typewriter overstrikes,
control characters and double-encoded UTF-8; split on `%` lines; entries shorter than
{min_chars} characters and duplicates are dropped; the rest is ordered by SHA-256 of
(seed {seed}, text) and the first {val_pct}% taken as validation. The gzip files have mtime 0
and no file name, so a rebuild from the same sources gives the same bytes.

`scripts/build_tokenizer.py` trains the tokenizer on the train split only.

## Regenerate

```
sudo apt-get install fortunes-zh fortunes
python scripts/build_corpus.py
python scripts/build_tokenizer.py
```
"""


def render_readme(train: list[str], val: list[str], per_package: dict[str, int], size: int) -> str:
    rows = "\n".join(
        f"| {src.package} | {package_version(src.package)} | {', '.join(src.files)} | {src.licence} |"
        for src in SOURCES
    )
    return README.format(
        n_train=len(train),
        n_val=len(val),
        n_docs=len(train) + len(val),
        n_zh=per_package["fortunes-zh"],
        n_en=per_package["fortunes"],
        n_chars=sum(len(t) for t in train) + sum(len(t) for t in val),
        size_kb=round(size / 1024),
        source_rows=rows,
        min_chars=MIN_CHARS,
        seed=SEED,
        val_pct=f"{VAL_FRACTION * 100:g}",
    )


def build(source_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the corpus, manifest and README into ``out_dir``; returns the counts."""
    check_sources(source_dir)
    docs, per_package = collect(source_dir)
    train, val = shuffle_and_split(docs, SEED, VAL_FRACTION)
    train_gz, val_gz = jsonl_gz_bytes(train), jsonl_gz_bytes(val)
    write_atomic(out_dir / TRAIN_NAME, train_gz)
    write_atomic(out_dir / VAL_NAME, val_gz)
    write_atomic(out_dir / "sources.sha256", sha256_manifest(source_dir).encode())
    readme = render_readme(train, val, per_package, len(train_gz) + len(val_gz))
    write_atomic(out_dir / "README.md", readme.encode("utf-8"))
    return {"train": len(train), "val": len(val), **per_package, "bytes": len(train_gz) + len(val_gz)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", type=Path, default=SOURCE_DIR, help=f"fortune files (default {SOURCE_DIR})")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: the checkout's dataset/)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or dataset_dir()
    try:
        counts = build(args.source_dir, out_dir)
    except MissingSources as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {out_dir}: {counts['train']} train + {counts['val']} val documents "
        f"({counts['fortunes-zh']} fortunes-zh, {counts['fortunes']} fortunes), "
        f"{counts['bytes'] / 1e6:.2f} MB compressed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
