"""Parameter and FLOP accounting against the module tree and torch's FlopCounterMode.

Convention (see recurrent_lm/model/accounting.py): 2 FLOPs per multiply-add, attention counts the
full T×S score matrix, backward = 2× forward, no recomputation. The `eager` attention backend is
measured here because its QKᵀ and AV are plain matmuls that FlopCounterMode sees; on CPU the fused
SDPA kernel has no FLOP formula in torch, so the counter reports its attention as 0.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recurrent_lm.model import count_params, forward_flops_per_token, train_flops_per_token


B, T = 2, 32

VARIANTS = {
    "tiny": {},
    "gqa_untied_add": {"n_kv_heads": 2, "tie_embeddings": False, "injection": "add"},
    "no_prelude": {"n_prelude": 0, "n_coda": 2, "mlp_hidden": 128},
}


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("r", [1, 5])
def test_forward_flops_match_flop_counter(tiny_model, variant, r):
    model = tiny_model(attn_backend="eager", **VARIANTS[variant])
    x = torch.randint(0, 512, (B, T))
    with torch.no_grad():
        measured = counted(lambda: model(x, num_steps=r))
    formula = forward_flops_per_token(model.config, r, context=T) * B * T
    assert measured == pytest.approx(formula, rel=0.05)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n_no_grad,n_grad", [(0, 3), (4, 2)])
def test_train_flops_match_flop_counter(tiny_model, variant, n_no_grad, n_grad):
    model = tiny_model(attn_backend="eager", **VARIANTS[variant]).train()
    x = torch.randint(0, 512, (B, T))

    def step():
        model(x, num_steps=(n_no_grad, n_grad), labels=x).loss.backward()

    measured = counted(step)
    formula = train_flops_per_token(model.config, n_no_grad + n_grad, n_grad, context=T) * B * T
    assert measured == pytest.approx(formula, rel=0.05)


def test_activation_checkpointing_adds_one_forward_of_the_grad_steps(tiny_model):
    """Model FLOPs exclude recomputation; the hardware does k core iterations once more."""
    model = tiny_model(attn_backend="eager").train()
    model.checkpoint_iterations = True
    x = torch.randint(0, 512, (B, T))
    measured = counted(lambda: model(x, num_steps=(2, 3), labels=x).loss.backward())
    cfg = model.config
    core_iteration = forward_flops_per_token(cfg, 1, T) - forward_flops_per_token(cfg, 0, T)
    formula = (train_flops_per_token(cfg, 5, 3, T) + 3 * core_iteration) * B * T
    assert measured == pytest.approx(formula, rel=0.05)


def test_sdpa_on_cpu_counts_no_attention_flops(tiny_model):
    """Documents the torch convention the accounting works around (see the module docstring)."""
    model = tiny_model(attn_backend="sdpa")
    x = torch.randint(0, 512, (B, T))
    with torch.no_grad():
        measured = counted(lambda: model(x, num_steps=3))
    with_attention = forward_flops_per_token(model.config, 3, context=T) * B * T
    without_attention = forward_flops_per_token(model.config, 3, context=0) * B * T
    assert measured == pytest.approx(without_attention, rel=1e-6)  # the fused kernel counts nothing
    assert with_attention > 1.01 * without_attention  # and the attention FLOPs it misses are not negligible
    eager = tiny_model(attn_backend="eager")
    with torch.no_grad():
        assert counted(lambda: eager(x, num_steps=3)) == pytest.approx(with_attention, rel=0.01)  # eager counts them


def test_attention_flops_grow_with_context(tiny_config):
    cfg = tiny_config()
    short, long = forward_flops_per_token(cfg, 4, 16), forward_flops_per_token(cfg, 4, 64)
    per_block = 4 * cfg.n_heads * cfg.head_dim  # QKᵀ + AV per context token, 2 FLOPs per MAC
    assert long - short == per_block * (64 - 16) * (cfg.n_prelude + 4 * cfg.n_core + cfg.n_coda)
    assert forward_flops_per_token(cfg, 4) == forward_flops_per_token(cfg, 4, cfg.block_size)
    assert train_flops_per_token(cfg, 3, 8) == train_flops_per_token(cfg, 3, 3)  # k is capped at r


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_param_split_sums_to_total(tiny_model, variant):
    model = tiny_model(**VARIANTS[variant])
    counts = count_params(model)
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    assert counts.total == total
    assert counts.prelude == sum(p.numel() for p in model.prelude.parameters())
    assert counts.core == sum(p.numel() for p in model.core.parameters())
    assert counts.adapter == (0 if model.adapter is None else 2 * model.config.d_model ** 2)
    assert counts.embedding == model.config.vocab_size * model.config.d_model
    head = model.config.d_model + (0 if model.config.tie_embeddings else model.lm_head.weight.numel())
    assert counts.head == head
    assert counts.unrolled(1) == counts.total
    assert counts.unrolled(7) == counts.total + 6 * (counts.core + counts.adapter)
