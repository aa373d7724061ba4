"""PLACEHOLDER until the exit-spec branch lands (replaced at merge)."""
from __future__ import annotations
from dataclasses import dataclass
from typing import Optional
from torch import Tensor
from recurrent_lm.loop.criteria import ExitCriterion, build_criterion


@dataclass(frozen=True)
class ExitSpec:
    criterion: Optional[str] = None
    threshold: Optional[float] = None
    min_steps: int = 1
    max_steps: Optional[int] = None

    @property
    def adaptive(self) -> bool:
        return self.criterion is not None

    def build(self, watch: Optional[Tensor] = None) -> Optional[ExitCriterion]:
        return build_criterion(self.criterion, self.threshold, self.min_steps, self.max_steps, watch)
