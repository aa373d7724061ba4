"""The LightningModule that pretrains a RecurrentDepthLM with sampled depth and truncated backprop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor

from recurrent_lm.errors import DivergedError
from recurrent_lm.loop import DepthSampler, SamplerConfig, token_correlation
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, train_flops_per_token
from recurrent_lm.model.lm import next_token_loss
from recurrent_lm.train.parallel import ParallelConfig, apply_activation_checkpointing, shard_model
from recurrent_lm.train.optim import build_optimizer
from recurrent_lm.train.schema import OptimConfig
from recurrent_lm.train.sharded import full_state_dict


class RecurrentLMModule(L.LightningModule):
    """Owns the model, the depth sampler, the optimizer recipe and the depth telemetry.

    Every random draw of a step is a pure function of (seed, step): the depth is ``sampler(global_step)``
    (the same on every rank without communicating) and the initial state s_0 comes from a generator seeded
    by :func:`step_seed`, drawn for the global batch (:meth:`initial_state`). Nothing reads the global RNG,
    whose position depends on how often anything (a DataLoader iterator, validation) touched it before, so
    a resumed run replays the uninterrupted one bit for bit.

    Non-finite gradients (a NaN/inf loss makes them so) skip the optimizer step; after
    ``max_nonfinite_steps`` skips the run stops with an error, before a checkpoint can store it.
    """

    def __init__(self, model: ModelConfig, sampler: SamplerConfig, optim: OptimConfig,
                 eval_depths: list[int], attn_backend: str = "sdpa", compile_blocks: bool = False, telemetry_every: int = 10,
                 seed: int = 0, max_nonfinite_steps: int = 0, lm: Optional[torch.nn.Module] = None,
                 parallel: Optional[ParallelConfig] = None) -> None:
        """``lm`` is a model built elsewhere (a Hugging Face causal LM for Coconut); default:
        ``RecurrentDepthLM(model)``. ``parallel`` is applied in :meth:`configure_model` (activation
        checkpointing, FSDP2 sharding)."""
        super().__init__()
        self.model_config, self.optim_config = model, optim
        self.sampler = DepthSampler(sampler)
        self.eval_depths = list(eval_depths)
        self.compile_blocks = compile_blocks
        self.telemetry_every = telemetry_every
        self.seed = seed
        self.max_nonfinite_steps = max_nonfinite_steps
        self.parallel = parallel or ParallelConfig()
        self._configured = False
        self.nonfinite_steps = 0  # checkpointed: the budget survives a resume
        self._micro = (-1, 0)  # (global step, micro-batch index within it) under gradient accumulation
        self._step_log: dict[str, Any] = {}  # this step's logged values: see _log_step
        self.attn_backend = attn_backend
        self.model = RecurrentDepthLM(model, attn_backend) if lm is None else lm
        self.flops_per_batch = 0  # read by ThroughputMonitor after every batch
        # Only primitives: the checkpoint stays loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"model": model.to_dict(), "sampler": vars(sampler).copy(),
                                   "optim": _plain(vars(optim)), "eval_depths": self.eval_depths})

    def configure_model(self) -> None:
        """Parallel-side changes to the built model, in torchtitan's order: activation checkpointing, compile,
        then FSDP2 sharding on the mesh Lightning set up. Lightning calls this again for ``trainer.validate``:
        each step is applied once."""
        if self._configured:
            return
        self._configured = True
        apply_activation_checkpointing(self.model, self.parallel.activation_checkpointing)
        if self.compile_blocks:
            self.model.compile_blocks()
        if self.parallel.strategy == "fsdp":
            self.shard(self.device_mesh["data_parallel"])

    def shard(self, mesh: Any) -> None:
        """FSDP2 on ``mesh``: one unit per block (:func:`shard_model`). Coconut overrides it: its step is several
        forwards sharing one graph."""
        shard_model(self.model, mesh, self.parallel.reshard_after_forward)

    def full_model(self) -> Optional[torch.nn.Module]:
        """The trained model, unsharded, on rank 0 (for export and evaluation); None on the other ranks.
        Collective under FSDP2: every rank must call it."""
        if self.parallel.strategy == "deepspeed" and self.parallel.zero_stage == 3:
            self.trainer.strategy.barrier("last-checkpoint")  # ZeRO-3 partitions weights: merge the saved ones
            from recurrent_lm.train.export import model_from_checkpoint

            return model_from_checkpoint(Path(self.trainer.checkpoint_callback.last_model_path)) \
                if self.global_rank == 0 else None
        if self.parallel.strategy != "fsdp":
            return self.model
        state = full_state_dict(self.model)
        if self.global_rank != 0:
            return None
        # A Hugging Face model (Coconut's coconut.hf_model) is rebuilt from its own config.
        model = RecurrentDepthLM(self.model_config, self.attn_backend) if isinstance(self.model, RecurrentDepthLM) \
            else type(self.model)(self.model.config)
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ train
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n_no_grad, n_grad = self.sampler(self.global_step)
        record = self.global_step % self.telemetry_every == 0
        out = self.model(batch["input_ids"], num_steps=(n_no_grad, n_grad), labels=batch["labels"],
                         position_ids=batch.get("position_ids"), record_stats=record,
                         init_state=self.initial_state(batch["input_ids"], "train", self.global_step,
                                                       self._micro_batch()))
        tokens = batch["input_ids"].numel()
        self.flops_per_batch = tokens * train_flops_per_token(self.model_config, n_no_grad + n_grad, n_grad,
                                                              context=batch["input_ids"].shape[1])
        self._log_step({"train/loss": out.loss, "train/depth": float(n_no_grad + n_grad)}, prog_bar=True)
        if record and out.stats is not None:
            norms, rel = out.stats.as_tensors()
            self._log_step({
                "telemetry/state_norm": norms[-1],
                "telemetry/rel_change_last": rel[-1],
                "telemetry/rel_change_first": rel[0],
                "telemetry/token_corr": token_correlation(out.state),
            })
        return out.loss

    def initial_state(self, input_ids: Tensor, *stream: int | str) -> Tensor:
        """This rank's s_0: drawn for the whole global batch from a generator keyed by ``stream`` alone, then
        sliced to this rank's rows. A sample's noise depends on its place in the global batch, not on how many
        processes share the batch, so W processes train exactly as one process with the same global batch."""
        world, rank, rows = self.trainer.world_size, self.global_rank, input_ids.shape[0]
        like = torch.empty(rows * world, input_ids.shape[1], self.model_config.d_model, device=self.device)
        return self.model.initial_state(like, self.generator(*stream, rank=False))[rank * rows:(rank + 1) * rows]

    def _log_step(self, metrics: dict[str, Tensor | float], prog_bar: bool = False) -> None:
        """``self.log_dict``, plus a copy of the step's values for :meth:`on_save_checkpoint`.

        Lightning writes a step's metrics to the loggers only after the checkpoint callbacks of that
        step ran, so a kill between the two would lose the row of the step a resume starts after.
        The checkpoint carries the row instead, and the CSV logger restores it (see metrics_log).
        """
        if self._trainer is not None and self.trainer.world_size > 1:  # the global batch's values, as on one process
            reduce = self.trainer.strategy.reduce
            metrics = {k: reduce(torch.as_tensor(v, device=self.device).detach().float(), reduce_op="mean")
                       for k, v in metrics.items()}
        self.log_dict(metrics, prog_bar=prog_bar)
        if self._step_log.get("step") != self.global_step:
            self._step_log = {"step": self.global_step}
        for key, value in metrics.items():  # summed over micro-batches; averaged when saved, as Lightning does
            total, count = self._step_log.get(key, (0.0, 0))
            self._step_log[key] = (total + torch.as_tensor(value).detach().float(), count + 1)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss at every eval depth, all read from one unroll to the deepest (``readout_depths``): the cost of
        the deepest run, not of their sum. With several val loaders (a task's difficulties) metrics are
        ``val{i}/``."""
        prefix = f"val{dataloader_idx}" if len(self.trainer.num_val_batches) > 1 else "val"
        # The same s_0 for a batch at every validation: val curves then move with the weights only.
        out = self.model(batch["input_ids"], num_steps=max(self.eval_depths), position_ids=batch.get("position_ids"),
                         record_stats=True, readout_depths=self.eval_depths,
                         generator=self.generator("val", dataloader_idx, batch_idx, rank=False))
        for r, logits in out.depth_logits.items():
            self.log(f"{prefix}/loss_r{r}", next_token_loss(logits, batch["labels"]), sync_dist=True,
                     add_dataloader_idx=False)
        _, rel = out.stats.as_tensors()
        self.log(f"{prefix}/rel_change_last", rel[-1], sync_dist=True, add_dataloader_idx=False)
        self.log(f"{prefix}/token_corr", token_correlation(out.state), sync_dist=True, add_dataloader_idx=False)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.model, self.optim_config, self.trainer.max_steps)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """Clip by global norm, and skip the step when that norm is not finite.

        The norm is taken after DDP/FSDP reduced the gradients, so every rank sees the same value
        and takes the same decision. Dropping every ``.grad`` makes AdamW leave weights and moments
        untouched: a skipped step changes nothing but the step counter.
        """
        params = [p for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=gradient_clip_val or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a replicated DTensor
        self._log_step({"train/grad_norm": norm})
        if torch.isfinite(norm):
            return
        self.nonfinite_steps += 1
        for p in params:
            p.grad = None
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise DivergedError(
                f"non-finite gradient norm ({norm.item()}) at step {self.global_step}, "
                f"{self.nonfinite_steps} non-finite step(s) so far > trainer.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}; the run stopped and its checkpoints hold the last finite "
                "weights. Lower optim.lr, raise optim.warmup_steps, or resume=<an earlier step-N.ckpt>")
        self.print(f"step {self.global_step}: non-finite gradient norm, optimizer step skipped "
                   f"({self.nonfinite_steps}/{self.max_nonfinite_steps} allowed)")

    # ------------------------------------------------------------------ exact resume
    def generator(self, *stream: int | str, rank: bool = True) -> torch.Generator:
        """A fresh generator on this device, seeded by (seed, stream..., rank): see :func:`step_seed`."""
        key = (*stream, self.global_rank) if rank else stream
        return torch.Generator(device=self.device).manual_seed(step_seed(self.seed, *key))

    def _micro_batch(self) -> int:
        """Index of this micro-batch within its optimizer step. Counted here rather than taken from
        batch_idx, whose value after a resume Lightning does not promise; checkpoints fall on step
        boundaries, so the count restarts at 0 exactly where an uninterrupted run's does."""
        step, k = self._micro
        self._micro = (self.global_step, k + 1 if step == self.global_step else 0)
        return self._micro[1]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = self.nonfinite_steps
        # What a resume checks before loading (run_dir.check_parallel): shards and data order depend on it.
        checkpoint["parallel"] = {"strategy": self.parallel.strategy, "world_size": self.trainer.world_size}
        if self._step_log:  # plain floats: the checkpoint stays weights_only-loadable
            checkpoint["step_log"] = {"step": self._step_log["step"], **{
                k: float(v[0]) / v[1] for k, v in self._step_log.items() if k != "step"}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))


def step_seed(seed: int, *key: int | str) -> int:
    """A 63-bit seed that is a pure function of (seed, key...): numpy's SeedSequence hashes the entropy,
    so neighbouring steps or ranks get unrelated streams (not seed + step, whose streams overlap)."""
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") for k in key]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
