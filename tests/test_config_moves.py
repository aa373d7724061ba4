"""Keys that left ModelConfig: an old config.json still loads, anywhere else the old key is refused by name
with its new one."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import launch, overrides

from recurrent_lm import RecurrentDepthLM
from recurrent_lm.model import ModelConfig
from recurrent_lm.train.parallel import ParallelConfig


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


def test_the_moved_key_is_refused_with_its_new_name():
    with pytest.raises(ValueError, match=r"activation_checkpointing is now parallel.activation_checkpointing "
                                         r"\(none \| block \| iteration\)"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "activation_checkpointing": True})
    with pytest.raises(ValueError, match=r"parallel.activation_checkpointing='True' is unknown.*the former true "
                                         "is block"):
        ParallelConfig(activation_checkpointing="True")


def test_the_train_cli_names_the_new_key(corpus_dir, tmp_path):
    result = launch(overrides(corpus_dir, tmp_path / "run") + ["model.activation_checkpointing=true"])
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert ("recurrent-lm-train: error: model.activation_checkpointing is now parallel.activation_checkpointing "
            "(none | block | iteration)") in result.stdout
