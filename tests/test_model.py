"""The recurrent-depth LM: causality, determinism, truncated backprop, memory, backends, presets,
config errors, persistence and the KV cache. Everything runs on the `tiny` preset in fp32 on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from memory_support import saved_bytes
from omegaconf import OmegaConf

from recurrent_lm.loop import Convergence
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, RecurrentKVCache, count_params
from recurrent_lm.model.attention import _flash

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


VOCAB = 512  # tiny preset


def ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("r", [1, 6])
def test_causal_perturbing_a_token_leaves_earlier_logits_unchanged(tiny_model, r):
    model = tiny_model(init_scale=0.0)
    x = ids(2, 24)
    with torch.no_grad():
        base = model(x, num_steps=r).logits
        for t in (0, 7, 22):
            y = x.clone()
            y[:, t + 1] = (y[:, t + 1] + 1 + torch.arange(2)) % VOCAB
            out = model(y, num_steps=r).logits
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
            # ...and the perturbed position itself does change (the check is not vacuous).
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3


def test_causal_with_random_initial_state_and_fixed_seed(tiny_model):
    model = tiny_model(init_scale=1.0)
    x = ids(1, 16)
    y = x.clone()
    y[0, 9] = (y[0, 9] + 5) % VOCAB
    with torch.no_grad():
        torch.manual_seed(123)
        a = model(x, num_steps=6).logits
        torch.manual_seed(123)
        b = model(y, num_steps=6).logits
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_attention_window_bounds_how_far_information_travels(tiny_model, backend):
    """Each layer sees w − 1 tokens back, so a token reaches (w − 1) × (layers run) positions ahead:
    prelude + r × core + coda layers. Past that reach logits do not move; at it they do."""
    w, r = 3, 2
    model = tiny_model(init_scale=0.0, attn_window=w, attn_backend=backend)
    cfg = model.config
    reach = (w - 1) * (cfg.n_prelude + r * cfg.n_core + cfg.n_coda)
    x = ids(1, reach + 6)
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x, num_steps=r).logits, model(y, num_steps=r).logits
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-3
    assert (a[0, reach] - b[0, reach]).abs().max() > 0  # the farthest reached position does move (weakly)
    torch.testing.assert_close(a[0, reach + 1:], b[0, reach + 1:], rtol=0, atol=0)
    wide = tiny_model(init_scale=0.0, attn_window=x.shape[1], attn_backend=backend)
    with torch.no_grad():  # a window as long as the input is plain causal attention
        torch.testing.assert_close(wide(x, num_steps=r).logits, tiny_model(init_scale=0.0)(x, num_steps=r).logits,
                                   rtol=1e-5, atol=1e-5)


def test_attention_window_with_kv_cache_equals_full_recompute(tiny_model):
    model = tiny_model(init_scale=0.0, attn_window=4)
    x = ids(2, 14)
    with torch.no_grad():
        full = model(x, num_steps=3).logits
        incremental = decode_incrementally(model, x, 5, 3, RecurrentKVCache("full"))
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- determinism
def test_zero_initial_state_is_deterministic(tiny_model):
    model = tiny_model(init_scale=0.0)
    x = ids(3, 16)
    with torch.no_grad():
        a, b = model(x, num_steps=5), model(x, num_steps=5)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.state, b.state)


def test_random_initial_state_is_fresh_per_forward(tiny_model):
    model = tiny_model(init_scale=1.0)
    x = ids(1, 8)
    with torch.no_grad():
        a, b = model(x, num_steps=2).logits, model(x, num_steps=2).logits
        s0 = model.initial_state(torch.empty(4096, model.config.d_model))
    assert not torch.allclose(a, b)
    # Huginn's s_0: truncated normal at ±3σ, σ = sqrt(2/5h), times √h (std ≈ 0.63 before truncation).
    h = model.config.d_model
    sigma = math.sqrt(2 / (5 * h)) * math.sqrt(h)
    assert s0.abs().max() <= 3 * sigma + 1e-6
    assert abs(s0.std().item() - 0.9865 * sigma) < 0.02 * sigma  # std of a ±3σ-truncated normal


def test_batch_equals_rows_one_by_one(tiny_model):
    model = tiny_model(init_scale=0.0)
    x = ids(3, 16)
    with torch.no_grad():
        batched = model(x, num_steps=4).logits
        rows = torch.cat([model(x[i : i + 1], num_steps=4).logits for i in range(3)])
    torch.testing.assert_close(batched, rows, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_left_padded_row_equals_unpadded_row(tiny_model, backend):
    model = tiny_model(init_scale=0.0, attn_backend=backend)
    x = ids(2, 16)
    pad = 6
    short = x[0, pad:]
    padded = torch.cat([torch.full((pad,), 3), short])  # arbitrary pad id: it must be masked out
    batch = torch.stack([padded, x[1]])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    with torch.no_grad():
        out = model(batch, num_steps=4, attention_mask=mask).logits
        alone = model(short[None], num_steps=4).logits
        full_row = model(x[1:2], num_steps=4).logits
    torch.testing.assert_close(out[0, pad:], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], full_row[0], rtol=0, atol=1e-5)
    assert torch.isfinite(out).all()  # padded queries must not produce NaN


# ---------------------------------------------------------------------------------------- truncation
def reference_loss(model: RecurrentDepthLM, x: torch.Tensor, labels: torch.Tensor, s0: torch.Tensor,
                   n_no_grad: int, n_grad: int) -> torch.Tensor:
    """Hand-written truncated unroll from the model's pieces (no `unroll`): detach before the last k."""
    b, t = x.shape
    ctx = model.attention_context(b, t, x.device)
    e = model.embed(x) * math.sqrt(model.config.d_model)
    for j, block in enumerate(model.prelude):
        e = block(e, ctx, ("prelude", j))

    def iteration(s: torch.Tensor, i: int) -> torch.Tensor:
        h = model.adapter(torch.cat((s, e), dim=-1))
        for j, block in enumerate(model.core):
            h = block(h, ctx, ("core", i, j))
        return h

    s = s0
    with torch.no_grad():
        for i in range(n_no_grad):
            s = iteration(s, i)
    s = s.detach()
    for i in range(n_no_grad, n_no_grad + n_grad):
        s = iteration(s, i)
    y = model.norm(s)
    for j, block in enumerate(model.coda):
        y = block(y, ctx, ("coda", j))
    logits = model.lm_head(model.norm(y))
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def grads(model: RecurrentDepthLM) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("checkpointing", [False, True])
def test_truncated_backprop_matches_hand_written_reference(tiny_model, checkpointing):
    model = tiny_model().train()
    model.checkpoint_iterations = checkpointing
    x, labels = ids(2, 12, seed=1), ids(2, 12, seed=2)
    s0 = torch.randn(2, 12, model.config.d_model, generator=torch.Generator().manual_seed(3))

    init = s0.clone().requires_grad_(True)
    model(x, num_steps=(3, 2), labels=labels, init_state=init).loss.backward()
    got = grads(model)
    assert init.grad is None or not init.grad.any(), "gradient leaked through the no-grad prefix"

    reference_loss(model, x, labels, s0, 3, 2).backward()
    want = grads(model)
    assert set(got) == set(want) == {n for n, _ in model.named_parameters()}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)

    # Not vacuous: full backprop through all 5 steps gives different core gradients.
    reference_loss(model, x, labels, s0, 0, 5).backward()
    untruncated = grads(model)
    assert not torch.allclose(untruncated["core.0.mlp.down.weight"], want["core.0.mlp.down.weight"],
                              rtol=1e-3, atol=1e-7)


