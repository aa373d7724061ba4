"""Saved-activation bytes of a training forward, measured with autograd's saved-tensor hooks."""

from __future__ import annotations

import torch


def saved_bytes(model, x, num_steps: tuple[int, int]) -> int:
    """Bytes autograd saves for backward in one training forward (parameters and duplicates excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, num_steps=num_steps, labels=x)
    del out
    return total
