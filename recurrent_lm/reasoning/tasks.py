"""Generators of the synthetic reasoning tasks, and their tiny fixed vocabulary.

Both tasks are token-classification problems on a causal model: ``labels[t]`` is the answer the
model must emit *at* position ``t`` (already aligned, not shifted) and -100 where nothing is asked.

parity (difficulty n = number of bits)::

    input   BOS b1 b2 ... bn                (answer='all')
    labels  -   p1 p2 ... pn                p_i = b1 xor ... xor b_i
    input   BOS b1 ... bn SEP               (answer='final')
    labels  -   -  ... -  pn

reachability (difficulty h = hops from a root to the deepest node): a forest of two balanced trees
whose roots hold the values 0 and 1, written as one statement ``parent > child`` per node in a random
topological order (a parent is always defined before its children); a root's statement is
``0 > r`` or ``1 > r``. The answer for a node is the value of the root that reaches it, i.e. the
value obtained by following parent links back to a root: exactly `hops(node)` look-ups::

    input   BOS 1 > a  0 > b  a > c  c > d  b > e ...       (answer='all')
    labels  -   - - 1  - - 0  1 - 1  1 - 1  0 - 0

(with answer='all' every mention of a node is asked for its value: the child of each statement and
the parent named in it, whose value is the same).
    ... SEP d   with the label on `d`                        (answer='final': the deepest node)

A looped model can solve both with one step of a local rule per iteration (parity: read the
previous position's parity; reachability: read the parent's value), so the iterations needed grow
with the difficulty, which is what the suite measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from recurrent_lm.reasoning.config import TaskConfig, num_nodes, sequence_length

IGNORE_INDEX = -100

PAD, BOS, SEP, ARROW, ZERO, ONE = range(6)
FIRST_NAME = 6
SPECIAL_NAMES = ("<pad>", "<bos>", "?", ">", "0", "1")

# Disjoint seed streams: (seed, SPLIT, ...) so that train, validation and test never collide.
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT, FIXED_TRAIN_SPLIT = 0, 1, 2, 3


def vocab_size(task: TaskConfig) -> int:
    """Rows the model's embedding table needs for this task."""
    return FIRST_NAME + (task.num_names if task.name == "reachability" else 0)


def token_names(task: TaskConfig) -> list[str]:
    """Readable name of every token id (for printing examples)."""
    names = list(SPECIAL_NAMES)
    if task.name == "reachability":
        names += [f"n{i}" for i in range(task.num_names)]
    return names


def decode(task: TaskConfig, ids) -> str:
    names = token_names(task)
    return " ".join(names[int(i)] for i in ids)


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
@dataclass
class Forest:
    """A generated reachability instance before tokenisation (node ids are 0..n-1)."""

    parent: list[int]
    """parent[v] = the node v hangs from, or -1 for the two roots."""
    root_value: dict[int, int]
    """Value (0/1) held by each root."""
    order: list[int]
    """Statement order: a topological order (each parent before its children)."""
    names: list[int]
    """Token-name index of each node (distinct)."""

    def hops(self, v: int) -> int:
        h = 0
        while self.parent[v] >= 0:
            v, h = self.parent[v], h + 1
        return h

    def value(self, v: int) -> int:
        while self.parent[v] >= 0:
            v = self.parent[v]
        return self.root_value[v]


