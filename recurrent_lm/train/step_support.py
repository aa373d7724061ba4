"""What makes a training step safe and replayable, as helpers that every app's LightningModule calls.

They are parts a module holds, not a base class it inherits: pretraining's :class:`RecurrentLMModule` and
Coconut's module each own one of every part below and call it from their own Lightning hooks, so neither
picks up the other's forward, validation or optimizer rules by accident.

* :class:`StepStreams`: every random draw of a step comes from a generator seeded by (seed, stream..., rank),
  a pure function of the step, so a resumed run replays the uninterrupted one bit for bit. Nothing reads
  the global RNG, whose position depends on how often anything touched it before.
* :class:`StepLog`: the step's logged values, carried in checkpoints (Lightning writes a step's metrics only
  after that step's checkpoint, so a kill between the two would lose the row a resume starts after).
* :class:`NonFiniteGuard`: clip by global norm, skip a step whose norm is not finite, stop after a budget.
* :func:`configure_parallel`, :func:`full_model`: the parallel-side changes to a built model, and the model
  back unsharded for export.
* :class:`StepHooks`: the four Lightning hooks that only hand over to these parts (optimizer, clipping, checkpoint
  save and load). A mixin of delegations, not a base module: it carries no forward, loss or validation, and
  the optimizer's parameter groups come from :func:`recurrent_lm.train.optim.build_optimizer`, which recognises
  any model's embeddings and norms.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from recurrent_lm.errors import DivergedError
from recurrent_lm.train.optim import build_optimizer
from recurrent_lm.train.parallel import ParallelConfig, apply_activation_checkpointing
from recurrent_lm.train.sharded import full_state_dict


def step_seed(seed: int, *key: int | str) -> int:
    """A 63-bit seed that is a pure function of (seed, key...): numpy's SeedSequence hashes the entropy,
    so neighbouring steps or ranks get unrelated streams (not seed + step, whose streams overlap)."""
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") for k in key]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class StepStreams:
    """Seeded generators keyed by stream, and the micro-batch index that keys a step's draws under accumulation."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._micro = (-1, 0)  # (global step, micro-batch index within it)

    def generator(self, module: L.LightningModule, *stream: int | str, rank: bool = True) -> torch.Generator:
        """A fresh generator on ``module``'s device, seeded by (seed, stream..., rank): see :func:`step_seed`."""
        key = (*stream, module.global_rank) if rank else stream
        return torch.Generator(device=module.device).manual_seed(step_seed(self.seed, *key))

    def micro_batch(self, step: int) -> int:
        """Index of this micro-batch within optimizer step ``step``. Counted here rather than taken from
        batch_idx, whose value after a resume Lightning does not promise; checkpoints fall on step
        boundaries, so the count restarts at 0 exactly where an uninterrupted run's does."""
        last, k = self._micro
        self._micro = (step, k + 1 if last == step else 0)
        return self._micro[1]


class StepLog:
    """``module.log_dict``, plus a copy of the step's values for the checkpoint (see the module docstring);
    the CSV logger restores the row from it (train/metrics_log.py)."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def log(self, module: L.LightningModule, metrics: dict[str, Tensor | float], prog_bar: bool = False) -> None:
        if module._trainer is not None and module.trainer.world_size > 1:  # the global batch's values, as on 1 process
            reduce = module.trainer.strategy.reduce
            metrics = {k: reduce(torch.as_tensor(v, device=module.device).detach().float(), reduce_op="mean")
                       for k, v in metrics.items()}
        module.log_dict(metrics, prog_bar=prog_bar)
        if self._values.get("step") != module.global_step:
            self._values = {"step": module.global_step}
        for key, value in metrics.items():  # summed over micro-batches; averaged when saved, as Lightning does
            total, count = self._values.get(key, (0.0, 0))
            self._values[key] = (total + torch.as_tensor(value).detach().float(), count + 1)

    def checkpoint_row(self) -> Optional[dict[str, Any]]:
        """The step's row in plain floats (the checkpoint stays weights_only-loadable); None before any step."""
        if not self._values:
            return None
        return {"step": self._values["step"],
                **{k: float(v[0]) / v[1] for k, v in self._values.items() if k != "step"}}


