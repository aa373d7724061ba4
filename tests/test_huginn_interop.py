"""Huginn-0125 checkpoints in and out (recurrent_lm.interop, recurrent-lm-convert).

The checkpoints here are synthesized in the format's own names and layout (config keys, fused Wqkv,
qk_bias (2, 1, heads, head_dim), fused gate+up fc, norm_1..4, ln_f, freqs_cis), never through our exporter,
and :func:`reference_logits` is a plain re-implementation of the format's published forward equations
from that state dict, sharing no code with the model: the import must reproduce it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from interop_support import write_bpe_tokenizer
from recurrent_lm.convert import main as convert_main
from recurrent_lm.interop import FormatError, load_huginn, save_huginn
from recurrent_lm.model import ModelConfig, RecurrentDepthLM

H, HEADS, FFN, VOCAB, BLOCK = 32, 4, 48, 300, 64
HUGINN_SPECIALS = ["<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|begin_header|>{{ m['role'] }}<|end_header|>\n\n"
                 "{{ m['content'] }}<|end_turn|>{% endfor %}"
                 "{% if add_generation_prompt %}<|begin_header|>Huginn<|end_header|>\n\n{% endif %}")
SHAPES = {  # (prelude, core, coda, tie_embeddings, qk_bias)
    "released-like": (1, 2, 1, True, True),
    "other-counts": (2, 1, 0, False, False),
}


# ---------------------------------------------------------------------------------------------- a checkpoint
def huginn_config(prelude: int, core: int, coda: int, tie: bool, qk_bias: bool, **changes) -> dict:
    return {"model_type": "huginn_raven", "architectures": ["RavenForCausalLM"], "n_embd": H,
            "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "block_size": BLOCK, "vocab_size": VOCAB,
            "tie_embeddings": tie, "intermediate_size": FFN, "bias": False, "norm_eps": 1e-6,
            "state_init": "like-init", "injection_type": "linear", "n_layers_in_prelude": prelude,
            "n_layers_in_recurrent_block": core, "n_layers_in_coda": coda, "mean_recurrence": 8,
            "mean_backprop_depth": 4, "qk_bias": qk_bias, "rope_base": 50_000, "init_strategy": "takase",
            "torch_dtype": "float32", **changes}


def huginn_state(cfg: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the format's names; norms and biases far from 1 / 0 so any mix-up shows."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    state = {"transformer.wte.weight": rand(VOCAB, H, scale=0.5), "transformer.adapter.weight": rand(H, 2 * H),
             "transformer.ln_f.weight": 1 + rand(H)}
    if not cfg["tie_embeddings"]:
        state["lm_head.weight"] = rand(VOCAB, H)
    for stack, n in (("prelude", cfg["n_layers_in_prelude"]), ("core_block", cfg["n_layers_in_recurrent_block"]),
                     ("coda", cfg["n_layers_in_coda"])):
        for i in range(n):
            p = f"transformer.{stack}.{i}."
            state.update({p + "attn.Wqkv.weight": rand(3 * H, H), p + "attn.proj.weight": rand(H, H),
                          p + "mlp.fc.weight": rand(2 * FFN, H), p + "mlp.proj.weight": rand(H, FFN),
                          **{p + f"norm_{k}.weight": 1 + rand(H) for k in range(1, 5)}})
            if cfg["qk_bias"]:
                state[p + "attn.qk_bias"] = rand(2, 1, HEADS, H // HEADS, scale=1.0)
    d = H // HEADS
    angles = torch.outer(torch.arange(BLOCK).float(), 1.0 / cfg["rope_base"] ** (torch.arange(0, d, 2).float() / d))
    state["freqs_cis"] = torch.stack((angles.cos(), angles.sin()), -1)[None, :, None]  # (1, T, 1, d/2, 2)
    return state


def write_tokenizer(directory: Path, template: bool = True) -> None:
    config = {"bos_token": "<|begin_text|>", "eos_token": {"content": "<|end_text|>"}, "pad_token": "<|pad|>"}
    if template:
        config["chat_template"] = CHAT_TEMPLATE
    write_bpe_tokenizer(directory, VOCAB, HUGINN_SPECIALS, config)


def write_checkpoint(directory: Path, cfg: dict, state: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """config.json + ``shards`` safetensors files with a model.safetensors.index.json, + a tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    names = sorted(state)
    weight_map = {}
    for s in range(shards):
        filename = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[s::shards]}
        save_file(part, str(directory / filename), metadata={"format": "pt"})
        weight_map.update({n: filename for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_tokenizer(directory)
    return directory


@pytest.fixture(scope="module", params=sorted(SHAPES))
def checkpoint(request, tmp_path_factory):
    cfg = huginn_config(*SHAPES[request.param])
    state = huginn_state(cfg)
    return write_checkpoint(tmp_path_factory.mktemp(request.param), cfg, state), cfg, state


# ---------------------------------------------------------------------------------------------- the reference
def reference_logits(sd: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, r: int) -> torch.Tensor:
    """The format's forward in float64, straight from its equations, with a zero initial state. (B, T) -> (B, T, V)."""
    sd = {k: v.double() for k, v in sd.items()}
    h, heads, eps = cfg["n_embd"], cfg["num_attention_heads"], cfg["norm_eps"]
    d, (b, t) = h // heads, ids.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv = 1.0 / cfg["rope_base"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.outer(torch.arange(t, dtype=torch.float64), inv)[None, :, None]  # (1, T, 1, d/2)

    def rope(x):  # (B, T, heads, d), rotating interleaved pairs (x[2i], x[2i+1])
        a, c = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * angle.cos() - c * angle.sin(), c * angle.cos() + a * angle.sin()), -1).flatten(-2)

    def block(x, p):
        q, k, v = (rms(x, sd[p + "norm_1.weight"]) @ sd[p + "attn.Wqkv.weight"].T).split(h, -1)
        q, k, v = (z.reshape(b, t, heads, d) for z in (q, k, v))
        if cfg["qk_bias"]:
            q, k = q + sd[p + "attn.qk_bias"][0], k + sd[p + "attn.qk_bias"][1]
        q, k = rope(q), rope(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, t, h)
        x = rms(y @ sd[p + "attn.proj.weight"].T + x, sd[p + "norm_2.weight"])
        gate, up = (rms(x, sd[p + "norm_3.weight"]) @ sd[p + "mlp.fc.weight"].T).chunk(2, -1)
        return rms((F.silu(gate) * up) @ sd[p + "mlp.proj.weight"].T + x, sd[p + "norm_4.weight"])

    def stack(x, name, n):
        for i in range(n):
            x = block(x, f"transformer.{name}.{i}.")
        return x

    e = stack(sd["transformer.wte.weight"][ids] * math.sqrt(h), "prelude", cfg["n_layers_in_prelude"])
    s = torch.zeros_like(e)
    for _ in range(r):
        s = stack(torch.cat((s, e), -1) @ sd["transformer.adapter.weight"].T, "core_block",
                  cfg["n_layers_in_recurrent_block"])
    x = stack(rms(s, sd["transformer.ln_f.weight"]), "coda", cfg["n_layers_in_coda"])
    head = sd["transformer.wte.weight"] if cfg["tie_embeddings"] else sd["lm_head.weight"]
    return rms(x, sd["transformer.ln_f.weight"]) @ head.T


