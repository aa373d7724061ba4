"""The model's configuration: one dataclass, validated at construction.

Every field is a plain primitive so the class doubles as a hydra structured-config schema
(`conf/model/*.yaml` is checked against it) and round-trips through ``config.json`` in an
exported model directory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from recurrent_lm.config_dict import from_dict
from recurrent_lm.errors import ConfigError

NORM_STYLES = ("sandwich", "pre")
INJECTIONS = ("linear", "add")
ROPE_SCALINGS = {"linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
"""rope_scaling["rope_type"] -> the keys it needs: Hugging Face's names, so a Llama config.json maps 1:1."""
MOVED_FIELDS = {"activation_checkpointing": "parallel.activation_checkpointing (none | block | iteration)",
                "attn_backend": ("trainer.attn_backend (sdpa | flash | eager) in training; "
                                 "elsewhere the model takes it when built: RecurrentDepthLM(config, attn_backend=...)"),
                "mean_backprop_depth": "sampler.backprop_depth (k: the sampler owns the training depth)"}
"""Keys that left ModelConfig -> where they live now. A config.json or checkpoint written before the move still
loads (:meth:`ModelConfig.from_stored` drops them); anywhere else they are refused with the new name."""


@dataclass
class ModelConfig:
    """Shape and recipe of a prelude / recurrent-core / coda language model."""

    vocab_size: int = 512
    """Rows of the embedding table; the tokenizer is trained to this size."""
    block_size: int = 256
    """Longest context (tokens) the model is trained and evaluated on."""
    d_model: int = 64
    """Width h of every layer and of the recurrent state."""
    n_heads: int = 4
    """Query heads; head_dim = d_model / n_heads."""
    n_kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; None means n_heads (no GQA)."""
    mlp_hidden: Optional[int] = None
    """SwiGLU hidden width; None picks 8/3·h rounded up to a multiple of 64."""
    n_prelude: int = 1
    """Layers that embed the input into `e` once per forward."""
    n_core: int = 2
    """Layers of the recurrent block, applied num_steps times."""
    n_coda: int = 1
    """Layers that decode the final state before the LM head."""
    norm_style: str = "sandwich"
    """'sandwich' (Huginn: norm after each residual add too) or 'pre' (ablation)."""
    injection: str = "linear"
    """How `e` enters each iteration: 'linear' = Linear(2h→h) on concat(s, e); 'add' = s + e."""
    qk_bias: bool = True
    """Learned per-head bias on q and k, added before RoPE."""
    rope_theta: float = 50_000.0
    rope_scaling: Optional[dict[str, Any]] = None
    """Hugging Face's RoPE scaling of the frequencies, e.g. {'rope_type': 'linear', 'factor': 4.0} or
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
    'original_max_position_embeddings': 8192}; None = plain RoPE. Set by the Llama import, which must
    reproduce the source's positions exactly."""
    attn_window: int = 0
    """Sliding attention window: a token sees itself and the attn_window − 1 tokens before it, in every layer;
    0 = the whole prefix. A window makes information travel a bounded distance per iteration, so a problem
    over longer inputs *needs* more iterations: the inductive bias of the reasoning-extrapolation recipes."""
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    scale_embeddings: bool = True
    """Multiply the input embeddings by √h (Huginn); False feeds them as they are (Llama)."""
    norm_before_coda: bool = True
    """Apply the final norm to the last state before the coda too, y = norm(coda(norm(s))) (Huginn: the
    state's scale is whatever r iterations left); False gives norm(coda(s)), a plain layer stack (Llama)."""
    init_scale: float = 1.0
    """Multiplier on the random initial state; 0 gives a deterministic zero state."""
    mean_recurrence: int = 32
    """r̄: the default test-time depth (a forward without num_steps) and the depth the init scaling assumes.
    Training depth is not here: the depth sampler (``sampler.mean``, ``sampler.backprop_depth``) owns it."""
    init_std: Optional[float] = None
    """Base init std; None gives Spike-No-More's sqrt(2 / (5h))."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata carried into config.json (e.g. provenance); never read by the model."""

    def __post_init__(self) -> None:
        positive = ("vocab_size", "block_size", "d_model", "n_heads", "n_core", "mean_recurrence")
        for name in positive:
            _require(getattr(self, name) > 0, name, getattr(self, name), "must be a positive integer")
        for name in ("n_prelude", "n_coda"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        _require(self.d_model % self.n_heads == 0, "n_heads", self.n_heads,
                 f"must divide d_model={self.d_model}; pick n_heads from "
                 f"{[h for h in range(1, 65) if self.d_model % h == 0]}")
        _require((self.d_model // self.n_heads) % 2 == 0, "n_heads", self.n_heads,
                 f"gives an odd head_dim={self.d_model // self.n_heads}; RoPE needs an even head_dim")
        kv = self.kv_heads
        _require(kv > 0 and self.n_heads % kv == 0, "n_kv_heads", self.n_kv_heads,
                 f"must be a positive divisor of n_heads={self.n_heads} (or null for no GQA)")
        if self.mlp_hidden is not None:
            _require(self.mlp_hidden > 0, "mlp_hidden", self.mlp_hidden, "must be positive (or null for 8/3·h)")
        _require(self.norm_style in NORM_STYLES, "norm_style", self.norm_style, f"must be one of {NORM_STYLES}")
        _require(self.injection in INJECTIONS, "injection", self.injection, f"must be one of {INJECTIONS}")
        _require(self.init_scale >= 0, "init_scale", self.init_scale, "must be >= 0 (0 = zero initial state)")
        _require(self.attn_window >= 0, "attn_window", self.attn_window, "must be >= 0 (0 = no window)")
        _require(self.rope_theta > 0 and self.norm_eps > 0, "rope_theta/norm_eps",
                 (self.rope_theta, self.norm_eps), "must be positive")
        if self.rope_scaling is not None:
            _require(isinstance(self.rope_scaling, Mapping), "rope_scaling", self.rope_scaling,
                     "must be a dict such as {'rope_type': 'linear', 'factor': 4.0}; or null for plain RoPE")
            self.rope_scaling = dict(self.rope_scaling)  # a plain dict, also when hydra hands a DictConfig
            _require(*_rope_scaling_problem(self.rope_scaling))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def expected_depth(self) -> int:
        """Unrolled layer count at r̄; Spike-No-More scales output projections by it."""
        return self.n_prelude + self.mean_recurrence * self.n_core + self.n_coda

    @property
    def base_std(self) -> float:
        return self.init_std if self.init_std is not None else math.sqrt(2.0 / (5.0 * self.d_model))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict (config.json, a hydra group), refusing unknown keys by name and a key that moved
        out of the model config by its new name."""
        moved = sorted(set(data) & set(MOVED_FIELDS))
        if moved:
            raise ConfigError(f"ModelConfig: {', '.join(f'{k} is now {MOVED_FIELDS[k]}' for k in moved)}; "
                              "it is not part of the architecture")
        return from_dict(cls, data)

    @classmethod
    def from_stored(cls, data: dict[str, Any], **overrides: Any) -> "ModelConfig":
        """Build from what an earlier version wrote (an exported config.json, a checkpoint's hyper-parameters):
        the keys that have since moved out of the model config (:data:`MOVED_FIELDS`) are dropped, since
        they never changed a weight. ``overrides`` are the caller's own settings, checked as in
        :meth:`from_dict` (a moved key there is refused with its new name)."""
        return cls.from_dict({**{k: v for k, v in data.items() if k not in MOVED_FIELDS}, **overrides})


def _rope_scaling_problem(scaling: dict[str, Any]) -> tuple[bool, str, Any, str]:
    """(ok, field, value, why) for :func:`_require`: the first thing wrong with a rope_scaling dict."""
    name, kind = "rope_scaling", scaling.get("rope_type")
    if kind not in ROPE_SCALINGS:
        return False, name, scaling, (f"has rope_type={kind!r}, which is not supported; use one of "
                                      f"{sorted(ROPE_SCALINGS)} or null for plain RoPE")
    needed = ROPE_SCALINGS[kind]
    missing, unknown = [k for k in needed if k not in scaling], sorted(set(scaling) - {"rope_type", *needed})
    if missing or unknown:
        return False, name, scaling, (f"must have exactly the keys {['rope_type', *needed]} for rope_type={kind!r} "
                                      f"(missing {missing}, unknown {unknown}); copy them from the checkpoint's "
                                      "config.json")
    bad = [k for k in needed if isinstance(scaling[k], bool) or not isinstance(scaling[k], (int, float))
           or not scaling[k] > 0]
    if bad:
        return False, name, scaling, f"has non-positive or non-numeric {bad}; give positive numbers"
    if kind == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        return False, name, scaling, "has low_freq_factor >= high_freq_factor; llama3 scaling needs low < high"
    return True, name, scaling, ""


def _require(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"ModelConfig.{name}={value!r} {why}")
