"""Depth samplers: how many core iterations a training step runs, and how many carry gradient.

Each sampler is a pure function of (seed, optimizer step) -> (n_no_grad, n_grad). Purity buys
two things: a resumed run replays exactly the depths it would have drawn, and every rank draws the
same depth without communicating (no stragglers waiting on a deeper rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recurrent_lm.errors import ConfigError

SAMPLERS = ("poisson_lognormal", "fixed", "uniform", "ramp")


@dataclass
class SamplerConfig:
    """Depth-sampling recipe (the hydra `sampler/` group)."""

    name: str = "poisson_lognormal"
    """One of poisson_lognormal | fixed | uniform | ramp."""
    mean: float = 32.0
    """E[r] for poisson_lognormal and the end of a ramp; r itself for fixed."""
    sigma: float = 0.5
    """Log-normal spread of the Poisson rate."""
    backprop_depth: int = 8
    """k: the last min(k, r) iterations carry gradient."""
    progressive: bool = False
    """Bansal et al.'s progressive loss: k ~ U[1, min(backprop_depth, r)] per step instead of a fixed k,
    so the gradient-carrying steps start after a random number of no-grad ones. Rewards steps that keep
    improving any state, which is what lets the iteration count extrapolate past the training depth."""
    low: int = 1
    """uniform: smallest r (inclusive)."""
    high: int = 64
    """uniform: largest r (inclusive)."""
    ramp_start: float = 4.0
    """ramp: mean at step 0, growing linearly to `mean` over `ramp_steps`."""
    ramp_steps: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ConfigError(f"sampler.name={self.name!r} is unknown; choose one of {SAMPLERS}")
        if self.mean < 1:
            raise ConfigError(f"sampler.mean={self.mean} must be >= 1 (at least one core iteration)")
        if self.backprop_depth < 1:
            raise ConfigError(f"sampler.backprop_depth={self.backprop_depth} must be >= 1")
        if self.name == "uniform" and not 1 <= self.low <= self.high:
            raise ConfigError(f"sampler.low={self.low}, high={self.high}: need 1 <= low <= high")
        if self.name == "ramp" and (self.ramp_start < 1 or self.ramp_steps < 1):
            raise ConfigError("sampler.ramp_start must be >= 1 and sampler.ramp_steps >= 1")
        if self.sigma < 0:
            raise ConfigError(f"sampler.sigma={self.sigma} must be >= 0")


class DepthSampler:
    """(seed, step) -> (n_no_grad, n_grad) for one :class:`SamplerConfig`."""

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config

    def mean_at(self, step: int) -> float:
        c = self.config
        if c.name == "ramp":
            frac = min(1.0, step / c.ramp_steps)
            return c.ramp_start + frac * (c.mean - c.ramp_start)
        if c.name == "uniform":
            return (c.low + c.high) / 2
        return c.mean

    def depth(self, step: int) -> int:
        """Total iterations r at this optimizer step."""
        c = self.config
        if c.name == "fixed":
            return max(1, round(c.mean))
        rng = np.random.default_rng((c.seed, step))
        if c.name == "uniform":
            return int(rng.integers(c.low, c.high + 1))
        return _poisson_lognormal(rng, self.mean_at(step), c.sigma)

    def __call__(self, step: int) -> tuple[int, int]:
        r = self.depth(step)
        n_grad = min(self.config.backprop_depth, r)
        if self.config.progressive:
            n_grad = int(np.random.default_rng((self.config.seed, step, 1)).integers(1, n_grad + 1))
        return r - n_grad, n_grad


def _poisson_lognormal(rng: np.random.Generator, mean: float, sigma: float) -> int:
    """r = 1 + Poisson(τ), τ ~ LogNormal(ln(mean−1) − σ²/2, σ), so that E[r] = mean exactly.

    (Huginn parametrises τ's mean as r̄ and gets E[r] = r̄ + 1; here `mean` is the real expectation.)
    """
    rate_mean = mean - 1.0
    if rate_mean <= 0:
        return 1
    tau = rng.lognormal(math.log(rate_mean) - sigma**2 / 2, sigma)
    return 1 + int(rng.poisson(tau))
