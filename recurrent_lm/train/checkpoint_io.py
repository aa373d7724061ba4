"""Lightning checkpoint IO that writes atomically, refuses non-finite values, and loads without pickle code."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from recurrent_lm.errors import ConfigError, DivergedError, MissingFileError
from recurrent_lm.model.io import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file beside the target, then rename; ``torch.load(weights_only=True)``.

    A crash mid-write (SIGKILL, full disk, preemption) leaves the previous last.ckpt intact, and a
    checkpoint holding a NaN or inf is never written, so it cannot replace a good one.
    ``preloaded`` hands over a checkpoint the app already loaded and checked (choosing what to resume
    from), so Lightning does not read it a second time.
    """

    def __init__(self, preloaded: Optional[tuple[Path, dict[str, Any]]] = None) -> None:
        super().__init__()
        self._preloaded = preloaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        bad = first_nonfinite(checkpoint)
        if bad is not None:
            raise DivergedError(f"refusing to write checkpoint {path}: {bad} holds non-finite values; the "
                                     "previous checkpoints are kept. Lower optim.lr or resume from an earlier one")
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
                        ) -> dict[str, Any]:
        if self._preloaded is not None and Path(path) == self._preloaded[0]:
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return load_checkpoint(Path(path), map_location or "cpu", check_finite=True)


def load_checkpoint(path: Path, map_location: Any = "cpu", check_finite: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, with a clear error for a missing, corrupt or non-finite file."""
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist; pass resume=auto to continue from the run's "
                                "last checkpoint, resume=none to start fresh, or an existing .ckpt path")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ConfigError(f"checkpoint {path} is corrupt or not a recurrent_lm checkpoint ({err}); resume from "
                         "another checkpoint with resume=<path>, or resume=none to start fresh") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict); resume from a .ckpt "
                         "written by recurrent-lm-train")
    if check_finite and (bad := first_nonfinite(checkpoint)) is not None:
        raise ConfigError(f"checkpoint {path} is damaged: {bad} holds non-finite values (NaN/inf); resume from an "
                         "earlier checkpoint with resume=<path to step-N.ckpt>, or resume=none to start fresh")
    return checkpoint


def first_nonfinite(checkpoint: dict[str, Any]) -> Optional[str]:
    """The name of the first floating tensor with a NaN/inf among weights and optimizer states, else None."""
    for name, tensor in _float_tensors(checkpoint.get("state_dict", {}), "state_dict"):
        if not torch.isfinite(tensor).all():
            return name
    for i, optimizer in enumerate(checkpoint.get("optimizer_states", [])):
        for name, tensor in _float_tensors(optimizer.get("state", {}), f"optimizer_states[{i}]"):
            if not torch.isfinite(tensor).all():
                return name
    return None


def _float_tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():  # a DTensor (FSDP2 shard): this rank's part
            yield prefix, tree.to_local() if hasattr(tree, "to_local") else tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _float_tensors(value, f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _float_tensors(value, f"{prefix}[{i}]")
