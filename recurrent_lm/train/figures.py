"""The picture every run with validation by depth gets: validation loss against test-time depth, written into the
run directory and named in the final printout, so a newcomer sees what recurrence bought without opening a CSV.
The plotting helpers here are shared with the apps' own pictures (reasoning/figures.py).

matplotlib with the Agg backend: files only, no display needed (a CPU box, a SLURM node, CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOSS_FIGURE = "depth_loss.png"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def depth_axis(ax: Any, depths: list[int]) -> None:
    """Log-2 x axis labelled with the depths themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(r) for r in depths])
    ax.minorticks_off()
    ax.set_xlabel("test-time depth r (core iterations)")
    ax.grid(True, alpha=0.3)


def plot_depth_loss(losses: dict[int, float], train_mean: int, path: Path, title: str = "") -> Path:
    """Validation loss against test-time depth r, the training mean depth marked."""
    plt = pyplot()
    depths = sorted(losses)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(depths, [losses[r] for r in depths], marker="o", color="tab:blue")
    ax.axvline(train_mean, color="tab:gray", linestyle="--", label=f"training mean depth r̄ = {train_mean}")
    depth_axis(ax, depths)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title or "validation loss by test-time depth", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
