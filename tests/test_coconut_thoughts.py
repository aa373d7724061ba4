"""Continuous thoughts on the shared loop: equal to the paper's n + 1 uncached passes, for both kinds of model."""

from __future__ import annotations

import pytest
import torch

from recurrent_lm.coconut.backends import Depth, HFBackend, RecurrentBackend, backend_for
from recurrent_lm.coconut.sequences import ThoughtExample, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.lm import IGNORE_INDEX

transformers = pytest.importorskip("transformers", reason="the Hugging Face path needs the hf extra")

VOCAB, PAD, BOT, EOT, LATENT = 64, 2, 3, 4, 5
DEPTH = 3


def recurrent_model() -> RecurrentDepthLM:
    torch.manual_seed(0)
    return RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=64, d_model=32, n_heads=4, n_prelude=1,
                                        n_core=1, n_coda=1, init_scale=0.0, mean_recurrence=DEPTH)).float()


def gpt2_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=0, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).float()


def llama_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=PAD)
    return transformers.LlamaForCausalLM(config).float()


MODELS = {"recurrent": recurrent_model, "gpt2": gpt2_model, "llama": llama_model}


def depth_for(kind: str) -> Depth:
    return Depth(num_steps=DEPTH) if kind == "recurrent" else Depth()


def example(prefix_len: int, thoughts: int, suffix_len: int, seed: int) -> ThoughtExample:
    g = torch.Generator().manual_seed(seed)
    question = torch.randint(6, VOCAB, (prefix_len,), generator=g).tolist()
    suffix = torch.randint(6, VOCAB, (suffix_len,), generator=g).tolist()
    return ThoughtExample((*question, BOT), thoughts, (EOT, *suffix))


def naive_logits(backend, ex: ThoughtExample, depth: Depth) -> torch.Tensor:
    """The reference algorithm: n + 1 full forwards of the whole sequence, no cache reused; after pass k the
    k-th latent slot's embedding becomes the hidden state of the position before it."""
    ids = torch.tensor([[*ex.prefix, *([LATENT] * ex.thoughts), *ex.suffix]])
    embeds = backend.embed(ids)  # (1, L, H)
    mask = torch.ones_like(ids)
    start = len(ex.prefix)
    for k in range(ex.thoughts):
        hidden = backend.forward(embeds, mask, backend.new_cache(), depth).hidden
        embeds = torch.cat((embeds[:, : start + k], hidden[:, start + k - 1: start + k], embeds[:, start + k + 1:]), 1)
    hidden = backend.forward(embeds, mask, backend.new_cache(), depth).hidden
    return backend.logits(hidden)[:, start + ex.thoughts:]  # (1, S, V): the suffix positions


@pytest.mark.parametrize("kind", MODELS)
def test_thoughts_equal_the_uncached_multi_pass_reference(kind):
    model = MODELS[kind]()
    backend = backend_for(model)
    coconut = ContinuousThoughtLM(backend)
    ex = example(prefix_len=9, thoughts=3, suffix_len=6, seed=1)
    batch = collate([ex], PAD)
    out = coconut(batch, depth=depth_for(kind))
    reference = naive_logits(backend, ex, depth_for(kind))
    torch.testing.assert_close(out.logits, reference, atol=2e-5, rtol=1e-4)
    # The gradient flows through the whole chain the same way: compare it on every parameter.
    loss_ref = torch.nn.functional.cross_entropy(reference[0].float(), batch["labels"][0], ignore_index=IGNORE_INDEX)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()), allow_unused=True)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(out.loss, loss_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        if g_ref is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("kind", MODELS)
def test_batched_equals_per_example_with_padding_and_unequal_thoughts(kind):
    model = MODELS[kind]().eval()
    coconut = ContinuousThoughtLM(backend_for(model))
    examples = [example(9, 3, 5, seed=2), example(4, 0, 8, seed=3), example(6, 1, 3, seed=4)]
    batched = coconut(collate(examples, PAD), depth=depth_for(kind))
    for b, ex in enumerate(examples):
        alone = coconut(collate([ex], PAD), depth=depth_for(kind))
        n = len(ex.suffix)
        torch.testing.assert_close(batched.logits[b, :n], alone.logits[0], atol=2e-5, rtol=1e-4)
        assert int(batched.thoughts.used[b]) == ex.thoughts


@pytest.mark.parametrize("kind", MODELS)
def test_zero_thoughts_is_plain_cot_training(kind):
    """With no thought, the loss is the plain LM loss on question <bot> <eot> steps answer, supervised
    from the token after <eot> on."""
    model = MODELS[kind]()
    coconut = ContinuousThoughtLM(backend_for(model))
    ex = example(7, 0, 9, seed=5)
    loss = coconut(collate([ex], PAD), depth=depth_for(kind)).loss
    ids = torch.tensor([[*ex.prefix, *ex.suffix]])
    start = len(ex.prefix)  # the <eot> position: the first that predicts a target
    if kind == "recurrent":
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, start:-1] = ids[0, start + 1:]
        plain = model(ids, num_steps=DEPTH, labels=labels).loss
    else:
        labels = ids.clone()
        labels[0, : start + 1] = IGNORE_INDEX  # HF shifts labels itself
        plain = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss, plain, atol=1e-5, rtol=1e-5)


