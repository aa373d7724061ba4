"""Hugging Face Llama checkpoint directories in and out, streamed as the Huginn ones are.

Import reads the safetensors headers first (names and shapes only: the architecture and layer checks
need every name before any data), then streams only the kept layers' tensors into fresh memory
(:mod:`recurrent_lm.interop.stream`), fusing q/k/v and gate/up as their parts arrive; the model is built
on the meta device and takes them over, with the adapter set to [0 | I] (:func:`retrofit_adapter`).
Every refusal happens before DST is created. Export plans the shards on meta tensors and builds each
just before it is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from recurrent_lm.errors import MissingFileError
from recurrent_lm.interop.errors import FormatError
from recurrent_lm.interop.hf_llama import (IGNORED, LayerSlices, LlamaAdapter, check_llama, config_from_llama,
                                           config_to_llama, llama_shapes, retrofit_adapter, source_layers)
from recurrent_lm.interop.stream import checkpoint_tensors
from recurrent_lm.interop.write import write_converted
from recurrent_lm.data.tokenizer_dir import TOKENIZER_FILES
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.io import (CONFIG_FILE, WEIGHTS_INDEX_FILE, atomic_write, make_writable_dir,
                                   model_dir_problem, model_from_state, save_model_dir, write_weights)

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike]
HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", WEIGHTS_INDEX_FILE, *TOKENIZER_FILES]
"""What a Hub download fetches: the config, safetensors weights and tokenizer files, no .bin/.pth copies."""


def resolve_source(source: Source) -> Path:
    """The local checkpoint directory of ``source``: a directory as is, else a Hub name (``owner/name``)
    downloaded with huggingface_hub (imported only then; offline mode and the cache apply as usual)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(source))
    except HFValidationError:
        raise MissingFileError(f"SRC {source} is not a directory, nor a Hugging Face Hub model name (owner/name); "
                                "give a local checkpoint directory (config.json, *.safetensors, tokenizer "
                                "files)") from None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=HUB_PATTERNS))
    except Exception as err:  # offline, unknown, gated or unreachable: huggingface_hub raises a dozen types
        raise MissingFileError(f"SRC {source} is not a local directory, and downloading it from the Hugging Face "
                                f"Hub failed ({type(err).__name__}: {err}); check the name and your access, or "
                                "download it yourself and pass the directory") from err


def read_llama_config(directory: Path) -> dict[str, Any]:
    problem = model_dir_problem(directory)
    if problem:
        raise FormatError(f"{directory} {problem}; pass a Hugging Face checkpoint directory with {CONFIG_FILE} and "
                          "safetensors weights (.bin weights are not read: save them as safetensors first)")
    try:
        return json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise FormatError(f"{directory / CONFIG_FILE} is not valid JSON ({err})") from err


def load_hf_llama(source: Source, prelude: Optional[str] = None, core: Optional[str] = None,
                  coda: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                  block_size: Optional[int] = None) -> RecurrentDepthLM:
    """A :class:`RecurrentDepthLM` retrofitted from the LlamaForCausalLM at ``source`` (a directory or Hub name):
    decoder layers ``prelude``/``core``/``coda`` (slices such as '0:4', see :meth:`LayerSlices.parse`) become
    our stacks, the others are dropped. Tensors keep their stored dtype unless ``dtype`` is given."""
    return _retrofit(resolve_source(source), str(source), prelude, core, coda, dtype, block_size)


def import_hf_llama(source: Source, target: Path, prelude: Optional[str] = None, core: Optional[str] = None,
                    coda: Optional[str] = None, dtype: Optional[torch.dtype] = None, block_size: Optional[int] = None,
                    max_shard_size: int | str = "5GB") -> Path:
    """LlamaForCausalLM directory or Hub name -> recurrent_lm model directory (weights, config.json, tokenizer)."""
    directory = resolve_source(source)
    model = _retrofit(directory, str(source), prelude, core, coda, dtype, block_size)
    return write_converted(model, save_model_dir, target, directory, max_shard_size)


