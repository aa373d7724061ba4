"""Continuous thoughts: the last hidden state fed back as the next input embedding, on the shared loop.

A batch is laid out as ``question <bot> | n thoughts | <eot> steps ### answer``::

    prefix  (B, P)  left-padded  question <bot> (pause baseline: question <bot> <latent>×n)
    thoughts (B,)   continuous thoughts of each row (0 for CoT, no-CoT and pause)
    suffix  (B, S)  right-padded <eot> remaining steps ### answer <eos>

The thought loop is :func:`recurrent_lm.loop.unroll` over sequence positions: the state is the last
hidden vector (B, H); each step is one backend forward on one new position, which extends the KV cache
(carried through the loop with the attention mask). Every position is computed exactly once: the prefix
in one forward, each thought in one, the suffix in one. That is the paper's n + 1 passes without
recomputing the prefix, and gradients flow back through the cached keys and values of every thought.

Rows think for different numbers of steps in one batch: the thought columns are shared, and a row that has
stopped (its count is reached, or its thought converged under an exit criterion) gets a masked column,
so its suffix sees exactly what it would see alone. The counts are the loop's per-element ``budget`` and
its ``active`` mask says who still thinks: the same freezing the recurrent core uses for per-token exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from recurrent_lm.coconut.backends import FIXED, CausalBackend, Depth
from recurrent_lm.loop import ExitSpec, unroll
from recurrent_lm.model.lm import next_token_loss


@dataclass
class Thoughts:
    last_hidden: Tensor
    """(B, H) the last thought (or the prefix's last hidden state when no thought ran)."""
    attention_mask: Tensor
    """(B, P + N) the prefix mask extended by the N thought columns that ran (1 where a row thought)."""
    used: Tensor
    """(B,) thoughts each row took."""
    core_steps: Optional[Tensor]
    """(B,) core iterations spent on the thoughts (recurrent backends; None when no thought ran or the
    backend has no recurrent core)."""


@dataclass
class CoconutOutput:
    loss: Optional[Tensor]
    """Mean cross-entropy over the supervised suffix tokens (None without labels)."""
    logits: Tensor
    """(B, S, V) logits of the suffix positions."""
    thoughts: Thoughts


class ContinuousThoughtLM:
    """A causal LM (ours or Hugging Face, through a :class:`CausalBackend`) that thinks in continuous thoughts.

    A view over the model, not a module of its own: it adds no parameters, so the model's state_dict, its
    export and a Lightning checkpoint's keys are the same as without Coconut.
    """

    def __init__(self, backend: CausalBackend) -> None:
        self.backend = backend

    def think(self, last_hidden: Tensor, attention_mask: Tensor, cache: Any, counts: Tensor, *,
              no_grad_thoughts: int = 0, exit: Optional[ExitSpec] = None, depth: Depth = FIXED,
              generator: Optional[torch.Generator] = None) -> Thoughts:
        """Up to ``counts`` (B,) thoughts per row after the cached prefix, each fed the previous hidden state.

        The first ``no_grad_thoughts`` run without autograd (the loop's truncated prefix). ``exit`` stops a
        row's thinking once its successive thoughts converge (relative change of the thought vector below
        the threshold); ``counts`` stays the bound.
        """
        bound = int(counts.max()) if counts.numel() else 0
        criterion = exit.build() if exit is not None else None

        def step(state: Tensor, i: int, active: Tensor, carry: tuple) -> tuple[Tensor, tuple]:
            cache, mask, core_steps = carry  # active (B,): rows still thinking (count not reached, not exited)
            mask = torch.cat((mask, active[:, None].to(mask.dtype)), dim=1)  # (B, S + 1)
            out = self.backend.forward(state[:, None, :], mask, cache, depth, generator)  # hidden (B, 1, H)
            if out.steps_used is not None:
                spent = out.steps_used[:, 0] * active  # (B,)
                core_steps = spent if core_steps is None else core_steps + spent
            return out.hidden[:, 0], (cache, mask, core_steps)  # the loop freezes rows that stopped

        frozen = min(no_grad_thoughts, bound)
        loop = unroll(step, last_hidden, frozen, bound - frozen, criterion=criterion, sequence_axis=None,
                      budget=counts, carry=(cache, attention_mask, None))
        _, mask, core = loop.carry
        return Thoughts(loop.state, mask, loop.steps_used, core)  # steps_used (B,): the thoughts each row took

    def __call__(self, batch: dict[str, Tensor], *, depth: Depth = FIXED, no_grad_thoughts: int = 0,
                thought_exit: Optional[ExitSpec] = None, generator: Optional[torch.Generator] = None) -> CoconutOutput:
        """Prefix, thoughts, suffix: three kinds of forward sharing one cache. Loss on ``batch['labels']``
        (aligned with the suffix logits, IGNORE_INDEX where nothing is supervised) when present."""
        cache = self.backend.new_cache()
        prefix = self.backend.forward(self.backend.embed(batch["prefix_ids"]), batch["prefix_mask"], cache, depth,
                                      generator)  # hidden (B, P, H); the last column is <bot> (or a pause token)
        thoughts = self.think(prefix.hidden[:, -1], batch["prefix_mask"], cache, batch["thoughts"],
                              no_grad_thoughts=no_grad_thoughts, exit=thought_exit, depth=depth, generator=generator)
        mask = torch.cat((thoughts.attention_mask, batch["suffix_mask"]), dim=1)  # (B, P + N + S)
        suffix = self.backend.forward(self.backend.embed(batch["suffix_ids"]), mask, cache, depth, generator)
        logits = self.backend.logits(suffix.hidden)  # (B, S, V)
        loss = None
        if "labels" in batch:
            loss = next_token_loss(logits, batch["labels"])
        return CoconutOutput(loss, logits, thoughts)
