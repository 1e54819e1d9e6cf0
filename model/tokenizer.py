"""The tokenizer: byte-level BPE with MiniMind's vocabulary size and special tokens.

``train_tokenizer`` builds it with the ``tokenizers`` package and writes the three files
``transformers.PreTrainedTokenizerFast.from_pretrained`` reads; ``load_tokenizer`` loads such
a directory without touching the network. ``scripts/build_tokenizer.py`` trains the shipped
one (``dataset/tokenizer/``) on the embedded corpus's train split.

Byte-level with no normalizer, so every string, Chinese included, decodes back to exactly
itself. The configuration files are written by this module rather than by
``save_pretrained`` so that their bytes do not change with the installed transformers version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from expkit.errors import DataError
from expkit.files import atomic_write
from expkit.workspace import resolve_data_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

#: ids 0, 1, 2, in this order (MiniMind's layout).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Appended after every document when packing; also the padding and unknown token.
EOS_ID = 0
BUILD_COMMAND = "python scripts/build_tokenizer.py"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _special_tokens_map() -> dict[str, object]:
    eos = SPECIAL_TOKENS[EOS_ID]
    return {
        # No BOS is ever added (the packer separates documents with EOS only); naming one
        # still lets chat-style code find <|im_start|> the way MiniMind's tokenizer has it.
        "bos_token": SPECIAL_TOKENS[1],
        "eos_token": eos,
        "pad_token": eos,
        "unk_token": eos,
        "additional_special_tokens": list(SPECIAL_TOKENS),
    }


def _tokenizer_config() -> dict[str, object]:
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        # False: the default cleanup would turn "a ." into "a." and break exact round trips.
        "clean_up_tokenization_spaces": False,
        # Packed pretraining encodes whole documents, which may be longer than any block;
        # a finite limit here would only produce "sequence too long" warnings.
        "model_max_length": 1_000_000_000,
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens_map(),
    }


def _json_text(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 6400) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and write it to ``out_dir``; returns ``out_dir``.

    ``vocab_size`` counts the three special tokens and the 256 byte symbols. The result is a
    function of the texts and ``vocab_size`` alone: two builds give byte-identical files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes plus {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: a leading space would change the text and break round trips.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # placed first, so at ids 0, 1, 2
        # all 256 byte symbols, seen or not, so no input can ever be out of vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:  # a tokenizers release changing the layout
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {i}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "tokenizer.json", tokenizer.to_str(pretty=True) + "\n")
    atomic_write(out_dir / "tokenizer_config.json", _json_text(_tokenizer_config()))
    atomic_write(out_dir / "special_tokens_map.json", _json_text(_special_tokens_map()))
    return out_dir


def tokenizer_dir(path: str | Path = "embedded") -> Path:
    """The directory a ``tokenizer_path`` value names (``embedded`` = ``dataset/tokenizer``)."""
    resolved = resolve_data_path(str(path), "tokenizer")
    if resolved is None:
        raise DataError("tokenizer_path is empty; use 'embedded' or a tokenizer directory")
    return resolved


def load_tokenizer(path: str | Path = "embedded") -> PreTrainedTokenizerFast:
    """Load a tokenizer directory offline as a ``PreTrainedTokenizerFast``.

    Raises ``DataError`` naming the directory and the build command when it is missing or
    unreadable.
    """
    directory = tokenizer_dir(path)
    if not (directory / "tokenizer.json").is_file():
        command = BUILD_COMMAND if str(path) == "embedded" else f"{BUILD_COMMAND} --out-dir {directory}"
        raise DataError(f"tokenizer not found: {directory} has no tokenizer.json; build it with `{command}`")
    from transformers import PreTrainedTokenizerFast

    try:
        # local_files_only: a directory path never reaches the hub, and this makes sure of it.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # corrupt JSON, wrong format: all the user can do is rebuild
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load tokenizer {directory}: {reason}; rebuild it with `{BUILD_COMMAND}`") from err
    if tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[EOS_ID]) != EOS_ID:
        raise DataError(
            f"tokenizer {directory} has {SPECIAL_TOKENS[EOS_ID]} at id "
            f"{tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[EOS_ID])}, expected {EOS_ID}; "
            f"rebuild it with `{BUILD_COMMAND}`"
        )
    return tokenizer
