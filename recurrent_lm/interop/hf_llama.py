"""Hugging Face Llama (``LlamaForCausalLM``) checkpoints mapped to ours, with layer slices for a retrofit.

Facts of the format (transformers' ``modeling_llama``): pre-norm blocks ``x + attn(input_layernorm(x))``,
``x + mlp(post_attention_layernorm(x))``; separate q/k/v/o projections without biases; a SwiGLU MLP with
gate/up/down; RMSNorm; unscaled input embeddings; one final norm after the last layer; RoPE rotating halves
``(x[i], x[i + d/2])`` (``rotate_half``), as ours does, so q and k map without any permutation. Weights are
``model.embed_tokens``, ``model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
input_layernorm, post_attention_layernorm}``, ``model.norm`` and ``lm_head`` (absent when tied).

A retrofit keeps three half-open slices of the decoder layers as prelude, recurrent core and coda and
drops the rest. With ``norm_style='pre'``, ``scale_embeddings=False``, ``norm_before_coda=False`` and the
adapter of :func:`retrofit_adapter`, our model at r = 1 is the source restricted to the kept layers.

This module is pure mapping (no I/O): :mod:`recurrent_lm.interop.hf_llama_io` streams directories.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from recurrent_lm.interop.errors import FormatError
from recurrent_lm.model.config import ROPE_SCALINGS, ModelConfig

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"

DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "head_dim": None, "rope_theta": 10_000.0,
}
"""LlamaConfig's defaults: a key absent from config.json means this value, as in transformers' loader."""

STACKS = ("prelude", "core", "coda")
BLOCK: dict[str, tuple[str, ...]] = {
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.out.weight": ("self_attn.o_proj.weight",),
    "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.down.weight": ("mlp.down_proj.weight",),
    "norm_attn_in.weight": ("input_layernorm.weight",),
    "norm_mlp_in.weight": ("post_attention_layernorm.weight",),
}
"""Our block tensor -> the Llama tensors it fuses, concatenated along dim 0 in this order."""
BLOCK_PARTS = {part: (ours, i, len(parts)) for ours, parts in BLOCK.items() for i, part in enumerate(parts)}
"""Llama block tensor -> (our tensor, its index among the fused parts, number of parts)."""
TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
       "lm_head.weight": "lm_head.weight"}
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
IGNORED = re.compile(r"(model\.layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
"""Old checkpoints saved the RoPE frequencies; we recompute them from rope_theta/rope_scaling."""

FOREIGN_FEATURES = {
    ("q_norm.", "k_norm."): "q/k norms",
    ("q_proj.bias", "k_proj.bias", "v_proj.bias"): "biases on q/k/v",
    ("o_proj.bias",): "a bias on the attention output",
    ("gate_proj.bias", "up_proj.bias", "down_proj.bias"): "MLP biases",
    ("pre_feedforward_layernorm", "post_feedforward_layernorm"): "norms around the MLP",
    ("mlp.experts.", "block_sparse_moe."): "a mixture of experts",
    ("query_key_value", "c_attn", "Wqkv"): "a fused qkv projection",
}
"""Substrings of tensor names -> the feature they show, one LlamaForCausalLM lacks."""


# ---------------------------------------------------------------------------------------------- layer slices
@dataclass(frozen=True)
class LayerSlices:
    """Half-open ranges of the source's decoder layers that become prelude, core and coda."""

    prelude: tuple[int, int]
    core: tuple[int, int]
    coda: tuple[int, int]

    @classmethod
    def parse(cls, prelude: Optional[str], core: Optional[str], coda: Optional[str], n_layers: int) -> "LayerSlices":
        """Slices from ``--prelude/--core/--coda`` text such as '8:12' (':4' and '18:' as in Python; '' or None
        is empty), checked: within [0, n_layers), core non-empty, and in order prelude < core < coda."""
        if prelude is None and core is None and coda is None:
            raise FormatError(f"no layer slices given; choose which of the source's {n_layers} decoder layers become "
                              f"prelude, core and coda, e.g. {example_flags(n_layers)} (all layers in order: at r = 1 "
                              "this is exactly the source)")
        slices = cls(*(_parse_slice(flag, text, n_layers) for flag, text in zip(STACKS, (prelude, core, coda))))
        if slices.core[0] == slices.core[1]:
            raise FormatError(f"--core={core or ''!r} is empty; the recurrent block needs at least one layer, "
                              f"e.g. {example_flags(n_layers)}")
        given = [(flag, s) for flag, s in zip(STACKS, (slices.prelude, slices.core, slices.coda)) if s[0] < s[1]]
        for (flag_a, a), (flag_b, b) in zip(given, given[1:]):
            if a[1] > b[0]:
                raise FormatError(f"--{flag_a}={a[0]}:{a[1]} and --{flag_b}={b[0]}:{b[1]} overlap or are out of order; "
                                  f"the slices must go prelude < core < coda, e.g. {example_flags(n_layers)}")
        return slices

    def counts(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in (self.prelude, self.core, self.coda))  # type: ignore[return-value]

    def target(self, layer: int) -> Optional[str]:
        """Our module prefix for source decoder layer ``layer`` ('core.2'), or None when it is dropped."""
        for stack, (start, stop) in zip(STACKS, (self.prelude, self.core, self.coda)):
            if start <= layer < stop:
                return f"{stack}.{layer - start}"
        return None


