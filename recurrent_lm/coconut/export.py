"""A Coconut model directory: the model's own files + tokenizer.json + coconut.json.

The model files are whatever its kind loads from: recurrent_lm's config.json + safetensors, or a Hugging
Face ``save_pretrained`` directory (safetensors). ``coconut.json`` records how the model was trained (method,
thoughts per step, last stage), so an evaluation lays questions out exactly as training did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.tokens import ThoughtTokenizer
from recurrent_lm.errors import MissingFileError
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.io import CONFIG_FILE, TOKENIZER_FILE, atomic_write, model_dir_problem

COCONUT_FILE = "coconut.json"


def save_coconut_model(model: nn.Module, tokenizer: ThoughtTokenizer, config: CoconutConfig, out_dir: Path) -> Path:
    """Write the model, then its tokenizer, then coconut.json last: a directory with coconut.json is complete."""
    out_dir = Path(out_dir)
    if isinstance(model, RecurrentDepthLM):
        model.save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    atomic_write(out_dir / TOKENIZER_FILE, lambda tmp: tokenizer.save(tmp))
    atomic_write(out_dir / COCONUT_FILE, lambda tmp: tmp.write_text(json.dumps(config.to_dict(), indent=2)))
    return out_dir


def is_hf_dir(directory: Path) -> bool:
    """A Hugging Face model directory names its ``model_type`` in config.json; recurrent_lm's does not."""
    return "model_type" in json.loads((directory / CONFIG_FILE).read_text())


def load_coconut_model(directory: Path, device: torch.device = torch.device("cpu"),
                       dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, ThoughtTokenizer, CoconutConfig]:
    """(model in eval mode, tokenizer, training config) from a directory written by :func:`save_coconut_model`."""
    directory = Path(directory)
    for name in (CONFIG_FILE, TOKENIZER_FILE, COCONUT_FILE):
        if not (directory / name).is_file():
            raise MissingFileError(f"{directory} is not a Coconut model directory: {name} is missing; export one "
                                    "with `recurrent-lm-train experiment=coconut_...` (it writes <run_dir>/export) or "
                                    "`recurrent-lm-export <run_dir>`")
    raw = json.loads((directory / COCONUT_FILE).read_text())
    raw.setdefault("layout", "legacy")  # written before layouts were a setting: evaluate as it was trained
    config = CoconutConfig.from_dict(raw)
    if is_hf_dir(directory):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    else:
        problem = model_dir_problem(directory)
        if problem:
            raise MissingFileError(f"{directory} {problem}")
        model = RecurrentDepthLM.from_pretrained(directory)
    model = model.to(device=device, dtype=dtype).eval()
    return model, ThoughtTokenizer.from_file(directory / TOKENIZER_FILE, config.markers), config
