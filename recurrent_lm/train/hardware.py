"""What the hardware can do fast: the matmul peak behind MFU (the precision is model/precision.py's)."""

from __future__ import annotations

import time

import torch

def measure_matmul_peak(dtype: torch.dtype, device: str | torch.device = "cpu", n: int = 2048,
                        seconds: float = 1.0) -> float:
    """Best sustained FLOP/s of an n×n×n matmul in `dtype`: the MFU denominator where no spec sheet applies."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
