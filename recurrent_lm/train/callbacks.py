"""Callbacks: throughput/MFU for a model whose FLOPs change every step."""

from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import ThroughputMonitor


def measure_matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Achievable dense-matmul FLOP/s on this device: the MFU denominator where no spec sheet applies."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class DepthThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor, fed per step with the FLOPs of the *sampled* depth.

    The module sets ``flops_per_batch`` in every training_step from the (n_no_grad, n_grad) it drew.
    On CPUs, where Lightning knows no peak, MFU is reported against a matmul peak measured at setup.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        if self.available_flops is None and device.type == "cpu":
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            self.available_flops = measure_matmul_peak(dtype)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
