"""KV-cache memory of each strategy, predicted from the model shape (measured: ``RecurrentKVCache.nbytes``).

Per cached token the cache holds K and V (kv_heads × head_dim each) for every prelude and coda layer,
plus, for each core layer, one entry per *slot*:

* full:       one slot per iteration that ran (r at fixed depth; the deepest iteration reached with exit)
* compressed: min(kv_window, r) slots (iteration i lives in slot i mod kv_window)
* latest:     one slot (each position's most recent K/V)
"""

from __future__ import annotations

from typing import Optional

import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.model.cache import CACHE_STRATEGIES
from recurrent_lm.model.config import ModelConfig


def cache_slots(strategy: str, num_steps: int, kv_window: Optional[int] = None) -> int:
    """Core slots per layer after decoding at depth ``num_steps`` (an upper bound under exit)."""
    if strategy not in CACHE_STRATEGIES:
        raise ConfigError(f"unknown kv_cache strategy {strategy!r}; choose one of {CACHE_STRATEGIES}")
    if strategy == "full":
        return num_steps
    if strategy == "latest":
        return 1
    if kv_window is None or kv_window < 1:
        raise ConfigError(f"kv_window={kv_window!r}: kv_cache='compressed' needs kv_window >= 1")
    return min(kv_window, num_steps)


def kv_cache_bytes(config: ModelConfig, tokens: int, num_steps: int, strategy: str = "full",
                   kv_window: Optional[int] = None, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a cache of ``batch`` × ``tokens`` positions takes (K and V, all layers)."""
    per_entry = 2 * config.kv_heads * config.head_dim * torch.empty((), dtype=dtype).element_size()
    layers = config.n_prelude + config.n_coda + cache_slots(strategy, num_steps, kv_window) * config.n_core
    return batch * tokens * layers * per_entry
