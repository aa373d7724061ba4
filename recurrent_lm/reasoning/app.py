"""The reasoning-task app of ``recurrent-lm-train`` (config group ``task``): a RecurrentDepthLM trained on a
synthetic task's generated batches, then evaluated by difficulty × test-time depth.

The task also goes into the export (task.json), so ``recurrent-lm-reasoning-eval --model <export>`` re-runs
the evaluation without arguments; the report is written to ``<run_dir>/reasoning_eval.{md,csv,json}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import lightning as L
from rich.console import Console
from torch import nn

from recurrent_lm.reasoning.config import TaskConfig
from recurrent_lm.reasoning.datamodule import ReasoningDataModule
from recurrent_lm.reasoning.evaluate import ReasoningReport, evaluate, save_report, save_task
from recurrent_lm.train.app import Built, register_app
from recurrent_lm.train.export import export_model
from recurrent_lm.train.pretrain import language_module
from recurrent_lm.train.run_dir import EXPORT_DIR, Resume
from recurrent_lm.train.schema import TrainConfig

REPORT_FILE = "reasoning_eval.md"


@dataclass
class TaskReport:
    export: Optional[Path]
    reasoning: ReasoningReport
    written: Path
    figures: list[Path] = field(default_factory=list)

    def print(self, console: Console) -> None:
        if self.export is not None:
            console.print(f"exported model: [bold]{self.export}[/bold]")
        console.rule(f"{self.reasoning.task}: exact match by difficulty × test-time depth")
        console.print(self.reasoning.to_markdown(), markup=False, soft_wrap=True)
        console.print(f"written to {self.written} (.csv, .json)")

    def next_steps(self) -> list[str]:
        if self.export is None:
            return []
        r = self.reasoning
        longer = [2 * max(r.difficulties), 4 * max(r.difficulties)]
        return [f"recurrent-lm-reasoning-eval --model {self.export} --difficulties {longer[0]} {longer[1]} "
                f"--depths {' '.join(str(2 * d) for d in r.depths[-3:])} "
                f"--block-size {2 * longer[1] + 16}   # longer inputs, deeper"]


@register_app
class ReasoningApp:
    key: ClassVar[str] = "task"
    config_class: ClassVar[type] = TaskConfig
    default: ClassVar[bool] = False
    reads: ClassVar[tuple[str, ...]] = ()
    own_init_from: ClassVar[bool] = False

    def build(self, cfg: TrainConfig, run_dir: Path, resume: Resume) -> Built:
        task: TaskConfig = getattr(cfg, self.key)
        datamodule = ReasoningDataModule(task, batch_size=cfg.trainer.micro_batch_size,
                                         block_size=cfg.model.block_size, seed=cfg.seed)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return Built(datamodule, language_module(cfg, resume), None)

    def callbacks(self, cfg: TrainConfig) -> list[L.Callback]:
        return []

    def batch_positions(self, batch: Any) -> int:
        return batch["input_ids"].numel()

    def after_fit(self, cfg: TrainConfig, model: nn.Module, built: Built, run_dir: Path, step: int) -> TaskReport:
        task: TaskConfig = getattr(cfg, self.key)
        export = export_model(model, run_dir, run_dir / EXPORT_DIR, step, "the end of training") if cfg.export else None
        if export is not None:
            save_task(task, export)
        report = evaluate(model, task, seed=cfg.seed)
        save_report(report, run_dir / REPORT_FILE)
        return TaskReport(export, report, run_dir / REPORT_FILE, reasoning_figures(task, report, run_dir))


PREFERRED_EXIT = "causal_convergence"
"""The exit the reasoning figure marks when the task ran it: the rule that gives longer inputs more depth."""


def reasoning_figures(task: TaskConfig, report: ReasoningReport, run_dir: Path) -> list[Path]:
    """Exact match by test-time depth per input length, with the depth the exit chose (train/figures.py)."""
    if not report.depths:
        return []
    from recurrent_lm.reasoning.figures import REASONING_FIGURE, plot_reasoning_depth

    names = [e.name for e in report.exits]
    return [plot_reasoning_depth(report, run_dir / REASONING_FIGURE,
                                 exit_name=PREFERRED_EXIT if PREFERRED_EXIT in names else None,
                                 train_max=task.train_max)]
