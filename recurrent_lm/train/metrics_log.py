"""``logs/metrics.csv``: one table for the whole life of a run directory.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, and rewrites the file in
place (losing columns it has not seen) when a new metric appears. For a run that is resumed after
preemption that is the wrong contract: the history must survive every restart. This logger

* keeps every row of earlier sessions, and on start drops only the rows of steps at or after the
  step this session resumes from: those steps are about to be re-run, and their new rows
  supersede the old ones, so a plot of the file is one continuous run without duplicates;
* rewrites the file only atomically (temp file, then rename), with the union of all columns, so a
  kill mid-write leaves the previous file whole;
* appends between rewrites, flushing every ``flush_every_n_steps`` logged steps;
* restores the row of the last step before a checkpoint from the checkpoint itself, when a kill
  came between the two writes (Lightning logs a step's metrics after its checkpoint callbacks).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from recurrent_lm.model.io import atomic_write

METRICS_FILE = "metrics.csv"


def column_order(name: str) -> list[tuple[int, str]]:
    """Sort key of a column: ``step`` first, then by name with numbers compared as numbers, so the depths of
    ``val/loss_r1, r2, r4, r8, r16`` read in order (as text, r16 would come before r2)."""
    if name == "step":
        return [(-2, "")]
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a metrics.csv; a missing file is empty."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def supersede_from(path: Path, step: int) -> int:
    """Drop the rows of steps >= ``step`` (about to be re-run), atomically; returns how many went."""
    header, rows = read_rows(path)
    kept = [row for row in rows if row.get("step", "") != "" and int(row["step"]) < step]
    if len(kept) != len(rows):
        _write(path, header, kept)
    return len(rows) - len(kept)


def _write(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


class RunCSVLogger(Logger):
    """A Lightning logger writing ``<log_dir>/metrics.csv`` append-only across resumes (see module doc)."""

    def __init__(self, log_dir: Path, start_step: int, flush_every_n_steps: int = 50,
                 carried_row: Optional[dict[str, Any]] = None) -> None:
        """``carried_row``: the row of the step before ``start_step`` as the resumed checkpoint holds it;
        written when the file lacks it (the process was killed between checkpoint and log write)."""
        super().__init__()
        self._log_dir = Path(log_dir)
        self.path = self._log_dir / METRICS_FILE
        self.flush_every_n_steps = flush_every_n_steps
        self._pending: list[dict[str, Any]] = []
        self._steps_since_flush = 0
        self._header: list[str] = []
        if rank_zero_only.rank == 0:
            supersede_from(self.path, start_step)
            self._header, rows = read_rows(self.path)
            if carried_row:
                step = str(carried_row["step"])
                present = {k for row in rows if row.get("step") == step for k, v in row.items() if v != ""}
                missing = {k: v for k, v in carried_row.items() if k not in present}
                if missing:
                    self._pending.append({**missing, "step": carried_row["step"]})
                    self.save()

    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self._log_dir)

    @property
    def root_dir(self) -> str:
        return str(self._log_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters live in the run dir's config.yaml, not in the metrics table."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._pending)
        self._pending.append(row)
        self._steps_since_flush += 1
        if self._steps_since_flush >= self.flush_every_n_steps:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._pending:
            return
        keys = set().union(*self._pending) - set(self._header)
        if keys or not self.path.is_file():
            _, rows = read_rows(self.path)
            self._header = sorted(set(self._header) | keys, key=column_order)
            _write(self.path, self._header, rows + self._pending)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._header).writerows(self._pending)
        self._pending = []
        self._steps_since_flush = 0

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
