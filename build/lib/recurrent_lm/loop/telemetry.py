"""Per-iteration statistics of a loop: the signals that show convergence or collapse."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def relative_change(prev: Tensor, new: Tensor, eps: float = 1e-8) -> Tensor:
    """‖new − prev‖ / ‖new‖ over the last dim, in fp32; shape = new.shape[:-1]."""
    new32 = new.detach().float()
    diff = (new32 - prev.detach().float()).norm(dim=-1)
    return diff / new32.norm(dim=-1).clamp_min(eps)


def token_correlation(state: Tensor) -> Tensor:
    """Mean off-diagonal cosine similarity between token states, a collapse signal.

    state: (B, T, H). A healthy model keeps tokens distinguishable (low values); a collapsed
    recurrence maps every token to the same fixed point (values near 1).
    """
    s = torch.nn.functional.normalize(state.detach().float(), dim=-1)  # (B, T, H)
    sim = s @ s.transpose(1, 2)  # (B, T, T)
    t = state.shape[1]
    if t < 2:
        return sim.new_zeros(())
    off_diag = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)  # (B,)
    return (off_diag / (t * (t - 1))).mean()


@dataclass
class LoopStats:
    """Mean state norm and mean relative change, one entry per executed iteration.

    Kept as device tensors and stacked lazily so that recording never forces a host sync
    inside the loop.
    """

    norms: list[Tensor] = field(default_factory=list)
    rel_changes: list[Tensor] = field(default_factory=list)

    def record(self, state: Tensor, delta: Tensor | None) -> None:
        self.norms.append(state.detach().float().norm(dim=-1).mean())
        if delta is not None:
            self.rel_changes.append(delta.mean())

    def as_tensors(self) -> tuple[Tensor, Tensor]:
        """(state_norm[n], rel_change[n])."""
        return torch.stack(self.norms), torch.stack(self.rel_changes)
