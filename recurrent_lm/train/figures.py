"""The two pictures of a run: validation loss against test-time depth (text), and exact match against depth
per input length with the exit's chosen depth marked (a reasoning task). Written into the run directory,
named in the final printout, so a newcomer sees what recurrence bought without opening a CSV.

matplotlib with the Agg backend: files only, no display needed (a CPU box, a SLURM node, CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from recurrent_lm.reasoning import ReasoningReport

LOSS_FIGURE = "depth_loss.png"
REASONING_FIGURE = "reasoning_depth.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _depth_axis(ax: Any, depths: list[int]) -> None:
    """Log-2 x axis labelled with the depths themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(r) for r in depths])
    ax.minorticks_off()
    ax.set_xlabel("test-time depth r (core iterations)")
    ax.grid(True, alpha=0.3)


def plot_depth_loss(losses: dict[int, float], train_mean: int, path: Path, title: str = "") -> Path:
    """Validation loss against test-time depth r, the training mean depth marked."""
    plt = _pyplot()
    depths = sorted(losses)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(depths, [losses[r] for r in depths], marker="o", color="tab:blue")
    ax.axvline(train_mean, color="tab:gray", linestyle="--", label=f"training mean depth r̄ = {train_mean}")
    _depth_axis(ax, depths)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title or "validation loss by test-time depth", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reasoning_depth(report: ReasoningReport, path: Path, exit_name: Optional[str] = None,
                         train_max: Optional[int] = None) -> Path:
    """Exact match (%) against fixed test-time depth, one line per difficulty, and the depth the exit chose
    for that difficulty (mean over answer tokens) as a star at the exit's accuracy. ``exit_name`` picks the
    exit (default: the report's last); ``train_max`` labels the difficulties seen in training."""
    plt = _pyplot()
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
    _depth_axis(ax, report.depths)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-5, 105)
    star = f"\n★ = depth the {chosen.name} exit chose (mean over answer tokens)" if chosen is not None else ""
    ax.set_title(f"{report.task}: exact match by test-time depth per input length{star}", fontsize=9)
    ax.legend(title="length", fontsize=8, title_fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
