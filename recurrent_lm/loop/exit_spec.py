"""The one owner of the exit and depth settings: :class:`ExitSpec` and :func:`resolve_depth`.

Every entry point (``GenerationConfig``, the lm-eval model, the reasoning ``TaskConfig``, the CLIs, the
benchmarks) holds or parses an :class:`ExitSpec`, and turns its depth request into a cap of core
iterations with :func:`resolve_depth`. Parsing, defaults and checks live here only, so a bad value gets
the same message (``<setting>=<value> <problem>; <fix>``) whichever way it came in, and the settings have
the same names everywhere: ``exit``, ``threshold``, ``min_steps``, ``max_steps``, ``num_steps``.

A config that has an exit holds one field of this type (``GenerationConfig.exit``, Coconut's ``Depth.exit``) or a
list of them (the reasoning ``TaskConfig.exits``: each criterion with its own threshold, since a probability and a
relative change have different scales). Flat flags and model args are parsed into one by :meth:`ExitSpec.parse`,
and the compact text ``NAME[=THRESHOLD]`` (``learned=0.9``) by :meth:`ExitSpec.from_text`.

Imports go one way: exit_spec -> exit_settings (the checks) and -> criteria (which trust the checked values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor

from recurrent_lm.loop.criteria import CRITERIA, DEFAULT_THRESHOLDS, Convergence, ExitCriterion
from recurrent_lm.loop.exit_settings import checked_bounds, invalid, is_unset, steps

DepthRequest = Union[int, str, None]
"""A test-time depth as a user gives it: an int, its text, or None / 'default' (the model's own)."""

EXIT_CHOICES = ("none", *CRITERIA)
"""Every value ``exit`` accepts; 'none' is fixed depth."""



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
        criterion = None if is_unset(self.criterion) else self.criterion
        if criterion is not None and criterion not in CRITERIA:
            raise invalid("exit", criterion, "is not an exit criterion", f"choose one of {list(EXIT_CHOICES)}")
        threshold = self.threshold
        if threshold is None and criterion is not None:
            threshold = DEFAULT_THRESHOLDS[criterion]
        threshold, min_steps, max_steps = checked_bounds(threshold, self.min_steps, self.max_steps)
        problem = CRITERIA[criterion].threshold_problem(threshold) if criterion is not None else None
        if problem is not None:
            raise invalid("threshold", threshold, *problem)
        for name, value in (("criterion", criterion), ("threshold", threshold), ("min_steps", min_steps),
                            ("max_steps", max_steps)):
            object.__setattr__(self, name, value)

    @classmethod
    def parse(cls, criterion: Any = None, threshold: Any = None, min_steps: Any = None,
              max_steps: Any = None) -> "ExitSpec":
        """A spec from loose values (CLI flags, lm-eval model args: strings, numbers or None).

        None, '' and 'none' leave a setting at its default; numbers may come as text. Errors are the
        ones the constructor raises.
        """
        return cls(criterion=None if is_unset(criterion) else str(criterion).strip(),
                   threshold=None if is_unset(threshold) else threshold,
                   min_steps=1 if is_unset(min_steps) else min_steps,
                   max_steps=None if is_unset(max_steps) else max_steps)

    @classmethod
    def from_text(cls, text: str, **bounds: Any) -> "ExitSpec":
        """A spec from its compact spelling ``NAME[=THRESHOLD]`` (``learned=0.9``, ``kl=5e-4``, ``convergence``:
        its default threshold), the form CLIs take for a list of exits; ``bounds`` are ``min_steps``/``max_steps``."""
        name, sep, threshold = str(text).partition("=")
        if sep and not threshold.strip():
            raise invalid("exit", text, "gives no threshold after '='", "write NAME=THRESHOLD (e.g. learned=0.9), "
                          "or NAME alone for the criterion's default")
        return cls.parse(name, threshold if sep else None, **bounds)

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
    requested = None if is_unset(num_steps) else steps("num_steps", num_steps, "core iterations per token, "
                                                                                 "e.g. num_steps=32")
    cap = spec.max_steps if spec is not None and spec.max_steps is not None else requested or default
    if spec is not None and spec.adaptive and spec.min_steps > cap:
        raise invalid("min_steps", spec.min_steps, f"is greater than the step cap {cap} (max_steps, else num_steps)",
                       "lower min_steps or raise the cap")
    return cap
