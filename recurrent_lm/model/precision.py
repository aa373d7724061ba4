"""The one owner of precision: which dtype a name means, and what ``auto`` picks on a device.

Training (``trainer.precision``), evaluation (``dtype=``), generation (``--dtype``) and conversion
(``--dtype``) all decide through :func:`resolve_dtype`, so ``auto`` means the same everywhere:

    device                                  auto
    CUDA with bf16 (Ampere and newer)       bfloat16   (training: bf16-mixed)
    CUDA without bf16                       float16    (training: 16-mixed)
    CPU with AVX512-BF16 or AMX             bfloat16   (training: bf16-mixed)
    CPU without native bf16                 float32    (training: 32-true)

A CPU without native bf16 emulates bf16 matmuls: measured 14 GFLOP/s against 71 for fp32 on an AVX-512
Xeon without AVX512-BF16, so bf16 there would be slower, not faster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from recurrent_lm.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
"""Every dtype name a command accepts (besides ``auto``)."""
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""The canonical names, for a command line's choices."""
LIGHTNING_PRECISION = {torch.float32: "32-true", torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}
"""The Lightning precision string that trains with each dtype (weights fp32, autocast to the dtype)."""
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = set(cpuinfo.read_text().split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def native_dtype(device: torch.device) -> torch.dtype:
    """The fastest dtype that keeps training stable on ``device`` (the table of the module docstring)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_dtype(name: Union[str, torch.dtype], device: Union[str, torch.device] = "cpu",
                  setting: str = "dtype") -> torch.dtype:
    """The dtype ``name`` means on ``device``: one of :data:`DTYPES` (``torch.`` prefix allowed), or ``auto``."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key == "auto":
        return native_dtype(torch.device(device))
    if key not in DTYPES:
        raise ConfigError(f"{setting}={name!r} is not a dtype; choose one of {list(DTYPE_CHOICES)}")
    return DTYPES[key]


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision string for ``trainer.precision``: ``auto`` goes through :func:`resolve_dtype` on the
    accelerator's device; any other value is Lightning's own and is passed on."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return LIGHTNING_PRECISION[resolve_dtype("auto", "cuda" if on_gpu else "cpu")]
