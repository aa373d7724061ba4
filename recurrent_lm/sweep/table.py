"""The sweep table: which settings differ between runs, and one row per run, as CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import yaml

from recurrent_lm.sweep.collect import Run

IGNORED_KEYS = {"run_dir", "trainer.max_steps"}
"""Differ between runs without being a setting to compare by (max_steps is the table's steps column)."""
KEY_ORDER = ("flop_budget", "model.mean_recurrence", "model.", "trainer.", "optim.", "sampler.", "data.")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def swept_overrides(paths: Sequence[Path]) -> list[str]:
    """Keys a hydra multirun swept (``k=a,b`` in multirun.yaml's task overrides) under ``paths``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys: list[str] = []
    for path in paths:
        for record in sorted(path.rglob("multirun.yaml")):
            overrides = (yaml.safe_load(record.read_text()) or {}).get("hydra", {}).get("overrides", {})
            parsed = parser.parse_overrides([str(item) for item in overrides.get("task", [])])
            keys += [o.key_or_group for o in parsed if o.is_sweep_override()]  # a=1,2 sweeps; a=[1,2] is a list
    return list(dict.fromkeys(keys))


def differing_keys(runs: Sequence[Run], swept: Sequence[str] = ()) -> tuple[list[str], dict[str, list[str]]]:
    """(keys whose values differ between runs, {key: its aliases}).

    Keys that split the runs the same way as an earlier key (``sampler.mean`` follows ``model.mean_recurrence``)
    are folded into it as aliases. Swept keys come first, then flop_budget, the mean recurrence, and model,
    trainer, optim, sampler, data keys.
    """
    flat = [flatten(run.config) for run in runs if run.config]
    names = sorted({k for f in flat for k in f} - IGNORED_KEYS)
    differ = [k for k in names if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]

    def rank(key: str) -> tuple[int, int, str]:
        first = list(swept).index(key) if key in swept else len(swept)
        return first, next((i for i, p in enumerate(KEY_ORDER) if key.startswith(p)), len(KEY_ORDER)), key

    keys: list[str] = []
    aliases: dict[str, list[str]] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for key in sorted(differ, key=rank):
        values = [json.dumps(f.get(key), default=str) for f in flat]
        partition = tuple(values.index(v) for v in values)
        if partition in seen:
            aliases[seen[partition]].append(key)
            continue
        seen[partition] = key
        keys.append(key)
        aliases[key] = []
    return keys, aliases


def _sort_value(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, float(value)
    return 1, str(value)


def sort_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Run]:
    def key(run: Run) -> list[tuple[int, Any]]:
        flat = flatten(run.config)
        return [_sort_value(flat.get(k)) for k in keys] + [(1, str(run.path))]

    return sorted(runs, key=key)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e5 or value != round(value, 4) else f"{value:g}"
    return str(value)


def rows(runs: Sequence[Run], keys: Sequence[str], root: Path | None = None) -> list[dict[str, Any]]:
    """One dict per run: its name, status, swept settings, size, compute, time, losses, accuracies."""
    depths = sorted({r for run in runs for r in run.eval_depths})
    accuracy = sorted({k for run in runs for k in run.accuracy}, key=lambda k: [int(p) for p in k[1:].split("@r")])
    out = []
    for run in runs:
        flat = flatten(run.config)
        name = run.path.relative_to(root) if root is not None and run.path.is_relative_to(root) else run.path
        row: dict[str, Any] = {"run": str(name), "status": run.status}
        row.update({k: flat.get(k) for k in keys})
        row.update({"params": run.params, "steps": run.steps, "max_steps": run.max_steps, "tokens": run.tokens,
                    "train_flops": run.flops, "mean_depth": run.mean_depth, "train_time_s": run.train_time_s})
        row.update({f"final_loss_r{r}": run.final.get(r) for r in depths})
        row.update({f"best_loss_r{r}": run.best.get(r) for r in depths})
        row.update({f"acc_{k}": run.accuracy.get(k) for k in accuracy})
        row["note"] = run.note
        out.append(row)
    return out


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    return buf.getvalue()


def to_markdown(table: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """Markdown tables, one per value of the first swept key when there are several (grouped), sorted by the rest."""
    if not table:
        return "_no runs_\n"
    shown = [c for c in table[0] if c not in ("max_steps",) and any(row[c] not in (None, "") for row in table)]
    groups: dict[str, list[dict[str, Any]]] = {}
    group_key = keys[0] if len(keys) > 1 else None
    for row in table:
        groups.setdefault((_fmt(row[group_key]) or "not set") if group_key else "", []).append(row)
    parts = []
    for value, members in groups.items():
        if group_key:
            parts.append(f"\n**{group_key} = {value}**\n")
        columns = [c for c in shown if c != group_key]
        parts.append("| " + " | ".join(columns) + " |")
        parts.append("|" + "---|" * len(columns))
        for row in members:
            cells = [f"{row['steps']}/{row['max_steps']}" if c == "steps" else _fmt(row[c]) for c in columns]
            parts.append("| " + " | ".join(cells) + " |")
    return "\n".join(parts).lstrip("\n") + "\n"
