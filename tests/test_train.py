"""The pretraining app end to end: a real Lightning Trainer, real tokenizer, real data, real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from train_support import compose_cfg, overrides, step_losses

from recurrent_lm import RecurrentDepthLM
from recurrent_lm.data import TextTokenizer
from recurrent_lm.train.cli import run
from recurrent_lm.train.run_dir import resolve_resume
from recurrent_lm.train.export import export_run, model_from_checkpoint
from recurrent_lm.train.optim import lr_multiplier
from recurrent_lm.train.schema import OptimConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(corpus_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    summary = run(compose_cfg(overrides(corpus_dir, run_dir)))
    return run_dir, summary


def test_run_directory_layout_and_report(trained_run):
    run_dir, summary = trained_run
    for path in ("config.yaml", "tokenizer.json", "checkpoints/last.ckpt", "logs/metrics.csv",
                 "export/model.safetensors", "export/config.json", "export/tokenizer.json"):
        assert (run_dir / path).is_file(), path
    assert summary.step == 12
    assert set(summary.val) >= {"val/loss_r1", "val/loss_r4"}
    resolved = OmegaConf.load(run_dir / "config.yaml")
    assert resolved.data.vocab_size == 400 and "${" not in OmegaConf.to_yaml(resolved)
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(12)) and losses[11] < losses[0]


def test_export_then_from_pretrained_gives_identical_logits(trained_run):
    run_dir, summary = trained_run
    loaded = RecurrentDepthLM.from_pretrained(run_dir / "export")
    from_ckpt = model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    tokenizer = TextTokenizer.from_file(run_dir / "export" / "tokenizer.json")
    ids = torch.tensor([tokenizer.encode("To be, or not to be: that is the question")])
    with torch.no_grad():
        a = loaded(ids, num_steps=4, init_state=torch.zeros(*ids.shape, loaded.config.d_model)).logits
        b = from_ckpt(ids, num_steps=4, init_state=torch.zeros(*ids.shape, loaded.config.d_model)).logits
    assert torch.equal(a, b)
    # the console-script path writes the same weights
    again = export_run(run_dir, run_dir / "export2")
    assert (again / "model.safetensors").read_bytes() == (run_dir / "export" / "model.safetensors").read_bytes()


def test_lr_schedules():
    wsd = lr_multiplier(OptimConfig(schedule="wsd", warmup_steps=10, decay_fraction=0.2), 100)
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == 1.0 and wsd(50) == 1.0 and wsd(79) == 1.0
    assert wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    cos = lr_multiplier(OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.1), 100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)


# ---------------------------------------------------------------- bad input


def test_unknown_config_key_fails_at_compose_naming_the_key(corpus_dir, tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(overrides(corpus_dir, tmp_path) + ["trainer.max_stepz=3"])
    assert "max_stepz" in str(err.value.__cause__ or err.value)
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(overrides(corpus_dir, tmp_path) + ["model.n_heads=four"])
    assert "n_heads" in str(err.value.__cause__ or err.value)


def test_invalid_values_fail_before_any_work(corpus_dir, tmp_path):
    cfg = compose_cfg(overrides(corpus_dir, tmp_path, **{"model.n_heads": 3}))
    with pytest.raises(ValueError, match="ModelConfig.n_heads=3 must divide d_model"):
        run(cfg)
    cfg = compose_cfg(overrides(corpus_dir, tmp_path, **{"optim.schedule": "linear"}))
    with pytest.raises(ValueError, match="optim.schedule"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_unwritable_run_dir(corpus_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = compose_cfg(overrides(corpus_dir, blocker / "run"))
    with pytest.raises(PermissionError, match="run_dir=.*writable"):
        run(cfg)


def test_missing_and_corrupt_checkpoints(trained_run, tmp_path):
    run_dir, _ = trained_run
    with pytest.raises(FileNotFoundError, match="resume=.*no such checkpoint"):
        resolve_resume(str(tmp_path / "nope.ckpt"), run_dir)
    corrupt = tmp_path / "checkpoints" / "last.ckpt"
    corrupt.parent.mkdir()
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    corrupt.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        model_from_checkpoint(corrupt)
    with pytest.raises(FileNotFoundError, match="model directory .* lacks"):
        RecurrentDepthLM.from_pretrained(tmp_path / "checkpoints")


def test_tokenizer_larger_than_model_vocab_is_refused(corpus_dir, tmp_path):
    cfg = compose_cfg(overrides(corpus_dir, tmp_path, **{"data.vocab_size": 600}))
    with pytest.raises(ValueError, match="model.vocab_size"):
        run(cfg)


def test_dry_run_builds_nothing_on_disk(corpus_dir, tmp_path, capsys):
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "dry", **{"model": "huginn_3.5b", "dry_run": True}))
    run(cfg)
    assert "3,564,976,800" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("experiment", ["reasoning_parity", "reasoning_reachability"])
def test_reasoning_experiment_trains_evaluates_and_exports_its_task(experiment, tmp_path):
    """The hydra app with a task group: a few steps, then the reasoning table in the run dir, and an
    export that the evaluation CLI re-runs from alone (task.json beside the weights)."""
    from recurrent_lm.reasoning.evaluate import load_task, main as evaluate_main

    small = {"reasoning_parity": "[4,8]", "reasoning_reachability": "[2,3]"}[experiment]
    cfg = compose_cfg([f"experiment={experiment}", f"run_dir={tmp_path}", "trainer.max_steps=3",
                       "trainer.enable_progress_bar=false", "trainer.eval_depths=[2]", "logger.tensorboard=false",
                       "task.num_val=8", "task.num_eval=8", f"task.eval_difficulties={small}",
                       "task.eval_depths=[1,3]"])
    summary = run(cfg)
    report = summary.app.reasoning
    assert report.task == cfg.task.name and sorted(report.accuracy) == sorted(
        (d, r) for d in cfg.task.eval_difficulties for r in (1, 3))
    assert [e.name for e in report.exits] == ["convergence", "causal_convergence", "sequence_convergence"]
    table = (tmp_path / "reasoning_eval.md").read_text()
    assert table == report.to_markdown() and json.loads((tmp_path / "reasoning_eval.json").read_text())
    export = tmp_path / "export"
    assert load_task(export).name == cfg.task.name
    assert evaluate_main(["--model", str(export), "--exit", "--num-examples", "4"]) == 0
