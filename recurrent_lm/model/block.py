"""A transformer block in Huginn's "sandwich" norm layout, or pre-norm as an ablation.

Sandwich: ``x = n2(attn(n1(x)) + x); x = n4(mlp(n3(x)) + x)``. Every block output — hence every
recurrent state — is normalised, which is what lets a deep unrolled recurrence train stably.
"""

from __future__ import annotations

from torch import Tensor, nn

from recurrent_lm.model.attention import Attention, AttnContext
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.mlp import SwiGLU
from recurrent_lm.model.norm import RMSNorm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.sandwich = config.norm_style == "sandwich"
        h, eps = config.d_model, config.norm_eps
        self.attn = Attention(config, attn_backend)
        self.mlp = SwiGLU(h, config.ffn_hidden)
        self.norm_attn_in = RMSNorm(h, eps)
        self.norm_mlp_in = RMSNorm(h, eps)
        if self.sandwich:
            self.norm_attn_out = RMSNorm(h, eps)
            self.norm_mlp_out = RMSNorm(h, eps)

    def forward(self, x: Tensor, ctx: AttnContext, slot: tuple) -> Tensor:
        if self.sandwich:
            x = self.norm_attn_out(self.attn(self.norm_attn_in(x), ctx, slot) + x)
            return self.norm_mlp_out(self.mlp(self.norm_mlp_in(x)) + x)
        x = x + self.attn(self.norm_attn_in(x), ctx, slot)
        return x + self.mlp(self.norm_mlp_in(x))
