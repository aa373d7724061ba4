"""Compaction (exited tokens stop costing compute) gives exactly the masked computation's results."""

from __future__ import annotations

import pytest
import torch

from recurrent_lm.infer import GenerationConfig, generate
from recurrent_lm.loop import ExitSpec, unroll
from recurrent_lm.loop.compaction import Subset
from recurrent_lm.model.cache import CACHE_STRATEGIES, RecurrentKVCache

# Thresholds at which the tiny zero-init model's tokens exit at different depths (checked in each test).
SPECS = [("convergence", 0.05), ("causal_convergence", 0.05), ("sequence_convergence", 0.2), ("kl", 1e-3),
         ("entropy", 1e-2), ("argmax", 2)]
CAP = 12


@pytest.fixture(scope="module")
def model():
    from conftest import load_preset
    from recurrent_lm.model import ModelConfig, RecurrentDepthLM

    torch.manual_seed(0)
    return RecurrentDepthLM(ModelConfig(**{**load_preset("tiny"), "init_scale": 0.0})).eval()


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, :2] = 0
    return ids, mask


def run_both(model, fn):
    """fn() under masking, then compacting every step where a token has exited (restoring the model's setting)."""
    results = []
    default = model.compact_exits
    for compact in (0.0, 1.0):
        model.compact_exits = compact
        try:
            results.append(fn())
        finally:
            model.compact_exits = default
    return results


def test_subset_gathers_and_scatters_active_positions_in_order():
    mask = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    sub = Subset.of(mask)
    assert sub.rows.tolist() == [0, 2] and sub.size == 5
    assert sub.index.tolist() == [[1, 3, 1], [0, 1, 2]] and sub.valid.tolist() == [[True, True, False], [True] * 3]
    x = torch.arange(12.0).view(3, 4, 1)
    part = sub.gather(x)  # (2, 3, 1)
    assert part[..., 0].tolist() == [[1, 3, 1], [8, 9, 10]]
    back = sub.scatter(torch.zeros_like(x), part + 100)
    assert torch.equal(back[..., 0] != 0, mask)


@pytest.mark.parametrize("strategy", CACHE_STRATEGIES)
@pytest.mark.parametrize("name,threshold", SPECS)
def test_compaction_equals_masking_in_padded_prefill_and_batched_decoding(model, name, threshold, strategy):
    ids, mask = left_padded_batch()
    spec = ExitSpec(name, threshold)

    def prefill_then_decode():
        cache = RecurrentKVCache(strategy, 2 if strategy == "compressed" else None)
        with torch.no_grad():
            first = model(ids, num_steps=CAP, attention_mask=mask, past_key_values=cache,
                          exit_criterion=spec.build(watch=mask.bool()))
            longer = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            nxt = model(first.logits[:, -1].argmax(-1, keepdim=True), num_steps=CAP, attention_mask=longer,
                        past_key_values=cache, exit_criterion=spec.build())
        return first, nxt

    (masked, masked_next), (compact, compact_next) = run_both(model, prefill_then_decode)
    real = mask.bool()
    assert len(set(masked.steps_used[real].tolist())) > 1, "tokens must exit at different depths"
    assert torch.equal(compact.steps_used, masked.steps_used)
    torch.testing.assert_close(compact.logits[real], masked.logits[real], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(compact.state[real], masked.state[real], atol=2e-6, rtol=1e-5)
    assert torch.equal(compact_next.steps_used, masked_next.steps_used)
    torch.testing.assert_close(compact_next.logits, masked_next.logits, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("strategy", CACHE_STRATEGIES)
@pytest.mark.parametrize("name,threshold", [("convergence", 0.05), ("kl", 1e-3)])
def test_compaction_equals_masking_over_a_whole_left_padded_generation(model, name, threshold, strategy):
    prompts = [[5, 9, 33, 7, 101, 2, 8], [17, 4], [250, 251, 252, 9]]
    config = GenerationConfig(max_new_tokens=6, num_steps=CAP, exit=ExitSpec(name, threshold), kv_cache=strategy,
                              kv_window=2)
    masked, compact = run_both(model, lambda: generate(model, prompts, config, return_logits=True))
    assert compact.tokens == masked.tokens and compact.steps == masked.steps
    assert len({s for row in masked.steps for s in row}) > 1
    for a, b in zip(compact.logits, masked.logits):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_compaction_leaves_gradients_unchanged(model):
    ids, mask = left_padded_batch()
    labels = torch.where(mask.bool(), torch.roll(ids, -1, 1), torch.full_like(ids, -100))

    def grads():
        model.zero_grad()
        out = model(ids, num_steps=CAP, attention_mask=mask, labels=labels,
                    exit_criterion=ExitSpec("convergence", 0.05).build())
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (loss_m, g_m), (loss_c, g_c) = run_both(model, grads)
    model.zero_grad()
    torch.testing.assert_close(loss_c, loss_m, atol=1e-6, rtol=1e-6)
    assert g_m.keys() == g_c.keys() and len(g_m) > 5
    for name in g_m:
        torch.testing.assert_close(g_c[name], g_m[name], atol=1e-6, rtol=1e-4, msg=name)


def test_compacted_loop_computes_only_active_elements():
    """The loop's element-step count: masked computes every element each step, compacted only the active."""
    state = torch.randn(2, 5, 8)
    # each element contracts at its own rate: row 0 fast (its tokens exit one after another), row 1 slowly
    rates = torch.cat((torch.linspace(0.05, 0.3, 5), torch.full((5,), 0.97))).view(2, 5, 1)

    def step(s, i, active):  # s -> r s + (1 − r): converges to 1, the faster the smaller r
        r = rates if not isinstance(active, Subset) else active.gather(rates)
        return r * s + (1 - r)

    masked = unroll(step, state, 0, 20, criterion=ExitSpec("convergence", 0.05).build(), sequence_axis=1)
    compact = unroll(step, state, 0, 20, criterion=ExitSpec("convergence", 0.05).build(), sequence_axis=1,
                     compact=1.0)
    half = unroll(step, state, 0, 20, criterion=ExitSpec("convergence", 0.05).build(), sequence_axis=1,
                  compact=0.5)  # compacts only once at most half of the batch's padded sub-batch is left
    assert torch.equal(compact.steps_used, masked.steps_used)
    torch.testing.assert_close(compact.state, masked.state)
    assert masked.computed == masked.steps_used.max() * 10  # every element, each step the loop ran
    assert compact.computed == int(masked.steps_used.sum()) < masked.computed
    torch.testing.assert_close(half.state, masked.state)
    assert compact.computed < half.computed < masked.computed


def test_compaction_is_refused_on_a_state_without_a_sequence_axis():
    with pytest.raises(ValueError, match="compact=1.0 gathers"):
        unroll(lambda s, i, a: s, torch.zeros(4, 8), 0, 2, compact=1.0,
               criterion=ExitSpec("convergence").build())
