"""Errors for bad evaluation input: each one says what was wrong and how to fix it.

They subclass the builtin types callers would naturally catch (``ValueError``, ``FileNotFoundError``),
and ``recurrent-lm-eval`` prints them as one line instead of a traceback.
"""

from __future__ import annotations


class EvalError(ValueError):
    """A bad model argument, task name or sweep option."""


class ModelNotFoundError(EvalError, FileNotFoundError):
    """``pretrained=`` names no exported model directory (nor a run directory holding one)."""


class TaskNotFoundError(EvalError, FileNotFoundError):
    """A task YAML, task template directory or task data source that does not exist."""
