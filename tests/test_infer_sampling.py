"""Token selection: greedy, temperature, top-k, top-p, per-row generators."""

from __future__ import annotations

import math

import pytest
import torch

from recurrent_lm.infer import GenerationConfig, filter_logits, generate, select_tokens
from recurrent_lm.infer.sampling import row_generators
from test_infer_generate import PROMPTS, tiny_model

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]))


def kept(filtered: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row > float("-inf")).flatten().tolist() for row in filtered]


def test_greedy_is_argmax():
    assert select_tokens(LOGITS, temperature=0).tolist() == [0, 3]


def test_top_k_keeps_the_k_largest():
    assert kept(filter_logits(LOGITS, 1.0, top_k=2)) == [[0, 1], [2, 3]]
    assert kept(filter_logits(LOGITS, 1.0, top_k=100)) == [[0, 1, 2, 3]] * 2


@pytest.mark.parametrize("top_p, want", [
    (0.5, [[0], [2, 3]]),         # 0.5 reached by the first token / by 0.4 + 0.3
    (0.6, [[0, 1], [2, 3]]),
    (0.75, [[0, 1], [1, 2, 3]]),  # 0.5 + 0.25 = 0.75 reaches it exactly
    (0.01, [[0], [3]]),           # the most likely token always stays
    (1.0, [[0, 1, 2, 3]] * 2),
])
def test_top_p_keeps_the_smallest_nucleus(top_p, want):
    assert kept(filter_logits(LOGITS, 1.0, top_p=top_p)) == want


def test_temperature_scales_logits():
    torch.testing.assert_close(filter_logits(LOGITS, 0.5), LOGITS * 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(LOGITS, 0.0)


def test_sampling_matches_the_filtered_distribution():
    n = 20000
    logits = LOGITS[:1].expand(n, -1)
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(filter_logits(logits, 1.0, top_p=0.6).softmax(-1), 1, generator=gen).flatten()
    freq = torch.bincount(draws, minlength=4).double() / n
    want = torch.tensor([0.5, 0.25, 0, 0]) / 0.75
    assert (freq - want).abs().max() < 0.015
    hot = select_tokens(logits[:64], temperature=1e-3, generators=row_generators(range(64), torch.device("cpu")))
    assert (hot == 0).all()  # near-zero temperature is greedy


def test_each_row_has_its_own_reproducible_generator():
    logits = torch.zeros(3, 50)
    a = select_tokens(logits, 1.0, generators=row_generators([5, 6, 7], torch.device("cpu")))
    b = select_tokens(logits[1:2], 1.0, generators=row_generators([6], torch.device("cpu")))
    assert a[1] == b[0]


def test_sampled_generation_is_reproducible_and_seed_dependent():
    model = tiny_model()
    config = GenerationConfig(max_new_tokens=6, num_steps=3, temperature=1.0, top_k=40, seed=1)
    first = generate(model, PROMPTS, config)
    assert generate(model, PROMPTS, config).tokens == first.tokens
    assert generate(model, PROMPTS, config, seed=2).tokens != first.tokens
    greedy = generate(model, PROMPTS, config, temperature=0.0)
    assert generate(model, PROMPTS, config, temperature=1.0, top_k=1).tokens == greedy.tokens
    assert generate(model, PROMPTS, config, top_p=1e-6, top_k=None).tokens == greedy.tokens
    assert math.isfinite(first.mean_steps)
