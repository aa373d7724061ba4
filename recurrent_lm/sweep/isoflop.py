"""Iso-FLOP slices and the compute-optimal mean recurrence.

For each compute budget C, every run whose logged curve reaches C contributes its validation loss at C,
interpolated linearly in log-FLOPs between the two validations around C (never extrapolated). Through each
slice a parabola in log r̄ gives the optimal mean recurrence r*(C) (the minimum of
L = a + b·x + c·x², x = ln r̄), and across budgets a power law r*(C) = A·C^α is fitted by least squares in log-log.

A fit is refused, with the reason, when the data cannot support it: fewer than three depths in a slice, a slice
that curves downward (no minimum), or a minimum outside the swept depths (an edge: the optimum lies beyond
the grid, and its position is an extrapolation); fewer than two usable budgets for the power law, and no
uncertainty from only two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from recurrent_lm.sweep.collect import Run


def interpolate_log_flops(flops: Sequence[float], loss: Sequence[float], at: float,
                          tolerance: float = 0.0) -> Optional[float]:
    """Loss at ``at`` FLOPs on a curve given at increasing ``flops``, linear in ln FLOPs; None outside it.

    ``tolerance``: a relative slack at the ends, so a run whose step count rounded its budget up or down
    by less than one step still counts at that budget (its nearest end value is taken).
    """
    x = np.log(np.asarray(flops, dtype=np.float64))
    y = np.asarray(loss, dtype=np.float64)
    if len(x) == 0 or at <= 0:
        return None
    t = math.log(at)
    slack = math.log1p(tolerance)
    if t < x[0] - slack or t > x[-1] + slack:
        return None
    return float(np.interp(t, x, y))


@dataclass
class SliceFit:
    """The parabola through one iso-FLOP slice."""

    budget: float
    depths: list[float]
    losses: list[float]
    optimum: Optional[float] = None
    """r*: the mean recurrence at the parabola's minimum (None when refused)."""
    log_sigma: Optional[float] = None
    """Standard error of ln r* (delta method on the fit's covariance; needs four or more depths)."""
    loss_at_optimum: Optional[float] = None
    reason: str = ""
    """Why no optimum was fitted, or a caveat."""
    coefficients: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    """(c, b, a) of L = a + b·x + c·x², x = ln r̄ (numpy.polyfit order)."""
    extrapolated: bool = False
    """The optimum lies outside the swept depths (kept only when extrapolation was asked for)."""


def fit_slice(budget: float, depths: Sequence[float], losses: Sequence[float],
              extrapolate: bool = False) -> SliceFit:
    """Parabola in ln r̄ through one slice; see the module doc for when it refuses. ``extrapolate`` keeps a
    minimum outside the swept depths instead (marked as such): a diagnostic of where the trend points."""
    order = np.argsort(depths)
    r = np.asarray(depths, dtype=np.float64)[order]
    y = np.asarray(losses, dtype=np.float64)[order]
    fit = SliceFit(budget, r.tolist(), y.tolist())
    if len(np.unique(r)) < 3:
        fit.reason = f"{len(np.unique(r))} depth(s) at this budget; a parabola needs 3 or more"
        return fit
    x = np.log(r)
    if len(x) > 3:
        coef, cov = np.polyfit(x, y, 2, cov=True)
    else:
        coef, cov = np.polyfit(x, y, 2), None
    fit.coefficients = tuple(float(c) for c in coef)
    c, b, a = coef
    if c <= 0:
        fit.reason = "the slice has no minimum (curves downward)"
        return fit
    x_opt = -b / (2 * c)
    if not x[0] <= x_opt <= x[-1]:
        side = "below the smallest" if x_opt < x[0] else "above the largest"
        fit.reason = f"minimum at the edge: the parabola's minimum (r̄ ≈ {math.exp(x_opt):.3g}) lies {side} swept depth"
        if not extrapolate:
            return fit
        fit.extrapolated = True
    fit.optimum = float(math.exp(x_opt))
    fit.loss_at_optimum = float(a + b * x_opt + c * x_opt**2)
    if cov is not None and np.all(np.isfinite(cov)):
        grad = np.array([b / (2 * c * c), -1 / (2 * c), 0.0])  # d x_opt / d(c, b, a)
        fit.log_sigma = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    else:
        fit.reason = (fit.reason + "; " if fit.reason else "") + \
            "3 depths: the parabola passes through every point, so r* has no uncertainty of its own"
    lowest = int(np.argmin(y))
    if lowest in (0, len(y) - 1):
        fit.reason = (fit.reason + "; " if fit.reason else "") + "the lowest measured loss is at an edge depth"
    return fit


