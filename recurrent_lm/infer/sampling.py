"""Next-token selection: greedy, temperature, top-k and top-p (nucleus) sampling.

Each row draws from its own ``torch.Generator``, so a row's samples depend only on its seed and its
own logits: never on which other rows share the batch, or on when they finish.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> Tensor:
    """(B, V) logits -> (B, V) fp32 logits scaled by 1/temperature with filtered tokens set to -inf.

    top_k keeps the k largest logits (ties at the k-th value are kept too); top_p keeps the smallest
    prefix of tokens, by descending probability, whose mass reaches top_p (always at least one).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be > 0 to sample; use greedy selection for 0")
    out = logits.float() / temperature
    if top_k:
        k = min(int(top_k), out.shape[-1])
        kth = out.topk(k, dim=-1).values[..., -1:]  # (B, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V) probability of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the first token has mass_before = 0 and always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def select_tokens(logits: Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, generators: Optional[Sequence[torch.Generator]] = None) -> Tensor:
    """(B, V) logits -> (B,) next tokens: argmax when temperature == 0, else one sample per row."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)  # (B, V)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"select_tokens: {len(generators)} generators for {probs.shape[0]} rows")
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def row_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One seeded generator per row."""
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        gens.append(g)
    return gens
