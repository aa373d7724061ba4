"""The training progress bar: optimizer steps out of ``max_steps``, loss, sampled depth and tokens/s.

Lightning's RichProgressBar counts batches of an epoch: a run bounded by ``max_steps`` over an endless stream
shows ``Epoch 0/-2`` (max_epochs = -1) and the logger's version as ``v_num``. A pretraining run has no epochs;
what a newcomer wants to see is how far along it is and whether loss, depth and speed look right.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Union

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

SHOWN = {"train/loss": ("loss", "{:.3f}"), "train/depth": ("depth", "{:.0f}")}
"""Progress-bar metrics the module logs (``prog_bar=True``) -> (label, format)."""


class StepProgressBar(RichProgressBar):
    """``train ━━━━━ 40/120 0:02:11 • 0:00:40  loss: 3.214 depth: 4 tokens/s: 1268``.

    Tokens/s is measured here over the last ``window`` steps, wall clock, from ``length_fn(batch)`` (the token
    positions of a batch): it is what the user waits on, validation pauses left out.
    """

    def __init__(self, length_fn: Callable[[Any], int], window: int = 10) -> None:
        super().__init__(refresh_rate=1, leave=True)
        self.length_fn = length_fn
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)  # (time, tokens so far), one per step
        self._tokens = 0
        self._paused_at = 0.0

    @property
    def total_train_batches(self) -> Union[int, float]:
        """The bar's total: max_steps optimizer steps (not the endless stream's unknown epoch length)."""
        return self.trainer.max_steps if self.trainer.max_steps > 0 else super().total_train_batches

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._describe_train(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._tokens += self.length_fn(batch)
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._marks.append((time.perf_counter(), self._tokens))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._describe_train(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        pause = time.perf_counter() - self._paused_at  # not training time: shift the marks before it past it
        self._marks = deque(((t + pause, n) for t, n in self._marks), maxlen=self._marks.maxlen)

    def _describe_train(self, trainer: L.Trainer) -> None:
        """Label the train bar 'train' and set it to the optimizer step (a resumed run starts part-way)."""
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step, description="train")
            self.refresh()

    def tokens_per_sec(self) -> float | None:
        """Training tokens per second over the last steps; None until two steps were timed."""
        if len(self._marks) < 2:
            return None
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """loss, depth, tokens/s, then anything else a module shows; no ``v_num`` (the run dir names the run)."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        shown: dict[str, Any] = {}
        for key, (label, fmt) in SHOWN.items():
            if key in items:
                shown[label] = fmt.format(float(items.pop(key)))
        speed = self.tokens_per_sec()
        if speed is not None:
            shown["tokens/s"] = f"{speed:,.0f}"
        return {**shown, **items}
