"""Lightning checkpoint IO that writes atomically and loads without pickle code execution."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from recurrent_lm.model.io import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file beside the target, then rename; ``torch.load(weights_only=True)``.

    A crash mid-write (SIGKILL, full disk, preemption) leaves the previous last.ckpt intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
                        ) -> dict[str, Any]:
        return load_checkpoint(Path(path), map_location)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint as a dict, with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass resume=auto to continue from the run's "
                                "last checkpoint, resume=none to start fresh, or an existing .ckpt path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a recurrent_lm checkpoint ({err}); resume from "
                         "another checkpoint with resume=<path>, or resume=none to start fresh") from err
