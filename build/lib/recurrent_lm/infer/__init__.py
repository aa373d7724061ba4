"""Inference: batched generation with per-token adaptive exit, a KV cache across recurrence, and sampling."""

from recurrent_lm.infer.config import EXIT_CHOICES, GenerationConfig
from recurrent_lm.infer.generate import (FINISH_REASONS, GenerationResult, generate, generate_text,
                                         initial_state_table)
from recurrent_lm.infer.memory import cache_slots, kv_cache_bytes
from recurrent_lm.infer.sampling import filter_logits, select_tokens

__all__ = [
    "EXIT_CHOICES", "FINISH_REASONS", "GenerationConfig", "GenerationResult", "cache_slots", "filter_logits",
    "generate", "generate_text", "initial_state_table", "kv_cache_bytes", "select_tokens",
]
