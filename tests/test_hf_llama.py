"""Hugging Face Llama checkpoints in and out (recurrent_lm.interop.hf_llama*, recurrent-lm-convert --from/--to hf).

The sources are random ``LlamaForCausalLM`` models built here from a ``LlamaConfig`` and written with
transformers' own ``save_pretrained``; the reference logits are transformers' forward (all layers), or a
forward composed by hand from its modules (embed → chosen decoder layers with its rotary embedding → norm
→ lm_head) for slices that drop layers. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from interop_support import write_bpe_tokenizer
from recurrent_lm.convert import main as convert_main
from recurrent_lm.interop import FormatError, load_hf_llama, retrofit_adapter, save_hf_llama
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.rope import rope_tables

pytest.importorskip("transformers")  # the optional `hf` extra
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

H, HEADS, FFN, VOCAB, LAYERS, CONTEXT, SEQ = 64, 4, 96, 300, 6, 64, 40
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}  # head_dim 16, θ 1234: wavelengths 6, 15, 37, … (all 3 regimes)
SOURCES = {  # kv heads, tied head, rope_theta, rope scaling, legacy config keys, shard size
    "gqa-untied-llama3": (2, False, 1234.0, LLAMA3, False, None),
    "tied-linear-legacy-sharded": (4, True, 500_000.0, {"rope_type": "linear", "factor": 2.0}, True, "200KB"),
    "mqa-untied-plain": (1, False, 10_000.0, None, False, None),
}


# ---------------------------------------------------------------------------------------------- sources
def llama_config(kv: int = 2, tie: bool = False, theta: float = 10_000.0, scaling: dict | None = None,
                 layers: int = LAYERS) -> LlamaConfig:
    rope = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
    return LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=FFN, num_hidden_layers=layers,
                       num_attention_heads=HEADS, num_key_value_heads=kv, max_position_embeddings=CONTEXT,
                       rms_norm_eps=1e-5, tie_word_embeddings=tie, rope_parameters=rope, initializer_range=0.1,
                       bos_token_id=0, eos_token_id=1, pad_token_id=1)


def random_llama(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """Random weights with norm gains far from 1, so a swapped or skipped norm shows."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def write_llama(directory: Path, model: LlamaForCausalLM, legacy: bool = False, shard: str | None = None) -> Path:
    """transformers' save_pretrained, plus a tokenizer. ``legacy`` rewrites config.json in the pre-5.0 keys
    (rope_theta + rope_scaling with 'type'), as older checkpoints on the Hub have them."""
    model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    if legacy:
        raw = json.loads((directory / "config.json").read_text())
        rope = raw.pop("rope_parameters")
        raw["rope_theta"] = rope.pop("rope_theta")
        raw["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
        (directory / "config.json").write_text(json.dumps(raw))
    write_bpe_tokenizer(directory, VOCAB, ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"})
    return directory


@pytest.fixture(scope="module", params=sorted(SOURCES))
def source(request, tmp_path_factory):
    kv, tie, theta, scaling, legacy, shard = SOURCES[request.param]
    model = random_llama(llama_config(kv, tie, theta, scaling))
    directory = write_llama(tmp_path_factory.mktemp(request.param), model, legacy, shard)
    if shard:
        assert (directory / "model.safetensors.index.json").is_file()
    return directory, model


@pytest.fixture(scope="module")
def plain_source(tmp_path_factory):
    model = random_llama(llama_config())
    return write_llama(tmp_path_factory.mktemp("plain"), model), model


def input_ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def convert(*args: str) -> int:
    return convert_main([str(a) for a in args])


def hand_composed(model: LlamaForCausalLM, ids: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """transformers' modules run by hand through the decoder layers ``layers`` only. (B, T) -> (B, T, V)."""
    inner = model.model
    x = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = inner.rotary_emb(x, positions)
    for i in layers:
        x = inner.layers[i](x, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    return model.lm_head(inner.norm(x))


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


# ---------------------------------------------------------------------------------------------- import
def test_all_layers_in_order_equal_transformers(source, tmp_path):
    directory, hf = source
    assert convert("--from", "hf", "--to", "recurrent_lm", directory, tmp_path / "ours",
                   "--prelude", "0:2", "--core", "2:4", "--coda", "4:6") == 0
    ours = RecurrentDepthLM.from_pretrained(tmp_path / "ours")
    ids = input_ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids, num_steps=1).logits  # a random initial state: the [0 | I] adapter ignores it
    assert expected.abs().max() > 1  # logits large enough that a mapping slip cannot hide under the tolerance
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    c = ours.config
    assert (c.norm_style, c.qk_bias, c.scale_embeddings, c.norm_before_coda, c.injection) == ("pre", False, False,
                                                                                             False, "linear")
    assert (c.n_prelude, c.n_core, c.n_coda, c.mean_recurrence, c.block_size) == (2, 2, 2, 1, CONTEXT)
    assert c.kv_heads == hf.config.num_key_value_heads and c.tie_embeddings == hf.config.tie_word_embeddings
    assert c.extra["retrofit"] == {"source": str(directory), "architecture": "LlamaForCausalLM", "prelude": [0, 2],
                                   "core": [2, 4], "coda": [4, 6], "source_layers": LAYERS}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {
        p.name for p in (tmp_path / "ours").iterdir()}


def test_rope_tables_equal_transformers(source):
    directory, hf = source
    config = load_hf_llama(directory, core="0:6").config
    cos, sin = rope_tables(H // HEADS, CONTEXT, config.rope_theta, config.rope_scaling)
    positions = torch.arange(CONTEXT)[None]
    hf_cos, hf_sin = hf.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)  # (1, T, D): halves doubled
    # ours: angles in float64; transformers': fp32 position × inv_freq, off by ~position · 6e-8
    torch.testing.assert_close(cos, hf_cos[0, :, : H // HEADS // 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, hf_sin[0, :, : H // HEADS // 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prelude, core, coda, layers", [
    ("0:1", "2:4", "5:6", [0, 2, 3, 5]),
    (None, "1:3", None, [1, 2]),
    ("0:2", "3:4", "", [0, 1, 3]),
    (":1", "1:2", "4:", [0, 1, 4, 5]),
])
def test_slices_that_drop_layers_equal_those_layers_of_transformers(plain_source, prelude, core, coda, layers):
    directory, hf = plain_source
    ours = load_hf_llama(directory, prelude, core, coda)
    ids = input_ids(1)
    with torch.no_grad():
        # the reference itself: composed from every layer, it is transformers' own forward
        torch.testing.assert_close(hand_composed(hf, ids, list(range(LAYERS))), hf(ids).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours(ids, num_steps=1).logits, hand_composed(hf, ids, layers), atol=1e-5, rtol=1e-5)
    assert ours.config.n_prelude + ours.config.n_core + ours.config.n_coda == len(layers)


def test_deeper_recurrence_trains_the_adapter_and_core(plain_source):
    directory, _ = plain_source
    model = load_hf_llama(directory, "0:2", "2:4", "4:6").train()
    ids = input_ids(2)
    out = model(ids[:, :-1], num_steps=3, labels=ids[:, 1:])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.adapter.weight.grad  # (h, 2h): [state half | e half]
    assert grad[:, :H].abs().sum() > 0 and grad[:, H:].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.core.parameters())


def test_dtype_and_block_size(plain_source, tmp_path):
    directory, _ = plain_source
    assert convert("--from", "hf", "--to", "recurrent_lm", directory, tmp_path / "bf16", "--core", "0:6",
                   "--dtype", "bfloat16", "--block-size", "32") == 0
    model = RecurrentDepthLM.from_pretrained(tmp_path / "bf16")
    assert model.embed.weight.dtype == torch.bfloat16 and model.config.block_size == 32
    assert torch.equal(model.adapter.weight, retrofit_adapter(H, torch.bfloat16))


def test_hub_name_is_downloaded_lazily(plain_source, tmp_path, monkeypatch):
    import huggingface_hub

    directory, _ = plain_source
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    name = "someone/tiny-llama"
    assert convert("--from", "hf", "--to", "recurrent_lm", name, tmp_path / "ours", "--core", "0:6") == 0
    assert calls[0][0] == name and "*.safetensors" in calls[0][1] and "tokenizer.json" in calls[0][1]
    assert RecurrentDepthLM.from_pretrained(tmp_path / "ours").config.extra["retrofit"]["source"] == name

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="downloading it from the Hugging Face Hub failed"):
        load_hf_llama("someone/tiny-llama", core="0:6")


# ---------------------------------------------------------------------------------------------- export
def test_round_trip_is_bit_identical_and_transformers_loads_the_export(source, tmp_path):
    directory, hf = source
    assert convert("--from", "hf", "--to", "recurrent_lm", directory, tmp_path / "ours",
                   "--prelude", "0:1", "--core", "1:5", "--coda", "5:6") == 0
    assert convert("--from", "recurrent_lm", "--to", "hf", tmp_path / "ours", tmp_path / "back",
                   "--max-shard-size", "300KB") == 0
    original, written = read_tensors(directory), read_tensors(tmp_path / "back")
    assert original.keys() == written.keys()
    for name, tensor in original.items():
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
    again = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = input_ids(3)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, hf(ids).logits)
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (directory / "tokenizer.json").read_bytes()


