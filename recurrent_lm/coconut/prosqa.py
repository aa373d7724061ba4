"""A ProsQA-style generator: "Is Tom a wumpus or a zumpus?" over a random DAG of made-up concepts.

ProsQA (Hao et al. 2024, "Coconut", Algorithm 1 and its appendix) tests planning: the question lists
every edge of a random directed acyclic graph as a sentence ("Every wumpus is a yumpus."), says
what the person is ("Tom is a wumpus."), and asks which of two concepts the person is. Exactly one
is reachable from the person; the proof path is the chain of sentences leading to it. The paper
released the data but described the generator only in prose; this is our implementation of that
description (no code of theirs), with the construction below so that every problem is valid by
design and checked by the tests:

1. The person is node 0 and node ids follow a topological order: every edge goes from a smaller
   id to a larger one, so the graph is acyclic by construction.
2. A target chain ``0 -> c1 -> ... -> ch`` of ``h`` hops and a distractor chain ``d0 -> ... -> dh``
   of the same length are laid down first, so the distractor sits as deep as the target and depth
   gives the answer away no more than in ProsQA.
3. Every other concept gets one edge (so that it appears in the question), then random edges are
   added until the edge budget is met, refusing any edge that would (a) let the person reach the
   distractor or (b) open a path to the target shorter than ``h``. The proof path is therefore a
   shortest path of exactly ``h`` hops and the distractor stays unreachable.

Sizes (both include the person): ProsQA graphs average about 23 nodes and 36 edges, hence the
default ranges below. This is the project's one ProsQA generator: Coconut training data and lm-eval's
``rlm_prosqa`` multiple-choice task (:meth:`ProsQAProblem.multiple_choice`) both come from it.
Each problem carries its graph under extra keys (``idx_to_symbol``, ``edges``,
``root``, ``target``, ``neg_target``, ``hops``, as ProsQA's files do); :func:`load_records` ignores them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from recurrent_lm.errors import ConfigError
from recurrent_lm.coconut.records import ReasoningRecord

SPLITS = ("train", "valid", "test")
_ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gl", "gr", "j", "k", "kr", "l", "m", "n", "p", "pl",
           "r", "s", "sc", "sh", "sl", "sn", "st", "t", "tr", "v", "w", "y", "z")
# 300 invented words such as "wumpus", "yumpus", "sterpus": onset + vowel + ending.
CONCEPT_NAMES = tuple(o + v + e for o, v, e in product(_ONSETS, "aeiou", ("mpus", "rpus")))
PERSON_NAMES = ("Tom", "Alex", "Sam", "Max", "Jack", "Sally", "Polly", "Rex", "Wren", "Fae", "Stella",
                "Anna", "Ben", "Emma", "Lily", "Leo")
_FAR = 10**9  # "no path" in distance arrays
_MAX_TRIES = 100  # graphs drawn before a config is declared too dense (defaults never fail)


@dataclass(frozen=True)
class ProsQAConfig:
    """Inclusive ``(min, max)`` ranges, drawn uniformly per problem.

    nodes: concepts plus the person. edges: "Every X is a Y." and "Tom is a X." facts together.
    hops: length of the proof path (= number of steps). The checks keep every range feasible:
    the two chains need ``2*hops + 2`` nodes, a graph with every concept mentioned needs
    ``nodes - 2`` edges, and more than ``2*nodes`` edges would leave the rejection sampling too
    few admissible pairs.
    """

    nodes: tuple[int, int] = (20, 26)
    edges: tuple[int, int] = (32, 40)
    hops: tuple[int, int] = (3, 6)

    def __post_init__(self) -> None:
        for name in ("nodes", "edges", "hops"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"{name} range {lo}-{hi} must satisfy 1 <= min <= max")
        if self.nodes[0] < 2 * self.hops[1] + 2:
            raise ConfigError(f"nodes min {self.nodes[0]} is too small for {self.hops[1]} hops: "
                             f"give at least {2 * self.hops[1] + 2} nodes or fewer hops")
        if self.edges[0] < self.nodes[1] - 2:
            raise ConfigError(f"edges min {self.edges[0]} cannot connect {self.nodes[1]} nodes: "
                             f"give at least {self.nodes[1] - 2} edges or fewer nodes")
        if self.edges[1] > 2 * self.nodes[0]:
            raise ConfigError(f"edges max {self.edges[1]} is too dense for {self.nodes[0]} nodes: "
                             f"give at most {2 * self.nodes[0]} edges or more nodes")


@dataclass(frozen=True)
class ProsQAProblem:
    """One problem with its graph: node 0 is the person, ``idx_to_symbol`` names every node."""

    question: str
    steps: tuple[str, ...]
    answer: str
    idx_to_symbol: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    target: int
    neg_target: int
    hops: int
    root: int = 0
    options: tuple[int, int] = (0, 0)
    """The two nodes the question offers, in the order it names them."""

    @property
    def record(self) -> ReasoningRecord:
        """The problem as the model sees it, without the graph."""
        return ReasoningRecord(self.question, self.steps, self.answer)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the three record keys first, then the graph metadata."""
        data = asdict(self)
        data["steps"], data["idx_to_symbol"] = list(self.steps), list(self.idx_to_symbol)
        data["edges"], data["options"] = [list(e) for e in self.edges], list(self.options)
        return data

    def multiple_choice(self) -> dict[str, Any]:
        """The problem as a two-way multiple-choice row (lm-eval's ``rlm_prosqa``): the record and graph keys plus
        the person (``entity``), the two concepts in question order (``choices``) and the reachable one's index."""
        choices = [self.idx_to_symbol[i] for i in self.options]
        return {**self.to_dict(), "entity": self.idx_to_symbol[self.root], "choices": choices,
                "label": self.options.index(self.target)}


