"""The shared loop machinery: one unroll, exit criteria and their spec, depth samplers and telemetry."""

from recurrent_lm.loop.distributed import all_ranks_exited
from recurrent_lm.loop.criteria import (CRITERIA, ArgmaxStable, CausalConvergence, Convergence, EntropyChange,
                                        ExitCriterion, KLDivergence, LearnedExit, SequenceConvergence)
from recurrent_lm.loop.exit_spec import EXIT_CHOICES, DepthRequest, ExitSpec, resolve_depth
from recurrent_lm.loop.samplers import DepthSampler, SamplerConfig
from recurrent_lm.loop.telemetry import LoopStats, relative_change, token_correlation
from recurrent_lm.loop.unroll import LoopResult, StepFn, unroll

__all__ = [
    "CRITERIA", "EXIT_CHOICES", "ArgmaxStable", "CausalConvergence", "Convergence", "DepthRequest", "DepthSampler",
    "EntropyChange", "ExitCriterion", "ExitSpec", "KLDivergence", "LearnedExit", "LoopResult", "LoopStats",
    "SamplerConfig", "SequenceConvergence", "StepFn", "all_ranks_exited", "relative_change", "resolve_depth",
    "token_correlation", "unroll",
]
