"""Per-element exit criteria for :func:`recurrent_lm.loop.unroll`.

A criterion looks at the state before and after a step and says, per element, "this one has
thought enough". The latent criterion is nearly free (one norm); the output-based ones (KL,
entropy, argmax) must decode the state to logits at every check, which is why they take a
``readout`` and report how often they called it.

A criterion is built from settings already checked: :meth:`recurrent_lm.loop.ExitSpec.build` is the way in
(the spec checks every value once, asking a criterion about its own scale through
:meth:`ExitCriterion.threshold_problem`), so this module depends on nothing of the spec's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.compaction import Subset

Readout = Callable[..., Tensor]
"""``readout(state)`` maps a state (*elements, H) to next-token logits (*elements, V); under compaction
``readout(part, subset)`` decodes a gathered (B', M, H) sub-batch of the elements in ``subset``
(:class:`recurrent_lm.loop.compaction.Subset`) to (B', M, V)."""


class ExitCriterion(ABC):
    """Decides per element whether the loop may stop; holds memory across one unroll."""

    name: str = ""
    needs_readout: bool = False
    needs_delta: bool = True
    """Whether :meth:`converged` reads the relative latent change (else the loop passes None and saves
    computing it every step: the learned and output-based criteria look at other things)."""
    every_step: bool = False
    """Whether the loop calls :meth:`converged` from the first step, and applies ``min_steps`` to its answer
    only: for a criterion whose memory must see every step (the learned exit's survival product). The others
    are first called at ``min_steps`` (an output-based one then decodes nothing before)."""

    def __init__(self, threshold: float, min_steps: int = 1, max_steps: Optional[int] = None) -> None:
        """Settings as :class:`~recurrent_lm.loop.ExitSpec` checked them (build criteria with ``spec.build()``)."""
        self.threshold, self.min_steps, self.max_steps = threshold, min_steps, max_steps
        self.sequence_axis: Optional[int] = None
        self.reset()

    @classmethod
    def threshold_problem(cls, threshold: float) -> Optional[tuple[str, str]]:
        """(what is wrong, the fix) when a threshold >= 0 means nothing for this criterion, else None: the
        criterion knows its own scale, the spec does the checking."""
        return None

    def reset(self) -> None:
        """Forget memory from a previous unroll."""

    def bind(self, sequence_axis: Optional[int]) -> None:
        """Learn which axis of the loop's state runs along a sequence (None: it has none). Per-element
        criteria need no axis; see :class:`Convergence` for the ones that do."""
        self.sequence_axis = sequence_axis

    def attach(self, model: Any) -> None:
        """Take what the criterion needs from the model it will run in (see :class:`LearnedExit`)."""

    @abstractmethod
    def converged(self, prev: Tensor, new: Tensor, delta: Optional[Tensor], readout: Optional[Readout],
                  subset: Optional[Subset] = None) -> tuple[Tensor, int]:
        """Return (bool mask over elements, number of readout calls made). ``subset``: the elements this step
        computed under compaction (None: all); a decision about the others is ignored by the loop, so
        criteria that pay per element (a readout) decode the subset only."""

    def _readout(self, readout: Optional[Readout], state: Tensor, subset: Optional[Subset] = None) -> Tensor:
        if readout is None:
            raise ConfigError(f"exit criterion '{self.name}' decodes the state to logits at each check, "
                             "but the loop was given no readout; pass readout= to unroll")
        return (readout(state) if subset is None else readout(subset.gather(state), subset)).float()


class Convergence(ExitCriterion):
    """Exit when the relative latent change ‖s_t − s_{t−1}‖ / ‖s_t‖ < threshold: a fixed point of the
    latent recurrence.

    ``scope`` says whose change counts, along the last element axis (the tokens of a sequence):

    * ``token``: each token on its own (Huginn's rule). Cheap and exact for cached decoding, but a
      token whose inputs are still being computed by earlier positions can look still while it waits,
      and stops too early when a solution propagates along the sequence (a "wave").
    * ``causal``: a token stops once it *and every earlier token* are still. In a causal model a token
      depends only on its prefix, so nothing can reach it any more; tokens exit in prefix order and a
      wave gives later tokens more iterations. For one-token decode it equals ``token``.
    * ``sequence``: a whole sequence stops together once all its tokens are still.

    ``watch`` (bool, element shape) marks the elements that must be still (e.g. answer tokens, or
    not padding); the others never hold anyone back. Unused with ``token`` scope.
    """

    name = "convergence"
    scope = "token"

    def __init__(self, threshold: float, min_steps: int = 1, max_steps: Optional[int] = None,
                 watch: Optional[Tensor] = None) -> None:
        super().__init__(threshold, min_steps=min_steps, max_steps=max_steps)
        self.watch = watch

    def bind(self, sequence_axis: Optional[int]) -> None:
        if self.scope != "token" and sequence_axis is None:
            raise ConfigError(f"exit criterion '{self.name}' acts along a sequence, but this loop's state has no "
                             "sequence axis (unroll(sequence_axis=None), e.g. one thought vector per example); "
                             "use 'convergence', which decides per element")
        super().bind(sequence_axis)

    def converged(self, prev, new, delta, readout, subset=None):
        still = delta < self.threshold  # (*elements)
        if self.scope == "token":
            return still, 0
        if self.watch is not None:
            still = still | ~self.watch
        axis = self.sequence_axis  # an element axis: delta has the state's shape without the features
        if self.scope == "causal":
            return torch.cummin(still.to(torch.uint8), dim=axis).values.bool(), 0
        return still.all(axis, keepdim=True).expand_as(still), 0


class CausalConvergence(Convergence):
    name = "causal_convergence"
    scope = "causal"


class SequenceConvergence(Convergence):
    name = "sequence_convergence"
    scope = "sequence"


class _OutputCriterion(ExitCriterion):
    """Shared memory handling for criteria that compare successive output distributions."""

    needs_readout = True
    needs_delta = False

    def reset(self) -> None:
        self._prev_logprobs: Optional[Tensor] = None

    def converged(self, prev, new, delta, readout, subset=None):
        calls = 0
        if self._prev_logprobs is None:
            self._prev_logprobs = torch.log_softmax(self._readout(readout, prev), dim=-1)
            calls += 1
        logprobs = torch.log_softmax(self._readout(readout, new, subset), dim=-1)  # (*elements | B', M, V)
        if subset is not None:  # the others exited: their memory stays, their decision is ignored
            logprobs = subset.scatter(self._prev_logprobs, logprobs)
        calls += 1
        done = self._compare(self._prev_logprobs, logprobs)
        self._prev_logprobs = logprobs
        return done, calls

    @abstractmethod
    def _compare(self, prev_logprobs: Tensor, logprobs: Tensor) -> Tensor: ...


class KLDivergence(_OutputCriterion):
    """Exit when KL(p_t ‖ p_{t−1}) between successive next-token distributions < threshold."""

    name = "kl"

    def _compare(self, prev_logprobs, logprobs):
        kl = (logprobs.exp() * (logprobs - prev_logprobs)).sum(-1)
        return kl.clamp_min(0) < self.threshold  # rounding can make KL of equal distributions < 0


class EntropyChange(_OutputCriterion):
    """Exit when |H(p_t) − H(p_{t−1})| < threshold (nats)."""

    name = "entropy"

    def _compare(self, prev_logprobs, logprobs):
        def entropy(lp: Tensor) -> Tensor:
            return -(lp.exp() * lp).sum(-1)

        return (entropy(logprobs) - entropy(prev_logprobs)).abs() < self.threshold


class ArgmaxStable(_OutputCriterion):
    """Exit once the top-1 token has not changed for ``threshold`` consecutive steps."""

    name = "argmax"

    def reset(self) -> None:
        super().reset()
        self._stable: Optional[Tensor] = None

    def _compare(self, prev_logprobs, logprobs):
        same = prev_logprobs.argmax(-1) == logprobs.argmax(-1)
        stable = torch.zeros_like(same, dtype=torch.long) if self._stable is None else self._stable
        self._stable = torch.where(same, stable + 1, torch.zeros_like(stable))
        return self._stable >= max(1, int(self.threshold))


class LearnedExit(ExitCriterion):
    """Ouro's learned exit: a gate on the state after each step gives λ_t, the probability of exiting there;
    an element exits once the exit distribution's CDF 1 − ∏_{j ≤ t}(1 − λ_j) reaches ``threshold``.

    The gate is the model's (:meth:`attach` takes ``model.exit_logit``, which refuses a model without a gate);
    it costs one norm and a dot product per element and step, far below a readout.
    """

    name = "learned"
    needs_delta = False
    every_step = True  # λ_1 … λ_{min_steps−1} are part of the exit CDF too

    def __init__(self, threshold: float, min_steps: int = 1, max_steps: Optional[int] = None) -> None:
        super().__init__(threshold, min_steps=min_steps, max_steps=max_steps)
        self._logit: Optional[Callable[[Tensor], Tensor]] = None

    @classmethod
    def threshold_problem(cls, threshold: float) -> Optional[tuple[str, str]]:
        if 0 < threshold <= 1:
            return None
        return ("is not a probability; exit=learned stops a token once its exit probability so far reaches the "
                "threshold", "give a value in (0, 1], e.g. 0.9")

    def attach(self, model: Any) -> None:
        model.require_exit_gate()  # refuses a model without one, by name
        self._logit = model.exit_logit

    def reset(self) -> None:
        self._survival: Optional[Tensor] = None  # ∏ (1 − λ_j) so far, per element

    def converged(self, prev, new, delta, readout, subset=None):
        if self._logit is None:
            raise ValueError("exit=learned runs the model's exit gate: pass the criterion to the model's forward "
                             "(it attaches the gate), not to a bare loop")
        survival = self._survival if self._survival is not None else new.new_ones(new.shape[:-1], dtype=torch.float32)
        self._survival = survival * torch.sigmoid(-self._logit(new))  # 1 − λ = σ(−logit); (*elements)
        return 1 - self._survival >= self.threshold, 0


CRITERIA: dict[str, type[ExitCriterion]] = {
    c.name: c for c in (Convergence, CausalConvergence, SequenceConvergence, KLDivergence, EntropyChange,
                        ArgmaxStable, LearnedExit)
}
DEFAULT_THRESHOLDS = {"convergence": 0.03, "causal_convergence": 0.03, "sequence_convergence": 0.03,
                      "kl": 5e-4, "entropy": 1e-3, "argmax": 4, "learned": 0.9}
