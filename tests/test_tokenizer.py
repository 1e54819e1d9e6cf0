"""The tokenizer: special ids, the shipped vocabulary, exact round trips, deterministic builds,
offline loading, and the error when it is missing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import expkit.workspace as workspace
from expkit.errors import DataError
from model.data import read_documents
from model.tokenizer import BUILD_COMMAND, EOS_ID, SPECIAL_TOKENS, TOKENIZER_FILES, load_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent

# Small mixed corpus for quick builds: Chinese poetry, English prose, code, emoji.
SMALL_CORPUS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "The quick brown fox jumps over the lazy dog.",
    "Premature optimization is the root of all evil.\n\t-- Donald Knuth",
    "def f(x):\n    return x * 2  # double it",
    "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
    "Emoji 🤖 and accents: café, naïve, Ångström.",
] * 20

ROUND_TRIP = [
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "《感遇・其一》\n作者：张九龄\n兰叶春葳蕤，桂华秋皎洁。",
    "Mixed 中英文 text, with  double spaces , a . b and tabs\tand\nnewlines\n\n",
    "  leading and trailing spaces  ",
    "Emoji 🤖👍🏽, rare CJK 𠀀𪚥, full-width ＡＢＣ１２３, NBSP\u00a0here.",
    "",
]


@pytest.fixture(scope="module")
def shipped():
    return load_tokenizer()


def test_special_tokens_have_ids_0_1_2(shipped):
    assert shipped.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    assert shipped.eos_token == SPECIAL_TOKENS[0]
    assert shipped.eos_token_id == EOS_ID == 0
    assert shipped.pad_token_id == 0


def test_shipped_vocabulary_is_6400(shipped):
    assert len(shipped) == 6400
    assert shipped.vocab_size == 6400


def test_chinese_and_english_round_trip_exactly(shipped):
    for text in ROUND_TRIP:
        ids = shipped.encode(text, add_special_tokens=False)
        assert shipped.decode(ids) == text
    # a special token's text inside a document still comes back as the same text
    ids = shipped.encode("before<|im_end|>after", add_special_tokens=False)
    assert shipped.decode(ids) == "before<|im_end|>after"


def test_shipped_validation_documents_round_trip(shipped):
    docs = read_documents(workspace.embedded_val_path())
    encoded = shipped(docs, add_special_tokens=False)["input_ids"]
    assert shipped.batch_decode(encoded) == docs
    assert any("\u4e00" <= ch <= "\u9fff" for doc in docs for ch in doc)  # Chinese is in there


def test_encode_adds_no_special_tokens(shipped):
    ids = shipped("你好, world")["input_ids"]
    assert not set(ids) & {0, 1, 2}


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in TOKENIZER_FILES}


def test_two_builds_are_byte_identical(tmp_path):
    train_tokenizer(SMALL_CORPUS, tmp_path / "a", vocab_size=320)
    # The second build runs in a fresh process, so that nothing (a hash seed, a cache) is shared.
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(SMALL_CORPUS), encoding="utf-8")
    code = (
        "import json, sys; from pathlib import Path; from model.tokenizer import train_tokenizer;"
        "train_tokenizer(json.loads(Path(sys.argv[1]).read_text('utf-8')), Path(sys.argv[2]), vocab_size=320)"
    )
    subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "b")], check=True, cwd=ROOT)
    first, second = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert first == second


def test_small_build_has_layout_and_round_trips(tmp_path):
    out = train_tokenizer(SMALL_CORPUS, tmp_path / "tok", vocab_size=300)
    tokenizer = load_tokenizer(out)
    assert len(tokenizer) == 300
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    for text in ROUND_TRIP:  # bytes never seen in training still round-trip (full byte alphabet)
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_vocab_too_small_for_bytes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="256 bytes"):
        train_tokenizer(SMALL_CORPUS, tmp_path, vocab_size=200)


def test_loads_through_pretrained_tokenizer_fast_offline(monkeypatch):
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    # The environment is read when huggingface_hub is imported, possibly before this test;
    # refusing every connection makes "offline" hold either way.
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    direct = PreTrainedTokenizerFast.from_pretrained(str(workspace.embedded_tokenizer_dir()))
    via_project = load_tokenizer("embedded")
    assert isinstance(via_project, PreTrainedTokenizerFast)
    text = "海内存知己，天涯若比邻。 A friend afar brings a distant land near."
    assert direct.encode(text) == via_project.encode(text)
    assert direct.eos_token_id == 0


def test_missing_embedded_tokenizer_names_the_build_command(tmp_path, monkeypatch):
    missing = tmp_path / "dataset" / "tokenizer"
    monkeypatch.setattr(workspace, "embedded_tokenizer_dir", lambda: missing)
    with pytest.raises(DataError) as info:
        load_tokenizer()
    message = str(info.value)
    assert str(missing) in message
    assert f"`{BUILD_COMMAND}`" in message
    assert "\n" not in message


def test_missing_custom_tokenizer_names_path_and_out_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="python scripts/build_tokenizer.py --out-dir") as info:
        load_tokenizer(missing)
    assert str(missing) in str(info.value)


def test_corrupt_tokenizer_is_a_data_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert BUILD_COMMAND in str(info.value)
    assert "\n" not in str(info.value)


def test_shipped_tokenizer_matches_a_rebuild_from_the_shipped_corpus(tmp_path):
    """Catches a corpus regenerated without regenerating the tokenizer (about 5 s). The tokenizer
    predates the classification split: its documents are the pretraining train split plus the
    classification val/test documents taken out of it (scripts/build_corpus.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from build_corpus import tokenizer_documents

    docs = tokenizer_documents(workspace.dataset_dir())
    train_tokenizer(docs, tmp_path, vocab_size=6400)
    rebuilt, shipped = _file_bytes(tmp_path), _file_bytes(workspace.embedded_tokenizer_dir())
    assert rebuilt["tokenizer_config.json"] == shipped["tokenizer_config.json"]
    assert rebuilt["special_tokens_map.json"] == shipped["special_tokens_map.json"]
    # The vocabulary and merges, not the bytes: another tokenizers release may serialise
    # extra fields while training exactly the same tokenizer.
    new, old = (json.loads(files["tokenizer.json"]) for files in (rebuilt, shipped))
    assert new["model"]["vocab"] == old["model"]["vocab"]
    assert new["model"]["merges"] == old["model"]["merges"]
    assert new["added_tokens"] == old["added_tokens"]
