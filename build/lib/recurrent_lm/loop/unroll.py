"""The one loop: apply a step function to a state n times.

Every iterated computation in recurrent_lm goes through :func:`unroll` — the recurrent core over
*depth* (the state is the latent of every token) and Coconut over *sequence* positions (the state
is the hidden vector fed back as the next thought's input). Writing it once means truncated
backprop, activation checkpointing, per-element exit and telemetry are tested once and behave
identically for every user.

The loop is plain Python on purpose: its trip count is data dependent (sampled depth, early exit),
so it stays outside any compiled graph while the step function itself (the blocks) can be compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from recurrent_lm.loop.criteria import ExitCriterion, Readout
from recurrent_lm.loop.telemetry import LoopStats, relative_change

StepFn = Callable[[Tensor, int, Optional[Tensor]], Tensor]
"""``step(state, i, active) -> new_state``.

``i`` is the 0-based iteration index (no-grad steps included); ``active`` is None when no exit
criterion runs, else a bool mask over elements that have not exited yet — the recurrent core uses
it to keep exited tokens' KV-cache entries frozen along with their state.

With ``carry=`` the step is called as ``step(state, i, active, carry)`` and returns
``(new_state, new_carry)``: what a step needs besides the state (a KV cache it extends, the thoughts
so far) travels through the loop explicitly instead of hiding in a closure."""

ExitSync = Callable[[Tensor], Tensor]
"""Maps this process's "every element has exited" (0-dim bool tensor) to the decision all processes
share, e.g. :func:`recurrent_lm.loop.distributed.all_ranks_exited`; without it ranks running FSDP would
leave the loop at different iterations and deadlock in their next collective."""


@dataclass
class LoopResult:
    state: Tensor
    """Final state, same shape as the initial one; exited elements hold their frozen state."""
    steps_used: Tensor
    """Iterations each element received, shape = state.shape[:-1] (long)."""
    steps_run: int
    """Iterations actually executed (< n when every element exited early)."""
    readouts: int
    """Calls of the readout (coda + head) made by output-based exit criteria: their extra cost."""
    stats: Optional[LoopStats]
    """Per-iteration telemetry when requested."""
    carry: Any = None
    """The carry after the last step (None when the loop ran without one)."""


def unroll(
    step: StepFn,
    state: Tensor,
    n_no_grad: int,
    n_grad: int,
    *,
    checkpoint: bool = False,
    criterion: Optional[ExitCriterion] = None,
    readout: Optional[Readout] = None,
    record_stats: bool = False,
    observe: Optional[Callable[[int, Tensor], None]] = None,
    carry: Any = None,
    sequence_axis: Optional[int] = None,
    exit_sync: Optional[ExitSync] = None,
) -> LoopResult:
    """Run ``n_no_grad`` steps without autograd, then ``n_grad`` steps with it.

    Truncated backprop falls out of the split: the no-grad prefix saves nothing for backward, so
    activation memory depends on ``n_grad`` only, and no gradient reaches the initial state when
    ``n_no_grad > 0``. ``checkpoint`` recomputes each gradient step in backward instead of storing
    its activations.

    With a ``criterion``, each element (every index of ``state.shape[:-1]``, i.e. every token for
    the recurrent core) is checked after each step; elements that exit keep their state frozen and
    stop counting steps, and the loop stops once all have exited. ``readout`` maps a state to
    logits for output-based criteria (KL, entropy, argmax); its calls are counted. ``observe(n, state)``
    is called after each step with the number of steps done, e.g. to read out several depths from one
    unroll.

    ``sequence_axis`` is the axis of ``state`` that runs along a sequence (1 for the core's (B, T, H)
    state), for criteria whose scope is causal or a whole sequence; a state without one (Coconut's
    (B, H) thought) passes None, and such criteria are then refused rather than applied across the
    batch. ``carry`` is threaded through the steps (see :data:`StepFn`); a step with a carry mutates
    it (a cache grows), so recomputing it in backward would apply that twice, and ``checkpoint`` is
    refused with one. ``exit_sync`` makes the all-exited decision collective (:data:`ExitSync`).
    """
    if n_no_grad < 0 or n_grad < 0:
        raise ValueError(f"unroll: step counts must be >= 0, got n_no_grad={n_no_grad}, n_grad={n_grad}")
    if checkpoint and carry is not None:
        raise ValueError("unroll: checkpoint=True recomputes each step in backward, which would update the "
                         "carry (e.g. extend a KV cache) a second time; pass checkpoint=False for steps with a "
                         "carry, or move what they mutate out of it")
    axis = None if sequence_axis is None else sequence_axis % state.dim()  # as an index into state.shape
    if sequence_axis is not None and not (-state.dim() <= sequence_axis < state.dim() and axis < state.dim() - 1):
        raise ValueError(f"unroll: sequence_axis={sequence_axis} is not an element axis of a state of shape "
                         f"{tuple(state.shape)} (the last axis holds the features)")
    total = n_no_grad + n_grad
    if criterion is not None:
        criterion.reset()
        criterion.bind(axis)
        total = min(total, criterion.max_steps) if criterion.max_steps is not None else total
    element_shape = state.shape[:-1]
    steps_used = torch.zeros(element_shape, dtype=torch.long, device=state.device)
    exited = torch.zeros(element_shape, dtype=torch.bool, device=state.device)
    stats = LoopStats() if record_stats else None
    readouts = 0
    steps_run = 0

    for i in range(total):
        active = None if criterion is None else ~exited
        with_grad = i >= n_no_grad and torch.is_grad_enabled()
        with torch.set_grad_enabled(with_grad):
            if with_grad and checkpoint:
                new = activation_checkpoint(step, state, i, active, use_reentrant=False)
            elif carry is not None:
                new, carry = step(state, i, active, carry)
            else:
                new = step(state, i, active)
        steps_run += 1
        if active is not None:
            new = torch.where(active.unsqueeze(-1), new, state)  # exited elements stay frozen (delta 0)
        needs_delta = stats is not None or criterion is not None
        delta = relative_change(state, new) if needs_delta else None  # shape: element_shape
        if active is not None:
            steps_used += active.long()
            if i + 1 >= criterion.min_steps:
                done_now, used = criterion.converged(state, new, delta, readout)
                readouts += used
                exited = exited | (done_now & active)
        else:
            steps_used += 1
        if stats is not None:
            stats.record(new, delta)
        state = new
        if observe is not None:
            observe(i + 1, state)
        if criterion is not None:
            done = exited.all()
            if bool(exit_sync(done) if exit_sync is not None else done):
                break
    return LoopResult(state=state, steps_used=steps_used, steps_run=steps_run, readouts=readouts, stats=stats,
                      carry=carry)
