"""What a generation run does: one dataclass, validated at construction.

Depth controls, in one place:

* ``num_steps`` (r): the depth every token gets with ``exit=None``; with an exit criterion it is the
  default cap. ``None`` means the model's ``mean_recurrence`` (its eval default).
* ``exit``: per-token adaptive exit, one :class:`recurrent_lm.loop.ExitSpec` (criterion, threshold, min_steps,
  max_steps; checked and defaulted when the spec is built). Its ``max_steps`` is the **per-token step
  budget**: no token ever gets more core iterations than ``max_steps`` (default ``num_steps``); ``min_steps``
  is the floor before a criterion may fire. The cap is resolved once per run by
  :func:`recurrent_lm.loop.resolve_depth`, when the model (and so its default depth) is known.
* ``step_budget``: a **total** budget per sequence: the sum of core iterations spent on a row's
  generated tokens. A row stops (finish reason ``"step_budget"``) as soon as the sum reaches the
  budget; the token that reaches it is kept, so a row overshoots by less than one token's steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.exit_spec import DepthRequest, ExitSpec
from recurrent_lm.model.cache import CACHE_STRATEGIES, DEFAULT_KV_WINDOW


@dataclass
class GenerationConfig:
    """Decoding, depth, cache and sampling settings for :func:`recurrent_lm.infer.generate`."""

    max_new_tokens: int = 64
    """Most tokens generated per prompt (fewer on EOS, a stop string, the step budget or the context end)."""
    num_steps: DepthRequest = None
    """Core iterations r per token (fixed depth), or the cap with an exit criterion; None = model's mean_recurrence."""
    exit: ExitSpec = ExitSpec()
    """Per-token exit: ExitSpec(criterion, threshold, min_steps, max_steps); the default is fixed depth. Criteria:
    convergence | causal_convergence | sequence_convergence | kl | entropy | argmax | learned
    (recurrent_lm.loop.CRITERIA). The causal and sequence scopes only differ from ``convergence`` in the
    prompt's forward: generated tokens are decoded one at a time."""
    kv_cache: str = "full"
    """KV cache over the recurrence: full | compressed (last kv_window iterations) | latest (one slot)."""
    kv_window: int = DEFAULT_KV_WINDOW
    """Iterations kept per core layer by kv_cache='compressed'."""
    warm_start: bool = False
    """Start each generated token's latent state from the previous token's final state."""
    temperature: float = 0.0
    """0 = greedy (argmax); > 0 samples from softmax(logits / temperature)."""
    top_k: Optional[int] = None
    """Sample among the k most likely tokens only (None or 0 = off)."""
    top_p: Optional[float] = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p (None or 1.0 = off)."""
    stop: tuple[str, ...] = field(default_factory=tuple)
    """Stop strings: a row ends once its generated text contains one; the text is cut before it."""
    step_budget: Optional[int] = None
    """Total core iterations a row may spend on its generated tokens (see the module docstring)."""
    seed: int = 0
    """Seeds sampling (row i uses seed + i) and the random initial states of a model with init_scale > 0."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        _require(isinstance(self.exit, ExitSpec), "exit", self.exit,
                 "is not an ExitSpec; pass exit=ExitSpec('convergence', 0.03) (ExitSpec.parse reads flag text)")
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        _require(self.kv_cache in CACHE_STRATEGIES, "kv_cache", self.kv_cache,
                 f"is unknown; choose one of {list(CACHE_STRATEGIES)}")
        _require(self.kv_window >= 1, "kv_window", self.kv_window, "must be >= 1")
        _require(self.temperature >= 0, "temperature", self.temperature, "must be >= 0 (0 = greedy)")
        if self.top_k is not None:
            _require(self.top_k >= 0, "top_k", self.top_k, "must be >= 0 (0 = off)")
        if self.top_p is not None:
            _require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1] (1 = off)")
        if self.step_budget is not None:
            _require(self.step_budget >= 1, "step_budget", self.step_budget, "must be >= 1")
        _require(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "must be non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _require(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"GenerationConfig.{name}={value!r} {why}")
