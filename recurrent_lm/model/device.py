"""Turn a user's device setting into a torch.device, or a clear error before anything is loaded."""

from __future__ import annotations

from typing import Optional

import torch

from recurrent_lm.errors import ConfigError


def pick_device(name: Optional[str], setting: str = "device") -> torch.device:
    """``None``/``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given.

    An explicit CUDA device on a machine without one is an error naming ``setting`` (falling back to
    the CPU would silently turn a GPU job into a much slower one), as is a malformed or absent index.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError as err:
        raise ConfigError(f"{setting}={name!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={name!r} but this machine has no usable CUDA device (torch "
                             f"{torch.__version__}); use {setting}=cpu, or run where a GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{setting}={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"{setting}={name!r}: only cpu and cuda devices are supported")
    return device