# ---------------------------------------------------------------------------------------------- import
@pytest.mark.parametrize("r", [1, 4, 8])
def test_import_matches_the_published_equations(checkpoint, r):
    directory, cfg, state = checkpoint
    model = load_huginn(directory)
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(r))
    with torch.no_grad():
        ours = model(ids, num_steps=r, init_state=torch.zeros(2, 11, H)).logits
    expected = reference_logits(state, cfg, ids, r)
    torch.testing.assert_close(ours.double(), expected, atol=5e-4, rtol=1e-4)  # fp32 vs float64; a mapping bug is O(1)


def test_imported_config(checkpoint):
    directory, cfg, _ = checkpoint
    config = load_huginn(directory).config
    assert (config.d_model, config.n_heads, config.mlp_hidden, config.rope_theta) == (H, HEADS, FFN, 50_000.0)
    layers = cfg["n_layers_in_prelude"], cfg["n_layers_in_recurrent_block"], cfg["n_layers_in_coda"]
    assert (config.n_prelude, config.n_core, config.n_coda) == layers
    assert config.init_scale == 1.0 and config.injection == "linear" and config.norm_style == "sandwich"


def test_state_init_zero_maps_to_a_zero_initial_state(tmp_path):
    cfg = huginn_config(*SHAPES["released-like"], state_init="zero")
    model = load_huginn(write_checkpoint(tmp_path / "ckpt", cfg, huginn_state(cfg)))
    assert model.config.init_scale == 0.0