@dataclass
class PowerLaw:
    """r*(C) = A · C^alpha across budgets."""

    budgets: list[float] = field(default_factory=list)
    optima: list[float] = field(default_factory=list)
    alpha: Optional[float] = None
    alpha_sigma: Optional[float] = None
    """Standard error of alpha from the log-log residuals (needs three or more budgets)."""
    log_a: Optional[float] = None
    reason: str = ""
    extrapolated: int = 0
    """How many of the optima lie outside their slice's swept depths."""

    def predict(self, budget: float) -> float:
        assert self.alpha is not None and self.log_a is not None
        return math.exp(self.log_a + self.alpha * math.log(budget))


def fit_power_law(slices: Sequence[SliceFit]) -> PowerLaw:
    """Least squares of ln r* on ln C over the slices that have an optimum."""
    usable = [s for s in slices if s.optimum is not None]
    law = PowerLaw([s.budget for s in usable], [s.optimum for s in usable])  # type: ignore[misc]
    law.extrapolated = sum(s.extrapolated for s in usable)
    if len(usable) < 2:
        refused = len(slices) - len(usable)
        law.reason = (f"{len(usable)} budget(s) with a fitted optimum ({refused} refused); a power law needs 2 or "
                      "more, and 3 or more for an uncertainty")
        return law
    x = np.log(law.budgets)
    y = np.log(law.optima)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (n, 2)
    (alpha, log_a), *_ = np.linalg.lstsq(design, y, rcond=None)
    law.alpha, law.log_a = float(alpha), float(log_a)
    dof = len(x) - 2
    if dof < 1:
        law.reason = "2 budgets: the line passes through both, so the exponent has no uncertainty"
        return law
    residual = y - design @ np.array([alpha, log_a])
    variance = float(residual @ residual) / dof
    law.alpha_sigma = float(math.sqrt(variance / float(((x - x.mean()) ** 2).sum())))
    return law


def run_curve(run: "Run", depth: str | int = "train") -> tuple[list[float], list[float]]:
    """(FLOPs, loss) of a run's validations at one eval depth: ``train`` = the eval depth nearest the run's
    mean recurrence (the depth it trained for), ``best`` = the lowest loss over depths at each validation,
    or a fixed eval depth."""
    flops, losses = [], []
    for point in run.curve:
        if not point.loss or point.flops <= 0:
            continue
        if depth == "best":
            value = min(point.loss.values())
        else:
            target = run.mean_recurrence if depth == "train" else float(depth)
            r = min(point.loss, key=lambda d: (abs(math.log(d) - math.log(target)), d))
            if depth != "train" and r != int(depth):
                continue
            value = point.loss[r]
        flops.append(point.flops)
        losses.append(value)
    return flops, losses


def budgets_of(runs: Sequence["Run"]) -> list[float]:
    """The flop_budget values the runs were trained for (an iso-FLOP grid), else none."""
    return sorted({float(run.config["flop_budget"]) for run in runs if run.config.get("flop_budget")})


def iso_slices(runs: Sequence["Run"], budgets: Sequence[float], depth: str | int = "train",
               matched: bool = True, tolerance: float = 0.02, extrapolate: bool = False) -> list[SliceFit]:
    """One fitted slice per budget. ``matched``: a run counts only at the budget it was trained for (its
    learning-rate schedule ended there; earlier points of a longer run are mid-schedule and read too high)."""
    fits = []
    for budget in budgets:
        depths, losses = [], []
        for run in runs:
            if not math.isfinite(run.mean_recurrence):
                continue
            if matched and run.config.get("flop_budget") and not math.isclose(
                    float(run.config["flop_budget"]), budget, rel_tol=1e-6):
                continue
            flops, curve = run_curve(run, depth)
            value = interpolate_log_flops(flops, curve, budget, tolerance)
            if value is not None and math.isfinite(value):
                depths.append(run.mean_recurrence)
                losses.append(value)
        fits.append(fit_slice(budget, depths, losses, extrapolate))
    return fits
