"""Ouro's stage-II objective for the exit gate, and the exit rule it is trained for, as pure functions.

With the LM frozen and CE_t the per-token cross-entropy after t core iterations:

    I_t = max(0, CE_{t−1} − CE_t)          what iteration t bought
    w_t = σ(k · (I_t − γ))                 target probability of continuing (k = 50, γ = 0.005)
    L   = BCE(1 − λ_t, w_t)                λ_t = σ(gate(norm(s_t))), averaged over t ≥ 2 and supervised tokens

so the gate learns to keep going where the last iteration still paid and to stop where it did not.

That target is myopic: a token waiting for a solution that propagates along the sequence (a reasoning
model's "wave") gains nothing for several iterations and then a lot, and is taught to stop while it waits.
``lookahead=True`` (not Ouro's) asks instead whether *any later* iteration still pays,
I_t = max(0, CE_t − min_{j > t} CE_j), and pairs it with λ_t for t = 1..R−1: the decision taken after t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recurrent_lm.model.lm import next_token_loss


def stage2_targets(ce: Tensor, sharpness: float = 50.0, margin: float = 0.005, lookahead: bool = False) -> Tensor:
    """(R, *) per-iteration losses -> (R − 1, *) targets w_t: for t = 2..R (CE_0 does not exist), or with
    ``lookahead`` for t = 1..R−1 (nothing comes after R)."""
    if lookahead:
        later_best = torch.cummin(ce[1:].flip(0), dim=0).values.flip(0)  # min_{j > t} CE_j, t = 1..R−1
        improvement = (ce[:-1] - later_best).clamp_min(0)
    else:
        improvement = (ce[:-1] - ce[1:]).clamp_min(0)  # I_t, t = 2..R
    return torch.sigmoid(sharpness * (improvement - margin))


def stage2_loss(gate_logits: Tensor, ce: Tensor, valid: Tensor, sharpness: float = 50.0,
                margin: float = 0.005, lookahead: bool = False) -> Tensor:
    """Mean BCE(1 − λ_t, w_t) over the targets' iterations and the ``valid`` (*) elements.

    gate_logits (R, *): logit of λ_t (1 − λ_t = σ(−logit)); ce (R, *) detached losses.
    """
    target = stage2_targets(ce.detach().float(), sharpness, margin, lookahead)  # (R − 1, *)
    paired = gate_logits[:-1] if lookahead else gate_logits[1:]
    bce = F.binary_cross_entropy_with_logits(-paired.float(), target, reduction="none")
    weight = valid.expand_as(bce).float()
    return (bce * weight).sum() / weight.sum().clamp_min(1)


def exit_depth(gate_logits: Tensor, threshold: float) -> Tensor:
    """(R, *) gate logits -> (*) the iteration (1-based) each element exits at: the first t with
    1 − ∏_{j ≤ t}(1 − λ_j) ≥ threshold, else R (the last iteration takes the rest). The rule
    :class:`recurrent_lm.loop.criteria.LearnedExit` applies inside the loop."""
    survival = torch.cumprod(torch.sigmoid(-gate_logits.float()), dim=0)  # (R, *)
    reached = (1 - survival) >= threshold
    last = torch.full_like(reached[0], reached.shape[0] - 1, dtype=torch.long)
    first = torch.where(reached.any(0), reached.long().argmax(0), last)
    return first + 1


def depth_token_losses(depth_logits: dict[int, Tensor], labels: Tensor, depths: range) -> Tensor:
    """(R, B, T) next-token loss of every token at each depth of ``depths`` (0 where ``labels`` skip it), from
    the logits a forward read out there (``readout_depths``): CE_t of both stages' objectives."""
    return torch.stack([next_token_loss(depth_logits[r], labels, reduction="none") for r in depths])
