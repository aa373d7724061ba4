"""The end-of-run summary and report: validation loss by test-time depth (table and figure), then the app's own
report, then what to try next."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table
from torch import nn

from recurrent_lm.loop.samplers import DepthSampler
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
    figures: list[Path] = field(default_factory=list)
    """The pictures the report drew into the run directory (loss by depth, and the app's own)."""


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


def training_mean(cfg: TrainConfig) -> int:
    """The mean training depth r̄ the run ended at: the depth sampler's (which owns training depth), not the
    model's default test-time depth."""
    return round(DepthSampler(cfg.sampler).mean_at(cfg.trainer.max_steps))


def depth_losses(val: dict[str, float]) -> dict[int, float]:
    """{r: validation loss} from the ``val/loss_r{r}`` metrics."""
    return {int(k.removeprefix("val/loss_r")): float(v) for k, v in val.items() if k.startswith("val/loss_r")}


def write_figures(cfg: TrainConfig, summary: RunSummary) -> list[Path]:
    """The loss-by-depth picture (train/figures.py) in the run directory, when validation read several depths, then
    the app's own; all go to ``summary.figures``."""
    from recurrent_lm.train.figures import LOSS_FIGURE, plot_depth_loss

    losses = depth_losses(summary.val)
    if len(losses) > 1:
        summary.figures.append(plot_depth_loss(losses, training_mean(cfg), summary.run_dir / LOSS_FIGURE,
                                               title=f"{cfg.name}: validation loss by test-time depth"))
    if summary.app is not None:
        summary.figures.extend(summary.app.figures)
    return summary.figures


def next_steps(summaries: Sequence[RunSummary]) -> list[str]:
    """What to try after runs, with the paths they just wrote (each app says what fits its export), then the docs."""
    lines = [line for s in summaries if s.app is not None for line in s.app.next_steps()]
    lines.append("docs: README.md, docs/training.md, docs/inference.md, docs/evaluation.md")
    return lines


def print_next_steps(summaries: Sequence[RunSummary], console: Console | None = None) -> None:
    console = console or Console()
    console.rule("next steps")
    for line in next_steps(summaries):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_report(cfg: TrainConfig, summary: RunSummary) -> None:
    console = Console()
    if any(k.startswith("val/loss_r") for k in summary.val):
        console.print(depth_table(summary.val, training_mean(cfg)))
    console.print(f"steps trained: {summary.step}   run dir: {summary.run_dir}")
    if summary.app is not None:
        summary.app.print(console)
    for figure in write_figures(cfg, summary):
        console.print(f"figure: [bold]{figure}[/bold]")
