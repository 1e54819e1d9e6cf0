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
- ``classify_{en,zh}_{train,val,test}.jsonl.gz``: the labelled corpora for classification
  fine-tuning, one ``{"text": ..., "label": ...}`` per line, the label being the entry's fortune
  file (English: the categories with at least ``MIN_CLASS_ENTRIES`` entries; Chinese: 唐诗 /
  宋词 / 其他 for ``tang300`` / ``song100`` / ``chinese``), split per class with the same seeded
  hash; ``classify_{en,zh}_labels.json`` holds each label set with its counts per split. An entry
  found in more than one file has no single label and is left out of them. **No classification
  val or test document is in the pretraining train split**: they are taken out of it (the
  pretraining val split is the same 2% of all documents as before);
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
from typing import Any

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

#: Classification corpora: an English category becomes a class when its file has this many
#: entries (15 classes of the 39 files); smaller files stay pretraining text only.
MIN_CLASS_ENTRIES = 400
#: Share of each class held out for classification validation and for test.
CLASSIFY_VAL_FRACTION = 0.1
CLASSIFY_TEST_FRACTION = 0.1
#: The Chinese classes: fortune file -> label.
ZH_LABELS = {"tang300": "唐诗", "song100": "宋词", "chinese": "其他"}
CLASSIFY_LANGS = ("en", "zh")
CLASSIFY_SPLITS = ("train", "val", "test")


def classify_name(lang: str, split: str) -> str:
    return f"classify_{lang}_{split}.jsonl.gz"


def classify_labels_name(lang: str) -> str:
    return f"classify_{lang}_labels.json"


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


def collect_labelled(source_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """The classification corpora before splitting: per language, (text, fortune file) pairs.

    An entry is labelled by the file it comes from; one found in several files (75 today) has
    no single label and is left out. English keeps the files with at least
    ``MIN_CLASS_ENTRIES`` such entries; Chinese maps its three files to ``ZH_LABELS``.
    """
    files_of: dict[str, set[str]] = {}
    order: list[str] = []
    for _, path in source_paths(source_dir):
        for entry in split_entries(clean(path.read_bytes().decode("utf-8", errors="replace"))):
            if entry not in files_of:
                files_of[entry] = set()
                order.append(entry)
            files_of[entry].add(path.name)
    by_file: dict[str, list[str]] = {}
    for entry in order:
        if len(files_of[entry]) == 1:
            by_file.setdefault(next(iter(files_of[entry])), []).append(entry)
    zh = [(text, ZH_LABELS[name]) for name in ZH_LABELS for text in by_file.get(name, [])]
    english = SOURCES[1].files
    en = [(text, name) for name in english if len(by_file.get(name, [])) >= MIN_CLASS_ENTRIES
          for text in by_file[name]]
    return {"en": en, "zh": zh}


def split_labelled(pairs: list[tuple[str, str]], seed: int) -> dict[str, list[Any]]:
    """Stratified train/val/test: each class ordered by the seeded hash, its first
    ``CLASSIFY_TEST_FRACTION`` to test, the next ``CLASSIFY_VAL_FRACTION`` to val (at least one
    each), the rest to train; each split then ordered by the hash across classes; ``order`` lists the labels in
    source-file order."""
    def key(pair: tuple[str, str]) -> bytes:
        return hashlib.sha256(f"{seed}\0classify\0{pair[0]}".encode()).digest()

    out: dict[str, list[tuple[str, str]]] = {split: [] for split in CLASSIFY_SPLITS}
    for label in dict.fromkeys(label for _, label in pairs):
        members = sorted((p for p in pairs if p[1] == label), key=key)
        n_test = max(1, round(len(members) * CLASSIFY_TEST_FRACTION))
        n_val = max(1, round(len(members) * CLASSIFY_VAL_FRACTION))
        out["test"] += members[:n_test]
        out["val"] += members[n_test:n_test + n_val]
        out["train"] += members[n_test + n_val:]
    split = {name: sorted(items, key=key) for name, items in out.items()}
    split["order"] = list(dict.fromkeys(label for _, label in pairs))  # the labels in source-file order
    return split


def labelled_jsonl_gz_bytes(pairs: list[tuple[str, str]]) -> bytes:
    body = "".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in pairs)
    return gzip_bytes(body.encode("utf-8"))


def labels_json(splits: dict[str, list[tuple[str, str]]]) -> str:
    """The label set in the order of the source files, and its counts per split."""
    labels = list(dict.fromkeys(label for split in CLASSIFY_SPLITS for _, label in splits[split]))
    labels.sort(key=lambda label: splits["order"].index(label))
    counts = {split: {label: sum(1 for _, lab in splits[split] if lab == label) for label in labels}
              for split in CLASSIFY_SPLITS}
    return json.dumps({"labels": labels, "counts": counts}, ensure_ascii=False, indent=2) + "\n"


