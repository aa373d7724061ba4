"""init_from=DIR: a run that starts from an exported model's weights, architecture and tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import compose_cfg, launch, overrides

from recurrent_lm.train.cli import run

RECIPE = {"model": "pretrained", "model.mean_recurrence": 3, "sampler.backprop_depth": 2,
          "model.block_size": 64}


@pytest.fixture(scope="module")
def source_export(corpus_dir, tmp_path_factory) -> Path:
    """A tiny model trained for 4 steps and exported (config.json, model.safetensors, tokenizer.json)."""
    run_dir = tmp_path_factory.mktemp("source")
    run(compose_cfg(overrides(corpus_dir, run_dir, **{"trainer.max_steps": 4, "trainer.val_check_interval": "null"})))
    return run_dir / "export"


def test_a_run_starts_from_the_weights_architecture_and_tokenizer_of_init_from(corpus_dir, source_export, tmp_path):
    run_dir = tmp_path / "continued"
    # lr ~ 0: the exported weights must come back out unchanged, which proves they went in
    summary = run(compose_cfg(overrides(corpus_dir, run_dir, init_from=str(source_export), **RECIPE, **{
        "trainer.max_steps": 1, "trainer.val_check_interval": "null", "optim.lr": 1e-12, "optim.warmup_steps": 0})))
    assert summary.step == 1
    before, after = load_file(source_export / "model.safetensors"), load_file(run_dir / "export" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=1e-9, rtol=0, msg=name)
    assert (run_dir / "tokenizer.json").read_bytes() == (source_export / "tokenizer.json").read_bytes()
    source, continued = (json.loads((d / "config.json").read_text()) for d in (source_export, run_dir / "export"))
    recipe = {key.removeprefix("model."): value for key, value in RECIPE.items() if key.startswith("model.")}
    assert continued == {**source, **recipe}  # the architecture is the source's, the recipe the run's


def test_a_model_setting_that_contradicts_init_from_is_refused(corpus_dir, source_export, tmp_path):
    source_width = json.loads((source_export / "config.json").read_text())["d_model"]
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", init_from=str(source_export),
                                **{**RECIPE, "model.d_model": 2 * source_width}))
    with pytest.raises(ValueError, match=rf"model.d_model={2 * source_width} \(init_from has {source_width}\).*"
                                         "model=pretrained"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    # the initial state's scale is part of the trained function (s_0 + e under injection=add): not a recipe field
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", init_from=str(source_export),
                                **{**RECIPE, "model.init_scale": 0.5}))
    with pytest.raises(ValueError, match=r"model.init_scale=0.5 \(init_from has 1.0\)"):
        run(cfg)


def test_init_from_that_is_not_a_model_directory_is_refused(corpus_dir, source_export, tmp_path):
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", init_from=str(tmp_path / "absent"), **RECIPE))
    with pytest.raises(FileNotFoundError, match=r"init_from=.*absent does not exist; point it at a model directory"):
        run(cfg)
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((source_export / name).read_bytes())
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", init_from=str(no_tokenizer), **RECIPE))
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json.*set data.tokenizer_path"):
        run(cfg)


def test_model_pretrained_without_init_from_is_refused_by_the_cli(corpus_dir, tmp_path):
    result = launch(overrides(corpus_dir, tmp_path / "run", model="pretrained"))
    assert result.returncode == 2, result.stdout
    assert "model=pretrained takes the architecture from init_from=DIR, and none is set" in result.stdout
