"""The settings of the exit-gate training app (the ``exitgate`` config group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.criteria import LearnedExit


@dataclass
class ExitGateConfig:
    """Ouro's stage II: the LM frozen, the gate fitted to the per-iteration loss improvement."""

    num_steps: Optional[int] = None
    """Core iterations unrolled per batch (the deepest exit the gate learns about); None = model.mean_recurrence."""
    sharpness: float = 50.0
    """k in the target w_t = σ(k·(I_t − margin)): how sharply an improvement turns into "continue"."""
    margin: float = 0.005
    """γ: the loss improvement (nats) an iteration must bring to count as worth continuing."""
    lookahead: bool = False
    """False: Ouro's target (did iteration t pay?). True: did any later iteration pay? (see exitgate/objective.py)."""
    threshold: float = 0.9
    """Exit CDF threshold the validation metrics use (val/exit_depth, val/loss_exit), as ``exit=learned threshold=``."""

    def __post_init__(self) -> None:
        if self.num_steps is not None and self.num_steps < 2:
            raise ConfigError(f"exitgate.num_steps={self.num_steps}: the target compares successive iterations, so it "
                             "needs >= 2 (or null for model.mean_recurrence)")
        if self.sharpness <= 0:
            raise ConfigError(f"exitgate.sharpness={self.sharpness}: must be > 0 (Ouro uses 50)")
        problem = LearnedExit.threshold_problem(self.threshold)  # exit=learned's own scale, stated once
        if problem is not None:
            raise ConfigError(f"exitgate.threshold={self.threshold} {problem[0]}; {problem[1]}")
