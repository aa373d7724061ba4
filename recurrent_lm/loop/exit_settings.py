"""The checks of every exit and depth setting (threshold, min_steps, max_steps, num_steps): one message format
(which setting, what is wrong, the fix), used by :class:`~recurrent_lm.loop.ExitSpec` and
:func:`~recurrent_lm.loop.resolve_depth`. The criteria never check again: they are built from a checked spec."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

from recurrent_lm.errors import ConfigError

UNSET = ("", "none", "default")
"""Text that leaves a setting at its default (CLI flags, lm-eval model args)."""


def checked_bounds(threshold: Optional[Any], min_steps: Any, max_steps: Optional[Any]
                   ) -> tuple[Optional[float], int, Optional[int]]:
    """(threshold, min_steps, max_steps) as numbers, or the error naming the first bad one: a threshold >= 0
    (None: unset), min_steps >= 1, max_steps >= min_steps (None: the requested depth)."""
    if threshold is not None:
        fix = "give a number >= 0, or none for the criterion's default"
        threshold = number("threshold", threshold, float, fix)
        if threshold < 0:
            raise invalid("threshold", threshold, "is negative", fix)
        if math.isinf(threshold):  # every token would pass the test at its first step: no depth at all
            raise invalid("threshold", threshold, "is infinite (every token would exit after one step)", fix)
    min_steps = steps("min_steps", min_steps, "iterations before the criterion is consulted")
    if max_steps is not None:
        max_steps = steps("max_steps", max_steps, "the most iterations a token may use; none = num_steps")
        if min_steps > max_steps:
            raise invalid("min_steps", min_steps, f"is greater than max_steps={max_steps}",
                          "lower min_steps or raise max_steps")
    return threshold, min_steps, max_steps


def is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in UNSET)


def steps(setting: str, value: Any, meaning: str) -> int:
    steps = number(setting, value, int, f"give a positive integer ({meaning})")
    if steps < 1:
        raise invalid(setting, steps, "is below 1", f"give a positive integer ({meaning})")
    return steps


def number(setting: str, value: Any, kind: type, fix: str) -> Union[int, float]:
    """``value`` as ``kind`` (int or float); text and integral floats convert, bools and the rest do not."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value.strip() if isinstance(value, str) else value)
        if math.isnan(number):
            raise ValueError
        if kind is int:
            if not (math.isfinite(number) and number.is_integer()):
                raise TypeError
            return int(number)
        return number
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise invalid(setting, value, f"is not {what}", fix) from None


def invalid(setting: str, value: Any, problem: str, fix: str) -> ConfigError:
    """The one message format of every exit and depth setting: which setting, what is wrong, the fix."""
    return ConfigError(f"{setting}={value!r} {problem}; {fix}")
