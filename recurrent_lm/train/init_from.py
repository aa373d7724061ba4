"""Start a run from the weights of an exported model directory: ``init_from=DIR``.

Continued training (a model retrofitted from a Hugging Face Llama by ``recurrent-lm-convert --from hf``, an
imported Huginn-0125, another run's export) must build exactly the architecture the weights were made for, so
the architecture comes from ``DIR/config.json``, not from a model group. What the run still decides are the
*recipe* fields: they change how the model is unrolled, trained and evaluated, never a weight's shape or value.
``model=pretrained`` is the group that sets only those.

A run's ``model.*`` that sets an architecture field to something else than DIR holds is refused, naming both
values: silently training another shape, or silently ignoring the setting, would both lose the user's intent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from recurrent_lm.errors import ConfigError, MissingFileError
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.io import TOKENIZER_FILE, model_dir_problem, read_config

RECIPE_FIELDS = ("mean_recurrence", "block_size")
"""ModelConfig fields a run may set on top of init_from's architecture: the default test-time depth, and block_size,
which only sizes the RoPE tables. (Training depth is the sampler's, the attention backend trainer.attn_backend.)
``init_scale`` is not one: with ``injection='add'`` the core's first input is s_0 + e, so the scale of the initial
state is part of the function the weights were trained to compute."""
PRETRAINED_GROUP = "pretrained"
"""The model group that leaves the architecture to init_from (conf/model/pretrained.yaml)."""


def model_config_from(init_from: str, run: ModelConfig) -> ModelConfig:
    """init_from's architecture with the run's recipe fields; refuses a run whose model.* contradicts it.

    An architecture field of ``run`` still at ModelConfig's default is taken as unset: ``model=pretrained``
    leaves them all there.
    """
    directory = Path(init_from).expanduser()
    problem = model_dir_problem(directory)
    if problem:
        raise MissingFileError(f"init_from={init_from} {problem}; point it at a model directory (config.json + "
                                "model.safetensors), e.g. the output of recurrent-lm-convert or of a run's export/")
    stored = ModelConfig.from_stored(read_config(directory))
    default = ModelConfig()
    conflicts = [f"model.{f.name}={getattr(run, f.name)!r} (init_from has {getattr(stored, f.name)!r})"
                 for f in dataclasses.fields(ModelConfig)
                 if f.name not in RECIPE_FIELDS
                 and getattr(run, f.name) not in (getattr(default, f.name), getattr(stored, f.name))]
    if conflicts:
        raise ConfigError(f"init_from={init_from} fixes the architecture, but the run sets {', '.join(conflicts)}; "
                         f"use model=pretrained and set only the recipe fields {list(RECIPE_FIELDS)}")
    return dataclasses.replace(stored, **{name: getattr(run, name) for name in RECIPE_FIELDS})


def tokenizer_of(init_from: str) -> str:
    """init_from's tokenizer.json: a pretrained model's token ids mean nothing with another tokenizer, so a run
    that starts from one packs its data with this one, unchanged, unless data.tokenizer_path names another."""
    path = Path(init_from).expanduser() / TOKENIZER_FILE
    if not path.is_file():
        raise MissingFileError(f"init_from={init_from} has no {TOKENIZER_FILE}, and the model's token ids mean "
                                "nothing without the tokenizer it was trained with; copy it there or set "
                                "data.tokenizer_path")
    return str(path)


def load_initial_model(init_from: str, config: ModelConfig, attn_backend: str = "sdpa") -> RecurrentDepthLM:
    """init_from's weights in a model of ``config`` (from :func:`model_config_from`), in fp32: mixed precision
    keeps fp32 master weights whatever dtype the directory stores (a conversion may write bf16)."""
    recipe = {name: getattr(config, name) for name in RECIPE_FIELDS}
    return RecurrentDepthLM.from_pretrained(Path(init_from).expanduser(), attn_backend=attn_backend,
                                            **recipe).float().train()
