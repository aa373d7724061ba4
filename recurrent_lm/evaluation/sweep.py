"""Depth sweeps: one lm-eval run per test-time depth, and the aggregate table and plots.

:func:`run_sweep` loads the model once and runs ``lm_eval.simple_evaluate`` in-process at each depth,
writing ``<output_dir>/results_r<depth>.json``: lm-eval's results plus a ``recurrent_lm`` block with the
settings (num_steps, exit, threshold, ...) and the mean core iterations used per token.

:func:`aggregate` reads every such JSON under the given directories and writes

* ``sweep.csv``: one row per (run, task, metric): settings, mean steps used, value, stderr;
* ``sweep.md``: one Markdown table per task, rows = metrics, columns = depths (one block per exit setting);
* ``sweep_depth.png``: each metric against test-time depth (log2 axis), one line per exit setting;
* ``sweep_steps.png``: for runs with an exit criterion, each metric against the mean steps used.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from recurrent_lm.evaluation.errors import EvalError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
RESULT_PREFIX = "results_r"
CSV_COLUMNS = ("task", "metric", "filter", "num_steps", "exit", "threshold", "mean_steps_used", "value", "stderr",
               "higher_is_better", "limit", "source")
UNBOUNDED = ("perplexity", "bits", "bpb", "loss")
"""Metrics not on a 0–1 scale (the others are plotted on the whole 0–1 axis)."""


def split_depths(value: Union[str, Sequence[Any]]) -> list[Any]:
    """'1,2,4,8' or [1, 2, 4, 8] -> the depth requests; each is checked once the model is loaded
    (:meth:`RecurrentLMEval.set_num_steps`), where 'default' means its mean_recurrence."""
    items = [str(v).strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if not items:
        raise EvalError("--num_steps: give at least one depth, e.g. --num_steps 1,2,4,8")
    return items


def run_sweep(model_args: Union[str, dict[str, Any]], depths: Union[str, Sequence[Any]], tasks: Sequence[str],
              output_dir: PathLike, *, task_manager: Any = None, include_path: Any = None,
              cache_dir: Optional[PathLike] = None, sources: Any = None, limit: Optional[float] = None,
              num_fewshot: Optional[int] = None, gen_kwargs: Optional[Union[str, dict]] = None,
              seed: Optional[int] = 0, log_samples: bool = False, plot: bool = True) -> list[Path]:
    """Evaluate ``tasks`` once per depth with one loaded model; return the written result files.

    ``model_args`` are the ``recurrent_lm`` model args (``pretrained=...,exit=kl``); a ``num_steps`` in them
    is overridden by each depth. Aggregates into ``output_dir`` at the end.
    """
    import lm_eval
    from lm_eval.utils import handle_non_serializable, simple_parse_args_string

    from recurrent_lm.evaluation.harness import RecurrentLMEval
    from recurrent_lm.evaluation.tasks import build_task_manager

    requests = split_depths(depths)
    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args)
    args.pop("num_steps", None)
    tasks = [t for task in tasks for t in str(task).split(",") if t.strip()]
    if not tasks:
        raise EvalError("sweep: give at least one task with --tasks")
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    manager = task_manager or build_task_manager(tasks, include_path=include_path, cache_dir=cache_dir,
                                                 sources=sources)
    lm = RecurrentLMEval(**args)
    depths = sorted({lm.set_num_steps(r) for r in requests})  # every request checked before the first run
    written = []
    for depth in depths:
        lm.num_steps = depth
        lm.reset_steps()
        log.info("sweep: num_steps=%d on %s", depth, tasks)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, log_samples=log_samples,
                                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed)
        if results is None:  # non-zero rank in a distributed run
            continue
        samples = results.pop("samples", None)
        results["recurrent_lm"] = {**lm.settings(), **lm.steps_summary(),
                                   "model_args": {k: str(v) for k, v in args.items()}}
        path = out / f"{RESULT_PREFIX}{depth}.json"
        path.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
        if samples is not None:
            with (out / f"samples_r{depth}.jsonl").open("w") as fh:
                for task, rows in samples.items():
                    for row in rows:
                        fh.write(json.dumps({"task": task, **row}, default=handle_non_serializable) + "\n")
        written.append(path)
    aggregate([out], out, plot=plot)
    return written


# ---------------------------------------------------------------------- aggregation
def load_rows(paths: Iterable[PathLike]) -> list[dict[str, Any]]:
    """Flatten result JSONs (files, or directories searched for results_r*.json) into metric rows."""
    files: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():  # a sweep's results_r<depth>.json, or lm-eval's <model>/results_<time>.json of a single run
            files.extend(sorted(p.rglob("results_*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise EvalError(f"aggregate: {p} does not exist")
    rows = []
    for file in files:
        data = json.loads(file.read_text())
        info = data.get("recurrent_lm")
        if not info:
            log.warning("aggregate: %s has no recurrent_lm block (written neither by recurrent-lm-eval sweep nor by "
                        "recurrent-lm-eval run); skipped", file)
            continue
        limit = (data.get("config") or {}).get("limit")
        for task, metrics in sorted(data.get("results", {}).items()):
            directions = (data.get("higher_is_better") or {}).get(task, {})
            for key, value in metrics.items():
                if "," not in key or "_stderr" in key or not _is_number(value):
                    continue
                metric, _, filt = key.partition(",")
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                rows.append({"task": task, "metric": metric, "filter": filt, "num_steps": int(info["num_steps"]),
                             "exit": info.get("exit") or "none", "threshold": info.get("threshold"),
                             "mean_steps_used": info.get("mean_steps_used"), "value": float(value),
                             "stderr": float(stderr) if _is_number(stderr) else None, "source": str(file),
                             "higher_is_better": directions.get(metric), "limit": limit})
    if not rows:
        raise EvalError(f"aggregate: no sweep results ({RESULT_PREFIX}<depth>.json with a recurrent_lm block) in "
                        f"{[str(p) for p in paths]}")
    return sorted(rows, key=lambda r: (r["task"], r["metric"], r["filter"], _setting(r), r["num_steps"]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _setting(row: dict[str, Any]) -> str:
    """Label of a run's exit setting: 'fixed depth' or e.g. 'exit=kl@0.0005'."""
    return "fixed depth" if row["exit"] == "none" else f"exit={row['exit']}@{row['threshold']:g}"


