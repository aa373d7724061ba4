"""A self-contained model directory: config.json + model.safetensors (+ tokenizer.json from export).

Writes are atomic (temp file in the same directory, then ``os.replace``) so an interrupted save
never leaves a truncated file that looks valid. Loads go through safetensors: no pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from recurrent_lm.model.config import ModelConfig

if TYPE_CHECKING:
    from recurrent_lm.model.lm import RecurrentDepthLM

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


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
    except (OSError, RuntimeError, SafetensorError) as err:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports ENOSPC as a bare "basic_ios::clear" (or a zip writer position check),
        # safetensors as its own error type: say what was being written and how much space is left
        space = shutil.disk_usage(path.parent).free
        raise OSError(f"writing {path} failed ({err}); {space / 2**20:.0f} MiB free on its file system. "
                      f"The previous {path.name}, if any, is intact. Free disk space or choose another "
                      "directory, then run again") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_dir(model: "RecurrentDepthLM", directory: Path) -> Path:
    make_writable_dir(directory)
    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True)
    # Weights first, config.json last: the small file is the commit, so a failed export never pairs a
    # new config.json with old or missing weights.
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_model(model, str(p)))
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(config))
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if not directory.is_dir() or missing:
        what = "does not exist" if not directory.is_dir() else f"lacks {missing}"
        raise FileNotFoundError(f"model directory {directory} {what}; export one with `recurrent-lm-export "
                                f"<run_dir>` (it writes {CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE})")
    try:
        return json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON ({err}); re-export the model") from err


def load_model_dir(cls: type, directory: Path, map_location: str, overrides: dict[str, Any]) -> "RecurrentDepthLM":
    stored = read_config(directory)
    missing = sorted({f.name for f in dataclasses.fields(ModelConfig)} - set(stored) - set(overrides))
    if missing:  # a default would silently build another model (a shorter context, another depth)
        raise ValueError(f"{directory / CONFIG_FILE} lacks {missing}; it is incomplete or from another tool. "
                         "Re-export the model with `recurrent-lm-export <run_dir>`")
    config = ModelConfig.from_dict({**stored, **overrides})
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device=map_location)
    if config.tie_embeddings:  # to_empty gives each meta parameter its own storage: re-tie the head
        model.lm_head.weight = model.embed.weight
    try:
        missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False, device=map_location)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{directory / WEIGHTS_FILE} is corrupt or not a safetensors file ({err}); "
                         "re-export the model from its run directory") from err
    except RuntimeError as err:  # load_state_dict: a tensor's shape differs from what config.json builds
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match config.json ({err}); "
                         "was config.json edited by hand?") from err
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match config.json: missing={sorted(missing)} "
                         f"unexpected={sorted(unexpected)}; was config.json edited by hand?")
    cos, sin = _rope(config, map_location)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval()


def _rope(config: ModelConfig, device: str):
    from recurrent_lm.model.rope import rope_tables

    cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
    return cos.to(device), sin.to(device)


def make_writable_dir(directory: Path, setting: Optional[str] = None) -> None:
    """Create ``directory`` (and parents) or fail naming ``setting`` (the config key that chose it)."""
    what = f"{setting}={directory}" if setting else f"output directory {directory}"
    fix = f"set {setting}= to a writable directory" if setting else "choose a writable path"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"{what} cannot be created ({err.strerror}); {fix}") from err
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{what} is not writable; {fix}")