def shuffle_and_split(docs: list[str], seed: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """Order by a seeded hash of each text, then take the first ``val_fraction`` as validation.

    A hash rather than ``random.shuffle``: the order depends only on the seed and the text
    itself, not on the Python version or on the order the files were read in.
    """
    order = sorted(docs, key=lambda text: hashlib.sha256(f"{seed}\0{text}".encode()).digest())
    n_val = max(1, round(len(order) * val_fraction))
    return order[n_val:], order[:n_val]


def tokenizer_documents(dataset: Path) -> list[str]:
    """The documents the shipped tokenizer was trained on, in the order it saw them.

    It was trained on the pretraining train split as it was before the classification val and
    test documents were taken out of it, and is kept as it is: that split is the current one plus
    those documents (less any in the pretraining val split), in the order of the seeded hash.
    """
    from model.data import read_documents

    train = read_documents(dataset / TRAIN_NAME)
    val = set(read_documents(dataset / VAL_NAME))
    held = [doc for lang in CLASSIFY_LANGS for split in ("val", "test")
            for doc in _labelled_texts(dataset / classify_name(lang, split))]
    docs = set(train) | {doc for doc in held if doc not in val}
    return sorted(docs, key=lambda text: hashlib.sha256(f"{SEED}\0{text}".encode()).digest())


def _labelled_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def jsonl_gz_bytes(docs: list[str]) -> bytes:
    """MiniMind JSONL, gzip-compressed with a fixed header (mtime 0, no name) for exact rebuilds."""
    body = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in docs).encode("utf-8")
    return gzip_bytes(body)


def gzip_bytes(body: bytes) -> bytes:
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
# Embedded corpora

The default corpus of expkit (`data_path: embedded`, `val_data_path: embedded`) and its
tokenizer (`tokenizer_path: embedded`): small enough to ship in git, large enough to see a
MiniMind-style model learn on a CPU in minutes. Beside them, two labelled corpora for
classification fine-tuning (`python -m model.train_classify`, `data_path: embedded` for
English, `embedded-zh` for Chinese), cut from the same text.

| file | holds |
|---|---|
| `pretrain_train.jsonl.gz` | {n_train} documents, one `{{"text": ...}}` per line |
| `pretrain_val.jsonl.gz` | {n_val} documents, same form |
| `classify_en_{{train,val,test}}.jsonl.gz` | {en_train} / {en_val} / {en_test} English documents, one `{{"text": ..., "label": ...}}` per line |
| `classify_zh_{{train,val,test}}.jsonl.gz` | {zh_train} / {zh_val} / {zh_test} Chinese documents, same form |
| `classify_{{en,zh}}_labels.json` | each label set, in order, and its counts per split |
| `sources.sha256` | SHA-256 of every source file; check with `sha256sum -c` run in `/usr/share/games/fortunes/` |
| `tokenizer/` | byte-level BPE, 6400 tokens, `<\\|endoftext\\|>` `<\\|im_start\\|>` `<\\|im_end\\|>` at ids 0, 1, 2 |

{n_docs} pretraining documents in all ({n_zh} from fortunes-zh, {n_en} from fortunes, less the
{n_held_out} held out for classification below), {n_chars:,} characters, {size_kb:,} KiB compressed;
the classification files take {classify_kb:,} KiB more.

## Classification corpora

Each entry is labelled by the fortune file it comes from. An entry found in more than one file
has no single label and is left out. Each class is split on its own (stratified): ordered by
SHA-256 of (seed {seed}, text), its first {cls_test_pct}% is test, the next {cls_val_pct}% val, the rest
train. The classes are as imbalanced as the files are.

**No classification val or test document is in the pretraining train split**: those
{n_held_out} documents are taken out of `pretrain_train.jsonl.gz` (the pretraining val split is
unchanged), so a model pretrained here has never seen a document it is later tested on. The
classification train documents stay in pretraining train (unlabelled text; the labels are new).
The tokenizer was trained before this split and is kept as it was, so that pretraining records
stay comparable: its merges were learnt on text that includes these {n_held_out} documents (a
vocabulary statistic, not a model trained on them).

English (`data_path: embedded`): the {n_classes_en} categories with at least {min_class} entries.

| label | train | val | test |
|---|---|---|---|
{en_rows}

Chinese (`data_path: embedded-zh`): 唐诗 (`tang300`), 宋词 (`song100`) and 其他 (`chinese`, proverbs and sayings).

| label | train | val | test |
|---|---|---|---|
{zh_rows}

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