def example_flags(n_layers: int) -> str:
    """Slice flags that keep all ``n_layers`` layers: a layer or two each for prelude and coda, the rest core."""
    edge = max(1, n_layers // 8) if n_layers >= 3 else 0
    prelude = f"--prelude 0:{edge} " if edge else ""
    coda = f" --coda {n_layers - edge}:{n_layers}" if edge else ""
    return f"{prelude}--core {edge}:{n_layers - edge}{coda}"


def _parse_slice(flag: str, text: Optional[str], n_layers: int) -> tuple[int, int]:
    if not text:
        return (0, 0)
    bounds = [b.strip() for b in text.split(":")]
    if len(bounds) != 2 or not all(b.isdecimal() or not b for b in bounds):
        raise FormatError(f"--{flag}={text!r} is not a layer slice; write START:STOP (half-open, as in Python, "
                          f"non-negative), e.g. --{flag} 2:6")
    start, stop = int(bounds[0] or 0), int(bounds[1] or n_layers)
    if stop > n_layers:
        raise FormatError(f"--{flag}={text!r} reaches past the source's {n_layers} decoder layers; slices must lie "
                          f"within 0:{n_layers}")
    if start > stop:
        raise FormatError(f"--{flag}={text!r} runs backwards; write the smaller index first ({stop}:{start})")
    return (start, stop)


# ---------------------------------------------------------------------------------------------- config
def check_llama(raw: Mapping[str, Any], tensor_names: Sequence[str], origin: str) -> None:
    """Refuse a config.json (and its weights' names) that is not a LlamaForCausalLM we run exactly."""
    features = sorted({feature for keys, feature in FOREIGN_FEATURES.items()
                       for name in tensor_names if any(key in name for key in keys)})
    seen = f"; its weights have {' and '.join(features)}, which LlamaForCausalLM lacks" if features else ""
    architectures = raw.get("architectures") or [ARCHITECTURE]
    if raw.get("model_type") != MODEL_TYPE or architectures != [ARCHITECTURE]:
        raise FormatError(f"{origin}: model_type={raw.get('model_type')!r}, architectures={architectures} is not a "
                          f"Hugging Face Llama{seen}; only {ARCHITECTURE} (model_type {MODEL_TYPE!r}) converts")
    if features:
        raise FormatError(f"{origin}: a Llama config, but{seen.removeprefix(';')}; the weights are from another "
                          "architecture, or the config was edited")
    cfg = {**DEFAULTS, **raw}
    rope = _rope_dict(raw)
    kind, partial = _rope_type(rope), rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    natural = cfg["hidden_size"] // cfg["num_attention_heads"]
    refusals = [  # (key, value, ok, why)
        ("attention_bias", cfg["attention_bias"], not cfg["attention_bias"], "our attention has no q/k/v/o biases"),
        ("mlp_bias", cfg["mlp_bias"], not cfg["mlp_bias"], "our SwiGLU has no biases"),
        ("hidden_act", cfg["hidden_act"], cfg["hidden_act"] == "silu", "only 'silu' (SwiGLU) is implemented"),
        ("head_dim", cfg["head_dim"], cfg["head_dim"] in (None, natural),
         f"our head_dim is hidden_size / num_attention_heads = {natural}"),
        ("sliding_window", cfg.get("sliding_window"), not cfg.get("sliding_window"),
         "LlamaForCausalLM attends to the whole prefix; a sliding window is another model"),
        ("rope_type", kind, kind == "default" or kind in ROPE_SCALINGS,
         f"the supported RoPE types are default, {', '.join(sorted(ROPE_SCALINGS))}"),
        ("partial_rotary_factor", partial, partial == 1, "our RoPE rotates whole heads"),
    ]
    for key, value, ok, why in refusals:
        if not ok:
            raise FormatError(f"{origin}: {key}={value!r} is not supported: {why}")


def rope_from_llama(raw: Mapping[str, Any]) -> tuple[float, Optional[dict[str, Any]]]:
    """(rope_theta, rope_scaling) of a Llama config.json: transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling``, read as transformers standardises them."""
    rope = _rope_dict(raw)
    theta = float(rope.get("rope_theta", raw.get("rope_theta", DEFAULTS["rope_theta"])))
    kind = _rope_type(rope)
    if kind == "default":
        return theta, None
    scaling = {"rope_type": kind, **{key: rope.get(key) for key in ROPE_SCALINGS[kind]}}
    if kind == "llama3" and scaling["original_max_position_embeddings"] is None:  # transformers' fallback
        scaling["original_max_position_embeddings"] = raw.get("max_position_embeddings",
                                                              DEFAULTS["max_position_embeddings"])
    return theta, scaling


def _rope_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE dict as transformers picks it: ``rope_scaling`` first, then ``rope_parameters``."""
    return dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})


def _rope_type(rope: Mapping[str, Any]) -> str:
    return rope.get("rope_type", rope.get("type", "default"))


def source_layers(raw: Mapping[str, Any]) -> int:
    return int(raw.get("num_hidden_layers", DEFAULTS["num_hidden_layers"]))


def config_from_llama(raw: Mapping[str, Any], slices: LayerSlices, source: str, origin: str,
                      block_size: Optional[int] = None) -> ModelConfig:
    """Our ModelConfig for the retrofit of a checked Llama config.json (:func:`check_llama`) to ``slices``.

    At r = 1 it is the plain pre-norm stack of the kept layers: unscaled embeddings, no norm before the coda,
    one pass through the core (``mean_recurrence=1``). ``block_size`` caps max_position_embeddings.
    """
    cfg = {**DEFAULTS, **raw}
    context = int(cfg["max_position_embeddings"])
    if block_size is not None and not 0 < block_size <= context:
        raise FormatError(f"--block-size={block_size} must be in 1..{context}: it caps the source's "
                          "max_position_embeddings, the longest context the model was trained on")
    theta, scaling = rope_from_llama(raw)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    n_prelude, n_core, n_coda = slices.counts()
    fields = dict(
        vocab_size=cfg["vocab_size"], block_size=block_size or context, d_model=cfg["hidden_size"], n_heads=heads,
        n_kv_heads=None if kv in (None, heads) else kv, mlp_hidden=cfg["intermediate_size"], n_prelude=n_prelude,
        n_core=n_core, n_coda=n_coda, norm_style="pre", injection="linear", qk_bias=False, rope_theta=theta,
        rope_scaling=scaling, norm_eps=float(cfg["rms_norm_eps"]), tie_embeddings=bool(cfg["tie_word_embeddings"]),
        scale_embeddings=False, norm_before_coda=False, mean_recurrence=1,
        extra={"retrofit": {"source": source, "architecture": ARCHITECTURE, "prelude": list(slices.prelude),
                            "core": list(slices.core), "coda": list(slices.coda),
                            "source_layers": source_layers(raw)}})
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise FormatError(f"{origin} describes a model recurrent_lm cannot build: {err}") from err


def config_to_llama(config: ModelConfig, adapter: Optional[Tensor]) -> dict[str, Any]:
    """The ``config.json`` of a LlamaForCausalLM equal to our model at r = 1 (``adapter`` is its adapter weight,
    None for injection 'add'); refuses, naming every failing field, a model that is not a plain layer stack."""
    refusals = {
        "norm_style": (config.norm_style == "pre", "Llama blocks are pre-norm, without the sandwich output norms"),
        "qk_bias": (not config.qk_bias, "Llama attention has no q/k bias"),
        "scale_embeddings": (not config.scale_embeddings, "Llama does not scale its input embeddings by √h"),
        "norm_before_coda": (not config.norm_before_coda, "Llama applies its final norm once, after the last layer"),
        "attn_window": (config.attn_window == 0, "LlamaForCausalLM attends to the whole prefix"),
        "mean_recurrence": (config.mean_recurrence == 1, "the model is meant to run its core that many times; "
                            "Llama runs each layer once"),
    }
    if config.injection == "add":
        refusals["init_scale"] = (config.init_scale == 0, "with injection 'add' the core's input s_0 + e is e only "
                                  "for a zero initial state (init_scale=0)")
    else:
        refusals["injection"] = (adapter is not None and torch.equal(adapter, retrofit_adapter(config.d_model,
                                                                                               adapter.dtype)),
                                 "the adapter weight is not [0 | I], so the core's input mixes in the initial state")
    failing = [f"ModelConfig.{name}={getattr(config, name)!r} ({why})"
               for name, (ok, why) in refusals.items() if not ok]
    if failing:
        raise FormatError("cannot be written as a Hugging Face LlamaForCausalLM, which runs each layer once as a plain "
                          f"pre-norm stack: {'; '.join(failing)}. Export a model trained with prelude/core/coda as "
                          "plain layers at depth 1 (see docs/interop.md)")
    rope_parameters = {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta}
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_prelude + config.n_core + config.n_coda, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling (5 reads those too)
        "rope_parameters": rope_parameters, "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
    }


# ---------------------------------------------------------------------------------------------- tensors
def retrofit_adapter(d_model: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The injection adapter weight [0 | I], (h, 2h): the core's input is e, whatever the state.

    The adapter computes W · concat(s, e). A zero state half and an identity e half make the first core
    iteration see exactly the prelude's output, as the source's next layer did, so at r = 1 the model is
    the source restricted to the kept layers regardless of the random initial state s_0. At r > 1 the core
    sees e again each iteration; the state half starts at zero and gets gradient (∂/∂W_s = grad · sᵀ ≠ 0),
    so training learns how much of the previous state to carry.
    """
    return torch.cat((torch.zeros(d_model, d_model, dtype=dtype), torch.eye(d_model, dtype=dtype)), dim=1)


def llama_shapes(config: ModelConfig, n_layers: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LlamaForCausalLM checkpoint with ``n_layers`` layers of ``config``'s shape."""
    h, ffn = config.d_model, config.ffn_hidden
    q, kv = config.n_heads * config.head_dim, config.kv_heads * config.head_dim  # rows of q, and of k and of v
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    block = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
             "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h),
             "mlp.down_proj.weight": (h, ffn), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    for i in range(n_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in block.items()})
    return shapes


def import_target(name: str, slices: LayerSlices) -> Optional[tuple[str, int, int]]:
    """(our tensor, part index, parts) that the Llama tensor ``name`` becomes; None for a dropped layer's tensor.
    Raises for a name that is not part of the format."""
    if name in TOP:
        return TOP[name], 0, 1
    match = LAYER.fullmatch(name)
    if match is None or match[2] not in BLOCK_PARTS:
        raise FormatError(f"tensor {name!r} is not part of a {ARCHITECTURE} checkpoint")
    prefix = slices.target(int(match[1]))
    if prefix is None:
        return None
    ours, index, parts = BLOCK_PARTS[match[2]]
    return f"{prefix}.{ours}", index, parts


def export_tensor(name: str, state: Mapping[str, Tensor], config: ModelConfig) -> Tensor:
    """The Llama tensor ``name`` from our state dict: layers are prelude, core, coda in order (the inverse of
    :func:`import_target` with all layers kept)."""
    if name in TOP:
        ours = TOP[name]
        return state["embed.weight" if ours == "lm_head.weight" and config.tie_embeddings else ours]
    match = LAYER.fullmatch(name)
    layer, rest = int(match[1]), match[2]
    for stack in STACKS:
        count = getattr(config, f"n_{stack}")
        if layer < count:
            break
        layer -= count
    ours, index, _ = BLOCK_PARTS[rest]
    rows = [llama_shapes(config, 1)[f"model.layers.0.{part}"][0] for part in BLOCK[ours]]
    return state[f"{stack}.{layer}.{ours}"].split(rows, dim=0)[index]


class LlamaAdapter:
    """The :class:`~recurrent_lm.interop.adapter.StateDictAdapter` of the format: ``slices`` of the source's
    ``n_layers`` become ours on import (dropped layers map to nothing); export writes every layer of ours."""

    def __init__(self, config: ModelConfig, slices: LayerSlices, n_layers: int) -> None:
        self.config, self.slices, self.n_layers = config, slices, n_layers

    def key_map(self) -> dict[str, tuple[str, ...]]:
        targets = {name: import_target(name, self.slices) for name in llama_shapes(self.config, self.n_layers)}
        return {name: () if target is None else (target[0],) for name, target in targets.items()}

    def to_ours(self, theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fused q/k/v and gate/up need all their parts in ``theirs``; a dropped layer's tensors are skipped."""
        parts: dict[str, dict[int, Tensor]] = {}
        counts: dict[str, int] = {}
        for name, tensor in theirs.items():
            target = import_target(name, self.slices)
            if target is not None:
                parts.setdefault(target[0], {})[target[1]] = tensor
                counts[target[0]] = target[2]
        incomplete = sorted(ours for ours, got in parts.items() if len(got) != counts[ours])
        if incomplete:
            raise FormatError(f"the fused tensors {incomplete} need all their {ARCHITECTURE} parts together")
        return {ours: got[0] if len(got) == 1 else torch.cat([got[i] for i in range(len(got))])
                for ours, got in parts.items()}

    def from_ours(self, ours: Mapping[str, Tensor], names: Optional[Iterable[str]] = None) -> dict[str, Tensor]:
        names = llama_shapes(self.config, self.n_layers) if names is None else names
        return {name: export_tensor(name, ours, self.config) for name in names}
