"""Evaluation with lm-eval: the ``recurrent_lm`` model, offline tasks, depth sweeps.

* :mod:`recurrent_lm.evaluation.harness`: ``RecurrentLMEval``, registered with lm-eval as ``recurrent_lm``
  (importing the module registers it);
* :mod:`recurrent_lm.evaluation.tasks`: data builders of the offline tasks in ``evals/tasks`` and the
  rendering of their YAMLs with absolute paths (``prepare_tasks``, ``build_task_manager``);
* :mod:`recurrent_lm.evaluation.sweep`: ``run_sweep`` (one lm-eval run per depth) and ``aggregate``
  (CSV, Markdown table, plots);
* :mod:`recurrent_lm.evaluation.cli`: the ``recurrent-lm-eval`` console script.

Names are imported lazily: importing this package does not import lm-eval (a few seconds).
"""

from __future__ import annotations

import importlib
from typing import Any

from recurrent_lm.evaluation.errors import EvalError, ModelNotFoundError, TaskNotFoundError

_LAZY = {
    "RecurrentLMEval": "recurrent_lm.evaluation.harness",
    "MODEL_ARGS": "recurrent_lm.evaluation.model_args",
    "resolve_model_dir": "recurrent_lm.evaluation.model_args",
    "prepare_tasks": "recurrent_lm.evaluation.tasks",
    "build_task_manager": "recurrent_lm.evaluation.tasks",
    "offline_tasks": "recurrent_lm.evaluation.tasks",
    "run_sweep": "recurrent_lm.evaluation.sweep",
    "aggregate": "recurrent_lm.evaluation.sweep",
}

__all__ = ["EvalError", "ModelNotFoundError", "TaskNotFoundError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
