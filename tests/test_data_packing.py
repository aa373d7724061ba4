"""Packing documents into flat token files, the prepared-data cache, and its refusals."""

import json
import os

import numpy as np
import xxhash
import pytest
from datasets import Dataset

from recurrent_lm.data import DataConfig, PreparedData, TextTokenizer, pack_split, prepare_data, token_dtype

DOCS = [f"Doc {i}: " + "ünïcode wörds and plain words. " * (i % 4 + 1) + "🦊" * (i % 3) for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(DOCS, vocab_size=300)


@pytest.fixture
def jsonl_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    return str(path)


def small_config(source: str, tmp_path, **overrides) -> DataConfig:
    return DataConfig(**{"source": source, "vocab_size": 300, "val_fraction": 0.2,
                         "cache_dir": str(tmp_path / "cache"), **overrides})


def test_documents_are_packed_back_to_back_each_followed_by_eos(tokenizer: TextTokenizer, tmp_path) -> None:
    docs = DOCS[:30]
    tokens, documents, checksum = pack_split(Dataset.from_dict({"text": docs}), tokenizer, tmp_path / "train.bin")
    packed = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    expected = [[*ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(docs)]
    assert packed.tolist() == [token for ids in expected for token in ids]
    assert (tokens, documents) == (sum(len(tokenizer.encode(doc)) + 1 for doc in docs), 30)
    assert checksum == "xxh3_128:" + xxhash.xxh3_128((tmp_path / "train.bin").read_bytes()).hexdigest()
    ends = np.flatnonzero(packed == tokenizer.eos_id)
    assert len(ends) == 30 and ends[-1] == len(packed) - 1
    assert [tokenizer.decode(piece.tolist()) for piece in np.split(packed, ends + 1)[:-1]] == \
        [doc + "<|eos|>" for doc in docs]


def test_worker_processes_and_streaming_pack_the_same_bytes(tokenizer: TextTokenizer, tmp_path) -> None:
    docs = Dataset.from_dict({"text": DOCS})
    pack_split(docs, tokenizer, tmp_path / "one.bin", num_proc=1)
    pack_split(docs, tokenizer, tmp_path / "two.bin", num_proc=2)
    pack_split(docs.to_iterable_dataset(), tokenizer, tmp_path / "stream.bin")
    one = (tmp_path / "one.bin").read_bytes()
    assert one == (tmp_path / "two.bin").read_bytes() == (tmp_path / "stream.bin").read_bytes()


def test_a_failed_pack_leaves_no_file_behind(tokenizer: TextTokenizer, tmp_path) -> None:
    with pytest.raises(ValueError):
        pack_split(Dataset.from_dict({"body": DOCS}), tokenizer, tmp_path / "train.bin")  # no "text" column
    assert list(tmp_path.iterdir()) == []


def test_token_dtype_is_the_narrowest_that_holds_every_id() -> None:
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_prepare_data_records_meta_and_maps_both_splits_read_only(jsonl_source, tmp_path) -> None:
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    meta = json.loads((data.directory / "meta.json").read_text())
    assert meta["tokenizer_fingerprint"] == data.tokenizer.fingerprint
    assert (meta["vocab_size"], meta["dtype"], meta["source"]) == (300, "uint16", jsonl_source)
    assert meta["documents"]["train"] + meta["documents"]["validation"] == len(DOCS)
    assert meta["tokens"] == {"train": len(data.train), "validation": len(data.validation)}
    assert int((data.train == data.tokenizer.eos_id).sum()) == meta["documents"]["train"]
    assert sum(len(data.tokenizer.encode(doc)) + 1 for doc in DOCS) == len(data.train) + len(data.validation)
    with pytest.raises(ValueError, match="read-only"):
        data.train[0] = 7


def test_prepare_data_reuses_a_finished_build_and_separates_recipes(jsonl_source, tmp_path) -> None:
    first = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    stamps = {path.name: path.stat().st_mtime_ns for path in first.directory.iterdir()}
    again = prepare_data(small_config(jsonl_source, tmp_path, num_proc=2), block_size=32)
    assert again.directory == first.directory
    assert {path.name: path.stat().st_mtime_ns for path in again.directory.iterdir()} == stamps
    other = prepare_data(small_config(jsonl_source, tmp_path, vocab_size=280), block_size=16)
    assert other.directory != first.directory and other.tokenizer.vocab_size == 280
    assert sorted(path.name for path in first.directory.iterdir()) == \
        ["meta.json", "tokenizer.json", "train.bin", "validation.bin"]


def test_a_build_interrupted_before_meta_is_rebuilt(jsonl_source, tmp_path) -> None:
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    expected = np.array(data.train)
    (data.directory / "meta.json").unlink()
    (data.directory / "train.bin").write_bytes(b"half a fi")
    rebuilt = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    assert np.array_equal(rebuilt.train, expected)


def test_a_streamed_build_equals_the_in_memory_build(jsonl_source, tmp_path) -> None:
    in_memory = prepare_data(small_config(jsonl_source, tmp_path / "a"), block_size=16)
    streamed = prepare_data(small_config(jsonl_source, tmp_path / "b", streaming=True), block_size=16)
    assert streamed.tokenizer.fingerprint == in_memory.tokenizer.fingerprint
    assert np.array_equal(streamed.train, in_memory.train)
    assert np.array_equal(streamed.validation, in_memory.validation)


def test_an_existing_tokenizer_is_used_as_given(jsonl_source, tokenizer: TextTokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path / "given.json")
    data = prepare_data(small_config(jsonl_source, tmp_path, tokenizer_path=str(tmp_path / "given.json")), 16)
    assert data.tokenizer.fingerprint == tokenizer.fingerprint == data.meta.tokenizer_fingerprint


def test_data_packed_by_another_tokenizer_is_refused(jsonl_source, tokenizer: TextTokenizer, tmp_path) -> None:
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    assert tokenizer.fingerprint != data.tokenizer.fingerprint
    with pytest.raises(ValueError, match="packed with tokenizer") as error:
        PreparedData.open(data.directory, tokenizer)
    assert f"Delete {data.directory}" in str(error.value) and "data.tokenizer_path" in str(error.value)


def test_packed_files_changed_after_packing_are_refused(jsonl_source, tmp_path) -> None:
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    with open(data.directory / "validation.bin", "r+b") as file:
        file.truncate(10)
    with pytest.raises(ValueError, match="modified after packing"):
        PreparedData.open(data.directory, data.tokenizer)


def test_same_size_corruption_and_out_of_vocabulary_ids_are_refused(jsonl_source, tmp_path) -> None:
    """The issue's probes: the first tokens overwritten with one valid id (same size: passed the size check and
    trained on garbage), and random bytes (a bare IndexError in the embedding, naming no file)."""
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    train = data.directory / "train.bin"
    original = train.read_bytes()
    train.write_bytes(np.full(100, 7, dtype=np.uint16).tobytes() + original[200:])
    with pytest.raises(ValueError, match=r"train.bin: its contents no longer match the checksum in meta.json"):
        PreparedData.open(data.directory, data.tokenizer)
    corrupt = np.frombuffer(original, dtype=np.uint16).copy()
    corrupt[1234] = 65000
    train.write_bytes(corrupt.tobytes())
    with pytest.raises(ValueError, match=r"train.bin: token id 65000 at token offset 1234 \(byte 2468\) is outside "
                                         r"the vocabulary of 300.*Delete"):
        PreparedData.open(data.directory, data.tokenizer)
    train.write_bytes(original)
    assert PreparedData.open(data.directory, data.tokenizer).train.tobytes() == original


def test_corpus_shorter_than_one_block_names_split_count_and_fix(jsonl_source, tmp_path) -> None:
    data = prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    block_size = len(data.validation) + 10
    with pytest.raises(ValueError, match="corpus shorter than one block") as error:
        prepare_data(small_config(jsonl_source, tmp_path), block_size=block_size)
    message = str(error.value)
    assert f"the validation split has {len(data.validation)} tokens" in message
    assert f"block_size + 1 = {block_size + 1}" in message and "smaller block_size" in message


def test_an_empty_corpus_is_refused_before_training_a_tokenizer(tmp_path) -> None:
    (tmp_path / "blank.txt").write_text("\n  \n\n")  # lines, but no document (an empty file is refused by name)
    with pytest.raises(ValueError, match="corpus is empty"):
        prepare_data(small_config(str(tmp_path / "blank.txt"), tmp_path), block_size=16)
    assert not any((tmp_path / "cache").glob("*/tokenizer.json"))


def test_cache_dir_holds_only_finished_files(jsonl_source, tmp_path) -> None:
    prepare_data(small_config(jsonl_source, tmp_path), block_size=16)
    leftovers = [name for _, _, files in os.walk(tmp_path / "cache") for name in files if name.endswith(".tmp")]
    assert leftovers == []
