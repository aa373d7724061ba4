"""Training FLOPs of a run, step by step, and the steps that reach a FLOP budget.

The throughput monitor logs FLOP *rates* over a rolling window, not totals, so a total is rebuilt here from
the same ingredients the module feeds the monitor each step: the depth the sampler drew and
:func:`train_flops_per_token`. Samplers are pure functions of (seed, step), so replaying them gives the exact
(n_no_grad, n_grad) of every step of any run, old ones included, resumed ones included (a resume replays the
same depths), without anything new in the run directory.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import numpy as np

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop import DepthSampler, SamplerConfig
from recurrent_lm.model import ModelConfig, forward_flops_per_token


def model_config(values: Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig from a run's config.yaml ``model:`` section; keys this version does not know are dropped
    (older or newer runs), so accounting works across versions."""
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in values.items() if k in known})


def sampler_config(values: Mapping[str, Any]) -> SamplerConfig:
    known = {f.name for f in fields(SamplerConfig)}
    return SamplerConfig(**{k: v for k, v in values.items() if k in known})


def tokens_per_step(trainer: Mapping[str, Any], block_size: int, world_size: int = 1) -> int:
    """Token positions of one optimizer step: micro-batch × accumulation × processes × block."""
    return (int(trainer["micro_batch_size"]) * int(trainer.get("accumulate_grad_batches", 1)) * world_size
            * block_size)


def step_flops(model: ModelConfig, sampler: SamplerConfig, steps: int, tokens: int,
               context: int | None = None) -> np.ndarray:
    """(steps,) training FLOPs of each optimizer step 0..steps-1, at the depths the sampler draws.

    FLOPs are affine in (r, k) (train = fwd(r) + 2·fwd(k)), so two forward evaluations give every step.
    """
    draw = DepthSampler(sampler)
    depths = np.array([draw(step) for step in range(steps)], dtype=np.int64).reshape(steps, 2)  # (steps, 2)
    r = depths.sum(axis=1)
    k = depths[:, 1]
    base = forward_flops_per_token(model, 0, context)
    per_iteration = forward_flops_per_token(model, 1, context) - base
    per_token = 3 * base + per_iteration * (r + 2 * k)  # == train_flops_per_token(model, r, k, context)
    return per_token.astype(np.float64) * tokens


def steps_for_budget(model: ModelConfig, sampler: SamplerConfig, budget: float, tokens: int,
                     context: int | None = None, limit: int = 10_000_000) -> int:
    """The fewest optimizer steps whose replayed training FLOPs reach ``budget``."""
    if not budget > 0:
        raise ConfigError(f"flop_budget={budget}: must be a positive number of training FLOPs (e.g. 3e13)")
    first = step_flops(model, sampler, 1, tokens, context)[0]
    guess = max(1, int(budget / first))
    while True:
        total = np.cumsum(step_flops(model, sampler, min(limit, 2 * guess + 16), tokens, context))
        if total[-1] >= budget:
            return int(np.searchsorted(total, budget) + 1)
        if len(total) >= limit:
            raise ConfigError(f"flop_budget={budget:.3g} needs more than {limit} steps; lower the budget")
        guess = 2 * len(total)


def budget_steps(budget: float, divisions: int = 1, *, _root_: Any) -> int:
    """The ``iso_flop_steps`` resolver: ``trainer.max_steps: ${iso_flop_steps:${flop_budget}}`` trains until the
    replayed FLOPs reach ``flop_budget`` at this config's depth recipe (conf/experiment/isoflop.yaml);
    ``${iso_flop_steps:${flop_budget},8}`` is an eighth of those steps (a validation interval)."""
    from recurrent_lm.train.parallel import planned_world_size

    model = model_config(_root_.model)
    sampler = sampler_config(_root_.sampler)
    t = _root_.trainer
    world = planned_world_size(str(t.devices), str(t.accelerator), int(t.num_nodes))
    steps = steps_for_budget(model, sampler, float(budget), tokens_per_step(t, model.block_size, world))
    return max(1, -(-steps // int(divisions)))


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("iso_flop_steps"):
        OmegaConf.register_new_resolver("iso_flop_steps", budget_steps)
