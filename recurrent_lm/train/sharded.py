"""Checkpoints that are directories: FSDP2 shards (one file per rank) and DeepSpeed ZeRO states.

A directory cannot be renamed over an existing one, so a write goes to a hidden temp directory beside the
target (``.last.ckpt.<tag>.tmp``, which :func:`recurrent_lm.train.run_dir.remove_partial_writes` deletes after a
kill), and only when every rank has finished does rank 0 add ``resume.json`` and move it into place. A
directory without ``resume.json`` is therefore never complete, and ``resume=auto`` never takes it.

``resume.json`` holds what choosing a resume needs without reading any shard: the step, the model config,
the strategy and world size it was written under, and the step's logged row.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy
from torch import nn

from recurrent_lm.errors import ConfigError, DivergedError
from recurrent_lm.model.io import atomic_write
from recurrent_lm.train.checkpoint_io import first_nonfinite

RESUME_FILE = "resume.json"
RESUME_KEYS = ("global_step", "hyper_parameters", "step_log", "parallel", "nonfinite_steps")


def resume_record(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: checkpoint[key] for key in RESUME_KEYS if key in checkpoint}


def replace_path(new: Path, target: Path) -> None:
    """Put the complete ``new`` where ``target`` is. The old version is moved aside first (a directory cannot
    be renamed over another); a kill in between leaves no ``target`` and two hidden temp paths, and a resume
    then falls back to the newest step-N checkpoint."""
    aside = target.with_name(f".{target.name}.old.tmp")
    _remove(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(new, target)
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class AtomicDirectorySave:
    """Mixin for a strategy whose ``save_checkpoint`` writes a directory from every rank."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        if not self.writes_directory:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        bad = first_nonfinite(checkpoint)  # this rank's shards; every rank must take the same decision
        if self.reduce_boolean_decision(bad is not None, all=False):
            raise DivergedError(f"refusing to write checkpoint {filepath}: {bad or 'a shard of another rank'} "
                                     "holds non-finite values; the previous checkpoints are kept. Lower optim.lr "
                                     "or resume from an earlier one")
        target = Path(filepath)
        tmp = target.with_name(f".{target.name}.{self.broadcast(uuid.uuid4().hex[:8])}.tmp")
        record = resume_record(checkpoint)
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("checkpoint-written")
        if self.global_rank == 0:
            atomic_write(tmp / RESUME_FILE, lambda f: f.write_text(json.dumps(record, indent=1)))
            replace_path(tmp, target)
        self.barrier("checkpoint-in-place")

    @property
    def writes_directory(self) -> bool:
        return True


class FSDP2Strategy(AtomicDirectorySave, ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure FSDP2: every process is one data-parallel shard (a 1-D mesh
    of the world size, no tensor parallelism), with atomic directory checkpoints."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @property
    def writes_directory(self) -> bool:
        return self._save_distributed_checkpoint


class AtomicDeepSpeedStrategy(AtomicDirectorySave, DeepSpeedStrategy):
    """DeepSpeed ZeRO (CUDA only) with atomic directory checkpoints."""


def read_resume_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / RESUME_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"checkpoint directory {path} has no readable {RESUME_FILE} ({err}); it is incomplete: "
                         "resume from another checkpoint with resume=<path>, or resume=none") from err


def load_full_state(path: Path, model: nn.Module) -> None:
    """Load the weights of a directory checkpoint into an unsharded ``model`` in this one process (export).

    FSDP2 shards are read with torch.distributed.checkpoint, which reshards on load; DeepSpeed states are
    merged by Lightning's ZeRO converter.
    """
    if (path / "meta.pt").is_file():
        import torch.distributed.checkpoint as dcp

        state = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=path, no_dist=True)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
        return
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # the gpu extra

    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="checkpoint")  # Lightning's tag
    model.load_state_dict({k.removeprefix("_forward_module.").removeprefix("model."): v for k, v in state.items()})


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights of ``model`` on CPU. Collective under FSDP2: every rank must call it; the
    tensors are complete on rank 0. Sharded means DTensor parameters, not an FSDP module inside ``model``:
    Coconut's unit is a wrapper around the model (see parallel.shard_step)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
