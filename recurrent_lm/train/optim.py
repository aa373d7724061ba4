"""The optimizer recipe every training app shares: AdamW with decay on the matmul weights only, and the lr schedule.

A helper that the apps' modules call, not a method they inherit: the no-decay rule recognises embeddings and
norms by what they are (``nn.Embedding``, any ``*Norm`` module), so it holds for any model, recurrent_lm's or a
Hugging Face one (GPT-2's ``transformer.wte``/``wpe`` and ``ln_*``, Llama's ``embed_tokens`` and RMSNorms).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recurrent_lm.train.schema import OptimConfig


def no_decay_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters that take no weight decay: embeddings (a tied head included), norms, biases and
    other vectors (ndim < 2), and recurrent_lm's q/k bias (``*_bias``, 4-d)."""
    exempt = {id(p) for name, p in model.named_parameters() if p.ndim < 2 or name.endswith("_bias")}
    for module in model.modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            exempt.update(id(p) for p in module.parameters(recurse=False))
    return exempt


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW's two groups: decayed matmul weights, and the rest at weight_decay 0 (unless
    ``no_decay_on_norms_biases_embeddings`` is off, then everything is decayed)."""
    exempt = no_decay_parameters(model) if cfg.no_decay_on_norms_biases_embeddings else set()
    params = list(model.parameters())  # shared (tied) parameters once
    return [{"params": [p for p in params if id(p) not in exempt], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, max_steps: int) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW over :func:`param_groups`, stepped per optimizer step."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_multiplier(cfg, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_multiplier(cfg: OptimConfig, max_steps: int):
    """Step -> lr multiplier for the configured schedule (warmup then wsd / cosine / constant).

    A pure function of the step, wrapped in LambdaLR: the scheduler state is just the step count,
    which Lightning checkpoints.
    """
    warmup = cfg.warmup_steps
    floor = cfg.min_lr_ratio
    decay_start = max(warmup, int(max_steps * (1 - cfg.decay_fraction)))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < decay_start:  # wsd: stable phase
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return floor + (1 - floor) * (1 - progress)

    return multiplier
