"""Coconut (Chain of Continuous Thought, Hao et al. 2024) on the shared loop, for recurrent_lm and Hugging Face models.

* :mod:`~recurrent_lm.coconut.thoughts` — the thought loop (``unroll`` over positions) and the training forward.
* :mod:`~recurrent_lm.coconut.backends` — our RecurrentDepthLM (thoughts × depth) or any HF causal LM.
* :mod:`~recurrent_lm.coconut.curriculum`, :mod:`~recurrent_lm.coconut.sequences` — stages and token layouts.
* :mod:`~recurrent_lm.coconut.records` — the ``{question, steps, answer}`` JSON format and its loader.
* :mod:`~recurrent_lm.coconut.prosqa` — a seeded ProsQA-style generator (random concept DAGs).
* :mod:`~recurrent_lm.coconut.make_data` — ``recurrent-lm-coconut-data prosqa --out DIR``.
"""

from recurrent_lm.coconut.backends import BackendOutput, CausalBackend, Depth, HFBackend, RecurrentBackend, backend_for
from recurrent_lm.coconut.config import METHODS, CoconutConfig
from recurrent_lm.coconut.prosqa import ProsQAConfig, ProsQAProblem, generate_split, generate_splits, make_problem
from recurrent_lm.coconut.records import ReasoningRecord, RecordError, load_records, write_records
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample, collate
from recurrent_lm.coconut.thoughts import CoconutOutput, ContinuousThoughtLM, Thoughts

__all__ = [
    "METHODS", "BackendOutput", "CausalBackend", "CoconutConfig", "CoconutOutput", "ContinuousThoughtLM", "Depth",
    "HFBackend", "ProsQAConfig", "ProsQAProblem", "ReasoningRecord", "RecordError", "RecurrentBackend", "SpecialIds",
    "ThoughtExample", "Thoughts", "backend_for", "collate", "generate_split", "generate_splits", "load_records",
    "make_problem", "write_records",
]
