"""Tokenize a corpus once into flat token files, and reopen them safely.

Layout of one prepared dataset, ``<cache_dir>/<recipe digest>/``::

    tokenizer.json    the tokenizer the tokens were produced with
    train.bin         every train document's tokens followed by <|eos|>, back to back (raw uint16/uint32)
    validation.bin    the same for the validation split
    meta.json         what produced the files and what is in them (token counts, an xxh3-128 checksum of each
                      .bin computed while packing); written last

The directory name is a digest of everything that determines its contents (`_recipe`), so runs with
different settings can share one `cache_dir` without overwriting each other, and a finished directory
never needs rebuilding. Every file is written to a temporary sibling and moved into place, and meta.json
goes last, so a crash mid-build leaves no meta.json and the next call simply rebuilds.

Opening a cache verifies it in one streaming pass per split: every id below the vocabulary (an out-of-range id is
named by file and token offset) and the checksum of meta.json, so a cache overwritten in place -- same size,
other bytes -- is refused instead of training on garbage. The cost is measured in benchmarks/packing_checksum.py
(benchmarks/RESULTS.md).

Documents are packed back to back, not padded: a sample is any window of the flat stream, and the <|eos|>
between documents tells the model where one ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from recurrent_lm.data.config import DataConfig
from recurrent_lm.data.corpus import AnyDataset, iter_texts, load_corpus, source_signature
from recurrent_lm.data.tokenizer import TextTokenizer, WrappedTokenizer
from recurrent_lm.data.tokenizer_dir import load_tokenizer, save_tokenizer_dir
from recurrent_lm.errors import ConfigError, MissingFileError

SPLITS = ("train", "validation")
FORMAT_VERSION = 1
"""Part of every recipe: bump it when code changes what a recipe produces (packing layout, corpus clean-up), so
cache entries built by older code are ignored rather than reused."""
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
CHECKSUM = "xxh3_128"
VERIFY_CHUNK = 1 << 24
"""Bytes read per step when verifying a split: bounded memory whatever the file's size."""


