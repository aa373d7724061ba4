"""The one owner of the exit and depth settings: :class:`ExitSpec` and :func:`resolve_depth`.

Every entry point (``GenerationConfig``, the lm-eval model, the reasoning ``TaskConfig``, the CLIs, the
benchmarks) holds or parses an :class:`ExitSpec`, and turns its depth request into a cap of core
iterations with :func:`resolve_depth`. Parsing, defaults and checks live here only, so a bad value gets
the same message (``<setting>=<value> <problem>; <fix>``) whichever way it came in, and the settings have
the same names everywhere: ``exit``, ``threshold``, ``min_steps``, ``max_steps``, ``num_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor

from recurrent_lm.loop.criteria import CRITERIA, DEFAULT_THRESHOLDS, Convergence, ExitCriterion

DepthRequest = Union[int, str, None]
"""A test-time depth as a user gives it: an int, its text, or None / 'default' (the model's own)."""

EXIT_CHOICES = ("none", *CRITERIA)
"""Every value ``exit`` accepts; 'none' is fixed depth."""

_UNSET = ("", "none", "default")


@dataclass(frozen=True)
class ExitSpec:
    """Per-token adaptive exit: which criterion stops a token, at which threshold, within which depths.

    Construction checks everything and normalises: ``criterion='none'`` becomes None (fixed depth) and
    an unset threshold becomes the criterion's default, so two specs that run the same are equal.
    """

    criterion: Optional[str] = None
    """None = fixed depth; else a key of :data:`recurrent_lm.loop.CRITERIA`. The setting is called ``exit``."""
    threshold: Optional[float] = None
    """The criterion's threshold; None = its default (:data:`recurrent_lm.loop.criteria.DEFAULT_THRESHOLDS`)."""
    min_steps: int = 1
    """Iterations every token runs before the criterion is consulted."""
    max_steps: Optional[int] = None
    """Per-token cap on core iterations; None = the requested depth (``num_steps``)."""

    def __post_init__(self) -> None:
        criterion = None if _is_unset(self.criterion) else self.criterion
        if criterion is not None and criterion not in CRITERIA:
            raise _invalid("exit", criterion, "is not an exit criterion", f"choose one of {list(EXIT_CHOICES)}")
        threshold = self.threshold
        if threshold is not None:
            fix = "give a number >= 0, or none for the criterion's default"
            threshold = _number("threshold", threshold, float, fix)
            if threshold < 0:
                raise _invalid("threshold", threshold, "is negative", fix)
            if math.isinf(threshold):  # every token would pass the test at its first step: no depth at all
                raise _invalid("threshold", threshold, "is infinite (every token would exit after one step)", fix)
        elif criterion is not None:
            threshold = DEFAULT_THRESHOLDS[criterion]
        min_steps = _steps("min_steps", self.min_steps, "iterations before the criterion is consulted")
        if self.max_steps is not None:
            max_steps = _steps("max_steps", self.max_steps, "the most iterations a token may use; none = num_steps")
            if min_steps > max_steps:
                raise _invalid("min_steps", min_steps, f"is greater than max_steps={max_steps}",
                               "lower min_steps or raise max_steps")
            object.__setattr__(self, "max_steps", max_steps)
        for name, value in (("criterion", criterion), ("threshold", threshold), ("min_steps", min_steps)):
            object.__setattr__(self, name, value)

    @classmethod
    def parse(cls, criterion: Any = None, threshold: Any = None, min_steps: Any = None,
              max_steps: Any = None) -> "ExitSpec":
        """A spec from loose values (CLI flags, lm-eval model args: strings, numbers or None).

        None, '' and 'none' leave a setting at its default; numbers may come as text. Errors are the
        ones the constructor raises.
        """
        return cls(criterion=None if _is_unset(criterion) else str(criterion).strip(),
                   threshold=None if _is_unset(threshold) else threshold,
                   min_steps=1 if _is_unset(min_steps) else min_steps,
                   max_steps=None if _is_unset(max_steps) else max_steps)

    @property
    def adaptive(self) -> bool:
        """Whether a criterion may stop tokens before the cap (False: fixed depth)."""
        return self.criterion is not None

    def settings(self) -> dict[str, Any]:
        """The spec under its public names (config keys, model args, CLI flags, reports)."""
        return {"exit": self.criterion, "threshold": self.threshold, "min_steps": self.min_steps,
                "max_steps": self.max_steps}

    def build(self, watch: Optional[Tensor] = None) -> Optional[ExitCriterion]:
        """A fresh criterion (it keeps memory across one unroll), or None for fixed depth.

        ``watch`` (bool, element shape) marks the elements the sequence-scoped convergence criteria wait
        for (e.g. real tokens, answer tokens); the other criteria decide per element and ignore it.
        """
        if self.criterion is None:
            return None
        cls = CRITERIA[self.criterion]
        if issubclass(cls, Convergence):
            return cls(self.threshold, min_steps=self.min_steps, max_steps=self.max_steps, watch=watch)
        return cls(self.threshold, min_steps=self.min_steps, max_steps=self.max_steps)


def resolve_depth(num_steps: DepthRequest, default: int, spec: Optional[ExitSpec] = None) -> int:
    """The cap of core iterations per token for a depth request: the one place it is checked.

    ``spec.max_steps`` if set, else ``num_steps``, else ``default`` (the model's mean_recurrence). Under
    exit the cap is where every token stops at the latest, so ``min_steps`` must fit under it.
    """
    requested = None if _is_unset(num_steps) else _steps("num_steps", num_steps, "core iterations per token, "
                                                                                 "e.g. num_steps=32")
    cap = spec.max_steps if spec is not None and spec.max_steps is not None else requested or default
    if spec is not None and spec.adaptive and spec.min_steps > cap:
        raise _invalid("min_steps", spec.min_steps, f"is greater than the step cap {cap} (max_steps, else num_steps)",
                       "lower min_steps or raise the cap")
    return cap


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _UNSET)


def _steps(setting: str, value: Any, meaning: str) -> int:
    steps = _number(setting, value, int, f"give a positive integer ({meaning})")
    if steps < 1:
        raise _invalid(setting, steps, "is below 1", f"give a positive integer ({meaning})")
    return steps


def _number(setting: str, value: Any, kind: type, fix: str) -> Union[int, float]:
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
        raise _invalid(setting, value, f"is not {what}", fix) from None


def _invalid(setting: str, value: Any, problem: str, fix: str) -> ValueError:
    """The one message format of every exit and depth setting: which setting, what is wrong, the fix."""
    return ValueError(f"{setting}={value!r} {problem}; {fix}")
