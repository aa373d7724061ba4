"""Rotary position embedding. Every iteration of the core sees the same positions."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor


def rope_tables(head_dim: int, max_positions: int, theta: float,
                scaling: Optional[Mapping[str, Any]] = None) -> tuple[Tensor, Tensor]:
    """cos, sin tables of shape (max_positions, head_dim // 2), fp32; ``scaling`` is ModelConfig.rope_scaling."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    if scaling is not None:
        inv_freq = scaled_inv_freq(inv_freq, scaling)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def scaled_inv_freq(inv_freq: Tensor, scaling: Mapping[str, Any]) -> Tensor:
    """Hugging Face's 'linear' and 'llama3' RoPE scaling of the frequencies (transformers'
    ``modeling_rope_utils``), in float64. A converted Llama must see its positions exactly as it was trained.

    linear: every frequency / factor. llama3: long wavelengths (> original context / low_freq_factor) / factor,
    short ones (< original context / high_freq_factor) kept, and a smooth interpolation in between.
    """
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]). x: (B, H, T, D); cos/sin: (B, 1, T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)
