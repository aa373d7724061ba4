"""Huginn-0125 checkpoint directories in and out: streamed shard by shard, one copy of the weights at a time.

Import reads each safetensors shard tensor by tensor into fresh memory (:mod:`recurrent_lm.interop.stream`, no
memory map), converts the tensor (a rename, or a permutation of the q/k rows) and keeps only the converted one; the model is then built on the meta device
and takes those tensors over (``assign``), so the weights exist once, plus the tensor being converted.
Export is the mirror image: shards are planned on meta tensors and each is built just before it is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from recurrent_lm.errors import MissingFileError
from recurrent_lm.interop.errors import FormatError
from recurrent_lm.interop.huginn import (ROPE_TABLE, HuginnAdapter, config_from_huginn, config_to_huginn, huginn_shapes,
                                         rope_table, rope_table_problem)
from recurrent_lm.interop.stream import checkpoint_tensors
from recurrent_lm.interop.write import write_converted
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.io import (CONFIG_FILE, atomic_write, make_writable_dir, model_from_state, save_model_dir,
                                   write_weights)

log = logging.getLogger(__name__)


def read_huginn_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{directory} has no {CONFIG_FILE}; pass a Huginn checkpoint directory "
                                "(config.json, model*.safetensors, tokenizer.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FormatError(f"{path} is not valid JSON ({err})") from err
    return config_from_huginn(raw, origin=str(path))


def load_huginn(directory: Path, dtype: Optional[torch.dtype] = None) -> RecurrentDepthLM:
    """A :class:`RecurrentDepthLM` with the weights of the Huginn checkpoint in ``directory``, on the CPU.

    Tensors keep their stored dtype unless ``dtype`` is given (each is cast as it is read, so a cast never
    holds two copies either). Missing, unexpected and misshapen tensors are errors naming the tensor and file.
    """
    directory = Path(directory)
    config = read_huginn_config(directory)
    expected = huginn_shapes(config)
    adapter = HuginnAdapter(config)
    state: dict[str, torch.Tensor] = {}
    found: set[str] = set()
    for stored in checkpoint_tensors(directory):
        name, path = stored.name, stored.path
        _check_known(name, expected, config, path)
        if name == ROPE_TABLE:
            _check_rope(stored.read(), config, path)
            continue
        if name not in expected:  # a tied head's duplicate: the format's loader ties it away too
            log.warning("%s: %s ignored, tie_embeddings is true (the head is the embedding)", path, name)
            continue
        stored.check_shape(expected[name])
        state.update(adapter.to_ours({name: stored.read(dtype)}))  # one tensor at a time: no fused groups here
        found.add(name)
    missing = sorted(set(expected) - found)
    if missing:
        raise FormatError(f"{directory} lacks the tensors {missing[:6]}{' …' if len(missing) > 6 else ''} that its "
                          f"{CONFIG_FILE} implies ({len(missing)} missing); copy every shard, or fix the layer counts "
                          "in config.json")
    return model_from_state(RecurrentDepthLM, config, state, "cpu", f"the converted weights of {directory}")


def _check_known(name: str, expected: dict, config: ModelConfig, path: Path) -> None:
    tied_head = name == "lm_head.weight" and config.tie_embeddings
    if name not in expected and name != ROPE_TABLE and not tied_head:
        raise FormatError(f"{path}: unexpected tensor {name!r}; it is not part of a Huginn checkpoint with the "
                          f"layer counts in {CONFIG_FILE} (check n_layers_in_* and qk_bias)")


def _check_rope(table: torch.Tensor, config: ModelConfig, path: Path) -> None:
    problem = rope_table_problem(table, config)
    if problem:
        raise FormatError(f"{path}: the saved RoPE table {ROPE_TABLE} {problem}; check rope_base, block_size "
                          f"and n_heads in {CONFIG_FILE}")


def save_huginn(model: RecurrentDepthLM, directory: Path, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` as a Huginn checkpoint (config.json, model*.safetensors); refuses before writing when
    the format cannot express the model."""
    config = model.config
    raw = config_to_huginn(config)  # the refusals happen here, before anything is written
    make_writable_dir(directory)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    dtype = state["embed.weight"].dtype
    plan = {name: torch.empty(shape, dtype=dtype, device="meta") for name, shape in huginn_shapes(config).items()}
    plan[ROPE_TABLE] = rope_table(config).to("meta")
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")

    adapter = HuginnAdapter(config)

    def build(name: str) -> torch.Tensor:
        return rope_table(config) if name == ROPE_TABLE else adapter.from_ours(state, [name])[name]

    write_weights(directory, plan, max_shard_size, materialize=build)
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(raw, indent=2, sort_keys=True)))
    return directory


def import_huginn(source: Path, target: Path, dtype: Optional[torch.dtype] = None,
                  max_shard_size: int | str = "5GB") -> Path:
    """Huginn checkpoint directory -> recurrent_lm model directory (weights, config.json, tokenizer files)."""
    return write_converted(load_huginn(source, dtype), save_model_dir, target, source, max_shard_size)


def export_huginn(source: Path, target: Path, max_shard_size: int | str = "5GB") -> Path:
    """recurrent_lm model directory -> Huginn checkpoint directory (weights, config.json, tokenizer files)."""
    return write_converted(RecurrentDepthLM.from_pretrained(source), save_huginn, target, source, max_shard_size)
