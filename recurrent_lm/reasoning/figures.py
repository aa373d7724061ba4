"""The reasoning app's picture: exact match against test-time depth per input length, with the depth the exit
chose marked, written into the run directory (matplotlib Agg, through train/figures.py's helpers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from recurrent_lm.reasoning.evaluate import ReasoningReport
from recurrent_lm.train.figures import depth_axis, pyplot

REASONING_FIGURE = "reasoning_depth.png"


def plot_reasoning_depth(report: ReasoningReport, path: Path, exit_name: Optional[str] = None,
                         train_max: Optional[int] = None) -> Path:
    """Exact match (%) against fixed test-time depth, one line per difficulty, and the depth the exit chose
    for that difficulty (mean over answer tokens) as a star at the exit's accuracy. ``exit_name`` picks the
    exit (default: the report's last); ``train_max`` labels the difficulties seen in training."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    chosen = next((e for e in report.exits if e.name == exit_name), report.exits[-1] if report.exits else None)
    for i, d in enumerate(report.difficulties):
        color = f"C{i}"
        seen = "" if train_max is None else (" (trained)" if d <= train_max else f" ({d / train_max:g}× trained)")
        ax.plot(report.depths, [100 * report.accuracy[(d, r)] for r in report.depths], marker="o", color=color,
                label=f"{d}{seen}")
        if chosen is not None:
            ax.scatter([chosen.mean_steps[d]], [100 * chosen.accuracy[d]], marker="*", s=180, color=color,
                       edgecolors="black", zorder=5)
    depth_axis(ax, report.depths)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-5, 105)
    star = f"\n★ = depth the {chosen.name} exit chose (mean over answer tokens)" if chosen is not None else ""
    ax.set_title(f"{report.task}: exact match by test-time depth per input length{star}", fontsize=9)
    ax.legend(title="length", fontsize=8, title_fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
