"""Callbacks: throughput/MFU for a model whose FLOPs change every step; preemption at a step boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ThroughputMonitor

from recurrent_lm.train.hardware import measure_matmul_peak

PREEMPTED_EXIT = 75
"""Exit status of a run stopped by SIGTERM, SIGUSR1 or SIGUSR2 after saving last.ckpt (EX_TEMPFAIL: "try again"):
not 0, so ``recurrent-lm-train ... && recurrent-lm-eval ...`` stops on an unfinished model, and not 1 or 2, so
a scheduler or script tells a preemption (resume with the same command) from a crash or a refusal."""


class DepthThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor, fed per step with the FLOPs of the *sampled* depth.

    The module sets ``flops_per_batch`` in every training_step from the (n_no_grad, n_grad) it drew.
    On CPUs, where Lightning knows no peak, MFU is reported against a matmul peak measured at setup.
    Validation is timed (so it is kept out of the training throughput) but not logged: Lightning logs
    it at its own batch counter as the step, which would interleave unrelated rows with the
    training steps of metrics.csv.
    """

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args, **kwargs) -> None:
        if not trainer.sanity_checking and trainer.is_global_zero:
            self._update(trainer, pl_module, batch, trainer._evaluation_loop.batch_progress.total.ready)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        if self.available_flops is None and device.type == "cpu":
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            self.available_flops = measure_matmul_peak(dtype)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops


class RunCheckpoint(ModelCheckpoint):
    """step-N.ckpt every n steps plus last.ckpt, and last.ckpt again at the end of training when the
    final step is not a multiple of n (Lightning's own end-of-training save skips a session that
    saved before), so a finished run resumes as finished."""

    def write_last(self, trainer: L.Trainer) -> None:
        """Write last.ckpt now (every rank calls it: the save is collective under FSDP2/DeepSpeed)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self.write_last(trainer)


class OnRestored(Callback):
    """Calls ``action`` once, when the checkpoint has been restored and training is about to start (or, through
    :meth:`fire`, after a fit that had no step left to train): the first moment nothing can refuse the resume any
    more -- the data loader's own check of its resumed position runs just before."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action: Optional[Callable[[], None]] = action

    def fire(self) -> None:
        action, self.action = self.action, None
        if action is not None:
            action()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fire()


class Preemption(Callback):
    """The one owner of preemption: a signal makes the run save last.ckpt at the next optimizer-step boundary
    and stop; a warning signal also requeues the SLURM job, whose rerun resumes from the same run directory.

    * SIGUSR1 (``sbatch --signal=USR1@N``, the templates in launch/) and SIGUSR2 (submitit's): a warning
      before the time limit or a preemption. Save, ``scontrol requeue $SLURM_JOB_ID``, stop.
    * SIGTERM (``scontrol requeue``/``scancel``, a preemption already under way): save and stop; SLURM
      itself requeues a ``--requeue`` job, and SIGKILL follows after its KillWait.

    Lightning's own SLURM auto-requeue is switched off (cli.build_trainer) and its SIGTERM handler replaced,
    so nothing else acts on these signals. The stop runs no validation (Lightning would validate on any early
    stop, logging a row the uninterrupted run does not have), and the CLI exits with :data:`PREEMPTED_EXIT`. Every rank takes the same decision: a signal that reached one
    rank is all-reduced at each step boundary, then every rank takes part in the (collective) save.
    """

    WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, checkpoint: RunCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.received: Optional[int] = None
        self.received_at = 0.0
        self.preempted_at: Optional[int] = None  # the step saved when the run stopped for a signal

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum in (*self.WARNINGS, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received, self.received_at = signum, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-step: a checkpoint is only taken on a step boundary
        signum = torch.tensor(float(self.received or 0), device=pl_module.device)  # NCCL reduces CUDA tensors
        signum = trainer.strategy.reduce(signum, reduce_op="max") if trainer.world_size > 1 else signum
        if signum.item() == 0:
            return
        self.checkpoint.write_last(trainer)
        name = signal.Signals(int(signum.item())).name
        waited = f" {time.perf_counter() - self.received_at:.2f} s after the signal" if self.received else ""
        job = os.environ.get("SLURM_JOB_ID")
        requeue = int(signum.item()) in self.WARNINGS and job is not None
        if trainer.is_global_zero:
            print(f"preemption: {name} -> last.ckpt saved at step {trainer.global_step}{waited}"
                  + (f"; requeueing SLURM job {job}" if requeue else "; stopping"), flush=True)
        trainer.strategy.barrier("preemption-saved")
        if requeue and trainer.is_global_zero:
            subprocess.run(["scontrol", "requeue", job], check=False)
        self.preempted_at = trainer.global_step
        trainer.limit_val_batches = 0  # Trainer.enable_validation turns False: no validation on this stop
        trainer.should_stop = True
