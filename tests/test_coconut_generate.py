"""Coconut generation: batched + cached equals one-by-one and the uncached reference; adaptive thoughts; scoring."""

from __future__ import annotations

import pytest
import torch
from test_coconut_thoughts import BOT, DEPTH, EOT, LATENT, PAD, VOCAB, gpt2_model, naive_logits

from recurrent_lm.coconut.backends import Depth, HFBackend, RecurrentBackend
from recurrent_lm.coconut.generate import answer_of, exact_match, generate
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import ModelConfig, RecurrentDepthLM

IDS = SpecialIds(bot=BOT, eot=EOT, latent=LATENT, eos=1, pad=PAD)


def recurrent_lm() -> tuple[ContinuousThoughtLM, Depth]:
    """Random initial states (init_scale 1) drawn from the seeded per-position table: batch-invariant."""
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=64, d_model=32, n_heads=4, n_prelude=1,
                                         n_core=1, n_coda=1, init_scale=1.0, mean_recurrence=DEPTH,
                                         mean_backprop_depth=DEPTH))
    return ContinuousThoughtLM(RecurrentBackend(model, s0_seed=0)), Depth(num_steps=DEPTH)


def gpt2_lm() -> tuple[ContinuousThoughtLM, Depth]:
    """GPT-2 (dropout 0) with matrices spread wider than its 0.02 init, under which greedy output barely varies."""
    model = gpt2_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.1)
    return ContinuousThoughtLM(HFBackend(model)), Depth()


LMS = {"recurrent": recurrent_lm, "gpt2": gpt2_lm}


def prefixes(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[*torch.randint(6, VOCAB, (n,), generator=g).tolist(), BOT] for n in lengths]


@pytest.mark.parametrize("kind", LMS)
def test_batched_generation_equals_one_by_one(kind):
    lm, depth = LMS[kind]()
    questions, bounds = prefixes([9, 3, 6, 1]), [2, 4, 0, 3]
    batched = generate(lm, questions, bounds, IDS, max_new_tokens=6, depth=depth)
    # Make the second token of row 0 an end of sequence: that row stops early and leaves the batch while
    # the others go on, which one-by-one generation must reproduce too.
    ids = SpecialIds(bot=BOT, eot=EOT, latent=LATENT, eos=batched.tokens[0][1], pad=PAD)
    batched = generate(lm, questions, bounds, ids, max_new_tokens=6, depth=depth)
    assert batched.finish_reasons[0] == "eos" and len(batched.tokens[0]) <= 2
    assert "length" in batched.finish_reasons
    for b, (question, bound) in enumerate(zip(questions, bounds)):
        alone = generate(lm, [question], bound, ids, max_new_tokens=6, depth=depth)
        assert batched.tokens[b] == alone.tokens[0]
        assert batched.thoughts[b] == alone.thoughts[0] == bound
        if kind == "recurrent":
            assert batched.token_steps[b] == alone.token_steps[0] == [DEPTH] * len(alone.tokens[0])
            assert batched.thought_steps[b] == bound * DEPTH
        else:
            assert batched.token_steps is None and batched.thought_steps is None
    assert batched.num_generated == sum(bounds) + sum(len(t) for t in batched.tokens)


@pytest.mark.parametrize("kind", LMS)
def test_cached_generation_equals_the_uncached_reference(kind):
    """The reference recomputes the whole sequence for every new token, its thoughts filled by n + 1 passes."""
    lm, depth = LMS[kind]()
    question, bound = prefixes([7], seed=1)[0], 3
    cached = generate(lm, [question], bound, IDS, max_new_tokens=4, depth=depth).tokens[0]
    reference: list[int] = []
    with torch.no_grad():
        for _ in range(len(cached)):
            logits = naive_logits(lm.backend, ThoughtExample(tuple(question), bound, (EOT, *reference)), depth)
            reference.append(int(logits[0, -1].argmax()))
    assert cached == reference


def test_pause_prefix_thinks_no_continuous_thought():
    lm, depth = recurrent_lm()
    out = generate(lm, [[*prefixes([5])[0], LATENT, LATENT]], 0, IDS, max_new_tokens=3, depth=depth)
    assert out.thoughts == [0] and out.thought_steps == [0] and out.num_generated == 3


def test_adaptive_thoughts_between_one_and_the_bound_per_row():
    lm, depth = recurrent_lm()
    questions, bounds = prefixes([5, 8, 4], seed=2), [3, 5, 0]
    never = generate(lm, questions, bounds, IDS, max_new_tokens=2, depth=depth,
                     thought_exit=ExitSpec("convergence", threshold=0.0))
    always = generate(lm, questions, bounds, IDS, max_new_tokens=2, depth=depth,
                      thought_exit=ExitSpec("convergence", threshold=1e9))
    assert never.thoughts == [3, 5, 0]
    assert always.thoughts == [1, 1, 0]
    assert always.thought_steps == [DEPTH, DEPTH, 0]


def test_sampling_is_per_row_and_seeded():
    lm, depth = gpt2_lm()
    questions = prefixes([4, 6], seed=3)
    kwargs = dict(max_new_tokens=5, depth=depth, temperature=1.0, top_k=20, seed=7)
    both = generate(lm, questions, 1, IDS, **kwargs)
    assert both.tokens == generate(lm, questions, 1, IDS, **kwargs).tokens
    assert both.tokens[0] == generate(lm, questions[:1], 1, IDS, **kwargs).tokens[0]
    assert both.tokens != generate(lm, questions, 1, IDS, **{**kwargs, "seed": 8}).tokens


def test_generation_refuses_a_prefix_past_the_context():
    lm, depth = recurrent_lm()
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        generate(lm, prefixes([60]), 4, IDS, depth=depth)
    with pytest.raises(ValueError, match="2 thought bounds for 1 prefixes"):
        generate(lm, prefixes([3]), [1, 2], IDS, depth=depth)


def test_depth_on_a_hugging_face_model_is_refused():
    lm, _ = gpt2_lm()
    with pytest.raises(ValueError, match="no recurrent core"):
        generate(lm, prefixes([3]), 1, IDS, depth=Depth(num_steps=4))


@pytest.mark.parametrize("text, answer", [
    ("Tom is a wumpus.\n### Tom is a yumpus.", "Tom is a yumpus."),
    ("### 12\n### 18 ", "18"),
    ("no mark at all", ""),
    ("### ", ""),
])
def test_answer_is_the_text_after_the_last_mark(text, answer):
    assert answer_of(text) == answer


def test_exact_match_compares_stripped_answers():
    assert exact_match("step\n### 18", " 18\n")
    assert not exact_match("step\n### 180", "18")
    assert not exact_match("18", "18")  # no answer mark: no answer given
