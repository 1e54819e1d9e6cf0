"""The data pipeline: reading JSONL(.gz), packing, batching, exact resume, corpus loading,
and the shipped corpus against a rebuild from its Debian sources."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import expkit.workspace as workspace
from expkit.config import TrainConfig
from expkit.errors import DataError
from model.data import (
    BatchStream,
    PackedBlocks,
    encode_documents,
    eval_batches,
    load_corpus,
    read_documents,
)
from model.tokenizer import EOS_ID, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
BUILD_CORPUS = ROOT / "scripts" / "build_corpus.py"
FORTUNES = Path("/usr/share/games/fortunes")

DOCS = ["床前明月光，疑是地上霜。", "Hello, world.", "举头望明月，\n低头思故乡。", 'quotes " and \\ backslashes']


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def write_jsonl(path: Path, lines: list[str], compress: bool = False) -> Path:
    body = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(body, mtime=0) if compress else body)
    return path


def as_lines(docs: list[str]) -> list[str]:
    return [json.dumps({"text": d}, ensure_ascii=False) for d in docs]


def arange_blocks(n_tokens: int, seq_len: int) -> PackedBlocks:
    """Blocks over 0, 1, 2, ...: a token's value is its position, so batches can be traced."""
    return PackedBlocks(torch.arange(n_tokens), seq_len)