def test_a_llama_shaped_model_of_ours_exports(tmp_path):
    """The pretraining recipe the retrofit starts from: prelude 0, core L, coda 0, injection 'add' with a zero
    initial state, depth 1; transformers then computes what our model does."""
    config = ModelConfig(vocab_size=VOCAB, block_size=CONTEXT, d_model=H, n_heads=HEADS, n_kv_heads=2, mlp_hidden=FFN,
                         n_prelude=0, n_core=4, n_coda=0, norm_style="pre", injection="add", init_scale=0.0,
                         qk_bias=False, scale_embeddings=False, norm_before_coda=False, mean_recurrence=1,
                         tie_embeddings=False, rope_theta=10_000.0,
                         rope_scaling={"rope_type": "linear", "factor": 2.0})
    torch.manual_seed(0)
    ours = RecurrentDepthLM(config).eval()
    save_hf_llama(ours, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = input_ids(4)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids, num_steps=1).logits, atol=1e-5, rtol=1e-5)


def _imported(directory: Path, **overrides) -> RecurrentDepthLM:
    model = load_hf_llama(directory, "0:2", "2:4", "4:6")
    if overrides:
        model.config = ModelConfig.from_dict({**model.config.to_dict(), **overrides})
    return model


def test_export_refuses_what_llama_cannot_run(plain_source, tmp_path):
    huginn_style = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=CONTEXT, d_model=H, n_heads=HEADS))
    with pytest.raises(FormatError) as err:
        save_hf_llama(huginn_style, tmp_path / "a")
    for field in ("norm_style='sandwich'", "qk_bias=True", "scale_embeddings=True", "norm_before_coda=True",
                  "mean_recurrence=32", "adapter weight is not [0 | I]"):
        assert field in str(err.value)

    directory, _ = plain_source
    with pytest.raises(FormatError, match=r"mean_recurrence=4 \(the model is meant to run its core that many times"):
        save_hf_llama(_imported(directory, mean_recurrence=4), tmp_path / "b")
    trained = _imported(directory)
    with torch.no_grad():
        trained.adapter.weight[0, 0] = 0.01  # the state half has learned something
    with pytest.raises(FormatError, match=r"ModelConfig.injection='linear' \(the adapter weight is not \[0 \| I\]"):
        save_hf_llama(trained, tmp_path / "c")
    add = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=CONTEXT, d_model=H, n_heads=HEADS,
                                       norm_style="pre", qk_bias=False, scale_embeddings=False, norm_before_coda=False,
                                       injection="add", mean_recurrence=1))
    with pytest.raises(FormatError, match=r"init_scale=1.0 \(with injection 'add'"):
        save_hf_llama(add, tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")  # refused before anything was written

    trained.save_pretrained(tmp_path / "ours")
    assert convert("--from", "recurrent_lm", "--to", "hf", tmp_path / "ours", tmp_path / "e") == 2
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------------------------- import refusals
def _edited(plain: Path, tmp_path: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of ``plain`` with config.json keys changed (None deletes) and tensors added to a new shard."""
    directory = tmp_path / "src"
    shutil.copytree(plain, directory)
    raw = json.loads((directory / "config.json").read_text())
    raw.update(config or {})
    (directory / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    if tensors:
        state = read_tensors(directory)
        (directory / "model.safetensors").unlink()
        save_file({**state, **tensors}, str(directory / "model.safetensors"))
    return directory


QK_NORMS = {f"model.layers.{i}.self_attn.{n}_norm.weight": torch.ones(H // HEADS) for i in range(LAYERS)
            for n in "qk"}


@pytest.mark.parametrize("config, tensors, flags, message", [
    ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, QK_NORMS, ["--core", "0:6"],
     r"model_type='qwen3'.* is not a Hugging Face Llama; its weights have q/k norms"),
    (None, QK_NORMS, ["--core", "0:6"], "a Llama config, but its weights have q/k norms"),
    (None, {"model.layers.0.self_attn.q_proj.bias": torch.zeros(H)}, ["--core", "0:6"], "biases on q/k/v"),
    (None, {"model.layers.0.mlp.down_proj.bias": torch.zeros(H)}, ["--core", "0:6"], "MLP biases"),
    ({"architectures": ["LlamaForSequenceClassification"]}, None, ["--core", "0:6"], "only LlamaForCausalLM"),
    ({"attention_bias": True}, None, ["--core", "0:6"], "attention_bias=True is not supported"),
    ({"mlp_bias": True}, None, ["--core", "0:6"], "mlp_bias=True is not supported"),
    ({"hidden_act": "gelu"}, None, ["--core", "0:6"], "hidden_act='gelu' is not supported"),
    ({"head_dim": 32}, None, ["--core", "0:6"], r"head_dim=32 is not supported: our head_dim is .* = 16"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, None, ["--core", "0:6"],
     "rope_type='yarn' is not supported"),
    ({"sliding_window": 16}, None, ["--core", "0:6"], "sliding_window=16 is not supported"),
    ({"partial_rotary_factor": 0.5}, None, ["--core", "0:6"], "partial_rotary_factor=0.5 is not supported"),
    (None, None, [], r"no layer slices given; .* e\.g\. --prelude 0:1 --core 1:5 --coda 5:6"),
    (None, None, ["--prelude", "0:2"], r"--core='' is empty"),
    (None, None, ["--core", "4:9"], r"--core='4:9' reaches past the source's 6 decoder layers"),
    (None, None, ["--core", "4:2"], r"--core='4:2' runs backwards"),
    (None, None, ["--core", "2-4"], r"--core='2-4' is not a layer slice; write START:STOP"),
    (None, None, ["--prelude", "0:3", "--core", "2:4"], r"--prelude=0:3 and --core=2:4 overlap or are out of order"),
    (None, None, ["--core", "0:2", "--coda", "1:2"], r"--core=0:2 and --coda=1:2 overlap"),
    (None, None, ["--core", "0:6", "--block-size", "65"], r"--block-size=65 must be in 1\.\.64"),
    ({"num_hidden_layers": 7}, None, ["--core", "0:7"], r"missing \['model.layers.6"),
])
def test_import_refusals_name_the_problem(plain_source, tmp_path, capsys, config, tensors, flags, message):
    directory = _edited(plain_source[0], tmp_path, config, tensors)
    assert convert("--from", "hf", "--to", "recurrent_lm", directory, tmp_path / "dst", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("recurrent-lm-convert: error:") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "dst").exists()


def test_missing_source_and_misused_flags(tmp_path, capsys):
    assert convert("--from", "hf", "--to", "recurrent_lm", tmp_path / "nowhere", tmp_path / "dst", "--core", "0:1") == 2
    assert "is not a directory, nor a Hugging Face Hub model name" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    (tmp_path / "empty").mkdir()
    assert convert("--from", "hf", "--to", "recurrent_lm", tmp_path / "empty", tmp_path / "dst", "--core", "0:1") == 2
    assert "lacks ['config.json'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert("--from", "huginn", "--to", "recurrent_lm", tmp_path / "empty", tmp_path / "dst", "--core", "0:1")
    assert "--core: options of --from hf only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- config fields
def test_new_model_config_fields_validate_and_work_with_omegaconf():
    schema = OmegaConf.structured(ModelConfig)
    merged = OmegaConf.merge(schema, {"rope_scaling": LLAMA3, "scale_embeddings": False})
    assert type(ModelConfig(**merged).rope_scaling) is dict  # given a DictConfig, it keeps a plain dict
    config = OmegaConf.to_object(merged)
    assert config.rope_scaling == LLAMA3 and not config.scale_embeddings
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    defaults = ModelConfig()
    assert defaults.scale_embeddings and defaults.norm_before_coda and defaults.rope_scaling is None
    for bad, why in [({"rope_type": "yarn", "factor": 4.0}, "rope_type='yarn', which is not supported"),
                     ({"rope_type": "linear"}, r"missing \['factor'\]"),
                     ({"rope_type": "linear", "factor": 2.0, "rope_theta": 1.0}, r"unknown \['rope_theta'\]"),
                     ({"rope_type": "linear", "factor": 0}, r"non-positive or non-numeric \['factor'\]"),
                     ({**LLAMA3, "low_freq_factor": 4.0}, "low_freq_factor >= high_freq_factor"),
                     ("linear", "must be a dict")]:
        with pytest.raises(ValueError, match=rf"^ModelConfig\.rope_scaling=.*{why}.*; "):
            ModelConfig(rope_scaling=bad)
