"""Train the embedded tokenizer (``dataset/tokenizer/``) on the embedded corpus's train split.

By default it trains on the documents the shipped tokenizer was trained on: the pretraining train
split plus the classification val/test documents later taken out of it
(``build_corpus.tokenizer_documents``), so the rebuild gives the shipped tokenizer.

    python scripts/build_tokenizer.py                       # the shipped tokenizer
    python scripts/build_tokenizer.py --corpus my.jsonl.gz --out-dir my_tokenizer --vocab-size 8000

Byte-level BPE, special tokens <|endoftext|> <|im_start|> <|im_end|> at ids 0, 1, 2; the files
are the ones ``transformers.PreTrainedTokenizerFast.from_pretrained`` reads. Deterministic:
the same corpus gives the same bytes. Build the corpus first (``scripts/build_corpus.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from expkit.errors import DataError  # noqa: E402
from expkit.workspace import embedded_tokenizer_dir, embedded_train_path  # noqa: E402
from model.data import read_documents  # noqa: E402
from model.tokenizer import train_tokenizer  # noqa: E402
from scripts.build_corpus import tokenizer_documents  # noqa: E402
from expkit.workspace import dataset_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None, help="JSONL(.gz) to train on (default: the shipped tokenizer's documents)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: dataset/tokenizer)")
    parser.add_argument("--vocab-size", type=int, default=6400, help="vocabulary size, special tokens included")
    args = parser.parse_args(argv)
    corpus = args.corpus or f"{embedded_train_path().parent} (pretraining train + classification val/test)"
    out_dir = args.out_dir or embedded_tokenizer_dir()
    started = time.perf_counter()
    try:
        docs = read_documents(corpus) if args.corpus else tokenizer_documents(dataset_dir())
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train_tokenizer(docs, out_dir, vocab_size=args.vocab_size)
    print(f"wrote {out_dir}: vocabulary {args.vocab_size}, trained on {len(docs)} documents of {corpus} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
