"""The checkpoints of the reference Coconut implementation (facebookresearch/coconut ``run.py``), mapped to ours.

Facts of the format (its ``run.py`` and ``coconut.py``):

* each epoch ``torch.save(model.state_dict())`` to ``checkpoint_<epoch>``: a plain ``.pt`` state dict, no config;
* a Coconut run wraps the Hugging Face model in ``Coconut``, so every key is under ``base_causallm.``; a CoT or
  no-CoT run saves the Hugging Face model itself (plain keys, e.g. GPT-2's ``transformer.h.0.attn.c_attn.weight``);
* the model is ``AutoModelForCausalLM.from_pretrained(model_id)``; a Coconut run adds ``<|start-latent|>``,
  ``<|end-latent|>``, ``<|latent|>`` to the tokenizer with ``add_tokens`` (GPT-2: ids 50257..50259) and resizes the
  embeddings to match; CoT / no-CoT runs leave the model's vocabulary alone;
* the run's settings live in its ``args/*.yaml`` (``c_thought``, ``max_latent_stage``, ``pad_latent_to_max``, ...).

So the weights are the Hugging Face model's own, 1:1; only the prefix differs. Wrapper prefixes that a DDP, FSDP
or compiled model adds (``module.``, ``_fsdp_wrapped_module.``, ``_orig_mod.``) are dropped on import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from torch import Tensor

from recurrent_lm.interop.errors import FormatError

WRAPPED = "base_causallm."
"""Key prefix of a Coconut run's checkpoint (the Coconut module's attribute holding the causal LM)."""
WRAPPERS = re.compile(r"(module\.|_fsdp_wrapped_module\.|_orig_mod\.)")
IGNORED = re.compile(r"(.*\.)?(attn\.(bias|masked_bias)|rotary_emb\.inv_freq)")
"""Non-parameter buffers older transformers saved (GPT-2's causal mask, RoPE frequencies): rebuilt, never loaded."""
THINKING = ("coconut", "pause")
"""Methods whose runs the reference wraps in ``Coconut`` (keys under ``base_causallm.``)."""
ARG_KEYS = {"c_thought": "thoughts_per_step", "epochs_per_stage": "epochs_per_stage",
            "max_latent_stage": "max_latent_stage", "pad_latent_to_max": "pad_latent_to_max",
            "uniform_prob": "uniform_prob"}
"""The reference's args YAML key -> our CoconutConfig field."""


class CoconutRefAdapter:
    """The :class:`~recurrent_lm.interop.adapter.StateDictAdapter` of the format for one Hugging Face model.

    ``names`` are the model's state-dict keys (ours: a Coconut export is the Hugging Face model itself);
    ``wrapped`` says whether their side carries the ``base_causallm.`` prefix (Coconut runs) or not (CoT).
    """

    def __init__(self, names: Iterable[str], wrapped: bool) -> None:
        self.prefix = WRAPPED if wrapped else ""
        self._names = tuple(names)

    def key_map(self) -> dict[str, tuple[str, ...]]:
        return {self.prefix + name: (name,) for name in self._names}

    def to_ours(self, theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name.removeprefix(self.prefix): tensor for name, tensor in theirs.items()}

    def from_ours(self, ours: Mapping[str, Tensor], names: Optional[Iterable[str]] = None) -> dict[str, Tensor]:
        names = self.key_map() if names is None else names
        return {name: ours[name.removeprefix(self.prefix)] for name in names}


def clean_state(raw: Any, origin: str) -> tuple[dict[str, Tensor], bool]:
    """(state without wrapper prefixes and ignored buffers, whether it is a Coconut run's) of a loaded ``.pt``."""
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        raise FormatError(f"{origin} does not hold a state dict (a mapping of tensor names to tensors); pass a "
                          "checkpoint_<epoch> file written by the reference's run.py")
    state = {WRAPPERS.sub("", name): tensor for name, tensor in raw.items()}
    state = {name: tensor for name, tensor in state.items() if not IGNORED.fullmatch(name.removeprefix(WRAPPED))}
    wrapped = {name.startswith(WRAPPED) for name in state}
    if len(wrapped) != 1:
        raise FormatError(f"{origin} mixes keys under {WRAPPED!r} with plain ones; a reference checkpoint has one kind "
                          "(Coconut runs wrap every key, CoT / no-CoT runs none)")
    return state, wrapped.pop()


def method_of(wrapped: bool, requested: Optional[str], origin: str) -> str:
    """The method a checkpoint was trained with: its key prefix says Coconut (or pause) vs CoT (or no-CoT)."""
    if requested is None:
        return "coconut" if wrapped else "cot"
    if (requested in THINKING) != wrapped:
        kind = f"keys under {WRAPPED!r} (a Coconut run)" if wrapped else "plain keys (a CoT / no-CoT run)"
        choices = THINKING if wrapped else ("cot", "no_cot")
        raise FormatError(f"{origin} has {kind}, so --method {requested} does not fit; use one of {choices}")
    return requested


def settings_from_args(path: Optional[Path]) -> dict[str, Any]:
    """CoconutConfig fields from the reference run's ``args/*.yaml`` (empty without one: our defaults, which are
    the reference's ProsQA/ProntoQA recipe)."""
    if path is None:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FormatError(f"--reference-args {path}: cannot be read as YAML ({err})") from err
    if not isinstance(raw, dict):
        raise FormatError(f"--reference-args {path}: expected the reference's args YAML (a mapping)")
    settings = {ours: raw[theirs] for theirs, ours in ARG_KEYS.items() if theirs in raw}
    method = [m for m, flag in (("coconut", "coconut"), ("no_cot", "no_cot"), ("cot", "cot")) if raw.get(flag)]
    if method:
        settings["method"] = method[0]
    return settings
