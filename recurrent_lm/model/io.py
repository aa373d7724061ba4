"""A self-contained model directory: config.json + model.safetensors (+ tokenizer.json from export).

Writes are atomic (temp file in the same directory, then ``os.replace``) so an interrupted save
never leaves a truncated file that looks valid. Loads go through safetensors: no pickle.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
from safetensors import SafetensorError
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

from recurrent_lm.errors import ConfigError, MissingFileError, NotWritableError, StorageError, UserError
from recurrent_lm.model.config import ModelConfig

if TYPE_CHECKING:
    from recurrent_lm.model.lm import RecurrentDepthLM

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
LATER_FIELDS = ("scale_embeddings", "norm_before_coda", "rope_scaling")
"""ModelConfig fields added after models were already exported: a config.json without them was written when
their defaults were the only behaviour, so it loads with those defaults."""


FULL_DISK_BYTES = 64 * 2**20
"""Below this much free space a write failure whose type does not say why is reported as a full disk."""
STORAGE_MESSAGES = ("basic_ios::clear", "PytorchStreamWriter", "unexpected pos", "file write failed", "IoError",
                    "No space left")
"""How torch.save (a bare ``basic_ios::clear`` or the zip writer's position check) and safetensors (its own error
type) report a failed write: only these, and OSErrors, are storage failures; any other error is a bug."""


def _is_storage_failure(err: BaseException) -> bool:
    if isinstance(err, UserError):  # already says what to fix
        return False
    if isinstance(err, OSError):
        return True
    chain = [err, err.__cause__, err.__context__]  # torch's zip writer re-raises over the stream's error
    return any(isinstance(e, (RuntimeError, SafetensorError)) and any(m in str(e) for m in STORAGE_MESSAGES)
               for e in chain)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename tmp over ``path``; the old file survives any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if not _is_storage_failure(err):
            raise  # a bug in ``write`` (or an interrupt): its own traceback, not a disk-space story
        space = shutil.disk_usage(path.parent).free
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "Free disk space or choose another directory" if full or space < FULL_DISK_BYTES else \
            "Check the file system (permissions, I/O errors) or choose another directory"
        raise StorageError(f"writing {path} failed ({err}); {space / 2**20:.0f} MiB free on its file system. "
                           f"The previous {path.name}, if any, is intact. {hint}, then run again") from err


def save_model_dir(model: "RecurrentDepthLM", directory: Path, max_shard_size: int | str = "5GB") -> Path:
    """config.json + model.safetensors, or shards + model.safetensors.index.json past ``max_shard_size``.

    A tied head is stored once, as ``embed.weight``. Weights first, config.json last: the small file is the
    commit, so a failed export never pairs a new config.json with old or missing weights.
    """
    from recurrent_lm.model.exit_gate import GATE_PREFIX, save_gate

    make_writable_dir(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    gate = {k: state.pop(k) for k in [k for k in state if k.startswith(GATE_PREFIX)]}
    write_weights(directory, state, max_shard_size)
    if gate:  # its own file: the LM's weights stay those of the model the gate was trained on
        save_gate(gate, directory)
    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True)
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(config))
    return directory


def write_weights(directory: Path, tensors: Mapping[str, torch.Tensor], max_shard_size: int | str,
                  materialize: Optional[Callable[[str], torch.Tensor]] = None) -> None:
    """model.safetensors, or shards + model.safetensors.index.json past ``max_shard_size``, each atomically.

    Sharding is huggingface_hub's (the layout transformers and vLLM read). With ``materialize``, ``tensors``
    only give names, shapes and dtypes (meta tensors do) and ``materialize(name)`` builds each tensor when
    its shard is written: a converted copy of the weights then never exists for more than one shard.
    """
    split = split_torch_state_dict_into_shards(dict(tensors), max_shard_size=max_shard_size)
    build = materialize or tensors.__getitem__
    for filename, names in split.filename_to_tensors.items():
        shard = {name: build(name).contiguous() for name in names}
        atomic_write(directory / filename, lambda p, shard=shard: save_file(shard, str(p), metadata={"format": "pt"}))
        del shard
    index = directory / WEIGHTS_INDEX_FILE
    if split.is_sharded:
        text = json.dumps({"metadata": {**split.metadata, "total_size": sum(t.nbytes for t in tensors.values())},
                           "weight_map": split.tensor_to_filename}, indent=2, sort_keys=True)
        atomic_write(index, lambda p: p.write_text(text))
        (directory / WEIGHTS_FILE).unlink(missing_ok=True)
    else:
        index.unlink(missing_ok=True)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory: model.safetensors, or the shards its index names."""
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    index = directory / WEIGHTS_INDEX_FILE
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{index} is not a safetensors index (no weight_map: {err}); re-export the model") from err
    shards = sorted({directory / name for name in weight_map.values()})
    absent = [p.name for p in shards if not p.is_file()]
    if absent:
        raise MissingFileError(f"model directory {directory} lacks the shards {absent} that {index.name} names; "
                                "copy the whole directory, or re-export the model")
    return shards


