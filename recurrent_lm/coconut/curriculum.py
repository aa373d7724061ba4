"""The stage curriculum: which stage each record is laid out at, as a pure function of the epoch.

Being a pure function of (config, epoch, record index, seed) is what makes a resume mid-stage exact:
nothing about the schedule lives in process state. The optimizer is reset where the scheduled stage
changes (:class:`recurrent_lm.coconut.module.OptimizerResetOnStage`), never at every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.errors import ConfigError


def scheduled_stage(config: CoconutConfig, epoch: int) -> int:
    """The stage every record of ``epoch`` trains at, mixing aside.

    ``max_latent_stage + 1`` is the last stage (every step dropped). CoT and no-CoT stay at 0; without
    the curriculum the last stage starts at epoch 0.
    """
    if config.method in ("cot", "no_cot"):
        return 0
    last = config.max_latent_stage + 1
    if not config.curriculum:
        return last
    return min(epoch // config.epochs_per_stage, last)


def record_stage(config: CoconutConfig, epoch: int, index: int, num_steps: int, seed: int) -> int:
    """The stage record ``index`` is laid out at in ``epoch``: the scheduled one, or with probability
    ``uniform_prob`` one drawn uniformly from 0..num_steps (seeded by (seed, epoch, index))."""
    stage = scheduled_stage(config, epoch)
    if config.uniform_prob > 0 and config.thinks:
        rng = np.random.default_rng((seed, epoch, index))
        if rng.random() < config.uniform_prob:
            stage = int(rng.integers(0, num_steps + 1))
    return stage


@dataclass(frozen=True)
class Layout:
    thoughts: int
    """Thought slots (continuous thoughts, or <latent> tokens for the pause baseline)."""
    steps_dropped: int
    """Leading language steps removed from the target."""


def layout(config: CoconutConfig, stage: int, num_steps: int) -> Layout:
    """How a record with ``num_steps`` language steps looks at ``stage``."""
    if config.method == "no_cot":
        return Layout(0, num_steps)
    if stage > config.max_latent_stage:
        slots = config.max_latent_stage if config.pad_latent_to_max else min(num_steps, config.max_latent_stage)
        return Layout(slots * config.thoughts_per_step, num_steps)
    slots = stage if config.pad_latent_to_max else min(stage, num_steps)
    return Layout(slots * config.thoughts_per_step, min(stage, num_steps))


def check_stages(config: CoconutConfig, longest: int, source: str) -> None:
    """Refuse a curriculum whose late stages cannot differ: without padding, a stage past the longest
    record's step count lays every record out as that count does, so those epochs repeat an earlier stage."""
    if config.thinks and config.curriculum and not config.pad_latent_to_max and config.max_latent_stage > longest:
        raise ConfigError(f"coconut.max_latent_stage={config.max_latent_stage} but the longest record of {source} has "
                         f"{longest} steps; with pad_latent_to_max=false stages {longest + 1}..{config.max_latent_stage} "
                         f"would train exactly like stage {longest}. Set coconut.max_latent_stage<={longest} or "
                         "coconut.pad_latent_to_max=true")