class _Graph:
    """A DAG on ids ``0..n-1`` (edges go up) with the distances the admission rules need."""

    def __init__(self, n: int, target: int, distractor: int) -> None:
        self.n, self.target, self.distractor = n, target, distractor
        self.children: list[set[int]] = [set() for _ in range(n)]
        self.parents: list[set[int]] = [set() for _ in range(n)]
        self.edges: list[tuple[int, int]] = []
        self._update()

    def add(self, u: int, v: int) -> None:
        self.children[u].add(v)
        self.parents[v].add(u)
        self.edges.append((u, v))
        self._update()

    def _update(self) -> None:
        """Recompute distances from the person, to the target, and who reaches the distractor."""
        self.from_root = [0] + [_FAR] * (self.n - 1)
        for v in range(1, self.n):
            self.from_root[v] = min([self.from_root[u] + 1 for u in self.parents[v]], default=_FAR)
        self.to_target = [_FAR] * self.n
        self.to_distractor = [False] * self.n
        self.to_target[self.target], self.to_distractor[self.distractor] = 0, True
        for u in range(self.n - 1, -1, -1):
            for v in self.children[u]:
                self.to_target[u] = min(self.to_target[u], self.to_target[v] + 1)
                self.to_distractor[u] = self.to_distractor[u] or self.to_distractor[v]

    def admissible(self, u: int, v: int, hops: int) -> bool:
        """Edge u->v keeps the graph acyclic, the distractor unreachable and the proof ``hops`` long."""
        if u >= v or v in self.children[u]:
            return False
        reachable = self.from_root[u] < _FAR
        return not (reachable and self.to_distractor[v]) and self.from_root[u] + 1 + self.to_target[v] >= hops

    def shortest_path(self, rng: np.random.Generator) -> list[int]:
        """A shortest path person -> target, ties broken at random (walked back from the target)."""
        path = [self.target]
        while path[-1] != 0:
            here = path[-1]
            back = sorted(u for u in self.parents[here] if self.from_root[u] == self.from_root[here] - 1)
            path.append(back[rng.integers(len(back))])
        return path[::-1]


