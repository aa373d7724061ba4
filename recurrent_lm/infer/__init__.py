"""Inference: batched generation with per-token adaptive exit, a KV cache across recurrence, and sampling."""

from recurrent_lm.infer.config import GenerationConfig
from recurrent_lm.infer.generate import FINISH_REASONS, GenerationResult, generate, generate_text
from recurrent_lm.infer.sampling import filter_logits, select_tokens

__all__ = [
    "FINISH_REASONS", "GenerationConfig", "GenerationResult", "filter_logits", "generate", "generate_text",
    "select_tokens",
]
