"""recurrent_lm: pretrain recurrent-depth language models that think longer by looping in latent space."""

from recurrent_lm.model import ModelConfig, RecurrentDepthLM, RecurrentKVCache

__all__ = ["ModelConfig", "RecurrentDepthLM", "RecurrentKVCache"]
__version__ = "0.1.0"