# ---------------------------------------------------------------------------------------------- round trips
def _assert_same_state(a: RecurrentDepthLM, b: RecurrentDepthLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


def _read_all(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_export_import_is_bit_identical(tmp_path, dtype):
    cfg = huginn_config(*SHAPES["released-like"])
    state = huginn_state(cfg, dtype=dtype)
    first = load_huginn(write_checkpoint(tmp_path / "src", cfg, state))
    save_huginn(first, tmp_path / "out", max_shard_size=20_000)  # several shards
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    _assert_same_state(first, load_huginn(tmp_path / "out"))
    written = _read_all(tmp_path / "out")
    for name, tensor in state.items():  # the export reproduces the original tensors, bit for bit
        if name != "freqs_cis":
            assert written[name].dtype == dtype and torch.equal(written[name], tensor), name


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_export_import_is_bit_identical(tmp_path, shape):
    prelude, core, coda, tie, qk_bias = SHAPES[shape]
    config = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, d_model=H, n_heads=HEADS, mlp_hidden=FFN,
                         n_prelude=prelude, n_core=core, n_coda=coda, tie_embeddings=tie, qk_bias=qk_bias,
                         mean_recurrence=8, init_std=0.05, extra={"note": "kept"})
    torch.manual_seed(0)
    model = RecurrentDepthLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight")) or p.ndim == 1:
                p.add_(torch.randn_like(p))
    save_huginn(model, tmp_path / "huginn")
    again = load_huginn(tmp_path / "huginn")
    _assert_same_state(model, again)
    assert again.config == config  # what the format lacks travels in config.json's "recurrent_lm" block
    raw = json.loads((tmp_path / "huginn" / "config.json").read_text())
    assert raw["n_layers_in_recurrent_block"] == core and raw["rope_base"] == 50_000.0
    assert_loadable_with_remote_code(raw)


def assert_loadable_with_remote_code(raw: dict) -> None:
    """What transformers' AutoConfig / AutoModelForCausalLM(trust_remote_code=True) need from config.json: the
    model type and architecture, and an auto_map whose ``repo--module.Class`` entries name the published repository
    and its two files (transformers splits at "--", fetches ``module``.py from ``repo`` and takes ``Class``)."""
    assert raw["model_type"] == "huginn_raven" and raw["architectures"] == ["RavenForCausalLM"]
    expected = {"AutoConfig": ("raven_config_minimal", "RavenConfig"),
                "AutoModelForCausalLM": ("raven_modeling_minimal", "RavenForCausalLM")}
    assert set(raw["auto_map"]) == set(expected)
    for auto, (module, cls) in expected.items():
        repo, reference = raw["auto_map"][auto].split("--")
        assert repo == "tomg-group-umd/huginn-0125" and reference.rsplit(".", 1) == [module, cls]


# ---------------------------------------------------------------------------------------------- errors
def _broken(tmp_path: Path, cfg_changes: dict | None = None, drop: str | None = None,
            state_changes: dict | None = None) -> Path:
    cfg = huginn_config(*SHAPES["released-like"])
    state = huginn_state(cfg)
    if drop:
        state.pop(drop)
    state.update(state_changes or {})
    return write_checkpoint(tmp_path / "bad", {**cfg, **(cfg_changes or {})}, state)


@pytest.mark.parametrize("cfg_changes, drop, state_changes, message", [
    (None, "transformer.core_block.1.mlp.fc.weight", None, r"lacks the tensors \['transformer.core_block.1.mlp.fc"),
    ({"intermediate_size": 40}, None, None, r"mlp\.\w+\.weight has shape \(\d+, \d+\), but config.json"),
    (None, None, {"transformer.core_block.7.attn.proj.weight": torch.zeros(H, H)}, "unexpected tensor"),
    ({"injection_type": "add"}, None, None, "injection_type='add' is not supported"),
    ({"state_init": "normal"}, None, None, "state_init='normal' is not supported"),
    ({"block_class_name": "PreNormBlock"}, None, None, "block_class_name='PreNormBlock' is not supported"),
    ({"num_key_value_heads": 2}, None, None, "num_key_value_heads=2 .* no GQA"),
    ({"model_type": "llama"}, None, None, "not a Huginn checkpoint"),
    ({"rope_base": 10_000}, None, None, "RoPE table freqs_cis differs"),
])
def test_bad_checkpoints_fail_clearly(tmp_path, cfg_changes, drop, state_changes, message):
    directory = _broken(tmp_path, cfg_changes, drop, state_changes)
    with pytest.raises(FormatError, match=message):
        load_huginn(directory)


@pytest.mark.parametrize("change, message", [
    ({"injection": "add"}, "injection='add' cannot be written"),
    ({"n_kv_heads": 2}, "no grouped-query attention"),
    ({"attn_window": 8}, "no sliding-window attention"),
    ({"norm_style": "pre"}, "only sandwich blocks"),
    ({"init_scale": 0.5}, "state_init can say 1"),
    ({"scale_embeddings": False}, "scale_embeddings=False cannot be written"),
    ({"norm_before_coda": False}, "norm_before_coda=False cannot be written"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling=.* no scaling"),
])
def test_export_refuses_what_the_format_cannot_express(tmp_path, change, message):
    config = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, d_model=H, n_heads=HEADS, **change)
    with pytest.raises(FormatError, match=message):
        save_huginn(RecurrentDepthLM(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------- CLI, tokenizer, lm-eval
def test_cli_converts_both_ways_with_the_tokenizer(checkpoint, tmp_path, capsys):
    directory, _, _ = checkpoint
    assert convert_main(["--from", "huginn", "--to", "recurrent_lm", str(directory), str(tmp_path / "ours")]) == 0
    ours = RecurrentDepthLM.from_pretrained(tmp_path / "ours")
    _assert_same_state(ours, load_huginn(directory))
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "ours").iterdir()}
    back = tmp_path / "back"
    assert convert_main(["--from", "recurrent_lm", "--to", "huginn", str(tmp_path / "ours"), str(back)]) == 0
    _assert_same_state(ours, load_huginn(back))
    assert (back / "tokenizer_config.json").read_text() == (directory / "tokenizer_config.json").read_text()
    assert convert_main(["--from", "recurrent_lm", "--to", "huginn", str(directory), str(tmp_path / "x")]) == 2
    assert "recurrent-lm-convert: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["--from", "huginn", "--to", "huginn", str(directory), str(tmp_path / "y")])


def test_cli_refuses_a_non_empty_destination_and_replaces_it_whole_with_overwrite(checkpoint, tmp_path, capsys):
    """DST holding the user's model: refused without --overwrite (every byte kept); with it, DST becomes exactly the
    conversion (no old files mixed in); a failed conversion leaves DST as it was and no temp sibling behind."""
    directory, _, _ = checkpoint
    ours = tmp_path / "ours"
    assert convert_main(["--from", "huginn", "--to", "recurrent_lm", str(directory), str(ours)]) == 0
    dst = tmp_path / "users_model"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    (dst / "notes.txt").write_text("mine")
    args = ["--from", "recurrent_lm", "--to", "huginn", str(ours), str(dst)]
    assert convert_main(args) == 2
    assert "users_model already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in dst.iterdir()} == {"config.json": "{}", "notes.txt": "mine"}
    assert convert_main(["--from", "recurrent_lm", "--to", "huginn", str(directory), str(dst), "--overwrite"]) == 2
    assert (dst / "notes.txt").read_text() == "mine"  # the failed conversion changed nothing
    assert convert_main(args + ["--overwrite"]) == 0
    assert "notes.txt" not in {p.name for p in dst.iterdir()}
    _assert_same_state(RecurrentDepthLM.from_pretrained(ours), load_huginn(dst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "users_model"]  # no temp sibling left
    assert convert_main(["--from", "recurrent_lm", "--to", "huginn", str(directory), str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # a refused conversion leaves no empty DST


def test_lm_eval_scores_an_imported_checkpoint_with_exits_and_a_chat_template(tmp_path):
    from lm_eval.api.instance import Instance

    from recurrent_lm.evaluation import RecurrentLMEval

    cfg = huginn_config(*SHAPES["released-like"], state_init="zero")
    src = write_checkpoint(tmp_path / "src", cfg, huginn_state(cfg))
    assert convert_main(["--from", "huginn", "--to", "recurrent_lm", str(src), str(tmp_path / "ours")]) == 0
    lm = RecurrentLMEval(pretrained=str(tmp_path / "ours"), num_steps=4, exit="kl", chat_template=True,
                         system_prompt="You are a helpful assistant.")
    assert lm.tokenizer.eos_id == 1 and lm.tokenizer.bos_id == 0  # the names in tokenizer_config.json
    prompt = lm.prompt_text("what is 2 + 3?")
    assert prompt.startswith("<|begin_text|><|begin_header|>system<|end_header|>\n\nYou are a helpful assistant.")
    assert lm.tok_encode(prompt)[:2] == [0, 2]  # the markers are parsed as special tokens, not spelled out
    requests = [Instance("loglikelihood", {}, ("what is 2 + 3?", " 5"), 0),
                Instance("loglikelihood", {}, ("what is 2 + 3?", " cat"), 1)]
    scores = lm.loglikelihood(requests)
    assert len(scores) == 2 and all(math.isfinite(lp) and lp < 0 for lp, _ in scores)
    assert 1 <= lm.steps_summary()["mean_steps_used"] <= 4


def test_tokenizer_specials_from_generation_config_and_clear_errors(tmp_path):
    from recurrent_lm.evaluation import RecurrentLMEval
    from recurrent_lm.evaluation.errors import EvalError
    from recurrent_lm.data.tokenizer_dir import HFTokenizer, load_tokenizer

    write_tokenizer(tmp_path, template=False)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no eos_token is named"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 4], "bos_token_id": 0}))
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(tokenizer, HFTokenizer) and (tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id) == (1, 1, 0)

    cfg = huginn_config(*SHAPES["released-like"], state_init="zero")
    src = write_checkpoint(tmp_path / "src", cfg, huginn_state(cfg))
    assert convert_main(["--from", "huginn", "--to", "recurrent_lm", str(src), str(tmp_path / "ours")]) == 0
    with pytest.raises(EvalError, match="system_prompt needs chat_template"):
        RecurrentLMEval(pretrained=str(tmp_path / "ours"), num_steps=2, system_prompt="Be brief.")
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    with pytest.raises(EvalError, match="does not parse as Jinja"):
        RecurrentLMEval(pretrained=str(tmp_path / "ours"), num_steps=2, chat_template=str(tmp_path / "bad.jinja"))
