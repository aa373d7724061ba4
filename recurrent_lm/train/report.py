"""The end-of-run summary and report: validation loss by test-time depth, then the app's own report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table
from torch import nn

from recurrent_lm.train.app import AppReport
from recurrent_lm.train.schema import TrainConfig


@dataclass
class RunSummary:
    """What :func:`recurrent_lm.train.cli.run` returns."""

    run_dir: Path
    step: int
    """Optimizer steps trained (the preempted step for a preempted session)."""
    val: dict[str, float]
    """The last validation's metrics (``val/loss_r{r}``, ...); empty when validation is off or preempted."""
    model: Optional[nn.Module]
    """The trained model, unsharded, in fp32 eval mode on rank 0; None on other ranks and when preempted."""
    app: Optional[AppReport] = None
    """The app's after-fit report (export, evaluation, sample) on rank 0."""
    preempted: bool = False
    """Stopped by a signal at ``step`` (saved, not finished): nothing ran after fit, the CLI exits 75."""


def depth_table(val: dict[str, float], mean_recurrence: int) -> Table:
    depths = sorted(int(k.removeprefix("val/loss_r")) for k in val if k.startswith("val/loss_r"))
    table = Table(title="validation loss by test-time depth r")
    table.add_column("r", justify="right")
    table.add_column("val loss", justify="right")
    table.add_column("", justify="left")
    for r in depths:
        note = "← training mean" if r == mean_recurrence else ("beyond training mean" if r > mean_recurrence else "")
        table.add_row(str(r), f"{val[f'val/loss_r{r}']:.4f}", note)
    return table


def print_report(cfg: TrainConfig, summary: RunSummary) -> None:
    console = Console()
    if any(k.startswith("val/loss_r") for k in summary.val):
        console.print(depth_table(summary.val, cfg.model.mean_recurrence))
    console.print(f"steps trained: {summary.step}   run dir: {summary.run_dir}")
    if summary.app is not None:
        summary.app.print(console)
