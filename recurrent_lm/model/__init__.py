"""Model code: blocks, the recurrent-depth LM, KV caches, accounting and the model directory format."""

from recurrent_lm.model.accounting import (ParamCounts, count_params, forward_flops_per_token,
                                           train_flops_per_token)
from recurrent_lm.model.cache import CACHE_STRATEGIES, RecurrentKVCache
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.lm import RecurrentDepthLM, RecurrentLMOutput
from recurrent_lm.model.memory import cache_slots, kv_cache_bytes

__all__ = ["CACHE_STRATEGIES", "ModelConfig", "ParamCounts", "RecurrentDepthLM", "RecurrentKVCache",
           "RecurrentLMOutput", "cache_slots", "count_params", "forward_flops_per_token", "kv_cache_bytes",
           "train_flops_per_token"]
