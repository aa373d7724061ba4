"""The main job (`make demo` = recurrent-lm-demo) end to end at smoke size, and what the newcomer sees:
the progress bar's fields through Lightning's callback API, no product tips, the narrow warning filters."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf
from train_support import compose_cfg, overrides

from recurrent_lm.demo import split_overrides
from recurrent_lm.quiet import quiet_libraries
from recurrent_lm.train.app import app_for
from recurrent_lm.train.callbacks import OnRestored
from recurrent_lm.train.cli import build_trainer, run
from recurrent_lm.reasoning.figures import REASONING_FIGURE
from recurrent_lm.train.figures import LOSS_FIGURE
from recurrent_lm.train.progress import StepProgressBar
from recurrent_lm.train.run_dir import resolve_resume


def test_overrides_are_routed_by_part_prefix():
    routed = split_overrides(["text.trainer.max_steps=5", "reasoning.task.train_max=4", "seed=3"])
    assert routed == {"text": ["trainer.max_steps=5", "seed=3"], "reasoning": ["task.train_max=4", "seed=3"]}
    with pytest.raises(ValueError, match="not an override"):
        split_overrides(["trainer.max_steps"])


def _assert_figure(path: Path) -> None:
    """A real PNG of the size figures.py draws, with ink on it (not a blank canvas)."""
    image = imread(path)  # (H, W, 4) floats in [0, 1]
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500, image.shape
    rgb = image[..., :3]
    ink = (rgb.min(axis=-1) < 0.5).mean()  # share of dark pixels: axes, ticks, lines, text
    assert 0.005 < ink < 0.5, ink
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # lines in several colours, antialiased


def test_demo_runs_both_parts_and_names_its_pictures(corpus_dir, tmp_path):
    """`python -m recurrent_lm.demo` at smoke size: the text part's depth table and loss picture, the
    reasoning part's extrapolation table and accuracy picture, and a closing that names both and ends
    with the next steps."""
    text_dir, reasoning_dir = tmp_path / "text", tmp_path / "reasoning"
    args = [f"text.{o}" for o in overrides(corpus_dir, text_dir, **{
        "trainer.max_steps": 4, "trainer.val_check_interval": 4, "trainer.eval_depths": "[1,2,4]",
        "trainer.checkpoint_every_n_steps": 4, "model.d_model": 32, "model.n_heads": 2, "model.mlp_hidden": 64,
        "model.block_size": 64, "model.vocab_size": 400})] + [
        f"reasoning.run_dir={reasoning_dir}", "reasoning.trainer.max_steps=4", "reasoning.task.num_val=8",
        "reasoning.task.num_eval=8", "reasoning.task.eval_difficulties=[4,8]", "reasoning.task.eval_depths=[1,2,4]",
        "reasoning.task.exits=[{criterion:convergence,max_steps:4},{criterion:causal_convergence,max_steps:4}]",
        "reasoning.trainer.eval_depths=[2]", "reasoning.trainer.val_check_interval=4",
        "reasoning.trainer.enable_progress_bar=false", "reasoning.logger.tensorboard=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "recurrent_lm.demo", *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out
    assert "← training mean" in out and "parity: exact match by difficulty" in out
    assert (reasoning_dir / "reasoning_eval.md").read_text().startswith("| difficulty | r=1 | r=2 | r=4 |")
    loss_png, reasoning_png = text_dir / LOSS_FIGURE, reasoning_dir / REASONING_FIGURE
    for png in (loss_png, reasoning_png):
        _assert_figure(png)
    closing = out[out.index("demo done"):]
    assert f"text figure: {loss_png}" in closing and f"reasoning figure: {reasoning_png}" in closing
    steps = closing[closing.index("next steps"):].strip().splitlines()
    assert any(line.startswith("recurrent-lm-generate") for line in steps)
    assert any(line.startswith("recurrent-lm-eval") for line in steps)
    assert any(line.startswith("recurrent-lm-train -m") for line in steps)
    assert steps[-1].startswith("docs:")
    assert "Tip:" not in out and "LeafSpec" not in out and "v_num" not in out
    assert "sample (r = " in out and "temperature 0.8, top-k 40" in out


def test_progress_bar_shows_steps_loss_depth_and_speed(corpus_dir, tmp_path):
    """The bar's metrics, read through Lightning's own callback API after a real fit: loss, depth and
    tokens/s, no v_num; its total and position are optimizer steps out of max_steps."""
    typed = OmegaConf.to_object(compose_cfg(overrides(corpus_dir, tmp_path, **{
        "trainer.max_steps": 3, "trainer.val_check_interval": "null", "trainer.enable_progress_bar": True,
        "logger.tensorboard": True})))
    resume = resolve_resume("none", tmp_path, overwrite=True)
    app = app_for(typed)
    built = app.build(typed, tmp_path, resume)
    trainer = build_trainer(typed, app, tmp_path, resume, OnRestored(lambda: None))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar)
    trainer.fit(built.module, datamodule=built.datamodule)
    metrics = bar.get_metrics(trainer, built.module)
    assert list(metrics)[:3] == ["loss", "depth", "tokens/s"] and "v_num" not in metrics
    assert float(metrics["loss"]) == pytest.approx(float(trainer.callback_metrics["train/loss"]), abs=1e-3)
    assert float(metrics["depth"]) >= 1 and float(metrics["tokens/s"].replace(",", "")) > 0
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total, task.description) == (3, 3, "train")


def test_library_noise_is_filtered_narrowly():
    """Lightning's product tip and its LeafSpec deprecation are dropped; the same logger's other records,
    and the same warning from another module, still show."""
    quiet_libraries()
    quiet_libraries()  # idempotent
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropProductTips" for f in log.filters) == 1
    tip = log.makeRecord(log.name, logging.INFO, __file__, 1, "💡 Tip: try installing litlogger", None, None)
    other = log.makeRecord(log.name, logging.INFO, __file__, 1, "GPU available: False", None, None)
    assert not log.filter(tip) and log.filter(other)
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()  # in front of "always", as at start-up
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="my_package.thing")
        warnings.warn_explicit("something else", FutureWarning, "_pytree.py", 22,
                               module="lightning.pytorch.utilities._pytree")
    assert [str(w.message) for w in seen] == [message, "something else"]


def test_reasoning_run_writes_its_picture(tmp_path):
    """A task run alone (recurrent-lm-train experiment=demo_reasoning) also draws its picture."""
    cfg = compose_cfg(["experiment=demo_reasoning", f"run_dir={tmp_path}", "trainer.max_steps=2",
                       "trainer.enable_progress_bar=false", "trainer.val_check_interval=null", "logger.tensorboard=false",
                       "task.num_eval=8", "task.eval_difficulties=[4,8]", "task.eval_depths=[1,2]",
                       "task.exits=[{criterion:causal_convergence,max_steps:2}]",
                       "export=false"])
    summary = run(cfg)
    assert summary.figures == [tmp_path / REASONING_FIGURE]
    _assert_figure(tmp_path / REASONING_FIGURE)


def test_lm_eval_git_hash_is_recorded_without_git_errors(tmp_path, capfd, monkeypatch):
    """Outside a repository lm-eval's git call printed `fatal: not a git repository` on every evaluation."""
    pytest.importorskip("lm_eval")
    import lm_eval.evaluator

    from recurrent_lm.quiet import git_hash_quietly, quiet_lm_eval_git

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lm_eval.evaluator.get_git_commit_hash)
    quiet_lm_eval_git()
    assert lm_eval.evaluator.get_git_commit_hash is git_hash_quietly
    assert lm_eval.evaluator.get_git_commit_hash() is None
    assert "fatal" not in capfd.readouterr().err


def test_next_steps_fit_the_kind_of_run():
    """A text run gets generate / eval / sweep, a Coconut run its own evaluation; the docs line ends it."""
    from recurrent_lm.coconut.app import CoconutReport
    from recurrent_lm.train.pretrain import SampleReport
    from recurrent_lm.train.report import RunSummary, next_steps

    def summary(report):
        return RunSummary(Path("runs/x"), 1, {}, None, app=report)

    text = next_steps([summary(SampleReport(Path("runs/demo/export"), None))])
    assert text[0].startswith('recurrent-lm-generate runs/demo/export "**ROMEO**"') and text[-1].startswith("docs:")
    coconut = next_steps([summary(CoconutReport(Path("runs/c/export"), None, Path("runs/c/coconut_eval.json")))])
    assert coconut[0].startswith("recurrent-lm-coconut-eval --model coconut=runs/c/export") and len(coconut) == 2
    # a preempted or export=false run: just the docs
    assert next_steps([summary(SampleReport(None, None)), RunSummary(Path("runs/y"), 1, {}, None)]) == [text[-1]]
