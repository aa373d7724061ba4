"""The Lightning module of stage II: a frozen LM, one unroll per batch, the gate fitted to its losses."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

from recurrent_lm.exitgate.config import ExitGateConfig
from recurrent_lm.exitgate.objective import depth_token_losses, exit_depth, stage2_loss
from recurrent_lm.model.exit_gate import ExitGate
from recurrent_lm.model.lm import IGNORE_INDEX, RecurrentDepthLM


class ExitGateModule(L.LightningModule):
    """Trains ``model.exit_gate`` (created if the model has none) with everything else frozen.

    The LM is ``self.model``, so a checkpoint's keys are the pretraining module's plus ``model.exit_gate.*``.
    It stays in eval mode even while Lightning trains the module: it is not being trained.
    """

    def __init__(self, model: RecurrentDepthLM, config: ExitGateConfig, lr: float) -> None:
        super().__init__()
        # The model config under the key the run directory's resume check and recurrent-lm-export read.
        self.save_hyperparameters({"model": model.config.to_dict(), "exitgate": vars(config).copy(), "lr": lr})
        self.model = model.float()
        self.model.requires_grad_(False)
        if self.model.exit_gate is None:
            self.model.exit_gate = ExitGate(model.config.d_model)
        self.model.exit_gate.requires_grad_(True)
        self.config = config
        self.lr = lr
        self.depth = config.num_steps or model.config.mean_recurrence

    def train(self, mode: bool = True) -> "ExitGateModule":
        super().train(mode)
        self.model.eval()  # frozen: no training-mode behaviour (depth sampling, checkpointing) in the LM
        return self

    def full_model(self) -> Optional[RecurrentDepthLM]:
        """The LM with its trained gate, for the app's export (the pretraining module's hook of the same name)."""
        return self.model

    def per_depth(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(gate logits, per-token CE, supervised mask): (R, B, T), (R, B, T), (B, T), from one unroll."""
        labels = batch["labels"]
        depths = range(1, self.depth + 1)
        with torch.no_grad():
            out = self.model(batch["input_ids"], num_steps=self.depth, readout_depths=depths)
            ce = depth_token_losses(out.depth_logits, labels, depths)
            states = torch.stack([out.depth_states[r] for r in depths])  # (R, B, T, H)
        return self.model.exit_logit(states), ce, labels != IGNORE_INDEX

    def loss(self, logits: Tensor, ce: Tensor, valid: Tensor) -> Tensor:
        c = self.config
        return stage2_loss(logits, ce, valid, c.sharpness, c.margin, c.lookahead)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, ce, valid = self.per_depth(batch)
        loss = self.loss(logits, ce, valid)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Per validation set (a task has one per difficulty: keys then end in /dataloader_idx_k)."""
        logits, ce, valid = self.per_depth(batch)
        depth = exit_depth(logits, self.config.threshold)  # (B, T)
        at_exit = ce.gather(0, (depth - 1)[None]).squeeze(0)  # (B, T) the loss where each token exits
        n = valid.sum().clamp_min(1)
        self.log_dict({"val/gate_loss": self.loss(logits, ce, valid),
                       "val/exit_depth": (depth * valid).sum() / n, "val/loss_exit": (at_exit * valid).sum() / n,
                       "val/loss_full": (ce[-1] * valid).sum() / n}, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """AdamW at optim.lr, constant: a linear head on a frozen model needs no schedule."""
        return torch.optim.AdamW(self.model.exit_gate.parameters(), lr=self.lr, weight_decay=0.0)
