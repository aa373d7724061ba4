"""Errors for bad evaluation input: each one says what was wrong and how to fix it.

They are :class:`~recurrent_lm.errors.UserError` s (so also ``ValueError``/``FileNotFoundError``), and
``recurrent-lm-eval`` prints them as one line instead of a traceback.
"""

from __future__ import annotations

from recurrent_lm.errors import ConfigError, MissingFileError


class EvalError(ConfigError):
    """A bad model argument, task name or sweep option."""


class ModelNotFoundError(EvalError, MissingFileError):
    """``pretrained=`` names no exported model directory (nor a run directory holding one)."""


class TaskNotFoundError(EvalError, MissingFileError):
    """A task YAML, task template directory or task data source that does not exist."""
