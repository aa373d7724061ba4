"""The attention context of a forward: RoPE tables and the attention mask, built once and shared by all layers.

A function of the config and the RoPE tables only, so anything that runs blocks (the recurrent LM,
a dense baseline in a benchmark, a retrofitted model) builds it without a model instance.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError
from recurrent_lm.model.attention import AttnContext
from recurrent_lm.model.cache import RecurrentKVCache
from recurrent_lm.model.config import ModelConfig


def real_positions(attention_mask: Tensor, new: Optional[int] = None) -> Tensor:
    """(B, S) mask (1 = real token, 0 = left padding) -> (B, S) RoPE positions counting real tokens only, or
    (B, new) those of the ``new`` last columns. Padding sits at position 0; a padded row then reaches exactly
    as far as it would alone. The one definition (attention, generation and Coconut's thoughts use it)."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, S)
    return positions if new is None else positions[:, attention_mask.shape[-1] - new:]


def attention_context(config: ModelConfig, rope_cos: Tensor, rope_sin: Tensor, batch: int, seq: int,
                      device: torch.device, *, attention_mask: Optional[Tensor] = None,
                      position_ids: Optional[Tensor] = None, document_ids: Optional[Tensor] = None,
                      cache: Optional[RecurrentKVCache] = None) -> AttnContext:
    """RoPE tables and the attention mask for `seq` new tokens after `cache.length` cached ones.

    rope_cos/rope_sin: (block_size, D/2) tables from :func:`recurrent_lm.model.rope.rope_tables`.
    attention_mask: (B, past + T) 1 = real token, 0 = padding (left padding for generation).
    document_ids:   (B, T) tokens attend only within their own document (packed sequences).
    config.attn_window > 0 adds a sliding window to the causal mask.
    """
    past = cache.length if cache is not None else 0
    total = past + seq
    # Left padding occupies cache columns but no positions: with a mask, count real tokens only,
    # so a padded batch reaches exactly as far as its rows would one by one.
    longest = total if attention_mask is None or position_ids is not None else \
        int(attention_mask.sum(-1).max())
    if longest > config.block_size:
        raise ConfigError(f"sequence of {longest} tokens exceeds the model context block_size="
                         f"{config.block_size}; shorten the prompt or truncate the input")
    if position_ids is None:
        if attention_mask is not None:
            position_ids = real_positions(attention_mask, seq)  # (B, T)
        else:
            position_ids = torch.arange(past, total, device=device).unsqueeze(0)  # (1, T)
    cos = rope_cos[position_ids].unsqueeze(1)  # (B|1, 1, T, D/2)
    sin = rope_sin[position_ids].unsqueeze(1)
    mask = None
    window = config.attn_window
    if attention_mask is not None or document_ids is not None or past > 0 or window:
        q_pos = torch.arange(past, total, device=device)
        behind = q_pos[:, None] - torch.arange(total, device=device)[None, :]  # (T, S) query − key column
        allowed = behind >= 0  # causal
        if window:  # columns are positions up to left padding, which the window may cover harmlessly
            allowed = allowed & (behind < window)
        allowed = allowed.expand(batch, seq, total)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
        if document_ids is not None:
            allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
        # A padded query would have no key at all (NaN softmax); let every query see itself.
        allowed = allowed | (q_pos[:, None] == torch.arange(total, device=device)[None, :])
        mask = allowed.unsqueeze(1)  # (B, 1, T, S)
    return AttnContext(cos=cos, sin=sin, mask=mask, cache=cache.view() if cache is not None else None)