def _build_graph(rng: np.random.Generator, n: int, n_edges: int, hops: int) -> Optional[_Graph]:
    """Steps 1-3 of the module docstring; None when the random edges run out of admissible pairs."""
    ids = rng.choice(np.arange(1, n), size=2 * hops + 1, replace=False)
    chain = [0] + sorted(int(i) for i in ids[:hops])
    decoy = sorted(int(i) for i in ids[hops:])
    graph = _Graph(n, target=chain[-1], distractor=decoy[-1])
    for path in (chain, decoy):
        for u, v in zip(path, path[1:]):
            graph.add(u, v)
    others = [v for v in range(1, n) if v not in set(chain) | set(decoy)]
    for f in (int(x) for x in rng.permutation(others)):
        if graph.parents[f] or graph.children[f]:
            continue
        pairs = [(min(f, w), max(f, w)) for w in range(n) if w != f]
        pairs = [p for p in pairs if graph.admissible(*p, hops)]
        graph.add(*pairs[rng.integers(len(pairs))])
    while len(graph.edges) < n_edges:
        pairs = [(u, v) for u in range(n) for v in range(u + 1, n) if graph.admissible(u, v, hops)]
        if not pairs:
            return None
        graph.add(*pairs[rng.integers(len(pairs))])
    return graph


def _sentence(names: list[str], u: int, v: int) -> str:
    return f"{names[0]} is a {names[v]}." if u == 0 else f"Every {names[u]} is a {names[v]}."


def make_problem(rng: np.random.Generator, config: ProsQAConfig = ProsQAConfig()) -> ProsQAProblem:
    """Draw one problem from ``rng`` (deterministic given its state)."""
    for _ in range(_MAX_TRIES):
        n, n_edges, hops = (int(rng.integers(lo, hi + 1)) for lo, hi in (config.nodes, config.edges, config.hops))
        graph = _build_graph(rng, n, n_edges, hops)
        if graph is not None:
            break
    else:
        raise RuntimeError(f"{_MAX_TRIES} graphs in a row ran out of admissible edges under {config}; "
                           "allow fewer edges or more nodes")
    names = [str(PERSON_NAMES[rng.integers(len(PERSON_NAMES))])]
    names += [str(w) for w in rng.choice(CONCEPT_NAMES, size=n - 1, replace=False)]
    edges = sorted(graph.edges)
    facts = [_sentence(names, u, v) for u, v in edges]
    facts = [facts[i] for i in rng.permutation(len(facts))]
    options = [graph.target, graph.distractor]
    if rng.integers(2):
        options.reverse()
    path = graph.shortest_path(rng)
    return ProsQAProblem(
        question=" ".join(facts) + f" Is {names[0]} a {names[options[0]]} or {names[options[1]]}?",
        steps=tuple(_sentence(names, u, v) for u, v in zip(path, path[1:])),
        answer=f"{names[0]} is a {names[graph.target]}.",
        idx_to_symbol=tuple(names), edges=tuple(edges),
        target=graph.target, neg_target=graph.distractor, hops=hops, options=(options[0], options[1]))


def generate_split(n: int, seed: int, split: str, config: ProsQAConfig = ProsQAConfig(),
                   exclude: Iterable[str] = ()) -> list[ProsQAProblem]:
    """``n`` distinct problems of one split; questions in ``exclude`` (other splits') are redrawn.

    Each split draws from its own stream, ``default_rng([seed, split index])``, so the splits differ
    even before the exclusion check, and a split does not change when another split's size does.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 0 or seed < 0:
        raise ConfigError(f"n ({n}) and seed ({seed}) must be >= 0")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    seen, problems = set(exclude), []
    for _ in range(10 * n + 100):
        if len(problems) == n:
            return problems
        problem = make_problem(rng, config)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    raise RuntimeError(f"drew only {len(problems)} distinct {split} problems of {n}; widen the config ranges")


def generate_splits(sizes: Mapping[str, int], seed: int,
                    config: ProsQAConfig = ProsQAConfig()) -> dict[str, list[ProsQAProblem]]:
    """Several splits, in train/valid/test order, with no question shared between any two."""
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown splits {unknown}; choose from {', '.join(SPLITS)}")
    taken: set[str] = set()
    out = {}
    for split in (s for s in SPLITS if s in sizes):
        out[split] = generate_split(sizes[split], seed, split, config, exclude=taken)
        taken.update(p.question for p in out[split])
    return out