class NonFiniteGuard:
    """Non-finite gradients (a NaN/inf loss makes them so) skip the optimizer step; after ``max_steps`` skips the
    run stops with an error, before a checkpoint can store it. The count is checkpointed: the budget survives a
    resume."""

    def __init__(self, max_steps: int = 0) -> None:
        self.max_steps = max_steps
        self.skipped = 0

    def clip(self, module: L.LightningModule, log: StepLog, gradient_clip_val: Optional[float]) -> None:
        """Clip by global norm, and skip the step when that norm is not finite.

        The norm is taken after DDP/FSDP reduced the gradients, so every rank sees the same value
        and takes the same decision. Dropping every ``.grad`` makes AdamW leave weights and moments
        untouched: a skipped step changes nothing but the step counter.
        """
        params = [p for p in module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=gradient_clip_val or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a replicated DTensor
        log.log(module, {"train/grad_norm": norm})
        if torch.isfinite(norm):
            return
        self.skipped += 1
        for p in params:
            p.grad = None
        if self.skipped > self.max_steps:
            raise DivergedError(
                f"non-finite gradient norm ({norm.item()}) at step {module.global_step}, "
                f"{self.skipped} non-finite step(s) so far > trainer.max_nonfinite_steps="
                f"{self.max_steps}; the run stopped and its checkpoints hold the last finite "
                "weights. Lower optim.lr, raise optim.warmup_steps, or resume=<an earlier step-N.ckpt>")
        module.print(f"step {module.global_step}: non-finite gradient norm, optimizer step skipped "
                     f"({self.skipped}/{self.max_steps} allowed)")


def checkpoint_state(module: L.LightningModule, guard: NonFiniteGuard, log: StepLog,
                     parallel: ParallelConfig) -> dict[str, Any]:
    """What every app's ``on_save_checkpoint`` adds: the skip budget, the parallel layout a resume checks
    (run_dir.check_parallel: shards and data order depend on it) and the step's log row."""
    state: dict[str, Any] = {"nonfinite_steps": guard.skipped,
                             "parallel": {"strategy": parallel.strategy, "world_size": module.trainer.world_size}}
    row = log.checkpoint_row()
    if row is not None:
        state["step_log"] = row
    return state


def configure_parallel(model: nn.Module, parallel: ParallelConfig, shard: Callable[[], None],
                       compile_blocks: bool = False) -> None:
    """``configure_model``'s work, in torchtitan's order: activation checkpointing, compile, then FSDP2 sharding
    (``shard``, called under ``parallel=fsdp`` only: each app knows its own units)."""
    apply_activation_checkpointing(model, parallel.activation_checkpointing)
    if compile_blocks:
        model.compile_blocks()
    if parallel.strategy == "fsdp":
        shard()


def full_model(module: L.LightningModule, model: nn.Module, parallel: ParallelConfig,
               rebuild: Callable[[], nn.Module]) -> Optional[nn.Module]:
    """The trained model, unsharded, on rank 0 (for export and evaluation); None on the other ranks.
    Collective under FSDP2: every rank must call it. ``rebuild`` makes an empty model of the same architecture."""
    if parallel.strategy == "deepspeed" and parallel.zero_stage == 3:
        module.trainer.strategy.barrier("last-checkpoint")  # ZeRO-3 partitions weights: merge the saved ones
        from recurrent_lm.train.export import model_from_checkpoint

        return model_from_checkpoint(Path(module.trainer.checkpoint_callback.last_model_path)) \
            if module.global_rank == 0 else None
    if parallel.strategy != "fsdp":
        return model
    state = full_state_dict(model)
    if module.global_rank != 0:
        return None
    unsharded = rebuild()
    unsharded.load_state_dict(state)
    return unsharded


class StepHooks:
    """Lightning's optimizer, clipping and checkpoint hooks for a module that holds ``model``, ``optim_config``
    (:class:`~recurrent_lm.train.schema.OptimConfig`), ``guard``, ``step_log`` and ``parallel``. A module
    that stores more in its checkpoints extends :meth:`on_save_checkpoint` and calls this one first."""

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.model, self.optim_config, self.trainer.max_steps)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        self.guard.clip(self, self.step_log, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(checkpoint_state(self, self.guard, self.step_log, self.parallel))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.skipped = int(checkpoint.get("nonfinite_steps", 0))
