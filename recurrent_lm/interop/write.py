"""The last step of every conversion: a model written in a format, with its tokenizer beside it.

Import and export differ only in the writer (``save_model_dir`` for ours, ``save_huginn`` / ``save_hf_llama`` for
theirs) and in where the tokenizer comes from; the tokenizer files always travel with the weights, cut to the
model's context, so that the output directory is self-contained (litgpt's convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from recurrent_lm.data.tokenizer_dir import copy_tokenizer_files
from recurrent_lm.model import RecurrentDepthLM

Writer = Callable[[RecurrentDepthLM, Path, "int | str"], Path]
"""(model, directory, max_shard_size) -> directory: writes weights and config.json in one format."""


def write_converted(model: RecurrentDepthLM, write: Writer, target: Path, tokenizer_source: Path,
                    max_shard_size: int | str) -> Path:
    """Write ``model`` to ``target`` with ``write``, then the tokenizer files of ``tokenizer_source``."""
    write(model, target, max_shard_size)
    copy_tokenizer_files(tokenizer_source, target, model.config.block_size)
    return target