def test_no_grad_thoughts_cut_the_gradient_to_early_thoughts():
    """Truncation comes from the loop's no-grad prefix: with all thoughts frozen, the loss no longer reaches
    the prefix through them, so the gradient differs from full backprop; the values do not."""
    model = recurrent_model()
    coconut = ContinuousThoughtLM(backend_for(model))
    batch = collate([example(6, 3, 4, seed=6)], PAD)
    full = coconut(batch, depth=Depth(num_steps=DEPTH))
    cut = coconut(batch, depth=Depth(num_steps=DEPTH), no_grad_thoughts=3)
    torch.testing.assert_close(full.loss, cut.loss)
    g_full = torch.autograd.grad(full.loss, model.adapter.weight)[0]
    g_cut = torch.autograd.grad(cut.loss, model.adapter.weight)[0]
    assert not torch.allclose(g_full, g_cut)


def test_thought_exit_stops_rows_whose_thoughts_converge():
    """A thought exit is the loop's criterion on the (B, H) thought: a row stops once successive thoughts
    change by less than the threshold; the count stays the bound."""
    model = recurrent_model().eval()
    coconut = ContinuousThoughtLM(backend_for(model))
    batch = collate([example(6, 8, 4, seed=7), example(5, 8, 4, seed=8)], PAD)
    with torch.no_grad():
        bound = coconut(batch, depth=Depth(num_steps=DEPTH))
        never = coconut(batch, depth=Depth(num_steps=DEPTH), thought_exit=ExitSpec("convergence", threshold=0.0))
        always = coconut(batch, depth=Depth(num_steps=DEPTH), thought_exit=ExitSpec("convergence", threshold=1e9))
    assert bound.thoughts.used.tolist() == [8, 8] == never.thoughts.used.tolist()
    assert always.thoughts.used.tolist() == [1, 1]
    torch.testing.assert_close(never.logits, bound.logits)
    assert not torch.allclose(always.logits, bound.logits)


def test_thoughts_times_depth_spend_core_iterations_per_thought():
    model = recurrent_model().eval()
    coconut = ContinuousThoughtLM(backend_for(model))
    batch = collate([example(6, 4, 4, seed=9), example(6, 2, 4, seed=10)], PAD)
    with torch.no_grad():
        fixed = coconut(batch, depth=Depth(num_steps=5))
        adaptive = coconut(batch, depth=Depth(num_steps=5, exit=ExitSpec("convergence", threshold=1e9)))
    assert fixed.thoughts.core_steps.tolist() == [20, 10]
    assert adaptive.thoughts.core_steps.tolist() == [4, 2]  # one core iteration per thought


def test_hf_backend_refuses_a_depth():
    with pytest.raises(ValueError, match="no recurrent core"):
        HFBackend(gpt2_model()).forward(torch.zeros(1, 1, 32), torch.ones(1, 1), None, Depth(num_steps=4))


def test_recurrent_backend_s0_table_makes_thoughts_batch_invariant():
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=64, d_model=32, n_heads=4, init_scale=1.0,
                                         mean_recurrence=DEPTH)).eval()
    coconut = ContinuousThoughtLM(RecurrentBackend(model, s0_seed=0))
    examples = [example(9, 2, 5, seed=11), example(3, 2, 5, seed=12)]
    with torch.no_grad():
        batched = coconut(collate(examples, PAD))
        alone = coconut(collate(examples[1:], PAD))
    torch.testing.assert_close(batched.logits[1], alone.logits[0], atol=2e-5, rtol=1e-4)