def test_initial_state_gets_gradient_without_no_grad_prefix(tiny_model):
    model = tiny_model().train()
    x, labels = ids(2, 12, seed=1), ids(2, 12, seed=2)
    init = torch.randn(2, 12, model.config.d_model).requires_grad_(True)
    model(x, num_steps=(0, 2), labels=labels, init_state=init).loss.backward()
    assert init.grad is not None and init.grad.abs().sum() > 0


def test_truncated_backprop_is_the_callers_pair_never_a_model_default(tiny_model):
    """k belongs to the depth sampler: without a pair, training runs r̄ with every step carrying gradient."""
    model = tiny_model(mean_recurrence=5)
    assert model.train().resolve_steps(None) == (0, 5)
    assert model.eval().resolve_steps(None) == (0, 5)
    assert model.resolve_steps(4) == (0, 4)
    assert model.resolve_steps((2, 3)) == (2, 3)


# ---------------------------------------------------------------------------------------- memory
def test_activation_memory_is_flat_in_depth(tiny_model):
    x = ids(2, 32)
    model = tiny_model().train()
    shallow = saved_bytes(model, x, (0, 8))  # r=8, k=8
    deep = saved_bytes(model, x, (56, 8))  # r=64, k=8
    untruncated = saved_bytes(model, x, (0, 64))
    assert shallow > 0
    assert deep <= 1.3 * shallow, (deep, shallow)
    assert untruncated > 4 * shallow  # the measurement does see depth when it should

    model.checkpoint_iterations = True
    checkpointed = saved_bytes(model, x, (56, 8))
    assert checkpointed < 0.7 * deep, (checkpointed, deep)


