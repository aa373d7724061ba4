"""The Huginn-0125 ("huginn_raven") checkpoint format: its config keys and tensor names, mapped to ours.

Facts of the format (its public ``raven_config_minimal`` / ``raven_modeling_minimal`` files and vLLM
plugin): ``config.json`` keys below, weights under ``transformer.*`` with a fused ``attn.Wqkv``, a
``attn.qk_bias`` of shape (2, 1, heads, head_dim) added before RoPE, a fused gate+up ``mlp.fc``,
``norm_1..norm_4`` in the sandwich layout, one ``ln_f`` applied before and after the coda, and a saved
RoPE table ``freqs_cis``. The forward equations are the same as ours except for RoPE's pairing: the
format rotates interleaved pairs (x[2i], x[2i+1]) where ours rotates (x[i], x[i + d/2]). Attention
scores only see q·k, so permuting the head dimensions of q and k (weights rows and bias alike) by
the same permutation makes the two exactly equivalent; v, and everything else, maps 1:1.

This module is pure mapping (no I/O): :mod:`recurrent_lm.interop.huginn_io` streams directories.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor

from recurrent_lm.interop.errors import FormatError
from recurrent_lm.model.config import MOVED_FIELDS, ModelConfig

MODEL_TYPE = "huginn_raven"
ARCHITECTURES = ["RavenForCausalLM"]
REMOTE_CODE_REPO = "tomg-group-umd/huginn-0125"
"""The published model repository holding the format's remote code (raven_config_minimal.py, raven_modeling_minimal.py)."""
AUTO_MAP = {"AutoConfig": f"{REMOTE_CODE_REPO}--raven_config_minimal.RavenConfig",
            "AutoModelForCausalLM": f"{REMOTE_CODE_REPO}--raven_modeling_minimal.RavenForCausalLM"}
"""``repo--module.Class``: transformers (``trust_remote_code=True``) fetches the code from the published repository,
so an export needs no .py files beside it. Offline: copy the two files into the directory and drop the prefix
(docs/interop.md)."""
ROPE_TABLE = "freqs_cis"
"""The saved RoPE buffer: recomputed on our side, so checked on import and never loaded."""

DEFAULTS: dict[str, Any] = {
    "n_embd": 5280, "n_heads": 55, "block_size": 4096, "vocab_size": 65536, "tie_embeddings": True,
    "intermediate_size": 17920, "norm_eps": 1e-6, "state_init": "like-init", "injection_type": "linear",
    "n_layers_in_prelude": 2, "n_layers_in_recurrent_block": 4, "n_layers_in_coda": 2, "mean_recurrence": 32,
    "qk_bias": True, "rope_base": 50_000.0, "bias": False,
    "block_class_name": "SandwichBlock", "norm_class_name": "RMSNorm_llama", "mlp_class_name": "GatedMLP",
    "nonlin_name": "SiLU", "test_time_noise": 0.0,
}
"""The format's config-class defaults: a key absent from config.json means this value, as in its own loader."""

ALIASES = {"hidden_size": "n_embd", "num_attention_heads": "n_heads"}
"""Hugging Face names the format's config class maps onto its own keys."""

FIXED = ("bias", "block_class_name", "norm_class_name", "mlp_class_name", "nonlin_name", "test_time_noise")
"""Keys whose only value we (and the format's inference code) implement: anything else is refused."""

STATE_INIT = {"like-init": 1.0, "zero": 0.0}
"""state_init -> our init_scale. 'like-init' is our truncated normal ·√h; 'normal', 'embed', 'unit' draw
from other distributions that ModelConfig cannot express, so they are refused."""

TRAINING_ONLY = {"init_strategy": "takase", "init_orthogonal": False, "sampling_scheme": "poisson-lognormal-filling",
                 "activation_checkpoint_impl": "per-iteration", "padding_multiple": 4096,
                 "architecture_class_name": "RecurrentGPT", "torch_dtype": "bfloat16", "mean_backprop_depth": 8}
"""Keys that do not change the forward pass: written on export (values of the released model), ignored on import.
``mean_backprop_depth`` is training depth, which our sampler owns (sampler.backprop_depth), not the model."""

OUR_EXTRA_KEY = "recurrent_lm"
"""config.json key holding the ModelConfig fields the format has no key for (its own code ignores it)."""
UNEXPRESSED = ("init_std", "extra")

