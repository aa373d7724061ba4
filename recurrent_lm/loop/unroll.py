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
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from recurrent_lm.loop.compaction import Subset
from recurrent_lm.loop.criteria import ExitCriterion, Readout
from recurrent_lm.loop.telemetry import LoopStats, relative_change

StepFn = Callable[[Tensor, int, Optional[Union[Tensor, Subset]]], Tensor]
"""``step(state, i, active) -> new_state``.

``i`` is the 0-based iteration index (no-grad steps included); ``active`` is None when every element
runs every step (no exit criterion, no budget), else a bool mask over elements that have not exited
yet — the recurrent core uses it to keep exited tokens' KV-cache entries frozen along with their
state. Under ``compact``, once enough elements have exited, ``active`` is a :class:`Subset` and
``state`` is its gathered (B', M, H) sub-batch: the step computes only those elements (gathering its
other inputs with the subset) and returns their new state, which the loop scatters back.

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
    """Iterations each element received, shape = state.shape[:-1] (long); its max is the number of iterations
    run (fewer than asked once every element has exited)."""
    readouts: int
    """Calls of the readout (coda + head) made by output-based exit criteria: their extra cost."""
    stats: Optional[LoopStats]
    """Per-iteration telemetry when requested."""
    carry: Any = None
    """The carry after the last step (None when the loop ran without one)."""
    computed: int = 0
    """Element-steps the step function computed (its cost): every element each step when dense or masked,
    the active elements only when compacted."""


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
    budget: Optional[Tensor] = None,
    compact: float = 0.0,
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
    unroll. ``budget`` (long, element shape) caps each element's steps on its own (Coconut: thoughts per
    row); an element whose budget is spent is frozen like an exited one.

    ``compact`` (with a criterion or budget, on a (B, T, H) state with ``sequence_axis=1``) runs a step on
    the still-active elements only, gathered into a dense sub-batch (:class:`Subset`), whenever that
    sub-batch (padding included) is at most this fraction of the batch: exited elements stop costing
    compute, and the result equals the masked computation. 0 never compacts; 1 compacts as soon as
    one element has exited; in between, steps with nearly every element active run masked, where the
    gather and scatter would cost more than they save (see benchmarks/RESULTS.md).

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
    if not 0 <= compact <= 1:
        raise ValueError(f"unroll: compact={compact} is the largest sub-batch fraction to compact, in [0, 1]")
    if compact and (state.dim() != 3 or axis != 1):
        raise ValueError(f"unroll: compact={compact} gathers (B, T, H) states along sequence_axis=1; got a state of "
                         f"shape {tuple(state.shape)} with sequence_axis={sequence_axis}")
    element_shape = state.shape[:-1]
    if budget is not None and budget.shape != element_shape:
        raise ValueError(f"unroll: budget has shape {tuple(budget.shape)}, expected the element shape "
                         f"{tuple(element_shape)} (one step count per element)")
    total = n_no_grad + n_grad
    if budget is not None:
        total = min(total, int(budget.max()) if budget.numel() else 0)
    if criterion is not None:
        criterion.reset()
        criterion.bind(axis)
        total = min(total, criterion.max_steps) if criterion.max_steps is not None else total
    steps_used = torch.zeros(element_shape, dtype=torch.long, device=state.device)
    exited = torch.zeros(element_shape, dtype=torch.bool, device=state.device)
    if budget is not None:
        budget = budget.to(state.device)
        exited = budget <= 0
    per_element = criterion is not None or budget is not None
    stats = LoopStats() if record_stats else None
    readouts = 0
    computed = 0
    needs_delta = stats is not None or (criterion is not None and criterion.needs_delta)

    for i in range(total):
        active = ~exited if per_element else None
        # Compact when some element has exited and the padded sub-batch is small enough to pay; else mask.
        worth = compact and active is not None and Subset.padded_size_of(active) <= compact * active.numel()
        subset = Subset.of(active) if worth and not bool(active.all()) else None
        with_grad = i >= n_no_grad and torch.is_grad_enabled()
        args = (state, i, active) if subset is None else (subset.gather(state), i, subset)
        with torch.set_grad_enabled(with_grad):
            if with_grad and checkpoint:
                new = activation_checkpoint(step, *args, use_reentrant=False)
            elif carry is not None:
                new, carry = step(*args, carry)
            else:
                new = step(*args)
        if subset is not None:
            new = subset.scatter(state, new)  # exited elements keep their state (delta 0)
        elif active is not None:
            new = torch.where(active.unsqueeze(-1), new, state)  # exited elements stay frozen (delta 0)
        computed += subset.size if subset is not None else steps_used.numel()
        delta = relative_change(state, new) if needs_delta else None  # shape: element_shape
        if active is not None:
            steps_used += active.long()
            may_stop = criterion is not None and i + 1 >= criterion.min_steps
            if may_stop or (criterion is not None and criterion.every_step):
                done_now, used = criterion.converged(state, new, delta, readout, subset)
                readouts += used
                if may_stop:
                    exited = exited | (done_now & active)
            if budget is not None:
                exited = exited | (budget <= i + 1)
        else:
            steps_used += 1
        if stats is not None:
            stats.record(new, delta)
        state = new
        if observe is not None:
            observe(i + 1, state)
        if per_element:
            done = exited.all()
            if bool(exit_sync(done) if exit_sync is not None else done):
                break
    return LoopResult(state=state, steps_used=steps_used, readouts=readouts, stats=stats,
                      carry=carry, computed=computed)
