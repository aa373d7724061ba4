"""Ouro's stage I as an opt-in of pretraining (``trainer.exit_loss_beta``): the LM and its exit gate trained
together on the entropy-regularised expected loss over the iterations that carry gradients.

With λ_t = σ(gate(norm(s_t))) after gradient iteration t = 1..R and CE_t the next-token loss read out there:

    p_t = λ_t ∏_{j<t}(1 − λ_j)   (t < R),    p_R = ∏_{j<R}(1 − λ_j)      the exit distribution
    L   = Σ_t p_t·CE_t − β·H(p),            H(p) = −Σ_t p_t log p_t

averaged over the supervised tokens. The first term pulls each token's exit towards the iterations where its
loss is low (and, through p, trains the LM to be good where the gate stops); the entropy bonus keeps the gate
from collapsing on one iteration early in training. Stage II (:mod:`recurrent_lm.exitgate.objective`) then
refines the gate with the LM frozen, as in Ouro.

Why only the gradient iterations: the no-grad prefix of truncated backprop stores nothing for backward, so a
loss read there could train neither the LM nor the gate's view of those states.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recurrent_lm.exitgate.objective import depth_token_losses
from recurrent_lm.model.exit_gate import ExitGate
from recurrent_lm.model.lm import IGNORE_INDEX, RecurrentDepthLM, RecurrentLMOutput


def exit_distribution(gate_logits: Tensor) -> Tensor:
    """(R, *) gate logits -> (R, *) p_t: exit after iteration t with probability λ_t times the survival so far;
    the last iteration takes the rest, so each element's p sums to 1."""
    lam = torch.sigmoid(gate_logits.float())  # (R, *)
    survival = torch.cumprod(1 - lam, dim=0)  # ∏_{j ≤ t}(1 − λ_j)
    before = torch.cat((torch.ones_like(survival[:1]), survival[:-1]))  # ∏_{j < t}(1 − λ_j)
    return torch.cat((lam[:-1] * before[:-1], before[-1:]))


def stage1_loss(gate_logits: Tensor, ce: Tensor, valid: Tensor, beta: float) -> Tensor:
    """Σ_t p_t·CE_t − β·H(p), averaged over the ``valid`` (*) elements. gate_logits, ce: (R, *)."""
    p = exit_distribution(gate_logits)  # (R, *)
    expected = (p * ce.float()).sum(0)  # (*)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(0)  # (*)
    weight = valid.float()
    return ((expected - beta * entropy) * weight).sum() / weight.sum().clamp_min(1)


def add_gate(model: RecurrentDepthLM) -> None:
    """Give ``model`` an exit gate for stage I (an ``init_from`` model may bring a trained one: it is kept)."""
    if model.exit_gate is None:
        model.exit_gate = ExitGate(model.config.d_model)


def stage1_forward(model: RecurrentDepthLM, input_ids: Tensor, labels: Tensor, num_steps: tuple[int, int],
                   beta: float, **forward_args) -> tuple[Tensor, RecurrentLMOutput]:
    """One training forward with the stage-I objective: (loss, the model's output, whose ``loss`` is the
    ordinary next-token loss at the full depth). ``forward_args`` go to the model (position ids, s_0, stats)."""
    n_no_grad, n_grad = num_steps
    depths = range(n_no_grad + 1, n_no_grad + n_grad + 1)  # the iterations with gradients
    out = model(input_ids, num_steps=num_steps, labels=labels, readout_depths=depths, **forward_args)
    ce = depth_token_losses(out.depth_logits, labels, depths)  # (R, B, T)
    gate = model.exit_logit(torch.stack([out.depth_states[r] for r in depths]))  # (R, B, T)
    return stage1_loss(gate, ce, labels != IGNORE_INDEX, beta), out

