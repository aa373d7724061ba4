"""The sweep's figures (matplotlib, Agg): loss against training FLOPs, iso-FLOP slices with the
compute-optimal fit, and loss against test-time depth per run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from recurrent_lm.sweep.collect import Run
from recurrent_lm.sweep.isoflop import PowerLaw, SliceFit, run_curve
from recurrent_lm.train.figures import pyplot


def _colors(values: Sequence[float]) -> dict[float, tuple]:
    plt = pyplot()
    ordered = sorted(set(values))
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(ordered) - 1) * 0.9) for i, v in enumerate(ordered)}


def loss_vs_flops(runs: Sequence[Run], budgets: Sequence[float], depth: str | int, path: Path) -> Path:
    """Validation loss against training FLOPs, one colour per mean recurrence; budgets as dotted lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _colors([r.mean_recurrence for r in runs if math.isfinite(r.mean_recurrence)])
    labelled: set[float] = set()
    for run in runs:
        flops, losses = run_curve(run, depth)
        if not flops:
            continue
        r = run.mean_recurrence
        ax.plot(flops, losses, "o-", ms=3, color=colors.get(r), alpha=0.9,
                label=None if r in labelled else f"r̄ = {r:g}")
        labelled.add(r)
        if run.status != "finished":
            ax.annotate(run.status, (flops[-1], losses[-1]), fontsize=7, color="crimson")
    for budget in budgets:
        ax.axvline(budget, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (model FLOPs, sampled depths)")
    ax.set_ylabel(f"validation loss at {_depth_label(depth)} (lower is better)")
    ax.set_title("loss against training compute, per mean recurrence")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def isoflop(slices: Sequence[SliceFit], law: PowerLaw, depth: str | int, path: Path) -> Path:
    """Left: loss against r̄ at each budget with its parabola and minimum. Right: r*(C) with the power law."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = _colors([s.budget for s in slices])
    for fit in slices:
        if not fit.depths:
            continue
        color = colors[fit.budget]
        left.plot(fit.depths, fit.losses, "o", color=color, label=f"C = {fit.budget:.3g}")
        c, b, a = fit.coefficients
        if math.isfinite(c):
            x = np.linspace(math.log(min(fit.depths)), math.log(max(fit.depths)), 100)
            left.plot(np.exp(x), a + b * x + c * x * x, "--", color=color, lw=1)
        if fit.optimum is not None:  # hollow: a minimum outside the swept depths (--extrapolate)
            left.plot([fit.optimum], [fit.loss_at_optimum], "*", ms=14, color=color, mec="black",
                      mfc="white" if fit.extrapolated else color)
    left.set_xscale("log", base=2)
    left.set_xlabel("mean recurrence r̄ (training)")
    left.set_ylabel(f"validation loss at {_depth_label(depth)} (lower is better)")
    left.set_title("iso-FLOP slices (★ fitted minimum, ☆ extrapolated)")
    if any(fit.depths for fit in slices):
        left.legend(fontsize=8)
    left.grid(alpha=0.3)
    fitted = [s for s in slices if s.optimum is not None]
    for fit in fitted:
        sigma = fit.log_sigma or 0.0
        right.errorbar([fit.budget], [fit.optimum], yerr=[[fit.optimum * (1 - math.exp(-sigma))],
                                                         [fit.optimum * (math.exp(sigma) - 1)]],
                       fmt="o", color=colors[fit.budget], capsize=3)
    if law.alpha is not None:
        c = np.geomspace(min(law.budgets) / 1.5, max(law.budgets) * 1.5, 50)
        sigma = f" ± {law.alpha_sigma:.2f}" if law.alpha_sigma is not None else " (no uncertainty)"
        beyond = f", {law.extrapolated} extrapolated r*" if law.extrapolated else ""
        right.plot(c, [law.predict(v) for v in c], "k--", label=f"r* ∝ C^{law.alpha:.2f}{sigma}{beyond}")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no power law:\n" + _wrap(law.reason), transform=right.transAxes, ha="center",
                   va="center", fontsize=8)
    right.set_xscale("log")
    right.set_yscale("log", base=2)
    if slices:
        right.set_xlim(min(s.budget for s in slices) / 1.5, max(s.budget for s in slices) * 1.5)
    right.set_xlabel("training FLOPs C")
    right.set_ylabel("compute-optimal mean recurrence r*")
    right.set_title("compute-optimal depth")
    right.grid(alpha=0.3)
    return _save(fig, path)


def loss_vs_depth(runs: Sequence[Run], labels: Sequence[str], path: Path) -> Path:
    """Final validation loss against test-time depth, one line per run; ▲ marks its training mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = _colors([r.mean_recurrence for r in runs if math.isfinite(r.mean_recurrence)])
    for run, label in zip(runs, labels):
        final = run.final
        if not final:
            continue
        depths = sorted(final)
        line, = ax.plot(depths, [final[d] for d in depths], "o-", ms=3, label=label,
                        color=colors.get(run.mean_recurrence), alpha=0.5 + 0.5 * (run.status == "finished"))
        nearest = min(depths, key=lambda d: abs(math.log(d) - math.log(run.mean_recurrence)))
        ax.plot([nearest], [final[nearest]], "^", color=line.get_color(), ms=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test-time depth r (core iterations)")
    ax.set_ylabel("final validation loss (lower is better)")
    ax.set_title("loss against test-time depth (▲ = training mean)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: one entry per run
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _depth_label(depth: str | int) -> str:
    return {"train": "the training depth", "best": "the best eval depth"}.get(str(depth), f"r = {depth}")


def _wrap(text: str, width: int = 45) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
