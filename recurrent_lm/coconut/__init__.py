"""Coconut (Chain of Continuous Thought, Hao et al. 2024) on the shared loop, for recurrent_lm and Hugging Face models.

* :mod:`~recurrent_lm.coconut.thoughts` — the thought loop (``unroll`` over positions) and the training forward.
* :mod:`~recurrent_lm.coconut.backends` — our RecurrentDepthLM (thoughts × depth) or any HF causal LM.
* :mod:`~recurrent_lm.coconut.curriculum`, :mod:`~recurrent_lm.coconut.sequences` — stages and token layouts.
* :mod:`~recurrent_lm.coconut.markers` — the marker names (``recurrent_lm`` and ``reference`` presets).
* :mod:`~recurrent_lm.coconut.batches` — records or the reference's flat batches -> our batch -> the loss.
* :mod:`~recurrent_lm.coconut.records` — the ``{question, steps, answer}`` JSON format and its loader.
* :mod:`~recurrent_lm.coconut.prosqa` — a seeded ProsQA-style generator (random concept DAGs).
* :mod:`~recurrent_lm.coconut.make_data` — ``recurrent-lm-coconut-data prosqa --out DIR``.
"""

from recurrent_lm.coconut.backends import BackendOutput, CausalBackend, Depth, HFBackend, RecurrentBackend, backend_for
from recurrent_lm.coconut.batches import coconut_loss, from_reference_batch, records_batch
from recurrent_lm.coconut.config import LAYOUTS, METHODS, CoconutConfig
from recurrent_lm.coconut.markers import PRESETS, Markers
from recurrent_lm.coconut.prosqa import ProsQAConfig, ProsQAProblem, generate_split, generate_splits, make_problem
from recurrent_lm.coconut.records import ReasoningRecord, RecordError, load_records, write_records
from recurrent_lm.coconut.sequences import (EncodedRecord, SpecialIds, ThoughtExample, build_example, collate,
                                            encode_record, encode_records, final_example)
from recurrent_lm.coconut.thoughts import CoconutOutput, ContinuousThoughtLM, Thoughts
from recurrent_lm.coconut.tokens import ThoughtTokenizer, add_thought_tokens

__all__ = [
    "LAYOUTS", "METHODS", "PRESETS", "BackendOutput", "CausalBackend", "CoconutConfig", "CoconutOutput",
    "ContinuousThoughtLM", "Depth", "EncodedRecord", "HFBackend", "Markers", "ProsQAConfig", "ProsQAProblem",
    "ReasoningRecord", "RecordError", "RecurrentBackend", "SpecialIds", "ThoughtExample", "ThoughtTokenizer",
    "Thoughts", "add_thought_tokens", "backend_for", "build_example", "coconut_loss", "collate", "encode_record",
    "encode_records", "final_example", "from_reference_batch", "generate_split", "generate_splits", "load_records",
    "make_problem", "records_batch", "write_records",
]
