"""Generation-level behaviour of recurrent_lm.infer: cache exactness, batching, exit, warm start, stopping.

The model is the tiny preset with random weights, a zero initial state (init_scale=0) and float64,
so that "equal" can mean equal tokens and equal exit depths, not merely close logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from recurrent_lm.infer import GenerationConfig, generate
from recurrent_lm.model import kv_cache_bytes
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, RecurrentKVCache
from recurrent_lm.model.cache import CACHE_STRATEGIES

TINY = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"
PROMPTS = [[7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37]]




def tiny_model(seed: int = 0, dtype=torch.float64, **overrides) -> RecurrentDepthLM:
    cfg = ModelConfig.from_dict({**yaml.safe_load(TINY.read_text()), "init_scale": 0.0, **overrides})
    torch.manual_seed(seed)
    return RecurrentDepthLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def model() -> RecurrentDepthLM:
    return tiny_model()


def one_by_one(model, prompts, config, **kw):
    """Each prompt alone. Row i of a batch samples with seed + i, so a sampling row gets that seed."""
    return [generate(model, [p], config, seed=config.seed + (0 if config.greedy else i), return_logits=True, **kw)
            for i, p in enumerate(prompts)]


def assert_same_rows(batched, singles):
    for row, single in enumerate(singles):
        assert batched.tokens[row] == single.tokens[0], f"row {row} tokens"
        assert batched.steps[row] == single.steps[0], f"row {row} steps"
        assert batched.finish_reasons[row] == single.finish_reasons[0]
        assert batched.prompt_steps[row] == single.prompt_steps[0]
        torch.testing.assert_close(batched.logits[row], single.logits[0], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ cache exactness

def full_recompute(model, prompt, n, num_steps, criterion=None):
    """Greedy decoding without a cache: the whole sequence again for every token."""
    seq, logits, steps = list(prompt), [], []
    with torch.no_grad():
        for _ in range(n):
            out = model(torch.tensor([seq]), num_steps=num_steps, exit_criterion=criterion)
            logits.append(out.logits[0, -1])
            steps.append(int(out.steps_used[0, -1]))
            seq.append(int(out.logits[0, -1].argmax()))
    return seq[len(prompt):], torch.stack(logits), steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_decoding_equals_full_recomputation(dtype):
    model = tiny_model(dtype=dtype)
    prompt = PROMPTS[0]
    tokens, logits, steps = full_recompute(model, prompt, 10, num_steps=6)
    result = generate(model, [prompt], max_new_tokens=10, num_steps=6, return_logits=True)
    assert result.tokens[0] == tokens
    assert result.steps[0] == steps == [6] * 10
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(result.logits[0], logits.float(), rtol=tol, atol=tol)


def test_cached_decoding_with_exit_equals_full_forward_with_exit(model):
    """An exited token serves its latest K/V to later iterations, with or without a persistent cache."""
    prompt = PROMPTS[2]
    criterion = ExitSpec("convergence", 0.05, 1, 16).build()
    tokens, logits, steps = full_recompute(model, prompt, 10, num_steps=16, criterion=criterion)
    result = generate(model, [prompt], max_new_tokens=10, num_steps=16, exit=ExitSpec("convergence", 0.05),
                      return_logits=True)
    assert len(set(steps)) > 2, "the exit should give varied depths here"
    assert result.tokens[0] == tokens
    assert result.steps[0] == steps
    torch.testing.assert_close(result.logits[0], logits.float(), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("exit_kw", [{}, {"exit": ExitSpec("convergence", 0.05)}])
def test_cached_batched_decoding_on_cuda_equals_cpu(exit_kw):
    """The KV-cached, left-padded batch on CUDA picks the CPU's tokens and depths (float64 on both, so no argmax
    tie can flip); the CPU's are checked against full recomputation above."""
    cpu, gpu = tiny_model(), tiny_model().cuda()
    a, b = (generate(m, PROMPTS, max_new_tokens=10, num_steps=16, return_logits=True, **exit_kw) for m in (cpu, gpu))
    assert a.tokens == b.tokens and a.steps == b.steps
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(y.cpu(), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("exit_kw", [{}, {"exit": ExitSpec("convergence", 0.05)}])
def test_compressed_cache_with_window_at_least_r_equals_full(model, exit_kw):
    r = 8
    config = GenerationConfig(max_new_tokens=8, num_steps=r, **exit_kw)
    full = generate(model, PROMPTS, config, return_logits=True)
    for window in (r, r + 3):
        comp = generate(model, PROMPTS, config, kv_cache="compressed", kv_window=window, return_logits=True)
        assert comp.tokens == full.tokens and comp.steps == full.steps
        for a, b in zip(comp.logits, full.logits):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert comp.cache_bytes == full.cache_bytes
    small = generate(model, PROMPTS, config, kv_cache="compressed", kv_window=2, return_logits=True)
    assert small.cache_bytes < full.cache_bytes
    assert any(not torch.equal(a, b) for a, b in zip(small.logits, full.logits)), \
        "a window of 2 < r must change what the core attends to"


def test_cache_bytes_per_strategy_match_the_formula(model):
    cfg, r, prompt, n = model.config, 6, PROMPTS[0], 7
    tokens = len(prompt) + n - 1  # the last generated token is never fed back
    measured = {}
    for strategy in CACHE_STRATEGIES:
        result = generate(model, [prompt], max_new_tokens=n, num_steps=r, kv_cache=strategy, kv_window=2)
        measured[strategy] = result.cache_bytes
        assert result.cache_bytes == kv_cache_bytes(cfg, tokens, r, strategy, 2, dtype=torch.float64)
    assert measured["latest"] < measured["compressed"] < measured["full"]
    # The benchmark's goal shape: a 4-iteration window at r = 32 is under a quarter of the full cache.
    assert kv_cache_bytes(cfg, 100, 32, "compressed", 4) <= kv_cache_bytes(cfg, 100, 32, "full") / 4


# ------------------------------------------------------------------ batching

BATCH_CASES = {
    "fixed": dict(num_steps=6),
    "convergence": dict(num_steps=12, exit=ExitSpec("convergence", 0.08)),
    "kl": dict(num_steps=12, exit=ExitSpec("kl", 1e-3, min_steps=2)),
    "entropy": dict(num_steps=12, exit=ExitSpec("entropy", 1e-2)),
    "argmax": dict(num_steps=12, exit=ExitSpec("argmax", 2)),
    "causal_convergence": dict(num_steps=12, exit=ExitSpec("causal_convergence", 0.08)),
    "sequence_convergence": dict(num_steps=12, exit=ExitSpec("sequence_convergence", 0.08)),
    "warm_start_exit": dict(num_steps=12, exit=ExitSpec("convergence", 0.08), warm_start=True),
    "compressed_exit": dict(num_steps=12, exit=ExitSpec("convergence", 0.08), kv_cache="compressed", kv_window=3),
    "latest_exit": dict(num_steps=12, exit=ExitSpec("convergence", 0.08), kv_cache="latest"),
    "sampling": dict(num_steps=6, temperature=0.9, top_k=50, top_p=0.9, seed=11),
}


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_batched_left_padded_equals_one_by_one(model, case):
    config = GenerationConfig(max_new_tokens=6, **BATCH_CASES[case])
    batched = generate(model, PROMPTS, config, return_logits=True)
    assert_same_rows(batched, one_by_one(model, PROMPTS, config))
    if config.exit.adaptive:
        depths = {s for row in batched.steps for s in row}
        assert len(depths) > 1, f"{case}: rows should exit at different depths for this test to mean anything"


def test_batched_equals_one_by_one_when_rows_finish_early(model):
    """Rows that hit EOS leave the batch (and the cache) while the others go on."""
    config = GenerationConfig(max_new_tokens=8, num_steps=12, exit=ExitSpec("convergence", 0.08))
    free = generate(model, PROMPTS, config)
    eos = free.tokens[1][2]  # row 1 will stop at its third token
    batched = generate(model, PROMPTS, config, eos_id=eos, return_logits=True)
    assert batched.finish_reasons[1] == "eos" and len(batched.tokens[1]) == 3
    assert any(r == "length" for r in batched.finish_reasons)
    assert_same_rows(batched, one_by_one(model, PROMPTS, config, eos_id=eos))


def test_padded_batch_reaches_the_context_end_like_each_row_alone():
    model = tiny_model(block_size=24)
    prompts = [list(range(10, 30)), [40, 41, 42]]  # 20 and 3 tokens of a 24-token context
    config = GenerationConfig(max_new_tokens=12, num_steps=4)
    batched = generate(model, prompts, config, return_logits=True)
    assert batched.finish_reasons == ["context", "length"]
    assert len(batched.tokens[0]) == 24 - 20 + 1  # the last token is produced, never fed back
    assert_same_rows(batched, one_by_one(model, prompts, config))


def test_random_initial_state_is_seeded_and_batch_invariant():
    model = tiny_model(init_scale=1.0)
    config = GenerationConfig(max_new_tokens=6, num_steps=4, seed=3)
    batched = generate(model, PROMPTS, config, return_logits=True)
    assert_same_rows(batched, one_by_one(model, PROMPTS, config))
    again = generate(model, PROMPTS, config, return_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(again.logits, batched.logits))
    other = generate(model, PROMPTS, config, seed=4, return_logits=True)
    assert not all(torch.equal(a, b) for a, b in zip(other.logits, batched.logits))


# ------------------------------------------------------------------ exit

@pytest.mark.parametrize("criterion", ["convergence", "kl", "entropy"])
def test_exit_with_threshold_zero_equals_fixed_depth(model, criterion):
    r = 6
    fixed = generate(model, PROMPTS, max_new_tokens=6, num_steps=r, return_logits=True)
    exit_ = generate(model, PROMPTS, max_new_tokens=6, num_steps=r, exit=ExitSpec(criterion, 0.0),
                     return_logits=True)
    assert exit_.tokens == fixed.tokens
    assert all(s == r for row in exit_.steps for s in row)
    assert all(s == r for row in exit_.prompt_steps for s in row)
    for a, b in zip(exit_.logits, fixed.logits):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("criterion", ["convergence", "kl", "entropy", "argmax"])
def test_exit_with_min_steps_equal_max_steps_equals_fixed_depth(model, criterion):
    r = 5
    fixed = generate(model, PROMPTS, max_new_tokens=5, num_steps=r, return_logits=True)
    pinned = generate(model, PROMPTS, max_new_tokens=5, num_steps=32,
                      exit=ExitSpec(criterion, 1e9, min_steps=r, max_steps=r), return_logits=True)
    assert pinned.tokens == fixed.tokens
    assert pinned.num_steps == r and all(s == r for row in pinned.steps for s in row)
    for a, b in zip(pinned.logits, fixed.logits):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_exit_respects_min_and_max_steps_and_lowers_depth(model):
    result = generate(model, PROMPTS, max_new_tokens=8, num_steps=16,
                      exit=ExitSpec("convergence", 0.05, min_steps=7, max_steps=12))
    flat = [s for row in result.steps + result.prompt_steps for s in row]
    assert min(flat) >= 7 and max(flat) <= 12
    assert result.num_steps == 12
    loose = generate(model, PROMPTS, max_new_tokens=8, num_steps=16, exit=ExitSpec("convergence", 0.2))
    assert loose.mean_steps < 12


def test_output_based_criteria_count_their_readouts(model):
    """Batch 1: a decode forward checks after each of its iterations from min_steps on, and the
    first check also decodes the previous state: readouts = steps - min_steps + 2."""
    for criterion, threshold, min_steps in (("kl", 1e-3, 1), ("entropy", 1e-2, 3), ("argmax", 2, 2)):
        result = generate(model, [PROMPTS[0]], max_new_tokens=6, num_steps=12,
                          exit=ExitSpec(criterion, threshold, min_steps=min_steps))
        steps, readouts = result.steps[0], result.readouts[0]
        assert readouts[1:] == [s - min_steps + 2 for s in steps[1:]], criterion
    latent = generate(model, [PROMPTS[0]], max_new_tokens=6, num_steps=12, exit=ExitSpec("convergence", 0.05))
    assert latent.total_readouts == 0


def test_warm_start_feeds_the_previous_final_state(model):
    """Reference: the same decode written against the model API, passing init_state by hand."""
    prompt, r, n = PROMPTS[0], 6, 6
    result = generate(model, [prompt], max_new_tokens=n, num_steps=r, warm_start=True, return_logits=True)
    cache = RecurrentKVCache("full")
    with torch.no_grad():
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        out = model(torch.tensor([prompt]), num_steps=r, attention_mask=mask, past_key_values=cache)
        tokens, logits = [], []
        for _ in range(n):
            logits.append(out.logits[0, -1])
            tokens.append(int(out.logits[0, -1].argmax()))
            mask = torch.cat((mask, torch.ones(1, 1, dtype=torch.long)), 1)
            out = model(torch.tensor([[tokens[-1]]]), num_steps=r, attention_mask=mask, past_key_values=cache,
                        init_state=out.state[:, -1:])
    assert result.tokens[0] == tokens
    torch.testing.assert_close(result.logits[0], torch.stack(logits).float(), rtol=1e-10, atol=1e-10)
    cold = generate(model, [prompt], max_new_tokens=n, num_steps=r, return_logits=True)
    assert not torch.allclose(cold.logits[0][1:], result.logits[0][1:]), "warm start must change decoding"
    torch.testing.assert_close(cold.logits[0][0], result.logits[0][0])  # the prefill is the same


# ------------------------------------------------------------------ stopping

def letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_cut_the_text_and_end_the_row(model):
    free = generate(model, PROMPTS, max_new_tokens=10, num_steps=4, decode=letters)
    stop = free.texts[0][4:6]
    first = free.texts[0].find(stop)
    result = generate(model, PROMPTS, max_new_tokens=10, num_steps=4, decode=letters, stop=[stop, "zzzzzz"])
    assert result.finish_reasons[0] == "stop"
    assert result.texts[0] == free.texts[0][:first]
    assert len(result.tokens[0]) == first + len(stop)  # one letter per token here
    for row in (1, 2):
        if stop not in free.texts[row]:
            assert result.texts[row] == free.texts[row] and result.finish_reasons[row] == "length"


def test_step_budget_ends_a_row_once_spent(model):
    free = generate(model, [PROMPTS[0]], max_new_tokens=12, num_steps=16, exit=ExitSpec("convergence", 0.05))
    budget = sum(free.steps[0][:5]) - 1
    result = generate(model, [PROMPTS[0]], max_new_tokens=12, num_steps=16, exit=ExitSpec("convergence", 0.05),
                      step_budget=budget)
    assert result.finish_reasons[0] == "step_budget"
    assert result.tokens[0] == free.tokens[0][:5]
    assert sum(result.steps[0][:-1]) < budget <= sum(result.steps[0])


def test_eos_max_new_tokens_and_streaming_callback(model):
    seen = []
    result = generate(model, PROMPTS, max_new_tokens=3, num_steps=4,
                      on_token=lambda row, tok, steps: seen.append((row, tok, steps)))
    assert all(len(t) == 3 for t in result.tokens) and set(result.finish_reasons) == {"length"}
    for row in range(3):
        assert [(t, s) for r, t, s in seen if r == row] == list(zip(result.tokens[row], result.steps[row]))


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(exit="kl"), "GenerationConfig.exit='kl' is not an ExitSpec; pass exit=ExitSpec"),  # checks: test_exit_spec
    (dict(kv_cache="tiny"), "kv_cache='tiny' is unknown"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_config_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_bad_generate_input_is_rejected(model):
    with pytest.raises(ValueError, match="longer than the model context block_size=64"):
        generate(model, [list(range(6, 71))], max_new_tokens=2)
    with pytest.raises(ValueError, match="is greater than the step cap 4"):
        generate(model, [[7]], num_steps=4, exit=ExitSpec("convergence", min_steps=6))
    with pytest.raises(ValueError, match="stop strings need decode"):
        generate(model, [[7]], stop=["x"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [[7, 9999]])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[7], []])
