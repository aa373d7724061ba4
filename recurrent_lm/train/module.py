"""The LightningModule that pretrains a RecurrentDepthLM with sampled depth and truncated backprop."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from recurrent_lm.exitgate.stage1 import add_gate, stage1_forward
from recurrent_lm.loop import DepthSampler, SamplerConfig, token_correlation
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, train_flops_per_token
from recurrent_lm.model.lm import next_token_loss
from recurrent_lm.train.parallel import ParallelConfig, shard_model
from recurrent_lm.train.schema import OptimConfig
from recurrent_lm.train.step_support import (NonFiniteGuard, StepHooks, StepLog, StepStreams,
                                             configure_parallel, full_model)


class RecurrentLMModule(StepHooks, L.LightningModule):
    """Owns the model, the depth sampler, the optimizer recipe and the depth telemetry.

    Every random draw of a step is a pure function of (seed, step): the depth is ``sampler(global_step)``
    (the same on every rank without communicating) and the initial state s_0 comes from :class:`StepStreams`,
    drawn for the global batch (:meth:`initial_state`), so a resumed run replays the uninterrupted one bit for bit.
    Non-finite gradients skip the optimizer step (:class:`NonFiniteGuard`). These parts, and the optimizer's
    parameter groups, are helpers that every app's module calls (train/step_support.py, train/optim.py).
    """

    def __init__(self, model: ModelConfig, sampler: SamplerConfig, optim: OptimConfig,
                 eval_depths: list[int], attn_backend: str = "sdpa", compile_blocks: bool = False,
                 telemetry_every: int = 10, seed: int = 0, max_nonfinite_steps: int = 0,
                 lm: Optional[torch.nn.Module] = None, parallel: Optional[ParallelConfig] = None,
                 exit_loss_beta: Optional[float] = None) -> None:
        """``lm`` is a model built elsewhere (init_from's weights); default: ``RecurrentDepthLM(model)``.
        ``parallel`` is applied in :meth:`configure_model` (activation checkpointing, FSDP2 sharding).
        ``exit_loss_beta`` trains an exit gate with the model (stage I, :mod:`recurrent_lm.exitgate.stage1`);
        None: the ordinary loss."""
        super().__init__()
        self.model_config, self.optim_config = model, optim
        self.sampler = DepthSampler(sampler)
        self.eval_depths = list(eval_depths)
        self.compile_blocks = compile_blocks
        self.telemetry_every = telemetry_every
        self.parallel = parallel or ParallelConfig()
        self.streams, self.step_log, self.guard = StepStreams(seed), StepLog(), NonFiniteGuard(max_nonfinite_steps)
        self._configured = False
        self.attn_backend = attn_backend
        self.model = RecurrentDepthLM(model, attn_backend) if lm is None else lm
        self.exit_loss_beta = exit_loss_beta
        if exit_loss_beta is not None:
            add_gate(self.model)
        self.flops_per_batch = 0  # read by ThroughputMonitor after every batch
        # Only primitives: the checkpoint stays loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"model": model.to_dict(), "sampler": vars(sampler).copy(),
                                   "optim": plain(vars(optim)), "eval_depths": self.eval_depths})

    def configure_model(self) -> None:
        """Parallel-side changes to the built model (:func:`configure_parallel`): FSDP2 with one unit per block.
        Lightning calls this again for ``trainer.validate``: each step is applied once."""
        if self._configured:
            return
        self._configured = True
        configure_parallel(self.model, self.parallel, compile_blocks=self.compile_blocks, shard=lambda: shard_model(
            self.model, self.device_mesh["data_parallel"], self.parallel.reshard_after_forward))

    def full_model(self) -> Optional[torch.nn.Module]:
        """The trained model, unsharded, on rank 0 (:func:`full_model`)."""
        return full_model(self, self.model, self.parallel,
                          lambda: RecurrentDepthLM(self.model_config, self.attn_backend))

    # ------------------------------------------------------------------ train
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n_no_grad, n_grad = self.sampler(self.global_step)
        record = self.global_step % self.telemetry_every == 0
        args = {"position_ids": batch.get("position_ids"), "record_stats": record,
                "init_state": self.initial_state(batch["input_ids"], "train", self.global_step,
                                                 self.streams.micro_batch(self.global_step))}
        if self.exit_loss_beta is None:
            out = self.model(batch["input_ids"], num_steps=(n_no_grad, n_grad), labels=batch["labels"], **args)
            loss = out.loss
        else:
            loss, out = stage1_forward(self.model, batch["input_ids"], batch["labels"], (n_no_grad, n_grad),
                                       self.exit_loss_beta, **args)
            self.step_log.log(self, {"train/exit_objective": loss})
        tokens = batch["input_ids"].numel()
        self.flops_per_batch = tokens * train_flops_per_token(self.model_config, n_no_grad + n_grad, n_grad,
                                                              context=batch["input_ids"].shape[1])
        self.step_log.log(self, {"train/loss": out.loss, "train/depth": float(n_no_grad + n_grad)}, prog_bar=True)
        if record and out.stats is not None:
            norms, rel = out.stats.as_tensors()
            self.step_log.log(self, {
                "telemetry/state_norm": norms[-1],
                "telemetry/rel_change_last": rel[-1],
                "telemetry/rel_change_first": rel[0],
                "telemetry/token_corr": token_correlation(out.state),
            })
        return loss

    def initial_state(self, input_ids: Tensor, *stream: int | str) -> Tensor:
        """This rank's s_0: drawn for the whole global batch from a generator keyed by ``stream`` alone, then
        sliced to this rank's rows. A sample's noise depends on its place in the global batch, not on how many
        processes share the batch, so W processes train exactly as one process with the same global batch."""
        world, rank, rows = self.trainer.world_size, self.global_rank, input_ids.shape[0]
        like = torch.empty(rows * world, input_ids.shape[1], self.model_config.d_model, device=self.device)
        generator = self.streams.generator(self, *stream, rank=False)
        return self.model.initial_state(like, generator)[rank * rows:(rank + 1) * rows]

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss at every eval depth, all read from one unroll to the deepest (``readout_depths``): the cost of
        the deepest run, not of their sum. With several val loaders (a task's difficulties) metrics are
        ``val{i}/``."""
        prefix = f"val{dataloader_idx}" if len(self.trainer.num_val_batches) > 1 else "val"
        # The same s_0 for a batch at every validation: val curves then move with the weights only.
        out = self.model(batch["input_ids"], num_steps=max(self.eval_depths), position_ids=batch.get("position_ids"),
                         record_stats=True, readout_depths=self.eval_depths,
                         generator=self.streams.generator(self, "val", dataloader_idx, batch_idx, rank=False))
        for r, logits in out.depth_logits.items():
            self.log(f"{prefix}/loss_r{r}", next_token_loss(logits, batch["labels"]), sync_dist=True,
                     add_dataloader_idx=False)
        _, rel = out.stats.as_tensors()
        self.log(f"{prefix}/rel_change_last", rel[-1], sync_dist=True, add_dataloader_idx=False)
        self.log(f"{prefix}/token_corr", token_correlation(out.state), sync_dist=True, add_dataloader_idx=False)



def plain(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with tuples as lists: what a checkpoint's hyper-parameters read back as."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
