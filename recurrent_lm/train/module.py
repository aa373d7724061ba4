"""The LightningModule that pretrains a RecurrentDepthLM with sampled depth and truncated backprop."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import torch
from torch import Tensor

from recurrent_lm.loop import DepthSampler, SamplerConfig, token_correlation
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, train_flops_per_token
from recurrent_lm.train.schema import OptimConfig


class RecurrentLMModule(L.LightningModule):
    """Owns the model, the depth sampler, the optimizer recipe and the depth telemetry.

    The depth of every step is ``sampler(global_step)``: a pure function of (seed, step), so a
    resumed run replays the same depths and all ranks agree without communication.
    """

    def __init__(self, model: ModelConfig, sampler: SamplerConfig, optim: OptimConfig,
                 eval_depths: list[int], compile_blocks: bool = False, telemetry_every: int = 10) -> None:
        super().__init__()
        self.model_config, self.optim_config = model, optim
        self.sampler = DepthSampler(sampler)
        self.eval_depths = list(eval_depths)
        self.compile_blocks = compile_blocks
        self.telemetry_every = telemetry_every
        self.model = RecurrentDepthLM(model)
        self.flops_per_batch = 0  # read by ThroughputMonitor after every batch
        # Only primitives: the checkpoint stays loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"model": model.to_dict(), "sampler": vars(sampler).copy(),
                                   "optim": _plain(vars(optim)), "eval_depths": self.eval_depths})

    def configure_model(self) -> None:
        if self.compile_blocks:
            self.model.compile_blocks()

    # ------------------------------------------------------------------ train
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n_no_grad, n_grad = self.sampler(self.global_step)
        record = self.global_step % self.telemetry_every == 0
        out = self.model(batch["input_ids"], num_steps=(n_no_grad, n_grad), labels=batch["labels"],
                         position_ids=batch.get("position_ids"), record_stats=record)
        tokens = batch["input_ids"].numel()
        self.flops_per_batch = tokens * train_flops_per_token(self.model_config, n_no_grad + n_grad, n_grad,
                                                              context=batch["input_ids"].shape[1])
        self.log("train/loss", out.loss, prog_bar=True)
        self.log("train/depth", float(n_no_grad + n_grad), prog_bar=True)
        if record and out.stats is not None:
            norms, rel = out.stats.as_tensors()
            self.log_dict({
                "telemetry/state_norm": norms[-1],
                "telemetry/rel_change_last": rel[-1],
                "telemetry/rel_change_first": rel[0],
                "telemetry/token_corr": token_correlation(out.state),
            })
        return out.loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss at every eval depth; with several val loaders (a task's difficulties) metrics are ``val{i}/``."""
        prefix = f"val{dataloader_idx}" if len(self.trainer.num_val_batches) > 1 else "val"
        for r in self.eval_depths:
            out = self.model(batch["input_ids"], num_steps=r, labels=batch["labels"],
                             position_ids=batch.get("position_ids"), record_stats=r == max(self.eval_depths))
            self.log(f"{prefix}/loss_r{r}", out.loss, sync_dist=True, add_dataloader_idx=False)
            if out.stats is not None:
                _, rel = out.stats.as_tensors()
                self.log(f"{prefix}/rel_change_last", rel[-1], sync_dist=True, add_dataloader_idx=False)
                self.log(f"{prefix}/token_corr", token_correlation(out.state), sync_dist=True,
                         add_dataloader_idx=False)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            exempt = p.ndim < 2 or name.startswith("embed.") or name.endswith(("_bias",))
            (no_decay if exempt and cfg.no_decay_on_norms_biases_embeddings else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda=lr_multiplier(cfg, self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """RNG streams Lightning does not save (s_0 noise); tensors/ints only (weights_only-safe)."""
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(rng["python"]), None))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def lr_multiplier(cfg: OptimConfig, max_steps: int):
    """Step -> lr multiplier for the configured schedule (warmup then wsd / cosine / constant).

    A pure function of the step, wrapped in LambdaLR: the scheduler state is just the step count,
    which Lightning checkpoints.
    """
    warmup = cfg.warmup_steps
    floor = cfg.min_lr_ratio
    decay_start = max(warmup, int(max_steps * (1 - cfg.decay_fraction)))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < decay_start:  # wsd: stable phase
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return floor + (1 - floor) * (1 - progress)

    return multiplier


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
