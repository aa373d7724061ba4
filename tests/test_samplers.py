"""Depth samplers: right mean, pure function of (seed, step), n_grad = min(k, r)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from recurrent_lm.loop import DepthSampler, SamplerConfig

N = 100_000
CONFIGS = {
    "poisson_lognormal": SamplerConfig(name="poisson_lognormal", mean=33.0, sigma=0.5, backprop_depth=8, seed=1),
    "fixed": SamplerConfig(name="fixed", mean=12.0, backprop_depth=8),
    "uniform": SamplerConfig(name="uniform", low=2, high=40, backprop_depth=8, seed=2),
    "ramp": SamplerConfig(name="ramp", mean=24.0, ramp_start=4.0, ramp_steps=500, backprop_depth=8, seed=3),
}
EXPECTED_MEAN = {"poisson_lognormal": 33.0, "fixed": 12.0, "uniform": 21.0, "ramp": 24.0}
FIRST_STEP = {"ramp": 500}  # measure the ramp once it has reached its final mean


@lru_cache(maxsize=None)
def draws(name: str) -> np.ndarray:
    """(N, 2) array of (n_no_grad, n_grad) over N consecutive optimizer steps (computed once)."""
    sampler = DepthSampler(CONFIGS[name])
    start = FIRST_STEP.get(name, 0)
    return np.array([sampler(step) for step in range(start, start + N)])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_empirical_mean_matches_configuration(name):
    r = draws(name).sum(axis=1)
    assert abs(r.mean() - EXPECTED_MEAN[name]) <= 0.02 * EXPECTED_MEAN[name], r.mean()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_n_grad_is_min_of_k_and_r(name):
    d = draws(name)
    r = d.sum(axis=1)
    assert (d >= 0).all() and (r >= 1).all()
    assert (d[:, 1] == np.minimum(CONFIGS[name].backprop_depth, r)).all()


@pytest.mark.parametrize("name", ["poisson_lognormal", "uniform", "ramp"])
def test_same_step_same_draw_and_steps_differ(name):
    d = draws(name)
    sampler = DepthSampler(CONFIGS[name])
    start = FIRST_STEP.get(name, 0)
    # Any order, any instance ("another rank", "a resumed run"): the same (seed, step) -> the same draw.
    for step in (start + 7, start + 99_999, start, start + 7):
        assert sampler(step) == tuple(d[step - start])
    other_rank = DepthSampler(SamplerConfig(**vars(CONFIGS[name])))
    assert all(other_rank(start + i) == tuple(d[i]) for i in range(0, N, 997))
    # Different steps give different depths: many distinct values, no long constant runs.
    r = d.sum(axis=1)
    assert len(np.unique(r[:1000])) > 10
    assert (r[1:] != r[:-1]).mean() > 0.8
    # A different seed gives a different sequence.
    reseeded = DepthSampler(SamplerConfig(**{**vars(CONFIGS[name]), "seed": 99}))
    assert [reseeded(start + i)[0] + reseeded(start + i)[1] for i in range(50)] != r[:50].tolist()


def test_fixed_sampler_is_constant():
    assert (draws("fixed") == [4, 8]).all()
    assert DepthSampler(SamplerConfig(name="fixed", mean=3, backprop_depth=8))(0) == (0, 3)


def test_poisson_lognormal_shape_matches_huginn():
    """Huginn's recipe (E[r] ≈ 33): median 29, 95th percentile 67."""
    r = draws("poisson_lognormal").sum(axis=1)
    assert abs(np.median(r) - 29) <= 1
    assert abs(np.percentile(r, 95) - 67) <= 2
    assert r.min() >= 1


def test_uniform_covers_its_range():
    r = draws("uniform").sum(axis=1)
    assert r.min() == 2 and r.max() == 40


def test_ramp_grows_linearly_to_the_mean():
    sampler = DepthSampler(CONFIGS["ramp"])
    assert sampler.mean_at(0) == 4.0
    assert sampler.mean_at(250) == pytest.approx(14.0)
    assert sampler.mean_at(500) == sampler.mean_at(10_000) == 24.0
    early = np.array([sum(sampler(s)) for s in range(0, 50)])
    assert early.mean() < 8  # still near ramp_start


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "geometric"}, "sampler.name"),
    ({"mean": 0.5}, "sampler.mean"),
    ({"backprop_depth": 0}, "sampler.backprop_depth"),
    ({"name": "uniform", "low": 5, "high": 2}, "sampler.low"),
    ({"name": "ramp", "ramp_steps": 0}, "ramp"),
    ({"sigma": -1.0}, "sampler.sigma"),
])
def test_invalid_sampler_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_progressive_draws_k_uniformly_below_the_cap_and_replays():
    sampler = DepthSampler(SamplerConfig(name="uniform", low=1, high=10, backprop_depth=10, progressive=True))
    draws = [sampler(step) for step in range(4000)]
    assert draws == [sampler(step) for step in range(4000)]  # pure in (seed, step)
    assert all(1 <= n_grad <= n_no_grad + n_grad for n_no_grad, n_grad in draws)
    assert any(n_no_grad > 0 for n_no_grad, _ in draws if n_no_grad + _ == 10)  # truncation happens
    full = [n_grad for n_no_grad, n_grad in draws if n_no_grad + n_grad == 10]
    assert abs(sum(full) / len(full) - 5.5) < 0.5  # k ~ U[1, 10] when r = 10
