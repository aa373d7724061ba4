"""Synthetic reasoning tasks where more test-time iterations solve harder instances.

* :mod:`~recurrent_lm.reasoning.config` — :class:`TaskConfig` (the hydra ``task/`` group).
* :mod:`~recurrent_lm.reasoning.tasks` — the generators (prefix parity, maze reachability on a directed grid graph) and vocabulary.
* :mod:`~recurrent_lm.reasoning.datamodule` — :class:`ReasoningDataModule` (imports Lightning; import it directly).
* :mod:`~recurrent_lm.reasoning.evaluate` — accuracy by difficulty × depth, and the depth and accuracy of exit criteria.
"""

from recurrent_lm.reasoning.config import TaskConfig
from recurrent_lm.reasoning.evaluate import ReasoningReport, evaluate
from recurrent_lm.reasoning.tasks import collate, make_example, vocab_size

__all__ = ["ReasoningReport", "TaskConfig", "collate", "evaluate", "make_example", "vocab_size"]