STACKS = {"prelude": "prelude", "core": "core_block", "coda": "coda"}
"""Our ModuleList name -> the format's."""
BLOCK_RENAMES = {"attn.out.weight": "attn.proj.weight", "mlp.gate_up.weight": "mlp.fc.weight",
                 "mlp.down.weight": "mlp.proj.weight", "norm_attn_in.weight": "norm_1.weight",
                 "norm_attn_out.weight": "norm_2.weight", "norm_mlp_in.weight": "norm_3.weight",
                 "norm_mlp_out.weight": "norm_4.weight"}
"""Block tensors that map 1:1 (SwiGLU's gate and up are fused in the same order on both sides)."""
TOP_RENAMES = {"embed.weight": "transformer.wte.weight", "adapter.weight": "transformer.adapter.weight",
               "norm.weight": "transformer.ln_f.weight", "lm_head.weight": "lm_head.weight"}
STACKS_INV, BLOCK_RENAMES_INV, TOP_RENAMES_INV = ({v: k for k, v in d.items()} for d in (STACKS, BLOCK_RENAMES,
                                                                                        TOP_RENAMES))


# ---------------------------------------------------------------------------------------------- config
def config_from_huginn(raw: Mapping[str, Any], origin: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a Huginn ``config.json`` dict; refuses any value whose semantics we lack."""
    if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise FormatError(f"{origin}: model_type={raw['model_type']!r}, expected {MODEL_TYPE!r}; this is not a "
                          "Huginn checkpoint (use --from recurrent_lm for our own model directories)")
    cfg = dict(DEFAULTS)
    for alias, key in ALIASES.items():
        if alias in raw and key in raw and raw[alias] != raw[key]:
            raise FormatError(f"{origin}: {alias}={raw[alias]!r} contradicts {key}={raw[key]!r}; make them equal")
        if alias in raw:
            cfg[key] = raw[alias]
    cfg.update({k: v for k, v in raw.items() if k in DEFAULTS})
    for key in FIXED:
        _refuse(cfg[key] == DEFAULTS[key], origin, key, cfg[key], f"only {DEFAULTS[key]!r} is supported")
    _refuse(cfg["injection_type"] == "linear", origin, "injection_type", cfg["injection_type"],
            "only 'linear' (Linear(2h->h) on concat(state, e)) is what the format's inference code runs")
    _refuse(cfg["state_init"] in STATE_INIT, origin, "state_init", cfg["state_init"],
            f"supported: {sorted(STATE_INIT)} (ours is a truncated normal ·√h or zeros)")
    heads = cfg["n_heads"]
    kv = raw.get("num_key_value_heads", heads)
    _refuse(kv == heads, origin, "num_key_value_heads", kv, f"must equal n_heads={heads}: the format has no GQA")
    layers = (cfg["n_layers_in_prelude"], cfg["n_layers_in_recurrent_block"], cfg["n_layers_in_coda"])
    _refuse(raw.get("n_layers", sum(layers)) == sum(layers), origin, "n_layers", raw.get("n_layers"),
            f"must be prelude + recurrent + coda = {sum(layers)}")
    block = raw.get(OUR_EXTRA_KEY) or {}
    _refuse(isinstance(block, dict) and set(block) <= {*UNEXPRESSED, *MOVED_FIELDS}, origin, OUR_EXTRA_KEY, block,
            f"may only hold {list(UNEXPRESSED)}")
    block = {k: v for k, v in block.items() if k not in MOVED_FIELDS}  # an export from before they moved
    fields = {**dict(
        vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], d_model=cfg["n_embd"], n_heads=heads,
        mlp_hidden=cfg["intermediate_size"], n_prelude=layers[0], n_core=layers[1], n_coda=layers[2],
        norm_style="sandwich", injection="linear", qk_bias=bool(cfg["qk_bias"]), rope_theta=float(cfg["rope_base"]),
        norm_eps=float(cfg["norm_eps"]), tie_embeddings=bool(cfg["tie_embeddings"]),
        init_scale=STATE_INIT[cfg["state_init"]], mean_recurrence=cfg["mean_recurrence"],
        extra={"converted_from": MODEL_TYPE}), **block}
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise FormatError(f"{origin} describes a model recurrent_lm cannot build: {err}") from err


def config_to_huginn(config: ModelConfig) -> dict[str, Any]:
    """The Huginn ``config.json`` dict of ``config``; refuses what the format cannot express."""
    refusals = {
        "injection": (config.injection == "linear", "the format has only the 'linear' concat adapter"),
        "n_kv_heads": (config.kv_heads == config.n_heads, "the format has no grouped-query attention"),
        "attn_window": (config.attn_window == 0, "the format has no sliding-window attention"),
        "norm_style": (config.norm_style == "sandwich", "the format has only sandwich blocks"),
        "init_scale": (config.init_scale in STATE_INIT.values(),
                       "the format's state_init can say 1 ('like-init') or 0 ('zero') only"),
        "scale_embeddings": (config.scale_embeddings, "the format always scales the input embeddings by √h"),
        "norm_before_coda": (config.norm_before_coda, "the format applies ln_f to the state before the coda too"),
        "rope_scaling": (config.rope_scaling is None, "the format's RoPE has rope_base only, no scaling"),
    }
    for name, (ok, why) in refusals.items():
        if not ok:
            raise FormatError(f"ModelConfig.{name}={getattr(config, name)!r} cannot be written as a Huginn "
                              f"checkpoint: {why}. Retrain or fine-tune with a config the format can express")
    state_init = next(k for k, v in STATE_INIT.items() if v == config.init_scale)
    ours = config.to_dict()
    return {
        "model_type": MODEL_TYPE, "architectures": ARCHITECTURES, "auto_map": AUTO_MAP, **TRAINING_ONLY,
        **{k: DEFAULTS[k] for k in FIXED},
        "n_embd": config.d_model, "n_heads": config.n_heads, "num_key_value_heads": config.n_heads,
        "n_layers": config.n_prelude + config.n_core + config.n_coda, "block_size": config.block_size,
        "vocab_size": config.vocab_size, "tie_embeddings": config.tie_embeddings,
        "intermediate_size": config.ffn_hidden, "norm_eps": config.norm_eps, "state_init": state_init,
        "injection_type": "linear", "n_layers_in_prelude": config.n_prelude,
        "n_layers_in_recurrent_block": config.n_core, "n_layers_in_coda": config.n_coda,
        "mean_recurrence": config.mean_recurrence, "qk_bias": config.qk_bias, "rope_base": config.rope_theta,
        OUR_EXTRA_KEY: {k: ours[k] for k in UNEXPRESSED},
    }


def _refuse(ok: bool, origin: str, key: str, value: Any, why: str) -> None:
    if not ok:
        raise FormatError(f"{origin}: {key}={value!r} is not supported: {why}")


# ---------------------------------------------------------------------------------------------- tensors
def rope_permutation(head_dim: int) -> Tensor:
    """perm with ours[j] = theirs[perm[j]]: dims (0, 2, 4, …, 1, 3, 5, …) turn interleaved pairs into halves."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def _permute_heads(t: Tensor, n_heads: int, perm: Tensor) -> Tensor:
    """Reorder the head_dim axis of a (n_heads·head_dim, ...) tensor within every head."""
    head_dim = t.shape[0] // n_heads
    return t.reshape(n_heads, head_dim, *t.shape[1:])[:, perm].reshape(t.shape)


def huginn_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Huginn checkpoint of ``config`` holds (the RoPE table excepted), with its shape."""
    h, heads, hd, ffn = config.d_model, config.n_heads, config.head_dim, config.ffn_hidden
    shapes = {"transformer.wte.weight": (config.vocab_size, h), "transformer.adapter.weight": (h, 2 * h),
              "transformer.ln_f.weight": (h,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    block = {"attn.Wqkv.weight": (3 * h, h), "attn.proj.weight": (h, h), "mlp.fc.weight": (2 * ffn, h),
             "mlp.proj.weight": (h, ffn), **{f"norm_{i}.weight": (h,) for i in range(1, 5)}}
    if config.qk_bias:
        block["attn.qk_bias"] = (2, 1, heads, hd)
    for ours, theirs in STACKS.items():
        for i in range(getattr(config, f"n_{ours}")):
            shapes.update({f"transformer.{theirs}.{i}.{k}": v for k, v in block.items()})
    return shapes


def import_tensor(name: str, tensor: Tensor, config: ModelConfig) -> dict[str, Tensor]:
    """One Huginn tensor -> the tensor(s) of ours it holds (renames share storage; q/k rows are permuted)."""
    if name in TOP_RENAMES_INV:
        return {TOP_RENAMES_INV[name]: tensor}
    ours, rest = _our_block_prefix(name)
    heads, perm, h = config.n_heads, rope_permutation(config.head_dim), config.d_model
    if rest == "attn.Wqkv.weight":  # (3h, h): rows q | k | v
        q, k, v = tensor.split(h, dim=0)
        return {f"{ours}.attn.qkv.weight": torch.cat((_permute_heads(q, heads, perm),
                                                      _permute_heads(k, heads, perm), v))}
    if rest == "attn.qk_bias":  # (2, 1, heads, hd) -> q_bias, k_bias: (heads, 1, hd)
        q_bias, k_bias = tensor[:, 0][..., perm].unsqueeze(2)
        return {f"{ours}.attn.q_bias": q_bias.contiguous(), f"{ours}.attn.k_bias": k_bias.contiguous()}
    return {f"{ours}.{BLOCK_RENAMES_INV[rest]}": tensor}


def export_tensor(name: str, state: Mapping[str, Tensor], config: ModelConfig) -> Tensor:
    """The Huginn tensor ``name``, built from our state dict ``state`` (the inverse of :func:`import_tensor`)."""
    if name in TOP_RENAMES_INV:
        ours = TOP_RENAMES_INV[name]
        return state["embed.weight" if ours == "lm_head.weight" and config.tie_embeddings else ours]
    ours, rest = _our_block_prefix(name)
    heads, inverse, h = config.n_heads, torch.argsort(rope_permutation(config.head_dim)), config.d_model
    if rest == "attn.Wqkv.weight":
        q, k, v = state[f"{ours}.attn.qkv.weight"].split(h, dim=0)
        return torch.cat((_permute_heads(q, heads, inverse), _permute_heads(k, heads, inverse), v))
    if rest == "attn.qk_bias":  # (heads, 1, hd) twice -> (2, 1, heads, hd)
        pair = torch.stack((state[f"{ours}.attn.q_bias"], state[f"{ours}.attn.k_bias"]))  # (2, heads, 1, hd)
        return pair.transpose(1, 2)[..., inverse].contiguous()
    return state[f"{ours}.{BLOCK_RENAMES_INV[rest]}"]


class HuginnAdapter:
    """The :class:`~recurrent_lm.interop.adapter.StateDictAdapter` of the format for one ``config``."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def key_map(self) -> dict[str, tuple[str, ...]]:
        return {name: self._targets(name) for name in huginn_shapes(self.config)}

    def _targets(self, name: str) -> tuple[str, ...]:
        if name in TOP_RENAMES_INV:
            return (TOP_RENAMES_INV[name],)
        ours, rest = _our_block_prefix(name)
        if rest == "attn.Wqkv.weight":
            return (f"{ours}.attn.qkv.weight",)
        if rest == "attn.qk_bias":
            return (f"{ours}.attn.q_bias", f"{ours}.attn.k_bias")
        return (f"{ours}.{BLOCK_RENAMES_INV[rest]}",)

    def to_ours(self, theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for name, tensor in theirs.items() for k, v in import_tensor(name, tensor, self.config).items()}

    def from_ours(self, ours: Mapping[str, Tensor], names: Optional[Iterable[str]] = None) -> dict[str, Tensor]:
        return {name: export_tensor(name, ours, self.config) for name in (self.key_map() if names is None else names)}


def _our_block_prefix(name: str) -> tuple[str, str]:
    """'transformer.core_block.3.attn.Wqkv.weight' -> ('core.3', 'attn.Wqkv.weight')."""
    parts = name.split(".")
    if len(parts) < 4 or parts[0] != "transformer" or parts[1] not in STACKS_INV or not parts[2].isdigit():
        raise FormatError(f"tensor {name!r} is not part of the Huginn format")
    return f"{STACKS_INV[parts[1]]}.{parts[2]}", ".".join(parts[3:])


def rope_table(config: ModelConfig) -> Tensor:
    """The format's saved RoPE buffer for ``config``: (1, block_size, 1, head_dim/2, [cos, sin]), fp32.

    Angles position·θ^(−2i/d) in fp32, as the format computes them, so an exported table equals the one its
    own code would register.
    """
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))  # (d/2,)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)  # (T, d/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)[None, :, None]  # (1, T, 1, d/2, 2)


def rope_table_problem(table: Tensor, config: ModelConfig) -> str | None:
    """Why a saved RoPE table disagrees with the one ``config`` implies (shape, θ, layout), or None."""
    expected = rope_table(config)
    if tuple(table.shape) != tuple(expected.shape):
        return f"has shape {tuple(table.shape)}, expected {tuple(expected.shape)} from block_size and head_dim"
    # bf16/fp16 tables hold ~3 significant digits; fp32 angles at position 4096 drift by ~1e-3 rad at most.
    atol = 2e-2 if table.dtype in (torch.bfloat16, torch.float16) else 2e-3
    err = (table.float() - expected).abs().max().item()
    if not err <= atol:  # NaN fails too
        return f"differs from the table rope_base={config.rope_theta} implies by {err:.3g} (tolerance {atol})"
    return None