def make_forest(task: TaskConfig, hops: int, rng: np.random.Generator,
                names: Optional[list[int]] = None) -> Forest:
    """Two roots of balanced trees: a chain of `hops` nodes below one root, a chain of hops/2..hops nodes
    below the other (as far as the node budget allows), then distractors hung from a uniformly chosen tree
    at depth < hops. The deepest node is exactly `hops` hops from its root, and neither root's value
    is a majority answer one could guess without following the links. ``names`` (distinct name indices,
    at least num_nodes of them) overrides the random choice of node names."""
    n = num_nodes(task, hops)
    parent = [-1, -1]
    depth = [0, 0]
    tree = [0, 1]
    values = [0, 1] if rng.random() < 0.5 else [1, 0]
    main = int(rng.integers(0, 2))  # the root the deepest chain hangs from
    second = min(int(rng.integers((hops + 1) // 2, hops + 1)), n - 2 - hops)
    for root, length in ((main, hops), (1 - main, second)):
        v = root
        for _ in range(length):
            parent.append(v)
            depth.append(depth[v] + 1)
            tree.append(root)
            v = len(parent) - 1
    while len(parent) < n:
        root = int(rng.integers(0, 2))
        candidates = [u for u in range(len(parent)) if tree[u] == root and depth[u] < hops]
        u = int(rng.choice(candidates))
        parent.append(u)
        depth.append(depth[u] + 1)
        tree.append(root)
    children: list[list[int]] = [[] for _ in range(n)]
    for c, p in enumerate(parent):
        if p >= 0:
            children[p].append(c)
    # A random topological order: repeatedly emit a random node whose parent is already out.
    ready, order = [0, 1], []
    while ready:
        node = ready.pop(int(rng.integers(0, len(ready))))
        order.append(node)
        ready.extend(children[node])
    names = [int(x) for x in (rng.permutation(task.num_names) if names is None else names)[:n]]
    return Forest(parent=parent, root_value={0: values[0], 1: values[1]}, order=order, names=names)


def forest_example(task: TaskConfig, forest: Forest, hops: int) -> Example:
    ids, labels = [BOS], [IGNORE_INDEX]
    final = task.answer == "final"
    for v in forest.order:
        p = forest.parent[v]
        head = (ONE if forest.root_value[v] else ZERO) if p < 0 else FIRST_NAME + forest.names[p]
        ids += [head, ARROW, FIRST_NAME + forest.names[v]]
        answer = IGNORE_INDEX if final else (ONE if forest.value(v) else ZERO)
        # The parent mention is asked for its own value too (= the child's): every occurrence of a name
        # then carries its value, so a look-up by name finds it wherever the name last appeared.
        labels += [answer if p >= 0 else IGNORE_INDEX, IGNORE_INDEX, answer]
    if final:
        deepest = max(range(len(forest.parent)), key=forest.hops)
        ids += [SEP, FIRST_NAME + forest.names[deepest]]
        labels += [IGNORE_INDEX, ONE if forest.value(deepest) else ZERO]
    return Example(ids, labels, hops)


def reachability_example(task: TaskConfig, hops: int, rng: np.random.Generator,
                         names: Optional[list[int]] = None) -> Example:
    return forest_example(task, make_forest(task, hops, rng, names), hops)


# ---------------------------------------------------------------------------------------- common
def make_example(task: TaskConfig, difficulty: int, rng: np.random.Generator,
                 names: Optional[list[int]] = None) -> Example:
    """One problem; ``names`` (reachability only) fixes which node names it uses."""
    if task.name == "parity":
        return parity_example(task, difficulty, rng)
    return reachability_example(task, difficulty, rng, names)


def train_examples(task: TaskConfig, step: int, batch_size: int) -> list[Example]:
    """The training batch of optimizer step `step`: difficulties uniform in [train_min, train_max].

    With ``task.pack_length`` each of the `batch_size` rows packs independent problems back to back
    (each starting with its own BOS) until the next one would not fit in ``pack_length`` tokens. For
    reachability the problems of a row use disjoint node names (the row also ends when names run
    out), so that a name always refers to one node of the row: looking a parent up never needs to
    tell problems apart.
    """
    rng = np.random.default_rng((task.seed, TRAIN_SPLIT, step))
    if not task.pack_length:
        diffs = rng.integers(task.train_min, task.train_max + 1, size=batch_size)
        return [make_example(task, int(d), rng) for d in diffs]
    rows = []
    for _ in range(batch_size):
        row = Example([], [], 0)
        pool = [int(x) for x in rng.permutation(task.num_names)]
        while True:
            difficulty = int(rng.integers(task.train_min, task.train_max + 1))
            names = None
            if task.name == "reachability":
                names, pool = pool[:num_nodes(task, difficulty)], pool[num_nodes(task, difficulty):]
                if len(names) < num_nodes(task, difficulty):
                    break
            ex = make_example(task, difficulty, rng, names)
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


def collate(examples: list[Example], pad_to_multiple: int = 1) -> dict:
    """Right-pad to the longest example: input PAD, labels -100. Returns LongTensors (B, T)."""
    import torch

    t = max(len(e.input_ids) for e in examples)
    t = -(-t // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(examples), t), PAD, dtype=torch.long)
    labels = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": ids, "labels": labels,
            "difficulty": torch.tensor([e.difficulty for e in examples], dtype=torch.long)}
