"""The LightningModule of Coconut training: the thought forward and the curriculum, on the shared step helpers.

It is its own module, not pretraining's with a few methods replaced: what makes a run safe it takes from the
helpers every app calls (train/step_support.py: seeded per-step generators for exact resume, the non-finite
gradient guard, the step log carried in checkpoints; train/optim.py: AdamW whose no-decay rule recognises any
model's embeddings and norms). What it adds:

* the training forward is :class:`ContinuousThoughtLM` (prefix, thoughts through the shared loop, suffix);
  a recurrent model runs every forward at the depth the sampler drew for the step (thoughts × depth);
* the stage follows the optimizer step (``epoch = step · accumulation // batches_per_epoch``), and
  :class:`OptimizerResetOnStage` clears AdamW's moments where the stage changes, as the paper does;
* dropout (Hugging Face models have it) draws from a generator seeded per micro-batch, so a resumed
  run replays it exactly;
* under ``parallel=fsdp`` the thought forward is one call of one FSDP2 unit over the whole model
  (:meth:`shard`), since its forwards share one autograd graph.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor, nn

from recurrent_lm.coconut.backends import FIXED, Depth, backend_for
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.curriculum import scheduled_stage
from recurrent_lm.coconut.sequences import EncodedRecord, SpecialIds, build_example, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.loop import DepthSampler, SamplerConfig
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.train.module import plain
from recurrent_lm.train.parallel import ParallelConfig, StepUnit, shard_step
from recurrent_lm.train.schema import OptimConfig
from recurrent_lm.train.step_support import (NonFiniteGuard, StepHooks, StepLog, StepStreams,
                                             configure_parallel, full_model, step_seed)


class CoconutModule(StepHooks, L.LightningModule):
    def __init__(self, model: ModelConfig, sampler: SamplerConfig, optim: OptimConfig, coconut: CoconutConfig,
                 eval_depths: list[int], ids: SpecialIds, batches_per_epoch: int, lm: Optional[nn.Module] = None,
                 seed: int = 0, max_nonfinite_steps: int = 0, parallel: Optional[ParallelConfig] = None,
                 attn_backend: str = "sdpa") -> None:
        """``lm`` is a Hugging Face causal LM (coconut.hf_model or init_from's); default: ``RecurrentDepthLM(model)``
        with the runtime ``attn_backend``."""
        super().__init__()
        self.model_config, self.optim_config = model, optim
        self.sampler = DepthSampler(sampler)
        self.eval_depths = list(eval_depths)
        self.parallel = parallel or ParallelConfig()
        self.streams, self.step_log, self.guard = StepStreams(seed), StepLog(), NonFiniteGuard(max_nonfinite_steps)
        self._configured = False
        self.attn_backend = attn_backend
        self.model = RecurrentDepthLM(model, attn_backend) if lm is None else lm
        self.flops_per_batch = 0  # per-position cost differs between prefix, thoughts and suffix; not modelled
        # The keys pretraining's checkpoints have (resume and export read them), and the Coconut recipe.
        self.save_hyperparameters({"model": model.to_dict(), "sampler": vars(sampler).copy(),
                                   "optim": plain(vars(optim)), "eval_depths": self.eval_depths,
                                   "coconut": coconut.to_dict()})
        self.coconut, self.ids, self.batches_per_epoch = coconut, ids, batches_per_epoch
        self.recurrent = isinstance(self.model, RecurrentDepthLM)
        self.thinker: ContinuousThoughtLM | StepUnit = ContinuousThoughtLM(backend_for(self.model))
        self._reset_at = -1  # the step whose optimizer reset already happened (several micro-batches per step)

    def configure_model(self) -> None:
        """The parallel-side changes (:func:`configure_parallel`), once; FSDP2 through :meth:`shard`."""
        if self._configured:
            return
        self._configured = True
        configure_parallel(self.model, self.parallel, shard=lambda: self.shard(self.device_mesh["data_parallel"]))

    def full_model(self) -> Optional[nn.Module]:
        """The trained model, unsharded, on rank 0 (:func:`full_model`); a Hugging Face model is rebuilt from its
        own config."""
        def rebuild() -> nn.Module:
            return RecurrentDepthLM(self.model_config, self.attn_backend) if self.recurrent \
                else type(self.model)(self.model.config)

        return full_model(self, self.model, self.parallel, rebuild)

    def shard(self, mesh: Any) -> None:
        """FSDP2 with the whole thought forward as one call of one unit (see :func:`shard_step` for why).

        The unit is kept outside the module tree (``object.__setattr__``): its only parameters are the
        model's, which keep their names (``model.*``) in checkpoints and in the optimizer.
        """
        unit = shard_step(self.model, self.thinker, mesh, self.parallel.reshard_after_forward)
        object.__setattr__(self, "thinker", unit)

    def stage_at(self, step: int) -> int:
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return scheduled_stage(self.coconut, step * accumulate // self.batches_per_epoch)

    def _depth(self, num_steps) -> Depth:
        return Depth(num_steps=num_steps) if self.recurrent else FIXED

    def _forward(self, batch: dict[str, Tensor], num_steps, *stream: int | str, rank: bool = True):
        """One Coconut forward whose randomness (s₀ noise, dropout) is a pure function of ``stream``."""
        generator = self.streams.generator(self, *stream, rank=rank)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(step_seed(self.streams.seed, "dropout", *stream))
            return self.thinker(batch, depth=self._depth(num_steps), no_grad_thoughts=self.coconut.no_grad_thoughts,
                                generator=generator if self.recurrent else None)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        num_steps = self.sampler(self.global_step) if self.recurrent else None
        out = self._forward(batch, num_steps, "train", self.global_step, self.streams.micro_batch(self.global_step))
        self.step_log.log(self, {"train/loss": out.loss, "train/stage": float(self.stage_at(self.global_step)),
                        "train/thoughts": out.thoughts.used.float().mean()}, prog_bar=True)
        if num_steps is not None:
            self.step_log.log(self, {"train/depth": float(sum(num_steps))})
        return out.loss

    def validation_step(self, records: list[EncodedRecord], batch_idx: int) -> None:
        """Loss of the validation records laid out at the stage being trained, at each eval depth."""
        stage = self.stage_at(self.global_step)
        batch = collate([build_example(r, stage, self.coconut, self.ids) for r in records], self.ids.pad)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        for r in self.eval_depths if self.recurrent else [None]:
            out = self._forward(batch, r, "val", batch_idx, r or 0, rank=False)
            self.log("val/loss" if r is None else f"val/loss_r{r}", out.loss, sync_dist=True, batch_size=len(records))
        self.log("val/stage", float(stage), sync_dist=True, batch_size=len(records))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["coconut_stage"] = self.stage_at(self.global_step)


class OptimizerResetOnStage(L.Callback):
    """Clear every optimizer's state (AdamW's moments and step counts) at the first step of a new stage.

    The paper resets the optimizer when the stage changes, because moments estimated for one layout of
    the data mislead the next. The decision is a function of the step, so an uninterrupted and a resumed
    run reset at the same step; never every epoch (a known slip of the reference).
    """

    def on_train_batch_start(self, trainer: L.Trainer, module: CoconutModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or module._reset_at == step or module.stage_at(step) == module.stage_at(step - 1):
            return
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        module._reset_at = step
        module.print(f"step {step}: stage {module.stage_at(step)} begins; optimizer state reset")
