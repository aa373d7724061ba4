"""The sensible ceiling of a test-time depth request, and what the KV cache would cost at that depth.

A depth (``num_steps``, or the per-token cap ``max_steps``) far beyond what the model trained at gains nothing
and costs a lot: every token runs that many core iterations, and the ``full`` cache keeps K/V for every one of
them (``--num-steps 100000`` on the tiny model projected ~780 MiB and minutes of compute). So a cap above
``MAX_DEPTH_FACTOR`` × the model's ``mean_recurrence`` is refused, and so is one whose projected cache exceeds the
memory there is; the message says what the cache would take and how to lower it.
"""

from __future__ import annotations

from typing import Optional

import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.memory import kv_cache_bytes

MAX_DEPTH_FACTOR = 64
"""Largest accepted depth cap as a multiple of mean_recurrence (Huginn-0125, r̄ = 32, saturates well below 64×)."""


def available_memory() -> Optional[int]:
    """Physical memory available now (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_depth(setting: str, depth: int, config: ModelConfig, tokens: int, batch: int, strategy: str,
                kv_window: int, dtype: torch.dtype, memory: Optional[int] = None) -> None:
    """Refuse a depth cap beyond ``MAX_DEPTH_FACTOR`` × mean_recurrence, or whose projected cache exceeds
    ``memory`` (default: the available memory), naming the setting, the cost (:func:`kv_cache_bytes`) and the fix."""
    bound = MAX_DEPTH_FACTOR * config.mean_recurrence
    cost = kv_cache_bytes(config, tokens, depth, strategy, kv_window, batch, dtype)
    memory = available_memory() if memory is None else memory
    projection = (f"the {strategy} KV cache would take {cost / 2**20:,.0f} MiB for {batch}×{tokens} tokens, and "
                  f"every token would run {depth:,} core iterations")
    if depth > bound:
        raise ConfigError(f"{setting}={depth:,} is beyond {MAX_DEPTH_FACTOR}× the model's mean_recurrence="
                         f"{config.mean_recurrence} ({bound}): {projection}. Use {setting} <= {bound} (an exit "
                         "criterion stops tokens earlier)")
    if memory is not None and cost > memory:
        raise ConfigError(f"{setting}={depth:,}: {projection}, more than the {memory / 2**20:,.0f} MiB of memory "
                         f"available. Lower {setting}, or use kv-cache compressed or latest (a bounded cache)")
