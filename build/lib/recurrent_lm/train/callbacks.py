"""Callbacks: throughput/MFU for a model whose FLOPs change every step."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from recurrent_lm.train.hardware import measure_matmul_peak


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
