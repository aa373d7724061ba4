"""Tokenizer directories for the interop tests, trained here (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def write_bpe_tokenizer(directory: Path, vocab_size: int, specials: list[str], config: dict[str, Any]) -> None:
    """A byte-level BPE tokenizer.json of ``vocab_size`` with ``specials`` first, and ``config`` as its
    tokenizer_config.json (the file that names bos/eos/pad for Hugging Face)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Question: what is 2 + 3? Answer: 5. The cat sat on the mat."] * 10, trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
