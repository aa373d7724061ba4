"""Generators of the synthetic reasoning tasks, and their tiny fixed vocabulary.

Both tasks are token-classification problems on a causal model: ``labels[t]`` is the answer the
model must emit *at* position ``t`` (already aligned, not shifted) and -100 where nothing is asked.

parity (difficulty n = number of bits)::

    input   BOS b1 b2 ... bn                (answer='all')
    labels  -   p1 p2 ... pn                p_i = b1 xor ... xor b_i
    input   BOS b1 ... bn SEP               (answer='final')
    labels  -   -  ... -  pn

reachability (difficulty h = rows of a maze): a grid of h rows × ``grid_width`` columns, each cell
open ``.`` or a wall ``#`` (probability ``wall_prob``), the start ``S`` in the top-left corner, written
row by row with ``|`` after each row. Moves go right or down (a directed grid graph, so that a causal
model can decide every cell from the cells before it). The answer at each open cell: can S reach it::

    input   BOS S . # | . . . | # . # |                 (answer='all', width 3)
    labels  -   1 1 - - 1 1 1 - - 1 - -
    (answer='final': only the bottom-right cell, forced open, is asked)

A looped model can solve both with a local rule applied once per iteration (parity: xor in the
previous position's parity; reachability: a cell is reached if it is open and its left or upper
neighbour is reached, the upper one sitting exactly ``grid_width + 1`` tokens back), so the iterations
needed grow with the difficulty, which is what the suite measures.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from recurrent_lm.model.lm import IGNORE_INDEX
from recurrent_lm.reasoning.config import TaskConfig

PAD, BOS, SEP, ARROW, ZERO, ONE = range(6)
OPEN, WALL, START, ROW_END = range(6, 10)

# Disjoint seed streams: (seed, SPLIT, ...) so that train, validation and test never collide.
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT, FIXED_TRAIN_SPLIT = 0, 1, 2, 3


def vocab_size(task: TaskConfig) -> int:
    """Rows the model's embedding table needs for this task."""
    return ROW_END + 1 if task.name == "reachability" else ONE + 1


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    difficulty: int


# ---------------------------------------------------------------------------------------- parity
def parity_example(task: TaskConfig, n: int, rng: np.random.Generator) -> Example:
    bits = rng.integers(0, 2, size=n)
    prefix = np.cumsum(bits) % 2
    ids = [BOS] + [ONE if b else ZERO for b in bits]
    if task.answer == "all":
        labels = [IGNORE_INDEX] + [ONE if p else ZERO for p in prefix]
    else:
        ids.append(SEP)
        labels = [IGNORE_INDEX] * (n + 1) + [ONE if prefix[-1] else ZERO]
    return Example(ids, labels, n)


# ---------------------------------------------------------------------------------- reachability
def reachable_cells(open_cells: np.ndarray) -> np.ndarray:
    """(rows, width) bool: which open cells the top-left corner reaches by right/down moves."""
    rows, width = open_cells.shape
    reached = np.zeros_like(open_cells)
    for i in range(rows):
        for j in range(width):
            came = (i == 0 and j == 0) or (i > 0 and reached[i - 1, j]) or (j > 0 and reached[i, j - 1])
            reached[i, j] = open_cells[i, j] and came
    return reached


def maze_example(task: TaskConfig, rows: int, rng: np.random.Generator) -> Example:
    open_cells = rng.random((rows, task.grid_width)) >= task.wall_prob
    open_cells[0, 0] = True
    final = task.answer == "final"
    if final:
        open_cells[-1, -1] = True
    reached = reachable_cells(open_cells)
    ids, labels = [BOS], [IGNORE_INDEX]
    for i in range(rows):
        for j in range(task.grid_width):
            ids.append(START if i == j == 0 else (OPEN if open_cells[i, j] else WALL))
            asked = open_cells[i, j] and (not final or (i, j) == (rows - 1, task.grid_width - 1))
            labels.append((ONE if reached[i, j] else ZERO) if asked else IGNORE_INDEX)
        ids.append(ROW_END)
        labels.append(IGNORE_INDEX)
    return Example(ids, labels, rows)


# ---------------------------------------------------------------------------------------- common
def make_example(task: TaskConfig, difficulty: int, rng: np.random.Generator) -> Example:
    """One problem of the given difficulty."""
    if task.name == "parity":
        return parity_example(task, difficulty, rng)
    return maze_example(task, difficulty, rng)


def train_examples(task: TaskConfig, step: int, batch_size: int) -> list[Example]:
    """The training batch of optimizer step `step`: difficulties uniform in [train_min, train_max].

    With ``task.pack_length`` each of the `batch_size` rows packs independent problems back to back
    (each starting with its own BOS) until the next one would not fit in ``pack_length`` tokens.
    """
    rng = np.random.default_rng((task.seed, TRAIN_SPLIT, step))
    if not task.pack_length:
        diffs = rng.integers(task.train_min, task.train_max + 1, size=batch_size)
        return [make_example(task, int(d), rng) for d in diffs]
    rows = []
    for _ in range(batch_size):
        row = Example([], [], 0)
        while True:
            ex = make_example(task, int(rng.integers(task.train_min, task.train_max + 1)), rng)
            if row.input_ids and len(row.input_ids) + len(ex.input_ids) > task.pack_length:
                break  # this problem is dropped, not split: every problem in a row is whole
            row.input_ids += ex.input_ids
            row.labels += ex.labels
            row.difficulty = max(row.difficulty, ex.difficulty)
        rows.append(row)
    return rows


def fixed_examples(task: TaskConfig, split: int, difficulty: int, count: int) -> list[Example]:
    """A reproducible set of `count` examples at one difficulty (validation or test)."""
    rng = np.random.default_rng((task.seed, split, difficulty))
    return [make_example(task, difficulty, rng) for _ in range(count)]


def collate(examples: list[Example]) -> dict:
    """Right-pad to the longest example: input PAD, labels -100. Returns LongTensors (B, T)."""
    import torch

    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), PAD, dtype=torch.long)
    labels = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": ids, "labels": labels,
            "difficulty": torch.tensor([e.difficulty for e in examples], dtype=torch.long)}
