"""Model code: blocks, the recurrent-depth LM, KV caches, accounting and the model directory format."""

from recurrent_lm.model.accounting import (ParamCounts, count_params, forward_flops_per_token,
                                           train_flops_per_token)
from recurrent_lm.model.cache import CACHE_STRATEGIES, RecurrentKVCache
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.lm import RecurrentDepthLM, RecurrentLMOutput

__all__ = ["CACHE_STRATEGIES", "ModelConfig", "ParamCounts", "RecurrentDepthLM", "RecurrentKVCache",
           "RecurrentLMOutput", "count_params", "forward_flops_per_token", "train_flops_per_token"]
