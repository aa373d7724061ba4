"""The lm-eval model args of ``recurrent_lm``: what each means, and one parser per arg.

Each parser turns the string lm-eval hands over into a value, or raises :class:`EvalError` naming the
arg and the fix, so the model refuses bad input before it loads anything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.evaluation.errors import EvalError, ModelNotFoundError
from recurrent_lm.loop.exit_spec import EXIT_CHOICES, DepthRequest, ExitSpec, resolve_depth
from recurrent_lm.model.cache import CACHE_STRATEGIES, DEFAULT_KV_WINDOW
from recurrent_lm.model.device import pick_device
from recurrent_lm.model.io import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, model_dir_problem
from recurrent_lm.model.precision import resolve_dtype

log = logging.getLogger(__name__)

MODEL_ARGS: dict[str, str] = {
    "pretrained": "exported model directory (config.json + model.safetensors + tokenizer.json), or a run "
                  "directory holding one in export/",
    "num_steps": "core iterations per token (test-time depth r); default: the model's mean_recurrence",
    "exit": f"per-token exit criterion: {' | '.join(EXIT_CHOICES)} (num_steps, or max_steps, is the cap)",
    "threshold": "exit threshold; default: the criterion's own default",
    "min_steps": "iterations every token gets before the exit criterion is checked (default 1)",
    "max_steps": "per-token cap on core iterations; default: num_steps",
    "kv_cache": f"KV cache strategy for generate_until: {' | '.join(CACHE_STRATEGIES)} (default full)",
    "kv_window": f"iterations kept per core layer with kv_cache=compressed (default {DEFAULT_KV_WINDOW})",
    "seed": "seeds the random initial states (models with init_scale > 0) and sampling (default 0)",
    "batch_size": "requests per forward (int; 'auto' uses max_batch_size or 16)",
    "max_batch_size": "upper bound used by batch_size=auto",
    "dtype": "float32 | bfloat16 | float16 | auto (bfloat16 where the device computes it natively, float16 on an "
             "older GPU, else float32: model/precision.py)",
    "device": "auto | cpu | cuda | cuda:N (a CUDA device on a machine without one is an error)",
    "max_length": "context window in tokens; default and maximum: the model's block_size",
    "max_gen_toks": "default generation budget when a task sets none (default 256)",
    "tokenizer": "tokenizer.json to use instead of <pretrained>/tokenizer.json",
    "chat_template": "true: wrap each context in the model's chat template (tokenizer_config.json or "
                     "chat_template.jinja) as a user turn with the generation prompt; or a .jinja path; default off",
    "system_prompt": "system turn placed before each context (needs chat_template)",
    "trust_remote_code": "accepted for lm-eval compatibility; ignored",
}
"""Every accepted model arg and its meaning; anything else is refused by name."""

AUTO_BATCH_SIZE = 16


def resolve_model_dir(pretrained: Union[str, os.PathLike]) -> Path:
    """An exported model directory from ``pretrained``: the directory itself, or ``<run>/export``."""
    path = Path(pretrained).expanduser()
    for candidate in (path, path / "export"):
        if (candidate / CONFIG_FILE).is_file():
            problem = model_dir_problem(candidate)
            if problem:
                raise ModelNotFoundError(f"pretrained={pretrained}: {candidate} {problem}; re-export it with "
                                         "`recurrent-lm-export <run_dir>`")
            return candidate
    if not path.exists():
        raise ModelNotFoundError(f"pretrained={pretrained}: no such directory; pass an exported model directory "
                                 "or a training run directory that holds export/")
    raise ModelNotFoundError(f"pretrained={pretrained}: neither an exported model directory ({CONFIG_FILE} + "
                             f"{WEIGHTS_FILE} + {TOKENIZER_FILE}) nor a run directory with export/{CONFIG_FILE}; "
                             "export the run first with `recurrent-lm-export <run_dir>`")


def parse_exit(exit: Any, threshold: Any, min_steps: Any, max_steps: Any) -> ExitSpec:  # noqa: A002
    """The exit model args as one :class:`ExitSpec` (its checks, its messages)."""
    try:
        return ExitSpec.parse(exit, threshold, min_steps, max_steps)
    except ValueError as err:
        raise EvalError(str(err)) from None


def parse_depth(num_steps: DepthRequest, default: int, spec: ExitSpec) -> int:
    """The ``num_steps`` model arg as the cap of core iterations (:func:`resolve_depth`, its messages)."""
    try:
        return resolve_depth(num_steps, default, spec)
    except ValueError as err:
        raise EvalError(str(err)) from None


def load_tokenizer(path: Path):
    """Ours (reserved specials at 0..5), or a foreign tokenizer.json with the specials its directory names."""
    from recurrent_lm.data.tokenizer_dir import load_tokenizer as load_any

    if not path.is_file():
        raise ModelNotFoundError(f"no tokenizer at {path}; export the model with `recurrent-lm-export` (it writes "
                                 f"{TOKENIZER_FILE}) or pass tokenizer=<path to tokenizer.json>")
    return load_any(path)


def parse_device(device: Optional[str]) -> torch.device:
    try:
        return pick_device(device, "device")
    except ValueError as err:
        raise EvalError(str(err)) from None

def parse_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    try:
        return resolve_dtype(dtype, device)
    except ConfigError as err:
        raise EvalError(str(err)) from None

def parse_cache(kv_cache: Any) -> str:
    if kv_cache in (None, True, ""):
        return "full"
    if str(kv_cache) not in CACHE_STRATEGIES:
        raise EvalError(f"kv_cache={kv_cache!r}: choose one of {list(CACHE_STRATEGIES)} (generation always "
                        "caches; 'latest' keeps the least memory)")
    return str(kv_cache)

def parse_kv_window(kv_window: Any) -> int:
    if kv_window in (None, "", "none"):
        return DEFAULT_KV_WINDOW
    try:
        window = int(kv_window)
    except (TypeError, ValueError):
        window = 0
    if window < 1:
        raise EvalError(f"kv_window={kv_window!r}: must be an integer >= 1 (iterations kept per core layer)")
    return window

def parse_batch_size(batch_size: Any, max_batch_size: Any) -> int:
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        size = int(max_batch_size) if max_batch_size else AUTO_BATCH_SIZE
        log.info("batch_size=%s: recurrent_lm does not probe memory; using batch_size=%d", batch_size, size)
        return size
    try:
        size = int(batch_size)
    except (TypeError, ValueError):
        raise EvalError(f"batch_size={batch_size!r}: must be a positive integer or 'auto'") from None
    if size < 1:
        raise EvalError(f"batch_size={batch_size!r}: must be >= 1")
    return size
