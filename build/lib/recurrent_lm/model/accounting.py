"""Parameter and FLOP accounting for a recurrent-depth model.

FLOPs follow the matmul convention of FlopCounterMode (2 per multiply-add; attention counts the
full T×S score matrix, as the SDPA kernels' FLOP formula does) so that MFU figures are comparable
with torch's own counter.

These are *model* FLOPs: backward = 2× forward, no activation-checkpoint recomputation, causal
masking not discounted. Where torch's FlopCounterMode differs (checked on torch 2.13):
* CPU: the fused SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP formula,
  so the counter reports 0 for attention; with ``attn_backend='eager'`` (plain matmuls) it agrees
  with these formulas exactly (tests/test_accounting.py).
* CUDA fused SDPA backward is counted as 2.5× its forward (it includes recomputing QKᵀ); here 2×.
* With activation checkpointing the counter also sees the recomputed forward of the k iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from recurrent_lm.model.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    prelude: int
    core: int
    adapter: int
    coda: int
    head: int
    """Untied LM head (0 when tied) plus the final norm."""

    @property
    def total(self) -> int:
        return self.embedding + self.prelude + self.core + self.adapter + self.coda + self.head

    def unrolled(self, r: int) -> int:
        """Parameters a depth-r forward touches, counting each core application separately."""
        return self.embedding + self.prelude + r * (self.core + self.adapter) + self.coda + self.head


def count_params(model: nn.Module) -> ParamCounts:
    def n(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    emb = n(model.embed)
    head = n(model.norm) + (0 if model.config.tie_embeddings else n(model.lm_head))
    return ParamCounts(embedding=emb, prelude=n(model.prelude), core=n(model.core), adapter=n(model.adapter),
                       coda=n(model.coda), head=head)


def _block_flops(cfg: ModelConfig, context: int) -> int:
    """Forward FLOPs per token of one block at attention context length `context`."""
    h, d = cfg.d_model, cfg.head_dim
    qkv = h * (cfg.n_heads + 2 * cfg.kv_heads) * d
    out = cfg.n_heads * d * h
    mlp = 3 * h * cfg.ffn_hidden
    attention = 2 * cfg.n_heads * d * context  # QKᵀ and AV
    return 2 * (qkv + out + mlp + attention)


def forward_flops_per_token(cfg: ModelConfig, r: int, context: int | None = None) -> int:
    """FLOPs per token of a forward at depth r over sequences of `context` tokens."""
    t = cfg.block_size if context is None else context
    block = _block_flops(cfg, t)
    adapter = 2 * 2 * cfg.d_model * cfg.d_model if cfg.injection == "linear" else 0
    head = 2 * cfg.d_model * cfg.vocab_size
    return (cfg.n_prelude + cfg.n_coda) * block + r * (cfg.n_core * block + adapter) + head


def train_flops_per_token(cfg: ModelConfig, r: int, k: int, context: int | None = None) -> int:
    """Forward at depth r plus backward (2× forward) through the k gradient-carrying iterations.

    Gradient still reaches prelude and embedding through the injection of e in those k steps.
    Activation-checkpoint recomputation is not counted (model FLOPs, not hardware FLOPs).
    """
    k = min(k, r)
    return forward_flops_per_token(cfg, r, context) + 2 * forward_flops_per_token(cfg, k, context)