def aggregate(paths: Iterable[PathLike], output_dir: PathLike, *, plot: bool = True) -> dict[str, Path]:
    """Write sweep.csv, sweep.md and the plots from the results under ``paths``; return their paths."""
    rows = load_rows(list(paths))
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "sweep.csv", "markdown": out / "sweep.md"}
    with written["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    written["markdown"].write_text(markdown_table(rows))
    if plot:
        written["depth_plot"] = out / "sweep_depth.png"
        plot_metrics(rows, "num_steps", written["depth_plot"])
        if any(r["exit"] != "none" for r in rows):
            written["steps_plot"] = out / "sweep_steps.png"
            plot_metrics([r for r in rows if r["exit"] != "none" and r["mean_steps_used"] is not None],
                         "mean_steps_used", written["steps_plot"])
    return written


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Per task and exit setting: metrics as rows, depths as columns (value ± stderr); mean steps for exits."""
    lines = ["# Depth sweep", ""]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], _setting(row))].append(row)
    for (task, setting), group in sorted(groups.items()):
        depths = sorted({r["num_steps"] for r in group})
        limit = group[0].get("limit")
        lines += [f"## {task} ({setting})", ""]
        if limit is not None:
            lines += [f"_Ran with --limit {limit:g}: a subset of the task, not its full score._", ""]
        lines += ["| metric | " + " | ".join(f"r={d}" for d in depths) + " |", "|---|" + "---:|" * len(depths)]
        if setting != "fixed depth":
            steps = {r["num_steps"]: r["mean_steps_used"] for r in group}
            lines.append("| mean steps used | " + " | ".join(_fmt(steps.get(d)) for d in depths) + " |")
        cells: dict[str, dict[int, str]] = defaultdict(dict)
        for r in group:
            label = r["metric"] if r["filter"] == "none" else f"{r['metric']} ({r['filter']})"
            cells[label][r["num_steps"]] = _fmt(r["value"]) + (f" ± {_fmt(r['stderr'])}" if r["stderr"] else "")
        for label, by_depth in cells.items():
            lines.append(f"| {label}{_direction(group, label)} | " + " | ".join(by_depth.get(d, "") for d in depths)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    return f"{value:.4g}"


def plot_metrics(rows: list[dict[str, Any]], x_key: str, path: Path) -> Path:
    """One subplot per (task, metric, filter): value against ``x_key``, one line per exit setting."""
    from recurrent_lm.train.figures import pyplot

    plt = pyplot()

    panels: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        panels[(r["task"], r["metric"], r["filter"])][_setting(r)].append(r)
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.4 * nrows), squeeze=False)
    x_label = "test-time depth (num_steps)" if x_key == "num_steps" else "mean core iterations used per token"
    for ax, ((task, metric, filt), lines) in zip(axes.flat, sorted(panels.items())):
        for setting, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: r[x_key])
            xs = [r[x_key] for r in pts]
            ys = [r["value"] for r in pts]
            errs = [r["stderr"] or 0.0 for r in pts]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=setting)
        xs_all = sorted({r[x_key] for pts in lines.values() for r in pts})
        if xs_all and xs_all[0] > 0:
            ax.set_xscale("log", base=2)
            if x_key == "num_steps":  # label the depths themselves, not powers of two
                ax.set_xticks(xs_all, [str(x) for x in xs_all])
                ax.minorticks_off()
        points = [r for pts in lines.values() for r in pts]
        ax.set_ylim(*y_range(metric, [r["value"] for r in points], [r["stderr"] or 0.0 for r in points]))
        limit = points[0].get("limit")
        ax.set_title(f"{task}: {metric}" + ("" if filt == "none" else f" ({filt})")
                     + ("" if limit is None else f"\n--limit {limit:g} (a subset of the task)"), fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        better = points[0].get("higher_is_better")
        ax.set_ylabel(metric + ("" if better is None else f" ({'higher' if better else 'lower'} is better)"), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def y_range(metric: str, values: Sequence[float], errors: Sequence[float]) -> tuple[float, float]:
    """The y-axis of a metric's panel: a 0–1 metric (accuracy, exact match) on its whole scale; any other at least
    ±5% of its largest magnitude around the data, so a 0.3% change does not fill the axis like a cliff."""
    low = min(v - e for v, e in zip(values, errors))
    high = max(v + e for v, e in zip(values, errors))
    if not any(word in metric for word in UNBOUNDED) and 0.0 <= low and high <= 1.0:
        return -0.02, 1.02
    span = max(high - low, 0.1 * max(abs(low), abs(high), 1e-12))
    middle = (low + high) / 2
    return middle - 0.55 * span, middle + 0.55 * span


def _direction(group: list[dict[str, Any]], label: str) -> str:
    """' (↑ better)' / ' (↓ better)' from lm-eval's higher_is_better for the metric of a table row."""
    better = next((r["higher_is_better"] for r in group if label.split(" (")[0] == r["metric"]), None)
    return "" if better is None else (" (↑ better)" if better else " (↓ better)")


def record_settings(output_path: PathLike, since: float, lm: Any) -> list[Path]:
    """Add the ``recurrent_lm`` block (depth, exit settings, mean steps used) to the lm-eval results files written
    under ``output_path`` since ``since`` (a time.time()): a single ``recurrent-lm-eval run`` then aggregates like
    a sweep's depth."""
    from recurrent_lm.model.io import atomic_write

    root = Path(output_path).expanduser()
    files = [root] if root.is_file() else sorted(root.rglob("results_*.json")) if root.is_dir() else []
    written = []
    for file in files:
        if file.stat().st_mtime < since:
            continue
        data = json.loads(file.read_text())
        data["recurrent_lm"] = {**lm.settings(), **lm.steps_summary(),
                                "model_args": (data.get("config") or {}).get("model_args")}
        text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
        atomic_write(file, lambda tmp, text=text: Path(tmp).write_text(text))
        written.append(file)
    return written
