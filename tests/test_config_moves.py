"""Keys that left ModelConfig (activation_checkpointing, attn_backend, mean_backprop_depth): an old config.json or
checkpoint still loads, anywhere else the old key is refused by name with its new one."""

from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf
from train_support import compose_cfg, launch, overrides

from recurrent_lm import RecurrentDepthLM
from recurrent_lm.errors import ConfigError
from recurrent_lm.interop.huginn_io import load_huginn, save_huginn
from recurrent_lm.loop import DepthSampler, SamplerConfig
from recurrent_lm.model import ModelConfig
from recurrent_lm.train.cli import check_overrides
from recurrent_lm.train.export import model_from_checkpoint
from recurrent_lm.train.init_from import model_config_from
from recurrent_lm.train.module import RecurrentLMModule
from recurrent_lm.train.parallel import ParallelConfig
from recurrent_lm.train.schema import OptimConfig, TrainerConfig

OLD_KEYS = {"attn_backend": "sdpa", "mean_backprop_depth": 2, "activation_checkpointing": False}
"""What an export written before the moves held besides today's fields (the values tiny.yaml gave them)."""
MOVES = [("activation_checkpointing", "parallel.activation_checkpointing (none | block | iteration)"),
         ("attn_backend", "trainer.attn_backend (sdpa | flash | eager) in training"),
         ("mean_backprop_depth", "sampler.backprop_depth (k: the sampler owns the training depth)")]


def test_an_export_from_before_the_move_still_loads(tmp_path, tiny_model):
    model = tiny_model(init_scale=0.0)  # a deterministic initial state: the logits compare exactly
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "activation_checkpointing" not in config
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_checkpointing": True}))
    loaded = RecurrentDepthLM.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.checkpoint_iterations
    x = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, num_steps=2).logits, model(x, num_steps=2).logits, rtol=0, atol=0)


def test_an_export_with_every_moved_key_loads_everywhere_a_model_directory_is_read(tmp_path, tiny_model):
    """A directory in the old format, keys in the order the old export wrote them (dataclass order), read by
    from_pretrained, init_from, a checkpoint's hyper-parameters and the Huginn import."""
    model = tiny_model(init_scale=0.0)
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert not set(OLD_KEYS) & set(config)
    items = list(config.items())
    at = [k for k, _ in items].index
    old = dict(items[:at("init_scale")] + [("attn_backend", "sdpa")] + items[at("init_scale"):at("init_std")]
               + [("mean_backprop_depth", 2), ("activation_checkpointing", False)] + items[at("init_std"):])
    (tmp_path / "old" / "config.json").write_text(json.dumps(old, indent=2))
    loaded = RecurrentDepthLM.from_pretrained(tmp_path / "old")
    assert loaded.config == model.config and loaded.attn_backend == "sdpa"
    x = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, num_steps=2).logits, model(x, num_steps=2).logits, rtol=0, atol=0)
    assert model_config_from(str(tmp_path / "old"), ModelConfig(mean_recurrence=3, block_size=64)) == \
        ModelConfig(**{**model.config.to_dict(), "mean_recurrence": 3})
    checkpoint = {"hyper_parameters": {"model": old}, "global_step": 5,
                  "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert model_from_checkpoint(tmp_path / "old.ckpt").config == model.config


def test_a_huginn_export_from_before_the_moves_imports(tmp_path, tiny_model):
    """The old Huginn export kept attn_backend in its recurrent_lm block; mean_backprop_depth is the format's own
    key, written with the released model's value and not read back into the model."""
    model = tiny_model(init_scale=0.0, n_kv_heads=None, attn_window=0)
    save_huginn(model, tmp_path / "h")
    raw = json.loads((tmp_path / "h" / "config.json").read_text())
    assert raw["mean_backprop_depth"] == 8 and set(raw["recurrent_lm"]) == {"init_std", "extra"}
    raw["recurrent_lm"] = {"attn_backend": "sdpa", **raw["recurrent_lm"]}
    raw["mean_backprop_depth"] = 3
    (tmp_path / "h" / "config.json").write_text(json.dumps(raw))
    imported = load_huginn(tmp_path / "h")
    assert imported.config.to_dict() == {**model.config.to_dict(), "extra": imported.config.extra}


@pytest.mark.parametrize("key,new", MOVES)
def test_the_moved_key_is_refused_with_its_new_name(key, new):
    with pytest.raises(ValueError, match=rf"ModelConfig: {key} is now {re.escape(new)}"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), key: OLD_KEYS[key]})
    assert key not in ModelConfig().to_dict()
    with pytest.raises(ValueError, match=r"parallel.activation_checkpointing='True' is unknown.*the former true "
                                         "is block"):
        ParallelConfig(activation_checkpointing="True")


