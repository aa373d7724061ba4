"""Coconut (Chain of Continuous Thought): data, curriculum and the continuous-thought adapter.

* :mod:`~recurrent_lm.coconut.records` — the ``{question, steps, answer}`` JSON format and its loader.
* :mod:`~recurrent_lm.coconut.prosqa` — a seeded ProsQA-style generator (random concept DAGs).
* :mod:`~recurrent_lm.coconut.make_data` — ``python -m recurrent_lm.coconut.make_data prosqa --out DIR``.
"""

from recurrent_lm.coconut.prosqa import ProsQAConfig, ProsQAProblem, generate_split, generate_splits, make_problem
from recurrent_lm.coconut.records import ReasoningRecord, RecordError, load_records, write_records

__all__ = [
    "ProsQAConfig",
    "ProsQAProblem",
    "ReasoningRecord",
    "RecordError",
    "generate_split",
    "generate_splits",
    "load_records",
    "make_problem",
    "write_records",
]
