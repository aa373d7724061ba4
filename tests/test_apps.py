"""Apps register themselves: train/ names none of them, each owns its config group, and the shared optimizer
recipe recognises any model's embeddings and norms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from train_support import compose_cfg

from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.train.app import APPS, read_group, selected_key
from recurrent_lm.train.cli import unselected_apps
from recurrent_lm.train.optim import param_groups
from recurrent_lm.train.schema import OptimConfig

TRAIN = Path(__file__).resolve().parents[1] / "recurrent_lm" / "train"


def test_train_names_no_app_and_no_app_is_imported_by_train():
    for path in TRAIN.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) recurrent_lm\.(coconut|reasoning)", text, re.M), path.name
    assert not re.search(r"coconut|cfg\.task|cfg\.data|reasoning_", (TRAIN / "cli.py").read_text())


def test_the_experiment_selects_its_app_and_drops_the_others(tmp_path):
    assert set(APPS) >= {"data", "task", "coconut"}
    for experiment, key in (("demo", "data"), ("reasoning_parity", "task"), ("coconut_prosqa", "coconut")):
        cfg = compose_cfg([f"experiment={experiment}", f"run_dir={tmp_path}"])
        assert selected_key(cfg) == key
        assert unselected_apps(cfg) == (["data"] if key != "data" else [])  # the default group is composed anyway


def test_an_app_that_reads_another_keeps_only_the_group_it_reads(tmp_path):
    """The exit gate trains on a reasoning task or on pretraining's corpus: with a task, the corpus group is dropped
    before validation (its vocab_size, interpolated from a 10-token model, would be refused), and without one the
    corpus is what it reads."""
    on_task = compose_cfg(["experiment=reasoning_reachability", "exitgate=stage2", f"run_dir={tmp_path}"])
    assert selected_key(on_task) == "exitgate" and read_group(on_task, "exitgate") == "task"
    assert unselected_apps(on_task) == ["data"]
    on_text = compose_cfg(["experiment=demo", "exitgate=stage2", f"run_dir={tmp_path}"])
    assert read_group(on_text, "exitgate") == "data" and unselected_apps(on_text) == []


def decayed(model, cfg=OptimConfig()) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, cfg)
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


def test_recurrent_model_decays_only_matmul_weights(tiny_model):
    decay, exempt = decayed(tiny_model())
    assert "embed.weight" in exempt and all("norm" not in n and not n.endswith("bias") for n in decay)
    assert any(n.endswith("q_bias") for n in exempt) and any("attn" in n for n in decay)
    assert len(decay) + len(exempt) == len(list(tiny_model().parameters()))


def test_gpt2_embeddings_and_norms_are_not_decayed():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                                n_positions=16))
    decay, exempt = decayed(model)
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= exempt
    assert "transformer.h.0.attn.c_attn.weight" in decay and not any("ln_" in n or "wte" in n for n in decay)
    everything = decayed(model, OptimConfig(no_decay_on_norms_biases_embeddings=False))[0]
    assert "transformer.wte.weight" in everything