@pytest.mark.parametrize("key,new", MOVES)
def test_the_train_cli_names_the_new_key(corpus_dir, tmp_path, key, new):
    result = launch(overrides(corpus_dir, tmp_path / "run") + [f"model.{key}={OLD_KEYS[key]}"])
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert f"recurrent-lm-train: error: model.{key} is now {new}" in result.stdout
    assert not (tmp_path / "run").exists()


def test_an_experiment_file_that_sets_a_moved_key_is_refused_by_name(tmp_path):
    """A user's experiment written before the move (k on the model) is refused before hydra composes it."""
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nmodel:\n  mean_recurrence: 4\n"
                                                   "  mean_backprop_depth: 2\nsampler:\n  mean: 4\n")
    (conf / "model" / "old.yaml").write_text("d_model: 64\nattn_backend: eager\n")
    with pytest.raises(ConfigError, match=r"experiment/mine.yaml: model.mean_backprop_depth is now "
                                          r"sampler.backprop_depth"):
        check_overrides(["experiment=mine"], conf)
    with pytest.raises(ConfigError, match=r"model/old.yaml: model.attn_backend is now trainer.attn_backend"):
        check_overrides(["model=old"], conf)
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nsampler:\n  backprop_depth: 2\n")
    check_overrides(["experiment=mine", "model.mean_recurrence=4"], conf)  # the new spelling passes


@pytest.mark.parametrize("experiment,depth", [("coconut_prosqa", (1, 3, 3)), ("demo", (4.0, None, 4)),
                                              ("reasoning_parity", (1, 10, 10)), ("retrofit", (8.0, None, 4))])
def test_an_experiment_sets_the_training_depth_once_in_its_sampler(experiment, depth):
    """The sampler is the one owner of training depth: what the experiment file's sampler section says is what
    the run's sampler draws, and the model config has no say in k."""
    cfg = compose_cfg([f"experiment={experiment}"])
    sampler = SamplerConfig(**OmegaConf.to_container(cfg.sampler, resolve=True))
    low_or_mean, high, k = depth
    assert (sampler.low if high else sampler.mean, sampler.backprop_depth) == (low_or_mean, k)
    if high:
        assert sampler.high == high
    assert "mean_backprop_depth" not in cfg.model and "attn_backend" not in cfg.model
    draws = [DepthSampler(sampler)(step) for step in range(200)]
    assert max(n_grad for _, n_grad in draws) == k  # k is the sampler's, whatever model.mean_recurrence says


def test_the_attention_backend_is_a_trainer_setting_the_module_builds_the_model_with(tiny_config):
    with pytest.raises(ValueError, match=r"trainer.attn_backend='xformers' is unknown; choose one of"):
        TrainerConfig(attn_backend="xformers")
    module = RecurrentLMModule(tiny_config(), SamplerConfig(), OptimConfig(), [1], attn_backend="eager")
    assert {m.backend for m in module.model.modules() if hasattr(m, "backend")} == {"eager"}
    assert "attn_backend" not in module.hparams["model"]
