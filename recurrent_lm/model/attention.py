"""Multi-head attention with GQA, optional q/k bias, RoPE, and three backends behind one setting.

The backend is a runtime choice, not architecture: every backend computes the same function of the same
weights, so it is an argument of the model's constructor (``trainer.attn_backend`` in training), never a key
of config.json.

* ``sdpa``: torch's scaled_dot_product_attention on any device (it picks flash/mem-efficient/math).
* ``flash``: the flash-attn package on CUDA in fp16/bf16, imported lazily; causal masks only.
* ``eager``: the textbook softmax(QKᵀ/√d + mask)V, the reference the others are tested against.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.rope import apply_rope

ATTN_BACKENDS = ("sdpa", "flash", "eager")

if TYPE_CHECKING:
    from recurrent_lm.loop.compaction import Subset
    from recurrent_lm.model.cache import CacheView


@dataclass
class AttnContext:
    """Everything attention needs besides x, built once per forward and shared by all layers.

    ``mask`` is None for plain causal attention over exactly the new tokens (the fast path);
    otherwise a bool (B, 1, T, S) tensor, True = may attend.
    """

    cos: Tensor  # (B|1, 1, T, D/2)
    sin: Tensor  # (B|1, 1, T, D/2)
    mask: Optional[Tensor]
    cache: Optional["CacheView"] = None

    def select(self, subset: "Subset") -> "AttnContext":
        """The context of a compacted step over ``subset``'s (B', M) queries: their RoPE angles and mask rows
        (an explicit mask, since the queries are no longer a causal block), and the cache serving every
        key of their rows — the only place the other tokens' K/V can come from."""
        if self.cache is None:
            raise ValueError("a compacted step needs a KV cache for the keys of the tokens it skips; "
                             "run it with past_key_values (the model adds a throwaway one under exit)")
        cos = subset.gather(self.cos.squeeze(1)).unsqueeze(1)  # (B', 1, M, D/2)
        sin = subset.gather(self.sin.squeeze(1)).unsqueeze(1)
        if self.mask is None:  # plain causal over the T new tokens, no past: key column <= query position
            keys = torch.arange(subset.mask.shape[1], device=subset.index.device)
            mask = keys[None, None, :] <= subset.index[:, :, None]  # (B', M, T)
        else:
            mask = subset.gather(self.mask.squeeze(1))  # (B', M, S)
        return AttnContext(cos=cos, sin=sin, mask=mask.unsqueeze(1),
                           cache=self.cache.cache.view(active=subset, read_only=self.cache.read_only))


def backend_problem(name: str) -> str | None:
    """Why backend ``name`` is not a valid choice at all (None if it is); checked when a config is composed."""
    return None if name in ATTN_BACKENDS else f"attn_backend={name!r} is unknown; choose one of {ATTN_BACKENDS}"


def check_backend(name: str, config: ModelConfig) -> None:
    """Fail at construction, not mid-run, when a backend cannot be used here or with this model."""
    problem = backend_problem(name)
    if problem:
        raise ConfigError(problem)
    if name != "flash":
        return
    if config.attn_window:
        raise ConfigError(f"attn_backend='flash' cannot run ModelConfig.attn_window={config.attn_window} (the flash "
                         "path is plain causal only); use attn_backend='sdpa' or 'eager'")
    if importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("attn_backend='flash' needs the flash-attn package: "
                         "`pip install recurrent_lm[gpu]` on a CUDA machine, or use attn_backend='sdpa'")
    if not torch.cuda.is_available():
        raise ConfigError("attn_backend='flash' runs on CUDA only and no GPU is visible; "
                         "use attn_backend='sdpa' on this machine")


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, backend: str = "sdpa") -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.backend = backend
        self.qkv = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.out = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(self.n_heads, 1, self.head_dim)) if config.qk_bias else None
        self.k_bias = nn.Parameter(torch.zeros(self.n_kv, 1, self.head_dim)) if config.qk_bias else None

    def forward(self, x: Tensor, ctx: AttnContext, slot: tuple) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = k.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.q_bias is not None:
            q, k = q + self.q_bias, k + self.k_bias
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        if ctx.cache is not None:
            k, v = ctx.cache.update(slot, k, v)  # (B, Hkv, S, D) with S = past + T
        y = self._attend(q, k, v, ctx.mask)  # (B, Hq, T, D)
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        causal = mask is None
        if self.backend == "flash":
            return _flash(q, k, v, mask)
        if self.backend == "eager":
            return _eager(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=self.n_kv != self.n_heads)


def _eager(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, Hq, S, D)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, Hq, T, S)
    if mask is None:
        t, s = q.shape[-2], k.shape[-2]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def _flash(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is not None:
        raise ConfigError("attn_backend='flash' supports plain causal attention only; padding or document "
                         "masks need attn_backend='sdpa'")
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"attn_backend='flash' needs CUDA fp16/bf16 tensors, got {q.device} {q.dtype}; "
                         "train with precision=bf16-mixed on a GPU or use attn_backend='sdpa'")
    from flash_attn import flash_attn_func  # lazy: optional GPU extra

    # flash-attn wants (B, T, H, D) and aligns the causal mask bottom-right, as a KV cache needs.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)