# ---------------------------------------------------------------------------------------- exit inside the model
def test_model_exit_criterion_bounds(tiny_model):
    model = tiny_model(init_scale=0.0)
    x = ids(2, 10)
    with torch.no_grad():
        fixed = model(x, num_steps=5)
        never = model(x, num_steps=5, exit_criterion=Convergence(0.0))
        one = model(x, num_steps=1)
        always = model(x, num_steps=5, exit_criterion=Convergence(1e9))
    torch.testing.assert_close(never.logits, fixed.logits, rtol=0, atol=1e-6)
    assert (never.steps_used == 5).all()
    assert (always.steps_used == 1).all()
    torch.testing.assert_close(always.logits, one.logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("n_kv_heads", [None, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_and_eager_backends_agree(tiny_model, n_kv_heads, padded):
    sdpa = tiny_model(init_scale=0.0, n_kv_heads=n_kv_heads, attn_backend="sdpa")
    eager = tiny_model(init_scale=0.0, n_kv_heads=n_kv_heads, attn_backend="eager")
    eager.load_state_dict(sdpa.state_dict())
    x = ids(2, 20)
    mask = None
    if padded:
        mask = torch.ones_like(x)
        mask[0, :5] = 0
    with torch.no_grad():
        a = sdpa(x, num_steps=3, attention_mask=mask).logits
        b = eager(x, num_steps=3, attention_mask=mask).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_flash_backend_refused_clearly_without_cuda_or_package(tiny_config):
    usable = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    if usable:
        pytest.skip("flash-attn is usable here; see test_flash_matches_sdpa_on_gpu")
    with pytest.raises(ValueError, match=r"attn_backend='flash'.*(flash-attn|CUDA)"):
        RecurrentDepthLM(tiny_config(), attn_backend="flash")


def test_flash_kernel_refuses_cpu_tensors_and_masks():
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="needs CUDA fp16/bf16"):
        _flash(q, q, q, None)
    with pytest.raises(ValueError, match="plain causal attention only"):
        _flash(q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="needs CUDA and the flash-attn package")
def test_flash_matches_sdpa_on_gpu(tiny_model):
    sdpa = tiny_model(init_scale=0.0, n_kv_heads=2).cuda().to(torch.bfloat16)
    flash = tiny_model(init_scale=0.0, n_kv_heads=2, attn_backend="flash").cuda().to(torch.bfloat16)
    flash.load_state_dict(sdpa.state_dict())
    x = ids(2, 32).cuda()
    with torch.no_grad():
        a, b = sdpa(x, num_steps=3).logits.float(), flash(x, num_steps=3).logits.float()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sdpa_flash_kernel_matches_eager_attention_on_gpu(tiny_model):
    """bf16 on CUDA through torch SDPA's own flash kernel (forced: SDPA raises if that kernel cannot run), the
    flash path of a machine without the flash-attn package, against the plain-matmul backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    eager = tiny_model(init_scale=0.0, attn_backend="eager").cuda().to(torch.bfloat16)
    sdpa = tiny_model(init_scale=0.0).cuda().to(torch.bfloat16)
    sdpa.load_state_dict(eager.state_dict())
    x = ids(2, 32).cuda()
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            a = sdpa(x, num_steps=3).logits.float()
        b = eager(x, num_steps=3).logits.float()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------- presets
def load_preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))


def preset_config(name: str) -> ModelConfig:
    return ModelConfig(**load_preset(name))


@pytest.mark.skipif(not (CONF_DIR / "config.yaml").is_file(), reason="conf/config.yaml not written yet")
def test_hydra_compose_gives_a_model_config():
    from hydra import compose, initialize_config_dir

    from recurrent_lm.train.app import register_configs  # the structured `base_config` schema

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for name in ("tiny", "small", "huginn_3.5b"):
            cfg = compose(config_name="config", overrides=[f"model={name}"])
            assert ModelConfig(**cfg.model) == preset_config(name)


@pytest.mark.parametrize("name,low,high", [("tiny", 1e4, 1e6), ("small", 10e6, 30e6),
                                           ("huginn_3.5b", 3.56e9 * 0.99, 3.56e9 * 1.01)])
def test_presets_have_the_documented_size(name, low, high):
    config = preset_config(name)
    with torch.device("meta"):
        model = RecurrentDepthLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert low <= n <= high, f"{name}: {n:,} parameters"
    assert count_params(model).total == n


def test_huginn_preset_matches_the_published_shape():
    c = preset_config("huginn_3.5b")
    assert (c.n_prelude, c.n_core, c.n_coda, c.d_model, c.n_heads, c.head_dim) == (2, 4, 2, 5280, 55, 96)
    assert (c.ffn_hidden, c.vocab_size, c.block_size, c.rope_theta) == (17920, 65536, 4096, 50_000.0)
    assert c.tie_embeddings and c.qk_bias and c.norm_style == "sandwich" and c.kv_heads == c.n_heads


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("overrides,field", [
    ({"n_heads": 5}, "n_heads"),
    ({"n_heads": 6, "d_model": 66}, "n_heads"),  # divides, but odd head_dim for RoPE
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"injection": "gated"}, "injection"),
    ({"norm_style": "post"}, "norm_style"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"d_model": -64}, "d_model"),
    ({"n_core": 0}, "n_core"),
    ({"block_size": 0}, "block_size"),
    ({"mlp_hidden": 0}, "mlp_hidden"),
    ({"n_prelude": -1}, "n_prelude"),
    ({"init_scale": -1.0}, "init_scale"),
    ({"attn_window": -1}, "attn_window"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "linear"}}, "rope_scaling"),
])
def test_invalid_config_names_the_field(tiny_config, overrides, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        tiny_config(**overrides)


@pytest.mark.parametrize("backend,config,match", [
    ("xformers", {}, r"attn_backend='xformers' is unknown; choose one of \('sdpa', 'flash', 'eager'\)"),
    ("flash", {"attn_window": 8}, r"attn_backend='flash' cannot run ModelConfig\.attn_window=8.*attn_backend='sdpa'"),
])
def test_the_attention_backend_is_checked_when_the_model_is_built(tiny_config, backend, config, match):
    with pytest.raises(ValueError, match=match):
        RecurrentDepthLM(tiny_config(**config), attn_backend=backend)


def test_unknown_config_key_is_refused_by_name():
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig.from_dict({**load_preset("tiny"), "n_layer": 4})


@pytest.mark.parametrize("num_steps", [0, -1, (-1, 2), (0, 0), (2, -1), (1, 2, 3)])
def test_invalid_num_steps(tiny_model, num_steps):
    model = tiny_model()
    with pytest.raises(ValueError, match="num_steps"):
        model(ids(1, 4), num_steps=num_steps)


def test_too_long_input_is_refused(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model(ids(1, model.config.block_size + 1), num_steps=1)


# ---------------------------------------------------------------------------------------- persistence
def test_saved_files_get_ordinary_permissions(tiny_model, tmp_path: Path):
    """Atomic writes go through mkstemp (mode 0600); the result must be readable like any file (umask)."""
    import os

    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644}


def test_save_and_load_round_trip(tiny_model, tmp_path: Path):
    model = tiny_model(init_scale=0.0, n_kv_heads=2)
    model.save_pretrained(tmp_path / "m")
    loaded = RecurrentDepthLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert not loaded.training
    assert loaded.lm_head.weight is loaded.embed.weight  # tying survives the reload
    x = ids(2, 16)
    with torch.no_grad():
        assert torch.equal(model(x, num_steps=3).logits, loaded(x, num_steps=3).logits)
    eager = RecurrentDepthLM.from_pretrained(tmp_path / "m", attn_backend="eager")
    assert eager.attn_backend == "eager" and {m.backend for m in eager.modules() if hasattr(m, "backend")} == {"eager"}
    assert "attn_backend" not in json.loads((tmp_path / "m" / "config.json").read_text())  # a runtime choice


def test_config_json_from_before_the_later_fields_loads_with_their_defaults(tiny_model, tmp_path: Path):
    """Exports older than scale_embeddings / norm_before_coda / rope_scaling meant their defaults; any other
    missing field is still refused."""
    model = tiny_model(init_scale=0.0)
    model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    for name in ("scale_embeddings", "norm_before_coda", "rope_scaling"):
        del stored[name]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert RecurrentDepthLM.from_pretrained(tmp_path).config == model.config
    del stored["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"lacks \['rope_theta'\]"):
        RecurrentDepthLM.from_pretrained(tmp_path)


def test_round_trip_untied(tiny_model, tmp_path: Path):
    model = tiny_model(init_scale=0.0, tie_embeddings=False)
    model.save_pretrained(tmp_path)
    loaded = RecurrentDepthLM.from_pretrained(tmp_path)
    x = ids(1, 8)
    with torch.no_grad():
        assert torch.equal(model(x, num_steps=2).logits, loaded(x, num_steps=2).logits)


def test_corrupt_or_missing_weights_raise_clear_errors(tiny_model, tmp_path: Path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"

    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        RecurrentDepthLM.from_pretrained(tmp_path / "m")
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        RecurrentDepthLM.from_pretrained(tmp_path / "m")

    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RecurrentDepthLM.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RecurrentDepthLM.from_pretrained(tmp_path / "nowhere")

    model.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RecurrentDepthLM.from_pretrained(tmp_path / "other")


def test_sharded_export_round_trips(tiny_model, tmp_path: Path):
    """Past max_shard_size the weights go into shards plus model.safetensors.index.json (huggingface_hub's
    layout); loading reads them back to identical logits. A missing shard is named."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "single")
    from recurrent_lm.model.io import save_model_dir

    save_model_dir(model, tmp_path / "sharded", max_shard_size=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
    assert "lm_head.weight" not in index["weight_map"]  # tied: stored once
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    s0 = torch.zeros(2, 12, model.config.d_model)
    with torch.no_grad():
        logits = [RecurrentDepthLM.from_pretrained(tmp_path / d)(x, num_steps=3, init_state=s0).logits
                  for d in ("single", "sharded")]
        reference = model(x, num_steps=3, init_state=s0).logits
    assert torch.equal(logits[0], reference) and torch.equal(logits[1], reference)
    (tmp_path / "sharded" / shards[1]).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks the shards \\['{shards[1]}'\\]"):
        RecurrentDepthLM.from_pretrained(tmp_path / "sharded")


@pytest.mark.parametrize("edit", [{"n_core": 3}, {"mlp_hidden": 128}])
def test_config_not_matching_weights_is_refused(tiny_model, tmp_path: Path, edit):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match="the weights in .* do not match its config.json"):
        RecurrentDepthLM.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------- KV cache
def decode_incrementally(model: RecurrentDepthLM, x: torch.Tensor, prefill: int, r: int,
                         cache: RecurrentKVCache) -> torch.Tensor:
    outs = [model(x[:, :prefill], num_steps=r, past_key_values=cache).logits]
    for t in range(prefill, x.shape[1]):
        outs.append(model(x[:, t : t + 1], num_steps=r, past_key_values=cache).logits)
    assert cache.length == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("strategy,window", [("full", None), ("compressed", 4), ("compressed", 7)])
def test_kv_cache_decode_equals_full_recompute(tiny_model, strategy, window):
    r = 4
    model = tiny_model(init_scale=0.0)
    x = ids(2, 14)
    with torch.no_grad():
        full = model(x, num_steps=r).logits
        cache = RecurrentKVCache(strategy, window)
        incremental = decode_incrementally(model, x, 6, r, cache)
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)
    if strategy == "compressed":
        assert cache.core_slots() <= window


def test_compressed_cache_with_a_short_window_is_an_approximation(tiny_model):
    """window < r reuses slots: it must differ from full (else the window test above is vacuous)."""
    model = tiny_model(init_scale=0.0)
    x = ids(1, 10)
    with torch.no_grad():
        full = model(x, num_steps=4).logits
        approx = decode_incrementally(model, x, 4, 4, RecurrentKVCache("compressed", 2))
    assert not torch.allclose(approx, full, atol=1e-4)


def test_kv_cache_strategy_errors():
    with pytest.raises(ValueError, match="unknown kv_cache strategy"):
        RecurrentKVCache("paged")
    with pytest.raises(ValueError, match="window"):
        RecurrentKVCache("compressed")


def test_readout_depths_equal_separate_forwards_from_one_unroll(tiny_model):
    model = tiny_model()
    x = torch.randint(0, model.config.vocab_size, (2, 10))
    s0 = torch.randn(2, 10, model.config.d_model)
    with torch.no_grad():
        out = model(x, num_steps=6, init_state=s0, readout_depths=[2, 6, 4])
        assert list(out.depth_logits) == [2, 4, 6] and torch.equal(out.depth_logits[6], out.logits)
        for r in (2, 4):
            torch.testing.assert_close(out.depth_logits[r], model(x, num_steps=r, init_state=s0).logits)
        with pytest.raises(ValueError, match=r"readout_depths=\[0, 3\]: each must be in 1..6"):
            model(x, num_steps=6, readout_depths=[0, 3])
