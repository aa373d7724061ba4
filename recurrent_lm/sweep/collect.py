"""One record per run directory of a sweep: its config, status, FLOPs, tokens, time and validation curve.

A run directory is any directory holding ``config.yaml`` (what ``recurrent-lm-train`` writes once its guards
pass), found under the paths given: a hydra multirun directory in any layout (``<sweep>/0``, ``<sweep>/1``, …
or ``<sweep-id>/<override_dirname>``), or run directories listed one by one. A job directory without
``config.yaml`` is a run that never started training, and is listed as failed rather than dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from recurrent_lm.errors import MissingFileError
from recurrent_lm.sweep.flops import model_config, sampler_config, step_flops, tokens_per_step
from recurrent_lm.train.metrics_log import METRICS_FILE, read_rows
from recurrent_lm.train.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT, LOCK_FILE, LOG_DIR, STEP_CHECKPOINT

CONFIG_FILE = "config.yaml"
REASONING_FILE = "reasoning_eval.json"
SKIPPED_DIRS = {CHECKPOINT_DIR, LOG_DIR, "export", "report"}
STATUSES = ("finished", "running", "preempted", "killed", "failed")
"""finished: every step trained. running: a live process holds the run's lock. preempted: stopped at a step
boundary with a checkpoint of that step (a signal; resume continues). killed: the process died without
cleanup (its lock is stale); it resumes from its newest checkpoint. failed: stopped early otherwise
(an error, a non-finite loss, or nothing to resume from)."""


@dataclass
class ValPoint:
    """One validation of a run: after ``steps`` optimizer steps, ``flops`` training FLOPs."""

    steps: int
    flops: float
    loss: dict[int, float]
    """eval depth r -> validation loss."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    status: str
    note: str = ""
    max_steps: int = 0
    steps: int = 0
    """Optimizer steps trained (logged), resumed sessions stitched."""
    params: int = 0
    tokens: float = 0.0
    flops: float = 0.0
    """Training FLOPs of the steps trained (model FLOPs, as the throughput monitor counts them)."""
    mean_recurrence: float = math.nan
    """Configured E[r] of the depth sampler."""
    mean_depth: float = math.nan
    """Mean depth the sampler actually drew over the steps trained."""
    train_time_s: float = math.nan
    """Training time logged by the throughput monitor, summed over sessions (validation excluded)."""
    curve: list[ValPoint] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    """Reasoning runs: "d<difficulty>@r<depth>" -> exact-match accuracy."""

    @property
    def final(self) -> dict[int, float]:
        return self.curve[-1].loss if self.curve else {}

    @property
    def best(self) -> dict[int, float]:
        depths = sorted({r for point in self.curve for r in point.loss})
        return {r: min(p.loss[r] for p in self.curve if r in p.loss) for r in depths}

    @property
    def eval_depths(self) -> list[int]:
        return sorted({r for point in self.curve for r in point.loss})


