"""The one converter protocol: every format's adapter maps our state dict out and back unchanged, and its key map
names exactly the tensors from_ours writes."""

from __future__ import annotations

import pytest
import torch
import transformers

from recurrent_lm.interop import CoconutRefAdapter, HuginnAdapter, LayerSlices, LlamaAdapter
from recurrent_lm.model import ModelConfig, RecurrentDepthLM


def ours(**kw) -> RecurrentDepthLM:
    torch.manual_seed(0)
    return RecurrentDepthLM(ModelConfig(vocab_size=64, block_size=32, d_model=32, n_heads=4, n_prelude=1, n_core=2,
                                        n_coda=1, **kw))


def adapters():
    huginn = ours(injection="linear", norm_style="sandwich", qk_bias=True)
    llama = ours(norm_style="pre", scale_embeddings=False, norm_before_coda=False, qk_bias=False)
    tied = {"lm_head.weight"}  # our tied head is the embedding: neither format stores it
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    yield "huginn", HuginnAdapter(huginn.config), huginn.state_dict(), tied
    yield "llama", LlamaAdapter(llama.config, LayerSlices((0, 1), (1, 3), (3, 4)), 4), llama.state_dict(), \
        tied | {"adapter.weight"}  # a retrofit's adapter is no Llama tensor: it is rebuilt on import
    for wrapped in (True, False):
        yield f"coconut-ref {wrapped}", CoconutRefAdapter(gpt2.state_dict(), wrapped), gpt2.state_dict(), set()


@pytest.mark.parametrize("name, adapter, state, not_theirs", list(adapters()), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_from_ours_then_to_ours_is_the_identity(name, adapter, state, not_theirs):
    theirs = adapter.from_ours(state)
    assert set(theirs) == set(adapter.key_map())
    back = adapter.to_ours(theirs)
    assert set(back) == set(state) - not_theirs
    assert all(torch.equal(back[k], state[k]) for k in back)
    covered = {t for targets in adapter.key_map().values() for t in targets}
    assert covered == set(back)  # the key map says where every tensor goes