def _retrofit(directory: Path, source: str, prelude: Optional[str], core: Optional[str], coda: Optional[str],
              dtype: Optional[torch.dtype], block_size: Optional[int]) -> RecurrentDepthLM:
    raw = read_llama_config(directory)
    origin = str(directory / CONFIG_FILE)
    shapes = {stored.name: stored.shape for stored in checkpoint_tensors(directory)}  # headers only
    check_llama(raw, list(shapes), origin)
    n_layers = source_layers(raw)
    slices = LayerSlices.parse(prelude, core, coda, n_layers)
    config = config_from_llama(raw, slices, source, origin, block_size)
    expected = llama_shapes(config, n_layers)
    ignored = {name for name in shapes if IGNORED.fullmatch(name)}
    if config.tie_embeddings and "lm_head.weight" in shapes:  # transformers ties it away too
        log.warning("%s: lm_head.weight ignored, tie_word_embeddings is true (the head is the embedding)", directory)
        ignored.add("lm_head.weight")
    unexpected = sorted(set(shapes) - set(expected) - ignored)
    missing = sorted(set(expected) - set(shapes))
    if unexpected or missing:
        raise FormatError(f"{directory}: the weights do not match {CONFIG_FILE} (num_hidden_layers={n_layers}, "
                          f"tie_word_embeddings={config.tie_embeddings}): missing {missing[:6]}, unexpected "
                          f"{unexpected[:6]}; copy every shard, or fix config.json")
    adapter = LlamaAdapter(config, slices, n_layers)
    fills = adapter.key_map()
    waiting = {ours: {name for name, targets in fills.items() if ours in targets} for ours in
               {t for targets in fills.values() for t in targets}}  # our tensor -> the Llama parts it still needs
    state: dict[str, torch.Tensor] = {}
    held: dict[str, torch.Tensor] = {}  # parts read, their fused group not complete yet
    for stored in checkpoint_tensors(directory):
        if stored.name in ignored or not fills[stored.name]:  # ignored, or a dropped layer's: never read
            continue
        stored.check_shape(expected[stored.name])
        held[stored.name] = stored.read(dtype)
        (ours,) = fills[stored.name]
        waiting[ours].discard(stored.name)
        if not waiting[ours]:
            group = {name: held.pop(name) for name, targets in fills.items() if targets == (ours,)}
            state.update(adapter.to_ours(group))
    state["adapter.weight"] = retrofit_adapter(config.d_model, state["embed.weight"].dtype)
    return model_from_state(RecurrentDepthLM, config, state, "cpu", f"the converted weights of {directory}")


def save_hf_llama(model: RecurrentDepthLM, directory: Path, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` as a LlamaForCausalLM directory (config.json, model*.safetensors); refuses, before
    writing anything, a model that is not a plain layer stack at r = 1 (:func:`config_to_llama`)."""
    config = model.config
    raw = config_to_llama(config, model.adapter.weight.detach() if model.adapter is not None else None)
    make_writable_dir(directory)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    dtype = state["embed.weight"].dtype
    n_layers = config.n_prelude + config.n_core + config.n_coda
    plan = {name: torch.empty(shape, dtype=dtype, device="meta")
            for name, shape in llama_shapes(config, n_layers).items()}
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    p, c = config.n_prelude, config.n_core
    adapter = LlamaAdapter(config, LayerSlices((0, p), (p, p + c), (p + c, n_layers)), n_layers)  # every layer, in order
    write_weights(directory, plan, max_shard_size, materialize=lambda name: adapter.from_ours(state, [name])[name])
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(raw, indent=2, sort_keys=True)))
    return directory


def export_hf_llama(source: Path, target: Path, max_shard_size: int | str = "5GB") -> Path:
    """recurrent_lm model directory -> LlamaForCausalLM directory (weights, config.json, tokenizer files)."""
    return write_converted(RecurrentDepthLM.from_pretrained(source), save_hf_llama, target, source, max_shard_size)