@dataclass
class PackedMeta:
    """Contents of meta.json."""

    source: str
    recipe: dict[str, Any]
    """Everything that determined the files; its digest names the directory."""
    tokenizer_fingerprint: str
    vocab_size: int
    dtype: str
    tokens: dict[str, int]
    """Tokens per split, <|eos|> included."""
    documents: dict[str, int]
    checksums: dict[str, str] | None = None
    """``{split: "xxh3_128:<hex>"}`` of the .bin files (None in caches from before checksums: verified by size only)."""

    def save(self, path: Path) -> None:
        with _replaced(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PackedMeta:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A prepared dataset: its tokenizer, read-only memory maps of both splits, and its meta."""

    directory: Path
    tokenizer: WrappedTokenizer
    """Ours (:class:`TextTokenizer`) or the foreign one named by data.tokenizer_path (e.g. a Hugging Face
    model's, kept unchanged when training on from its weights)."""
    meta: PackedMeta
    train: np.memmap
    validation: np.memmap

    @classmethod
    def open(cls, directory: str | Path, tokenizer: WrappedTokenizer) -> PreparedData:
        """Map the packed files of `directory`, refusing them unless they were produced by `tokenizer`."""
        directory = Path(directory)
        if not (directory / META_FILE).is_file():
            raise MissingFileError(f"{directory}: no {META_FILE}, so no finished packed data here; "
                                    "run recurrent_lm.data.prepare_data to build it")
        meta = PackedMeta.load(directory / META_FILE)
        if meta.tokenizer_fingerprint != tokenizer.fingerprint:
            raise ConfigError(
                f"{directory}: the data was packed with tokenizer {meta.tokenizer_fingerprint[:12]}, but the "
                f"current tokenizer is {tokenizer.fingerprint[:12]}: token ids would mean different things. "
                f"Delete {directory} to rebuild it, or point data.tokenizer_path at the original tokenizer "
                f"({directory / TOKENIZER_FILE})")
        arrays = {split: _map_split(directory / f"{split}.bin", np.dtype(meta.dtype), meta.tokens[split])
                  for split in SPLITS}
        for split in SPLITS:
            verify_split(directory / f"{split}.bin", arrays[split], meta.vocab_size,
                         (meta.checksums or {}).get(split))
        return cls(directory=directory, tokenizer=tokenizer, meta=meta, **arrays)


def prepare_data(cfg: DataConfig, block_size: int) -> PreparedData:
    """Tokenizer and packed splits for `cfg`, built on first use and reused afterwards.

    Call it on one process first (e.g. rank 0 in LightningDataModule.prepare_data): concurrent builds of the
    same directory are safe, as every file is replaced atomically with identical content, but wasteful.
    """
    if block_size < 1:
        raise ConfigError(f"block_size={block_size}: must be a positive number of tokens")
    given = _given_tokenizer(cfg.tokenizer_path) if cfg.tokenizer_path else None
    recipe = _recipe(cfg, given)
    directory = Path(cfg.cache_dir).expanduser() / hashlib.sha256(
        json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    if not (directory / META_FILE).is_file():
        _build(cfg, recipe, directory, given)
    meta = PackedMeta.load(directory / META_FILE)
    for split in SPLITS:
        if meta.tokens[split] < block_size + 1:
            raise ConfigError(
                f"data.source={cfg.source!r}: corpus shorter than one block: the {split} split has "
                f"{meta.tokens[split]} tokens ({meta.documents[split]} documents) but one sample needs block_size + 1 "
                f"= {block_size + 1}. Use a larger corpus"
                f"{' or a larger data.val_fraction' if split == 'validation' else ''}, or a smaller block_size")
    return PreparedData.open(directory, given or load_tokenizer(directory / TOKENIZER_FILE))


def _given_tokenizer(path: str) -> WrappedTokenizer:
    """data.tokenizer_path: one of ours (reserved specials at ids 0..5), or a foreign tokenizer.json whose directory
    names its eos token (a Hugging Face model's tokenizer_config.json), used unchanged."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFileError(f"data.tokenizer_path={path}: no tokenizer file here; point it at a tokenizer.json "
                                "or leave it unset to train one")
    return load_tokenizer(file)


def pack_split(ds: AnyDataset, tokenizer: WrappedTokenizer, path: Path, num_proc: int = 1) -> tuple[int, int, str]:
    """Write the tokens of every document of `ds`, each followed by <|eos|>, to `path`; return (tokens, documents,
    checksum of the file).

    `num_proc` worker processes tokenize a map-style dataset; a streaming one is tokenized as it is read.
    """
    import pyarrow.compute as pc  # here, not at the top: a prepared cache trains without datasets/pyarrow
    from datasets import Features, IterableDataset, List, Value

    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.eos_id

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"ids": [[*ids, eos] for ids in tokenizer.encode_batch(batch["text"])]}

    # num_proc=1 becomes None: datasets runs even num_proc=1 in a worker process with TOKENIZERS_PARALLELISM=false,
    # which leaves one core busy; in this process encode_batch already spreads a batch over every core.
    parallel = {} if isinstance(ds, IterableDataset) else {"num_proc": num_proc if num_proc > 1 else None,
                                                           "desc": f"Tokenizing {path.stem}"}
    encoded = ds.map(encode, batched=True, remove_columns=["text"],
                     features=Features({"ids": List(Value(dtype.name))}), **parallel)
    tokens = documents = 0
    digest = xxhash.xxh3_128()
    with _replaced(path) as tmp, open(tmp, "wb") as out:
        for table in encoded.with_format("arrow").iter(batch_size=1024):
            data = pc.list_flatten(table["ids"]).to_numpy().tobytes()
            out.write(data)
            digest.update(data)
            tokens += len(data) // dtype.itemsize
            documents += table.num_rows
    return tokens, documents, f"{CHECKSUM}:{digest.hexdigest()}"


def verify_split(path: Path, tokens: np.ndarray, vocab_size: int, checksum: str | None) -> None:
    """Refuse a packed split holding an id >= ``vocab_size`` (naming file and token offset) or whose bytes no longer
    match ``checksum``; one pass of ``VERIFY_CHUNK`` bytes at a time over the memory map."""
    digest = xxhash.xxh3_128()
    step = VERIFY_CHUNK // tokens.dtype.itemsize
    for start in range(0, len(tokens), step):
        chunk = np.asarray(tokens[start:start + step])
        if chunk.size and int(chunk.max()) >= vocab_size:
            offset = start + int(np.argmax(chunk >= vocab_size))
            raise ConfigError(f"{path}: token id {int(tokens[offset])} at token offset {offset} (byte "
                             f"{offset * tokens.dtype.itemsize}) is outside the vocabulary of {vocab_size}; the file "
                             f"was modified after packing. Delete {path.parent} to rebuild it")
        digest.update(chunk.tobytes())
    if checksum is not None and checksum != f"{CHECKSUM}:{digest.hexdigest()}":
        raise ConfigError(f"{path}: its contents no longer match the checksum in {META_FILE} (same size, other bytes): "
                         f"the file was modified after packing. Delete {path.parent} to rebuild it")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _recipe(cfg: DataConfig, given: WrappedTokenizer | None) -> dict[str, Any]:
    """What determines the prepared files (and nothing else, so e.g. num_proc or streaming share an entry)."""
    tokenizer = ({"fingerprint": given.fingerprint, "eos_id": given.eos_id} if given is not None
                 else {"vocab_size": cfg.vocab_size, "train_chars": cfg.tokenizer_train_chars})
    return {"format": FORMAT_VERSION, "corpus": source_signature(cfg), "tokenizer": tokenizer}


def _build(cfg: DataConfig, recipe: dict[str, Any], directory: Path, given: WrappedTokenizer | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(cfg)
    tokenizer = given or TextTokenizer.train(iter_texts(corpus["train"]), cfg.vocab_size,
                                             max_chars=cfg.tokenizer_train_chars)
    save_tokenizer_dir(tokenizer, directory)
    counts = {split: pack_split(corpus[split], tokenizer, directory / f"{split}.bin", cfg.num_proc)
              for split in SPLITS}
    PackedMeta(
        source=cfg.source,
        recipe=recipe,
        tokenizer_fingerprint=tokenizer.fingerprint,
        vocab_size=tokenizer.vocab_size,
        dtype=token_dtype(tokenizer.vocab_size).name,
        tokens={split: tokens for split, (tokens, _, _) in counts.items()},
        documents={split: documents for split, (_, documents, _) in counts.items()},
        checksums={split: checksum for split, (_, _, checksum) in counts.items()},
    ).save(directory / META_FILE)


def _map_split(path: Path, dtype: np.dtype, tokens: int) -> np.memmap:
    size = path.stat().st_size if path.is_file() else None
    if size != tokens * dtype.itemsize:
        raise ConfigError(f"{path}: expected {tokens} {dtype.name} tokens ({tokens * dtype.itemsize} bytes) as "
                         f"recorded in {META_FILE}, found {'no file' if size is None else f'{size} bytes'}; the "
                         f"files were modified after packing. Delete {path.parent} to rebuild it")
    return np.memmap(path, dtype=dtype, mode="r")


@contextmanager
def _replaced(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; it replaces `path` only if the block completes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
