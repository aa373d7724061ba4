"""Data pipeline: corpus loading, byte-level BPE, packing to token files, and the resumable loader."""

from recurrent_lm.data.config import DataConfig
from recurrent_lm.data.corpus import SHAKESPEARE, VALIDATION_PLAYS, iter_texts, load_corpus, shakespeare
from recurrent_lm.data.loader import TokenWindows, TrainBatchSampler, shard_batches, train_loader, validation_loader
from recurrent_lm.data.packing import PackedMeta, PreparedData, pack_split, prepare_data, token_dtype
from recurrent_lm.data.tokenizer import SPECIAL_TOKENS, TextTokenizer

__all__ = [
    "SHAKESPEARE", "SPECIAL_TOKENS", "VALIDATION_PLAYS", "DataConfig", "PackedMeta", "PreparedData", "TextTokenizer",
    "TokenWindows", "TrainBatchSampler", "iter_texts", "load_corpus", "pack_split", "prepare_data",
    "shakespeare", "shard_batches", "token_dtype", "train_loader", "validation_loader",
]