def block_ids(x: torch.Tensor, seq_len: int) -> list[int]:
    return (x[:, 0] // seq_len).tolist()


# -- reading ---------------------------------------------------------------------------------


def test_reads_plain_and_gzip_alike(tmp_path):
    lines = as_lines(DOCS[:2]) + ["", "   "] + as_lines(DOCS[2:])  # blank lines are skipped
    plain = write_jsonl(tmp_path / "corpus.jsonl", lines)
    # gzip is recognised by its magic bytes, whatever the name says
    packed = write_jsonl(tmp_path / "corpus.data", lines, compress=True)
    assert read_documents(plain) == DOCS
    assert read_documents(str(packed)) == DOCS


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"text": "unterminated', "invalid JSON"),
        ('{"content": "wrong key"}', 'no "text" field'),
        ('["text"]', 'no "text" field'),
        ('{"text": 42}', '"text" is a int'),
        ('{"text": null}', '"text" is a NoneType'),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, expected, compress):
    path = write_jsonl(tmp_path / "bad.jsonl", [*as_lines(DOCS[:1]), "", bad_line, *as_lines(DOCS[1:])], compress)
    with pytest.raises(DataError) as info:
        read_documents(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert expected in message
    assert "\n" not in message


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8"):
        read_documents(path)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        read_documents(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_empty_and_truncated_files(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match="no documents"):
        read_documents(empty)
    whole = gzip.compress("".join(line + "\n" for line in as_lines(DOCS * 50)).encode(), mtime=0)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_documents(truncated)
    assert str(truncated) in str(info.value)


# -- tokenizing and packing ------------------------------------------------------------------


def test_encode_appends_eos_after_each_document(tokenizer):
    stream = encode_documents(DOCS, tokenizer)
    assert stream.dtype == torch.int64 and stream.dim() == 1
    expected: list[int] = []
    for doc in DOCS:
        expected += tokenizer.encode(doc, add_special_tokens=False) + [EOS_ID]
    assert stream.tolist() == expected
    assert (stream == EOS_ID).sum().item() == len(DOCS)


def test_blocks_cover_the_stream_without_padding():
    blocks = arange_blocks(103, 10)  # (103 - 1) // 10 = 10 blocks; 2 tokens of tail unused
    assert len(blocks) == 10
    assert blocks.n_tokens == 100
    xs, ys = zip(*(blocks[i] for i in range(len(blocks))))
    assert all(x.shape == y.shape == (10,) and x.dtype == torch.int64 for x, y in zip(xs, ys))
    assert torch.equal(torch.cat(xs), torch.arange(100))  # consecutive, nothing skipped or padded
    assert torch.equal(torch.cat(ys), torch.arange(1, 101))  # y is x shifted by one
    for x, y in zip(xs, ys):
        assert torch.equal(y[:-1], x[1:])
    x, y = blocks.batch(torch.tensor([3, 0, 9]))
    assert torch.equal(x, torch.stack([xs[3], xs[0], xs[9]]))
    assert torch.equal(y, torch.stack([ys[3], ys[0], ys[9]]))
    with pytest.raises(IndexError):
        blocks[10]


def test_last_block_needs_one_extra_token_for_its_target():
    assert len(arange_blocks(101, 10)) == 10
    assert len(arange_blocks(100, 10)) == 9


def test_stream_shorter_than_a_block_is_a_data_error():
    with pytest.raises(DataError, match="max_seq_len=10"):
        PackedBlocks(torch.arange(10), 10, source="tiny.jsonl")


# -- batching --------------------------------------------------------------------------------


def take(stream: BatchStream, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [stream.next_batch() for _ in range(n)]


def same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_batch_stream_is_deterministic_and_seeded():
    blocks = arange_blocks(401, 8)  # 50 blocks
    first = take(BatchStream(blocks, 4, seed=7), 30)  # 120 blocks: wraps past two epochs
    assert same(first, take(BatchStream(blocks, 4, seed=7), 30))
    assert not same(first, take(BatchStream(blocks, 4, seed=8), 30))
    x, y = first[0]
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert BatchStream(blocks, 4, seed=7).tokens_per_batch == 32


def test_each_epoch_is_a_permutation_of_all_blocks():
    blocks = arange_blocks(401, 8)
    stream = BatchStream(blocks, 5, seed=3)
    epochs = [sorted(sum((block_ids(x, 8) for x, _ in take(stream, 10)), [])) for _ in range(3)]
    assert epochs == [list(range(50))] * 3
    assert stream.state_dict()["epoch"] == 3 and stream.state_dict()["cursor"] == 0


def test_ranks_take_disjoint_shards_that_cover_every_block():
    blocks = arange_blocks(23 * 4 + 1, 4)  # 23 blocks: not a multiple of the 3 ranks
    shards = []
    for rank in range(3):
        stream = BatchStream(blocks, 1, seed=11, rank=rank, world_size=3)
        shard = [block_ids(stream.next_batch()[0], 4)[0] for _ in range(stream.shard_size)]
        shards.append(shard)
    assert [len(s) for s in shards] == [8, 8, 7]
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(shards) for b in shards[i + 1 :])
    assert sorted(sum(shards, [])) == list(range(23))


def test_state_dict_round_trip_continues_exactly():
    blocks = arange_blocks(37 * 6 + 1, 6)  # 37 blocks, batch 5: batches straddle epochs
    original = BatchStream(blocks, 5, seed=42)
    take(original, 13)
    state = json.loads(json.dumps(original.state_dict()))  # as a checkpoint would store it
    resumed = BatchStream(blocks, 5, seed=42)
    resumed.load_state_dict(state)
    assert same(take(resumed, 20), take(original, 20))


def test_rank_zero_state_resumes_every_rank():
    blocks = arange_blocks(23 * 4 + 1, 4)  # shards of 8, 8, 7: epochs turn at different steps
    ranks = [BatchStream(blocks, 3, seed=5, rank=r, world_size=3) for r in range(3)]
    for stream in ranks:
        take(stream, 9)
    state = ranks[0].state_dict()
    for r, original in enumerate(ranks):
        resumed = BatchStream(blocks, 3, seed=5, rank=r, world_size=3)
        resumed.load_state_dict(state)
        assert same(take(resumed, 6), take(original, 6))


def test_resuming_with_a_different_setup_is_refused():
    blocks = arange_blocks(401, 8)
    state = BatchStream(blocks, 4, seed=1).state_dict()
    with pytest.raises(DataError, match="batch_size 4 -> 8"):
        BatchStream(blocks, 8, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="n_blocks 50 -> 25"):
        BatchStream(arange_blocks(201, 8), 4, seed=1).load_state_dict(state)


def test_more_ranks_than_blocks_is_a_data_error():
    with pytest.raises(DataError, match="2 blocks cannot be shared by 4 processes"):
        BatchStream(arange_blocks(17, 8), 1, seed=0, rank=0, world_size=4)


def test_eval_batches_are_fixed_full_and_spread():
    blocks = arange_blocks(100 * 4 + 1, 4)  # 100 blocks
    first = list(eval_batches(blocks, 8, 5))
    assert same(first, list(eval_batches(blocks, 8, 5)))
    assert len(first) == 5 and all(x.shape == (8, 4) for x, _ in first)
    chosen = sum((block_ids(x, 4) for x, _ in first), [])
    assert chosen == [i * 100 // 40 for i in range(40)]  # spread over the whole set, in order
    assert len(list(eval_batches(blocks, 8, 1000))) == 12  # only full batches: 12 * 8 <= 100
    (x, _), = eval_batches(arange_blocks(3 * 4 + 1, 4), 8, 5)  # fewer blocks than one batch
    assert x.shape == (3, 4)


# -- from a config ---------------------------------------------------------------------------


def test_load_corpus_with_embedded_defaults(tokenizer):
    cfg = TrainConfig()
    assert (cfg.data_path, cfg.val_data_path) == ("embedded", "embedded")
    train, val = load_corpus(cfg, tokenizer)
    assert train.seq_len == val.seq_len == cfg.max_seq_len
    assert train.n_tokens > 1_000_000
    assert len(val) > 100
    expected_val = encode_documents(read_documents(workspace.embedded_val_path()), tokenizer)
    assert torch.equal(val.tokens(), expected_val)
    assert train.stream.max() < cfg.vocab_size


def _corpus(n: int) -> list[str]:
    return [f"文档{i}：第{i}号短文。Document number {i}." for i in range(n)]


def test_empty_val_path_holds_out_the_last_percent(tmp_path, tokenizer):
    docs = _corpus(300)
    write_jsonl(tmp_path / "mine.jsonl", as_lines(docs))
    cfg = TrainConfig(data_path="mine.jsonl", val_data_path="", max_seq_len=16)
    train, val = load_corpus(cfg, tokenizer, base=tmp_path)  # relative path, taken from base
    held = math.ceil(300 * 0.01)
    assert torch.equal(train.tokens(), encode_documents(docs[:-held], tokenizer))
    assert torch.equal(val.tokens(), encode_documents(docs[-held:], tokenizer))
    again_train, again_val = load_corpus(cfg, tokenizer, base=tmp_path)
    assert torch.equal(again_train.tokens(), train.tokens()) and torch.equal(again_val.tokens(), val.tokens())


def test_hold_out_grows_to_fill_one_validation_block(tmp_path, tokenizer):
    docs = _corpus(300)
    path = write_jsonl(tmp_path / "mine.jsonl.gz", as_lines(docs), compress=True)
    cfg = TrainConfig(data_path=str(path), val_data_path="", max_seq_len=64)
    train, val = load_corpus(cfg, tokenizer)
    assert len(val) >= 1
    n_val_docs = int((val.tokens() == EOS_ID).sum())
    assert n_val_docs > 3  # 1% (3 documents) is too short for 64 tokens, so more were taken
    assert torch.equal(val.tokens(), encode_documents(docs[-n_val_docs:], tokenizer))
    assert torch.equal(train.tokens(), encode_documents(docs[:-n_val_docs], tokenizer))
    # a block less of validation would not do: the documents after the first are too few
    assert len(encode_documents(docs[-(n_val_docs - 1) :], tokenizer)) < 65


def test_load_corpus_skips_a_bad_line_naming_file_and_line(tmp_path, tokenizer):
    write_jsonl(tmp_path / "train.jsonl", as_lines(DOCS))
    write_jsonl(tmp_path / "val.jsonl", [*as_lines(DOCS), "oops"])
    cfg = TrainConfig(data_path="train.jsonl", val_data_path="val.jsonl", max_seq_len=8)
    notes: list[str] = []
    _, val = load_corpus(cfg, tokenizer, base=tmp_path, note=notes.append)
    assert torch.equal(val.tokens(), encode_documents(DOCS, tokenizer))
    assert any(re.search(r"val\.jsonl: skipped 1 malformed line\(s\) \(line 5: invalid JSON", n) for n in notes), notes
    cfg = TrainConfig(data_path="missing.jsonl", max_seq_len=8)
    with pytest.raises(DataError, match=r"missing\.jsonl: corpus file not found"):
        load_corpus(cfg, tokenizer, base=tmp_path)


def test_corpus_too_small_for_seq_len_says_so(tmp_path, tokenizer):
    write_jsonl(tmp_path / "tiny.jsonl", as_lines(DOCS[:1]))
    cfg = TrainConfig(data_path="tiny.jsonl", val_data_path="tiny.jsonl", max_seq_len=512)
    with pytest.raises(DataError, match=r"tiny\.jsonl: corpus too small.*max_seq_len=512"):
        load_corpus(cfg, tokenizer, base=tmp_path)


def test_vocab_size_below_the_tokenizer_is_a_data_error(tmp_path, tokenizer):
    write_jsonl(tmp_path / "c.jsonl", as_lines(_corpus(20)))
    cfg = TrainConfig(data_path="c.jsonl", val_data_path="", max_seq_len=8, vocab_size=256)
    with pytest.raises(DataError, match="set vocab_size=6400"):
        load_corpus(cfg, tokenizer, base=tmp_path)


# -- the shipped corpus and its build script -------------------------------------------------


def _load_build_corpus():
    """The script as a module (scripts/ is not a package)."""
    if "build_corpus" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_corpus", BUILD_CORPUS)
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_corpus"] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules["build_corpus"]


def test_cleaning_of_fortune_files():
    build = _load_build_corpus()
    # colours, nested colours (as in fortunes-zh), overstrike underline and bold, a bell
    raw = "\x1b[32m《题》\x1b[m\n你\x1b[;\x1b[34;1mm好\n_\bu_\bn_\bd_\be_\br b\bbo\bol\bld\x07\n"
    assert build.clean(raw) == "《题》\n你好\nunder bold\n"
    assert build.clean("donÃ¢Â\x80Â\x99t and donâ\x80\x99t, but café stays") == "don’t and don’t, but café stays"
    text = "short\n%\n\n  first entry, indented  \n\n%\nsecond entry\n  -- someone\n%\n"
    assert build.split_entries(text) == ["  first entry, indented", "second entry\n  -- someone"]


def test_build_corpus_without_sources_says_what_to_install(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BUILD_CORPUS), "--source-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "apt-get install fortunes-zh fortunes" in result.stderr
    assert not (tmp_path / "out").exists()


def test_shipped_corpus_files_exist():
    for path in (workspace.embedded_train_path(), workspace.embedded_val_path()):
        assert path.is_file() and path.read_bytes()[:2] == b"\x1f\x8b"
        assert len(read_documents(path)) > 0
    readme = (workspace.dataset_dir() / "README.md").read_text(encoding="utf-8")
    assert "GPL-3.0" in readme and "BSD" in readme and "scripts/build_corpus.py" in readme


def _changed_sources() -> list[str]:
    """Names of fortune files that differ from the ones the shipped corpus was built from."""
    changed = []
    for line in (workspace.dataset_dir() / "sources.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = FORTUNES / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            changed.append(name)
    return changed


def test_shipped_corpus_matches_a_rebuild(tmp_path):
    if not (FORTUNES / "chinese").is_file() or not (FORTUNES / "cookie").is_file():
        pytest.skip("fortune sources not installed (apt-get install fortunes-zh fortunes); cannot rebuild the corpus")
    changed = _changed_sources()
    if changed:
        pytest.skip(
            f"installed fortune files differ from dataset/sources.sha256 ({', '.join(changed[:5])}): "
            "other package versions than the shipped corpus was built from"
        )
    for out in ("a", "b"):
        subprocess.run(
            [sys.executable, str(BUILD_CORPUS), "--out-dir", str(tmp_path / out)],
            check=True,
            capture_output=True,
        )
    shipped = workspace.dataset_dir()
    classify = [f"classify_{lang}_{part}" for lang in ("en", "zh") for part in
                ("train.jsonl.gz", "val.jsonl.gz", "test.jsonl.gz", "labels.json")]
    for name in ("pretrain_train.jsonl.gz", "pretrain_val.jsonl.gz", "sources.sha256", "README.md", *classify):
        rebuilt = (tmp_path / "a" / name).read_bytes()
        assert rebuilt == (tmp_path / "b" / name).read_bytes(), f"{name}: two builds differ"
        if name.endswith(".gz"):
            # compare the text: the gzip bytes could differ under another zlib build
            assert gzip.decompress(rebuilt) == gzip.decompress((shipped / name).read_bytes()), name
        else:
            assert rebuilt == (shipped / name).read_bytes(), name


# -- preparing token shards (exp data prepare) -------------------------------------------------

from model.prepare import check_dtype, prepare, read_manifest  # noqa: E402
from model.data import PreparedCorpus, TokenStream  # noqa: E402
from tests.conftest import run_exp  # noqa: E402


def test_prepared_shards_hold_the_same_stream_with_whole_documents(tmp_path, tokenizer):
    docs = _corpus(120)
    src = write_jsonl(tmp_path / "c.jsonl.gz", as_lines(docs), compress=True)
    result = prepare(src, tmp_path / "c.tokens", shard_tokens=200, val_fraction=0.1)
    assert result["up_to_date"] is False and result["dtype"] == "uint16"
    assert result["documents"] == 120 and result["val_documents"] == 12
    assert len(result["shards"]) > 3  # small shards, so boundaries are exercised
    corpus = PreparedCorpus(tmp_path / "c.tokens")
    assert all(isinstance(p, np.memmap) and p.dtype == np.uint16 for p in corpus.stream.pieces)
    assert torch.equal(corpus.stream.tokens(), encode_documents(docs, tokenizer))
    for i in (0, 1, 57, 119, 120):  # every document starts right after an EOS
        start = corpus.doc_start(i)
        assert start == len(encode_documents(docs[:i], tokenizer)) if i else start == 0
    # a block that crosses a shard boundary reads the same as one from the whole stream
    whole = PackedBlocks(encode_documents(docs, tokenizer), 64)
    mapped = PackedBlocks(corpus.stream, 64)
    idx = torch.arange(len(whole))
    assert all(torch.equal(a, b) for a, b in zip(whole.batch(idx), mapped.batch(idx)))


def test_prepare_again_does_nothing_and_a_changed_source_or_tokenizer_is_detected(tmp_path):
    from model.tokenizer import train_tokenizer

    src = write_jsonl(tmp_path / "c.jsonl", as_lines(_corpus(50)))
    out = tmp_path / "c.tokens"
    first = prepare(src, out)
    again = prepare(src, out)
    assert again["up_to_date"] is True and again["created"] == first["created"]
    write_jsonl(src, as_lines(_corpus(51)))
    changed = prepare(src, out)
    assert changed["up_to_date"] is False and "the source changed" in changed["why"]
    assert changed["documents"] == 51 and changed["source"]["sha256"] != first["source"]["sha256"]
    other = train_tokenizer(_corpus(200), tmp_path / "tok", vocab_size=300)
    retokenized = prepare(src, out, tokenizer=other)
    assert retokenized["up_to_date"] is False and retokenized["why"] == "the tokenizer changed"
    assert read_manifest(out)["tokenizer"]["vocab_size"] == 300


def test_malformed_lines_are_skipped_and_counted_by_line(tmp_path):
    lines = as_lines(_corpus(6))
    lines[1] = "{not json"
    lines[3] = json.dumps({"txt": "wrong field"})
    src = write_jsonl(tmp_path / "c.jsonl", lines)
    notes: list[str] = []
    result = prepare(src, tmp_path / "out", note=notes.append)
    assert result["documents"] == 4
    assert result["skipped"]["count"] == 2
    assert [b["line"] for b in result["skipped"]["lines"]] == [2, 4]
    assert "no \"text\" field" in result["skipped"]["lines"][1]["error"]
    assert any("skipped 2 malformed line(s) (line 2: invalid JSON" in n for n in notes), notes
    # another field name
    assert prepare(src, tmp_path / "out2", field="txt")["documents"] == 1


def test_a_run_of_malformed_lines_stops_with_the_first_few_shown(tmp_path):
    src = write_jsonl(tmp_path / "c.csv", [*as_lines(DOCS[:1]), *(f"a,b,{i}" for i in range(30))])
    with pytest.raises(DataError, match=r"20 malformed lines in a row, stopped at line 21 \(line 2: invalid JSON.*line 6: .*\)"):
        prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body", [b"", b"\n\n", b"{oops\n"])
def test_an_empty_corpus_is_refused(tmp_path, body):
    (tmp_path / "c.jsonl").write_bytes(body)
    with pytest.raises(DataError, match=r"c\.jsonl: no documents"):
        prepare(tmp_path / "c.jsonl", tmp_path / "out")


def test_a_token_id_beyond_the_dtype_is_refused():
    assert check_dtype(np.array([0, 65535]), "uint16").dtype == np.uint16
    with pytest.raises(DataError, match="token id 65536, beyond uint16"):
        check_dtype(np.array([0, 65536]), "uint16")
    assert check_dtype(np.array([70000]), "uint32").tolist() == [70000]


def test_load_corpus_reads_a_prepared_directory_and_its_validation_split(tmp_path, tokenizer):
    docs = _corpus(200)
    src = write_jsonl(tmp_path / "c.jsonl", as_lines(docs))
    prepare(src, tmp_path / "c.tokens", val_fraction=0.1)
    cfg = TrainConfig(data_path="c.tokens", val_data_path="", max_seq_len=16)
    train, val = load_corpus(cfg, tokenizer, base=tmp_path)
    assert torch.equal(train.tokens(), encode_documents(docs[:180], tokenizer))
    assert torch.equal(val.tokens(), encode_documents(docs[180:], tokenizer))
    assert isinstance(train.stream, TokenStream) and isinstance(train.stream.pieces[0], np.memmap)


def test_a_prepared_directory_of_another_tokenizer_is_refused(tmp_path, tokenizer):
    from model.tokenizer import train_tokenizer

    src = write_jsonl(tmp_path / "c.jsonl", as_lines(_corpus(50)))
    prepare(src, tmp_path / "c.tokens", tokenizer=train_tokenizer(_corpus(200), tmp_path / "tok", vocab_size=300))
    cfg = TrainConfig(data_path=str(tmp_path / "c.tokens"), val_data_path="", max_seq_len=8)
    with pytest.raises(DataError, match="was prepared with another tokenizer"):
        load_corpus(cfg, tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="a directory without manifest.json"):
        load_corpus(TrainConfig(data_path=str(tmp_path / "empty"), max_seq_len=8), tokenizer)


def test_a_jsonl_data_path_is_prepared_once_into_the_cache(tmp_path, tokenizer, monkeypatch):
    import model.data as data

    monkeypatch.setenv("EXP_DATA_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "c.jsonl", as_lines(_corpus(100)))
    cfg = TrainConfig(data_path="c.jsonl", val_data_path="", max_seq_len=16)
    notes: list[str] = []
    first, _ = load_corpus(cfg, tokenizer, base=tmp_path, note=notes.append)
    assert any("prepared" in n and str(tmp_path / "cache") in n for n in notes), notes
    (cached,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert read_manifest(cached)["documents"] == 100

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("model.prepare._build", no_tokenizing)
    again, _ = data.load_corpus(cfg, tokenizer, base=tmp_path)  # a restart, or --resume
    assert torch.equal(again.tokens(), first.tokens())


def test_exp_data_prepare_and_python_m_model_prepare(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", as_lines(_corpus(300)))
    r = run_exp("data", "prepare", str(src), "--workers", "2", "--val-fraction", "0.05", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stdout and "300 documents" in r.stdout and "tokens/s with 2 worker(s)" in r.stdout
    out = tmp_path / "c.tokens"
    assert read_manifest(out)["val_documents"] == 15
    single = prepare(src, tmp_path / "one", val_fraction=0.05)  # one worker: the same bytes
    assert (out / "tokens_00000.bin").read_bytes() == (tmp_path / "one" / "tokens_00000.bin").read_bytes()
    assert single["source"]["sha256"] == read_manifest(out)["source"]["sha256"]
    again = subprocess.run([sys.executable, "-m", "model.prepare", str(src), "--val-fraction", "0.05"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0 and "up to date" in again.stdout and "nothing to do" in again.stdout, again.stderr


@pytest.mark.parametrize("args, message", [
    (["missing.jsonl"], "missing.jsonl: corpus file not found"),
    (["c.jsonl", "--workers", "0"], "--workers must be at least 1"),
    (["empty.jsonl"], "empty.jsonl: no documents"),
])
def test_exp_data_prepare_bad_input_is_one_line(tmp_path, args, message):
    write_jsonl(tmp_path / "c.jsonl", as_lines(DOCS))
    (tmp_path / "empty.jsonl").write_text("")
    r = run_exp("data", "prepare", *args, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("exp: error: ") and message in r.stderr, r.stderr