def find_run_dirs(paths: list[Path], max_depth: int = 4) -> list[Path]:
    """Run directories under ``paths`` (see module doc), in path order; leaf job directories without a
    config.yaml are returned too (runs that failed before training)."""
    found: list[Path] = []

    def visit(path: Path, depth: int) -> None:
        if (path / CONFIG_FILE).is_file():
            found.append(path)
            return
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name not in SKIPPED_DIRS)
        if not children and depth > 0:
            found.append(path)  # an empty job directory: the run failed before it wrote anything
        elif depth < max_depth:
            for child in children:
                visit(child, depth + 1)

    for path in paths:
        if not path.is_dir():
            raise MissingFileError(f"{path}: no such directory; pass a multirun directory or run directories")
        visit(path, 0)
    return sorted(dict.fromkeys(found), key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Job directories 0, 1, …, 10 in numeric order."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def merged_rows(path: Path) -> dict[int, dict[str, float]]:
    """step -> {metric: value} from a metrics.csv; a later row's value supersedes an earlier one of the same
    step (older files of resumed runs held the re-run steps twice)."""
    _, rows = read_rows(path)
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        if not row.get("step"):
            continue
        values = merged.setdefault(int(float(row["step"])), {})
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                values[key] = float(value)
    return dict(sorted(merged.items()))


def _train_time(rows: dict[int, dict[str, float]]) -> float:
    """The monitor's cumulative train/time restarts in every session: sum each session's last value."""
    total, last = 0.0, 0.0
    for values in rows.values():
        t = values.get("train/time")
        if t is None:
            continue
        if t < last:
            total += last
        last = t
    return total + last if last or total else math.nan


def _checkpoint_step(run_dir: Path) -> Optional[int]:
    """Step of the newest checkpoint (names for step-N.ckpt, the stored global_step for last.ckpt)."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    steps = [int(m.group(1)) for p in folder.iterdir() if (m := STEP_CHECKPOINT.match(p.name))]
    last = folder / LAST_CHECKPOINT
    if last.is_dir() and (last / "resume.json").is_file():  # a sharded (directory) checkpoint
        steps.append(int(json.loads((last / "resume.json").read_text()).get("global_step", 0)))
    elif last.is_file():
        import torch

        try:
            steps.append(int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]))
        except Exception:  # unreadable: the resume would pass over it too  # noqa: BLE001
            pass
    return max(steps) if steps else None


def _lock_state(run_dir: Path) -> Optional[str]:
    """'live' or 'stale' for a lock file, None without one."""
    from recurrent_lm.train.run_dir import _stale_reason

    lock = run_dir / LOCK_FILE
    if not lock.is_file():
        return None
    try:
        holder = json.loads(lock.read_text())
    except (OSError, json.JSONDecodeError):
        return "stale"
    return "stale" if _stale_reason(holder) is not None else "live"


def _status(run: Run, run_dir: Path, rows: dict[int, dict[str, float]], saved: Optional[int]) -> tuple[str, str]:
    losses = {s: v["train/loss"] for s, v in rows.items() if "train/loss" in v}
    if run.steps >= run.max_steps:
        return "finished", "" if run.curve and run.curve[-1].steps >= run.max_steps else "no final validation"
    lock = _lock_state(run_dir)
    if lock == "live":
        return "running", f"at step {run.steps} of {run.max_steps}"
    bad = [s for s, v in losses.items() if not math.isfinite(v)]
    if bad:
        return "failed", f"non-finite loss at step {bad[0]}"
    if saved is None:
        return "failed", f"stopped after {run.steps}/{run.max_steps} steps with no checkpoint to resume from"
    if lock == "stale":
        return "killed", f"died after {run.steps}/{run.max_steps} steps; resumes from step {saved}"
    if saved >= run.steps:
        return "preempted", f"stopped at step {saved}/{run.max_steps}; resume=auto continues it"
    return "failed", f"stopped after {run.steps}/{run.max_steps} steps; resumes from step {saved}"


def _params(model: Any) -> int:
    import torch

    from recurrent_lm.model import RecurrentDepthLM, count_params

    with torch.device("meta"):
        return count_params(RecurrentDepthLM(model)).total


def _accuracy(run_dir: Path) -> dict[str, float]:
    path = run_dir / REASONING_FILE
    if not path.is_file():
        return {}
    return {f"d{k.replace('@', '@r')}": float(v) for k, v in json.loads(path.read_text())["accuracy"].items()}


def collect_run(run_dir: Path) -> Run:
    """The record of one run directory (see :class:`Run`); never raises on a partial run."""
    if not (run_dir / CONFIG_FILE).is_file():
        return Run(run_dir, {}, "failed", "no config.yaml: the run never started training")
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    trainer = config.get("trainer", {})
    run = Run(run_dir, config, "finished", max_steps=int(trainer.get("max_steps", 0)))
    rows = merged_rows(run_dir / LOG_DIR / METRICS_FILE)
    # Training rows come every trainer.log_every_n_steps; a checkpoint records the exact step count, and a
    # validation logged at step s follows s + 1 steps (the one after fit: all of them).
    trained = [s + 1 for s, v in rows.items() if "train/loss" in v]
    validated = [min(s + 1, run.max_steps) for s, v in rows.items() if any(k.startswith("val/loss_r") for k in v)]
    saved = _checkpoint_step(run_dir)
    run.steps = max(trained + validated + [saved or 0])
    run.train_time_s = _train_time(rows)
    run.accuracy = _accuracy(run_dir)
    if "model" in config and "sampler" in config:
        model, sampler = model_config(config["model"]), sampler_config(config["sampler"])
        run.params = _params(model)
        run.mean_recurrence = float(sampler.mean)
        tokens = tokens_per_step(trainer, model.block_size, _world_size(trainer))
        per_step = step_flops(model, sampler, max(run.steps, 1), tokens, model.block_size)
        cumulative = np.concatenate([[0.0], np.cumsum(per_step)])  # (steps + 1,): FLOPs after n steps
        run.flops = float(cumulative[run.steps])
        run.tokens = float(run.steps * tokens)
        from recurrent_lm.loop import DepthSampler

        draw = DepthSampler(sampler)
        if run.steps:
            run.mean_depth = float(np.mean([sum(draw(s)) for s in range(run.steps)]))
        run.curve = [ValPoint(n, float(cumulative[n]), loss) for n, loss in _val_points(rows, run.steps)]
    run.status, run.note = _status(run, run_dir, rows, saved)
    if not rows:
        run.status, run.note = "failed", "no metrics.csv rows: the run never trained a step"
    return run


def _world_size(trainer: dict[str, Any]) -> int:
    """Processes of the run as its config planned them (``devices=auto`` counts this machine's devices)."""
    from recurrent_lm.train.parallel import planned_world_size

    try:
        return planned_world_size(str(trainer.get("devices", 1)), str(trainer.get("accelerator", "cpu")),
                                  int(trainer.get("num_nodes", 1)))
    except (ValueError, RuntimeError):
        return 1


def _val_points(rows: dict[int, dict[str, float]], steps: int) -> list[tuple[int, dict[int, float]]]:
    """(optimizer steps done, {r: loss}) of every validation. Lightning logs a validation after n steps at
    step n - 1 during fit, and at step n when it is run after fit: both mean n steps done."""
    points: dict[int, dict[int, float]] = {}
    for step, values in rows.items():
        loss = {int(k[len("val/loss_r"):]): v for k, v in values.items() if k.startswith("val/loss_r")}
        if loss:
            done = min(step + 1, steps)
            points.setdefault(done, {}).update(loss)
    return sorted(points.items())


def collect(paths: list[Path]) -> list[Run]:
    return [collect_run(path) for path in find_run_dirs(paths)]