Both pretraining files mix the two sources, so as a whole they (and the tokenizer trained on them)
are distributed under GPL-3.0-or-later, with which the BSD licence is compatible; the BSD part
keeps its notice above. The classification files are the same text under the same licences: the
English ones hold only `fortunes` text (BSD), the Chinese ones only `fortunes-zh` text (GPL-3.0-or-later).
This is the licence of the data in this directory only, not of expkit's code.

## How it was built

`scripts/build_corpus.py`: each file is stripped of ANSI colour codes, typewriter overstrikes,
control characters and double-encoded UTF-8; split on `%` lines; entries shorter than
{min_chars} characters and duplicates are dropped; the rest is ordered by SHA-256 of
(seed {seed}, text) and the first {val_pct}% taken as validation; the classification val and test
documents are then removed from the train part. The gzip files have mtime 0 and no file name,
so a rebuild from the same sources gives the same bytes.

`scripts/build_tokenizer.py` trains the tokenizer on the pretraining train split; the shipped
tokenizer predates the classification split (see above) and is not retrained.

## Regenerate

```
sudo apt-get install fortunes-zh fortunes
python scripts/build_corpus.py
```

(`python scripts/build_tokenizer.py` retrains the tokenizer; the shipped one is kept as it is.)
"""


def _classify_rows(labelled: dict[str, dict[str, list[tuple[str, str]]]], lang: str) -> str:
    counts = json.loads(labels_json(labelled[lang]))["counts"]
    return "\n".join(
        f"| `{label}` | " + " | ".join(str(counts[split][label]) for split in CLASSIFY_SPLITS) + " |"
        for label in counts["train"]
    )


def render_readme(train: list[str], val: list[str], per_package: dict[str, int], size: int,
                  labelled: dict[str, dict[str, list[tuple[str, str]]]], n_held_out: int, classify_size: int) -> str:
    rows = "\n".join(
        f"| {src.package} | {package_version(src.package)} | {', '.join(src.files)} | {src.licence} |"
        for src in SOURCES
    )
    n = {f"{lang}_{split}": len(labelled[lang][split]) for lang in CLASSIFY_LANGS for split in CLASSIFY_SPLITS}
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
        n_held_out=n_held_out,
        n_classes_en=len(json.loads(labels_json(labelled["en"]))["labels"]),
        min_class=MIN_CLASS_ENTRIES,
        cls_val_pct=f"{CLASSIFY_VAL_FRACTION * 100:g}",
        cls_test_pct=f"{CLASSIFY_TEST_FRACTION * 100:g}",
        en_rows=_classify_rows(labelled, "en"),
        zh_rows=_classify_rows(labelled, "zh"),
        classify_kb=round(classify_size / 1024),
        **n,
    )


def build(source_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the corpora, manifest and README into ``out_dir``; returns the counts."""
    check_sources(source_dir)
    docs, per_package = collect(source_dir)
    train, val = shuffle_and_split(docs, SEED, VAL_FRACTION)
    labelled = {lang: split_labelled(pairs, SEED) for lang, pairs in collect_labelled(source_dir).items()}
    held_out = {text for splits in labelled.values() for split in ("val", "test") for text, _ in splits[split]}
    n_before = len(train)
    train = [text for text in train if text not in held_out]  # classification val/test: never pretrained on
    train_gz, val_gz = jsonl_gz_bytes(train), jsonl_gz_bytes(val)
    write_atomic(out_dir / TRAIN_NAME, train_gz)
    write_atomic(out_dir / VAL_NAME, val_gz)
    classify_bytes = 0
    for lang in CLASSIFY_LANGS:
        for split in CLASSIFY_SPLITS:
            data = labelled_jsonl_gz_bytes(labelled[lang][split])
            classify_bytes += len(data)
            write_atomic(out_dir / classify_name(lang, split), data)
        write_atomic(out_dir / classify_labels_name(lang), labels_json(labelled[lang]).encode("utf-8"))
    write_atomic(out_dir / "sources.sha256", sha256_manifest(source_dir).encode())
    readme = render_readme(train, val, per_package, len(train_gz) + len(val_gz), labelled, n_before - len(train),
                           classify_bytes)
    write_atomic(out_dir / "README.md", readme.encode("utf-8"))
    return {"train": len(train), "val": len(val), **per_package, "bytes": len(train_gz) + len(val_gz),
            "held_out": n_before - len(train),
            **{f"classify_{lang}_{split}": len(labelled[lang][split]) for lang in CLASSIFY_LANGS
               for split in CLASSIFY_SPLITS}}


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
        f"{counts['bytes'] / 1e6:.2f} MB compressed; classification "
        + ", ".join(f"{lang} {'/'.join(str(counts[f'classify_{lang}_{s}']) for s in CLASSIFY_SPLITS)}"
                    for lang in CLASSIFY_LANGS)
        + " train/val/test"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
