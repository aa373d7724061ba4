"""The exit-gate app of ``recurrent-lm-train`` (config group ``exitgate``): the frozen ``init_from`` model, the
run's data (the text corpus of ``data``, or a reasoning ``task``, read exactly as those apps read them) and the
gate module. Training, checkpoints, resume, logs and the export (``export/`` with ``exit_gate.safetensors``
beside the unchanged weights) are every app's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import lightning as L
from rich.console import Console
from torch import nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.exitgate.config import ExitGateConfig
from recurrent_lm.exitgate.module import ExitGateModule
from recurrent_lm.train.app import Built, register_app
from recurrent_lm.train.export import export_model
from recurrent_lm.train.init_from import load_initial_model
from recurrent_lm.train.run_dir import EXPORT_DIR, Resume
from recurrent_lm.train.schema import TrainConfig


@dataclass
class GateReport:
    export: Optional[Path]
    figures: list[Path] = field(default_factory=list)

    def next_steps(self) -> list[str]:
        if self.export is None:
            return []
        return [f'recurrent-lm-generate {self.export} "**ROMEO**" --exit learned --threshold 0.9   # the gate decides']

    def print(self, console: Console) -> None:
        if self.export is not None:
            console.print(f"exported model with its exit gate: [bold]{self.export}[/bold] (use exit=learned)")


@register_app
class ExitGateApp:
    key: ClassVar[str] = "exitgate"
    config_class: ClassVar[type] = ExitGateConfig
    default: ClassVar[bool] = False
    reads: ClassVar[tuple[str, ...]] = ("data", "task")
    own_init_from: ClassVar[bool] = False

    def build(self, cfg: TrainConfig, run_dir: Path, resume: Resume) -> Built:
        if cfg.init_from is None:
            raise ConfigError("exitgate= trains a gate on a frozen model, and init_from is not set; pass "
                              "model=pretrained init_from=<exported model directory>")
        task = getattr(cfg, "task", None)
        if task is not None:
            from recurrent_lm.reasoning.datamodule import ReasoningDataModule

            datamodule: Any = ReasoningDataModule(task, batch_size=cfg.trainer.micro_batch_size,
                                                  block_size=cfg.model.block_size, seed=cfg.seed)
            datamodule.prepare_data()
            datamodule.setup("fit")
        else:
            from recurrent_lm.train.pretrain import text_datamodule

            datamodule = text_datamodule(cfg, run_dir, resume)
        # A resume takes the gate (and the frozen LM, unchanged) from the checkpoint; the architecture is init_from's.
        lm = load_initial_model(cfg.init_from, cfg.model, cfg.trainer.attn_backend)
        return Built(datamodule, ExitGateModule(lm, getattr(cfg, self.key), cfg.optim.lr),
                     getattr(datamodule, "tokenizer", None))

    def callbacks(self, cfg: TrainConfig) -> list[L.Callback]:
        return []

    def batch_positions(self, batch: Any) -> int:
        return batch["input_ids"].numel()

    def after_fit(self, cfg: TrainConfig, model: nn.Module, built: Built, run_dir: Path, step: int) -> GateReport:
        export = export_model(model, run_dir, run_dir / EXPORT_DIR, step, "the end of training") if cfg.export else None
        if export is not None and getattr(cfg, "task", None) is not None:
            from recurrent_lm.reasoning.evaluate import save_task

            save_task(cfg.task, export)
        return GateReport(export)
