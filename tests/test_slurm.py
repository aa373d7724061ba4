"""A real SLURM (``launch/local_slurm.sh start``, which ``.ci/run`` does): a 2-task DDP job submitted through the
project's own template is requeued mid-run (from outside, then by itself) and resumes exactly; a hydra sweep
runs through submitit.

Skipped, with the reason, when no cluster answers ``sinfo``. Jobs run the tiny fp32 model on CPU with
``--cpus-per-task=1``, so two tasks fit the 2-core machines this suite runs on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import launch, metric_rows, overrides, step_losses

REPO = Path(__file__).resolve().parents[1]
STEPS = 60


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:  # a configured but stopped controller makes sinfo retry for several seconds
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


pytestmark = pytest.mark.skipif(not cluster_answers(), reason="no SLURM cluster answers `sinfo`; start the "
                                "local one with `launch/local_slurm.sh start` (.ci/run does)")


def job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("JobState=")), "GONE")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def logged_steps(run_dir: Path) -> int:
    try:
        return len(step_losses(run_dir))
    except (FileNotFoundError, AssertionError):
        return 0


def test_ddp_job_requeued_mid_run_resumes_exactly(corpus_dir, tmp_path):
    """Submitted by launch/submit.py (2 CPU tasks -> trainer.devices=2, parallel=ddp) and interrupted twice:

    1. `scontrol requeue` after step 3 sends SIGTERM: the app saves last.ckpt at the next step boundary and
       stops; SLURM reruns the job (SLURM_RESTART_COUNT=1, same job id, same run dir), which resumes;
    2. `scancel --signal=USR1` (what `--signal=USR1@N` sends before the time limit): the app saves, requeues
       its own job and stops; the third run resumes and finishes.

    The stitched per-step losses equal an uninterrupted one-process run with the same global batch."""
    run_dir = tmp_path / "job"
    args = overrides(corpus_dir, run_dir, **{"trainer.max_steps": STEPS, "trainer.checkpoint_every_n_steps": 100,
                                             "trainer.val_check_interval": STEPS, "trainer.micro_batch_size": 2,
                                             "sample_tokens": 0, "export": False})
    env = {**os.environ, "RECURRENT_LM_PYTHON": sys.executable}
    submitted = subprocess.run([sys.executable, "launch/submit.py", "--cpu-tasks", "2",
                                "--sbatch-arg=--cpus-per-task=1", "--"] + args,
                               cwd=REPO, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.split()[-1]
    log = run_dir / "slurm" / f"{job}.out"

    def log_says(text: str) -> bool:
        return log.is_file() and text in log.read_text()

    try:
        wait_for(lambda: logged_steps(run_dir) >= 3, 240, "the job's first 3 steps")
        subprocess.run(["scontrol", "requeue", job], check=True)
        wait_for(lambda: log_says("restart 1"), 120, "the requeued run to start")
        saved = int(re.search(r"SIGTERM -> last.ckpt saved at step (\d+)", log.read_text()).group(1))
        wait_for(lambda: logged_steps(run_dir) >= saved + 3, 240, "the rerun's first 3 steps")
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        wait_for(lambda: log_says("restart 2"), 120, "the self-requeued run to start")
        wait_for(lambda: job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 240, "the last run to end")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    text = log.read_text()
    assert job_state(job) == "COMPLETED", text[-3000:]
    assert (run_dir / "slurm" / "submit.sh").is_file() and (run_dir / "slurm" / "submit.cmd").is_file()
    assert re.search(rf"SIGUSR1 -> last.ckpt saved at step \d+ [\d.]+ s after the signal; requeueing SLURM job "
                     rf"{job}", text), text[-3000:]
    assert text.count(f"resuming from {run_dir}/checkpoints/last.ckpt") == 2
    reference = tmp_path / "reference"
    straight = launch(overrides(corpus_dir, reference, **{"trainer.max_steps": STEPS, "trainer.micro_batch_size": 4,
                                                          "trainer.checkpoint_every_n_steps": 100, "export": False,
                                                          "trainer.val_check_interval": STEPS, "sample_tokens": 0}))
    assert straight.returncode == 0, straight.stdout[-3000:]
    a, b = step_losses(reference), step_losses(run_dir)
    assert sorted(a) == sorted(b) == list(range(STEPS))
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4


def test_hydra_multirun_over_depth_through_submitit(corpus_dir, tmp_path):
    """`-m launcher=slurm model.mean_recurrence=2,3`: one SLURM job per depth, each writing its own run."""
    args = [a for a in overrides(corpus_dir, tmp_path, **{"trainer.max_steps": 3, "trainer.val_check_interval": 3,
                                                         "sample_tokens": 0, "export": False})
            if not a.startswith("run_dir=")]
    result = subprocess.run([sys.executable, "-m", "recurrent_lm.train", "-m", "launcher=slurm",
                             f"hydra.sweep.dir={tmp_path}", "hydra.launcher.timeout_min=10",
                             "model.mean_recurrence=2,3"] + args,
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for job, depth in (("0", 2), ("1", 3)):  # job directories are named after their overrides (train/sweep_dirs.py)
        [run_dir] = tmp_path.glob(f"{job}_*")
        assert sorted(step_losses(run_dir)) == [0, 1, 2]
        assert any(r.get("val/loss_r4") for r in metric_rows(run_dir))
        assert f"mean_recurrence: {depth}" in (run_dir / "config.yaml").read_text()
    array = [p.name for p in (tmp_path / ".submitit").iterdir() if p.is_dir()]
    assert sorted(name.split("_")[-1] for name in array if "_" in name) == ["0", "1"]  # one array job per run