def model_dir_problem(directory: Path, need_tokenizer: bool = False) -> Optional[str]:
    """What makes ``directory`` not a model directory ("does not exist", "lacks [...]"), or None.

    The one statement of the contract: config.json, weights (model.safetensors, or shards with
    model.safetensors.index.json) and, for anything that reads text, tokenizer.json.
    """
    if not directory.is_dir():
        return "does not exist"
    missing = [CONFIG_FILE] if not (directory / CONFIG_FILE).is_file() else []
    if not (directory / WEIGHTS_FILE).is_file() and not (directory / WEIGHTS_INDEX_FILE).is_file():
        missing.append(f"{WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE} with its shards)")
    if need_tokenizer and not (directory / TOKENIZER_FILE).is_file():
        missing.append(TOKENIZER_FILE)
    return f"lacks {missing}" if missing else None


def read_config(directory: Path) -> dict[str, Any]:
    problem = model_dir_problem(directory)
    if problem:
        raise MissingFileError(f"model directory {directory} {problem}; export one with `recurrent-lm-export "
                                f"<run_dir>` (it writes {CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE})")
    try:
        return json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{directory / CONFIG_FILE} is not valid JSON ({err}); re-export the model") from err


def load_model_dir(cls: type, directory: Path, map_location: str, overrides: dict[str, Any],
                   attn_backend: str = "sdpa") -> "RecurrentDepthLM":
    stored = read_config(directory)
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - set(LATER_FIELDS)
    missing = sorted(fields - set(stored) - set(overrides))
    if missing:  # a default would silently build another model (a shorter context, another depth)
        raise ConfigError(f"{directory / CONFIG_FILE} lacks {missing}; it is incomplete or from another tool. "
                         "Re-export the model with `recurrent-lm-export <run_dir>`")
    config = ModelConfig.from_stored(stored, **overrides)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            state.update(load_file(str(path), device=map_location))
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"{path} is corrupt or not a safetensors file ({err}); "
                             "re-export the model from its run directory") from err
    model = model_from_state(cls, config, state, map_location, f"the weights in {directory}", attn_backend)
    from recurrent_lm.model.exit_gate import has_gate, load_gate

    if has_gate(directory):
        model.exit_gate = load_gate(directory, config.d_model, map_location).to(next(model.parameters()).dtype)
    return model


def model_from_state(cls: type, config: ModelConfig, state: dict[str, torch.Tensor], map_location: str,
                     origin: str, attn_backend: str = "sdpa") -> "RecurrentDepthLM":
    """A model of ``config`` that takes ownership of the tensors in ``state`` (no copy: built on the meta
    device, then ``assign``), with a tied head re-tied and the RoPE tables computed on ``map_location``."""
    if config.tie_embeddings:  # stored once; exports before sharding may have kept either name
        tied = state.get("embed.weight", state.get("lm_head.weight"))
        if tied is not None:
            state["embed.weight"] = state["lm_head.weight"] = tied
    with torch.device("meta"):
        model = cls(config, attn_backend)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # a missing/unexpected tensor, or a shape other than config.json builds
        raise ConfigError(f"{origin} do not match its config.json ({err}); was config.json edited by hand?") from err
    if config.tie_embeddings:  # assign=True gave each its own tensor object: re-tie the head
        model.lm_head.weight = model.embed.weight
    cos, sin = _rope(config, map_location)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval()


def _rope(config: ModelConfig, device: str):
    from recurrent_lm.model.rope import rope_tables

    cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta, config.rope_scaling)
    return cos.to(device), sin.to(device)


def make_writable_dir(directory: Path, setting: Optional[str] = None) -> None:
    """Create ``directory`` (and parents) or fail naming ``setting`` (the config key that chose it)."""
    what = f"{setting}={directory}" if setting else f"output directory {directory}"
    fix = f"set {setting}= to a writable directory" if setting else "choose a writable path"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotWritableError(f"{what} cannot be created ({err.strerror}); {fix}") from err
    if not os.access(directory, os.W_OK):
        raise NotWritableError(f"{what} is not writable; {fix}")
