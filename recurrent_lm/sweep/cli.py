"""``recurrent-lm-sweep``: a sweep's run directories -> tables, plots and the compute-optimal mean recurrence.

    recurrent-lm-sweep runs/multirun/isoflop                 # report into runs/multirun/isoflop/report
    recurrent-lm-sweep runs/a runs/b runs/c --out sweep_report --depth 4

Writes ``sweep.csv`` (one row per run), ``sweep.md`` (the tables grouped by the swept keys, the iso-FLOP slices,
the fits and what they could not support), ``fit.json`` and three PNGs. Unfinished runs are listed with their
status (running, preempted, killed, failed), never dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from recurrent_lm.errors import MissingFileError, report_user_errors
from recurrent_lm.output_dir import staged_dir
from recurrent_lm.sweep import plots, table
from recurrent_lm.sweep.collect import STATUSES, Run, collect
from recurrent_lm.sweep.isoflop import PowerLaw, SliceFit, budgets_of, fit_power_law, iso_slices


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="recurrent-lm-sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="a multirun directory (any layout) or run directories")
    p.add_argument("--out", type=Path, default=None, help="report directory (default: <the one path>/report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    p.add_argument("--depth", default="train",
                   help="eval depth whose loss is compared: train (nearest the run's mean recurrence, default), "
                        "best (lowest over depths), or an integer r")
    p.add_argument("--budgets", default=None,
                   help="comma-separated FLOP budgets for the iso-FLOP slices (default: the runs' flop_budget "
                        "values; runs without one count at every budget their curve reaches)")
    p.add_argument("--extrapolate", action="store_true",
                   help="keep a slice's parabola minimum even outside the swept depths (marked as extrapolated): "
                        "where the trend points when the grid does not bracket the optimum")
    args = p.parse_args(argv)
    if args.depth not in ("train", "best") and not args.depth.isdigit():
        p.error(f"--depth {args.depth}: use train, best or a positive integer eval depth")
    if args.out is None:
        if len(args.paths) != 1:
            p.error("several paths given: name the report directory with --out DIR")
        args.out = args.paths[0] / "report"
    try:
        args.budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    except ValueError:
        p.error(f"--budgets {args.budgets}: give FLOP counts separated by commas, e.g. 1e12,3e12,1e13")
    return args


def fit_summary(slices: Sequence[SliceFit], law: PowerLaw) -> list[str]:
    """Plain lines: the optimum per budget (or why none) and the exponent with its uncertainty (or why none)."""
    lines = []
    for fit in slices:
        if fit.optimum is None:
            lines.append(f"C = {fit.budget:.3g}: no optimum ({fit.reason})")
            continue
        sigma = f" (ln r* ± {fit.log_sigma:.2f})" if fit.log_sigma is not None else ""
        if fit.extrapolated:
            sigma += " EXTRAPOLATED"
        caveat = f"; {fit.reason}" if fit.reason else ""
        lines.append(f"C = {fit.budget:.3g}: r* = {fit.optimum:.3g}{sigma}, loss {fit.loss_at_optimum:.4f} "
                     f"from {len(fit.depths)} runs{caveat}")
    if law.alpha is None:
        lines.append(f"power law: not fitted ({law.reason})")
    else:
        sigma = f" ± {law.alpha_sigma:.2f} (1 s.e.)" if law.alpha_sigma is not None else f" ({law.reason})"
        beyond = (f"; EXTRAPOLATED: {law.extrapolated} of the optima lie outside the swept depths, so this is where "
                  "the trend points, not a measurement") if law.extrapolated else ""
        lines.append(f"power law: r* ∝ C^{law.alpha:.3f}{sigma} over {len(law.budgets)} budgets "
                     f"({min(law.budgets):.3g}–{max(law.budgets):.3g} FLOPs){beyond}")
    return lines


def slice_table(slices: Sequence[SliceFit]) -> str:
    depths = sorted({r for s in slices for r in s.depths})
    lines = ["| budget (FLOPs) | " + " | ".join(f"r̄={r:g}" for r in depths) + " | r* |",
             "|" + "---|" * (len(depths) + 2)]
    for fit in slices:
        loss = dict(zip(fit.depths, fit.losses))
        best = min(fit.losses) if fit.losses else None
        cells = [(f"**{loss[r]:.4f}**" if loss[r] == best else f"{loss[r]:.4f}") if r in loss else "" for r in depths]
        optimum = f"{fit.optimum:.3g}" if fit.optimum is not None else "—"
        lines.append(f"| {fit.budget:.3g} | " + " | ".join(cells) + f" | {optimum} |")
    return "\n".join(lines) + "\n"


def report_markdown(runs: Sequence[Run], keys: Sequence[str], aliases: dict[str, list[str]], rows_: list[dict],
                    slices: Sequence[SliceFit], law: PowerLaw, depth: str, command: str) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES if any(r.status == s for r in runs)}
    folded = [f"`{k}` (with {', '.join(f'`{a}`' for a in v)})" if v else f"`{k}`" for k, v in aliases.items()]
    parts = [
        "# Sweep report", "",
        f"Command: `{command}`", "",
        f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
        "Settings that differ between runs: " + (", ".join(folded) if folded else "none") + "; the tables are "
        "sorted by " + (", ".join(f"`{k}`" for k in keys) or "run") + ".", "",
        "Losses are validation losses; `train_flops` are model FLOPs at the depths the sampler drew "
        "(recurrent_lm/model/accounting.py); `train_time_s` is the throughput monitor's training time, "
        "summed over resumed sessions.", "",
        "## Runs", "", table.to_markdown(rows_, keys),
        f"## Iso-FLOP slices (loss at {plots._depth_label(depth)})", "", slice_table(slices) if slices else
        "_no budgets: pass --budgets or train with flop_budget (experiment=isoflop)_\n",
        "## Compute-optimal mean recurrence", "",
        *[f"- {line}" for line in fit_summary(slices, law)], "",
        "![loss vs FLOPs](loss_vs_flops.png)", "", "![iso-FLOP](isoflop.png)", "",
        "![loss vs depth](loss_vs_depth.png)", "",
    ]
    problems = [r for r in runs if r.status != "finished"]
    if problems:
        parts += ["## Unfinished runs", ""] + [f"- `{r.path}`: **{r.status}** — {r.note}" for r in problems] + [""]
    return "\n".join(parts)


def write_report(out: Path, files: dict[str, Any], overwrite: bool) -> None:
    """Every file into a temporary sibling, then renamed into place (:func:`recurrent_lm.output_dir.staged_dir`): a
    failure leaves no half-written report, and an existing report is replaced only with --overwrite."""
    with staged_dir(out, overwrite) as tmp:
        for name, content in files.items():
            if callable(content):
                content(tmp / name)
            else:
                (tmp / name).write_text(content)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return report_user_errors("recurrent-lm-sweep", lambda: report(args, argv))


def report(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> None:
    """Collect the runs, write the report directory, print the table and the fit."""
    runs = collect([p.resolve() for p in args.paths])
    if not runs:
        raise MissingFileError(f"no run directories (holding config.yaml) under {', '.join(map(str, args.paths))}")
    swept = table.swept_overrides(args.paths)
    keys, aliases = table.differing_keys(runs, swept)
    keys = [k for k in keys if k in swept] or keys  # a multirun's own keys; derived settings stay in the header
    runs = table.sort_runs(runs, keys)
    root = Path(os.path.commonpath([str(r.path) for r in runs])) if len(runs) > 1 else runs[0].path.parent
    rows_ = table.rows(runs, keys, root)
    budgets = args.budgets or budgets_of(runs)
    depth: str | int = int(args.depth) if args.depth.isdigit() else args.depth
    slices = iso_slices(runs, budgets, depth, matched=args.budgets is None, extrapolate=args.extrapolate)
    law = fit_power_law(slices)
    labels = [", ".join(f"{k.split('.')[-1]}={table._fmt(row[k])}" for k in keys) or row["run"] for row in rows_]
    command = "recurrent-lm-sweep " + " ".join(sys.argv[1:] if argv is None else list(argv))
    fit = {"depth": args.depth, "slices": [vars(s) for s in slices], "power_law": vars(law)}
    files: dict[str, Any] = {
        "sweep.csv": table.to_csv(rows_),
        "sweep.md": report_markdown(runs, keys, aliases, rows_, slices, law, args.depth, command),
        "fit.json": json.dumps(fit, indent=2, default=str),
        "loss_vs_flops.png": lambda p: plots.loss_vs_flops(runs, budgets, depth, p),
        "isoflop.png": lambda p: plots.isoflop(slices, law, depth, p),
        "loss_vs_depth.png": lambda p: plots.loss_vs_depth(runs, labels, p),
    }
    write_report(args.out, files, args.overwrite)
    print(table.to_markdown(rows_, keys))
    print("\n".join(fit_summary(slices, law)))
    print(f"report: {args.out}/sweep.md")


if __name__ == "__main__":
    raise SystemExit(main())
