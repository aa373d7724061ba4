"""Coconut (Chain of Continuous Thought): data, curriculum and the continuous-thought adapter.

* :mod:`~recurrent_lm.coconut.records` — the ``{question, steps, answer}`` JSON format and its loader.
"""

from recurrent_lm.coconut.records import ReasoningRecord, RecordError, load_records, write_records

__all__ = [
    "ReasoningRecord",
    "RecordError",
    "load_records",
    "write_records",
]
