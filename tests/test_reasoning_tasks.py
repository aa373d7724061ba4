"""The reasoning-task generators: answers checked by brute force, determinism, difficulty = hops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recurrent_lm.reasoning.config import TaskConfig, num_nodes
from recurrent_lm.reasoning.tasks import (ARROW, BOS, FIRST_NAME, IGNORE_INDEX, ONE, SEP, TEST_SPLIT, TRAIN_SPLIT,
                                          VAL_SPLIT, ZERO, fixed_examples, make_example, make_forest,
                                          sequence_length, train_examples, vocab_size)


def parity_task(**kw) -> TaskConfig:
    return TaskConfig(name="parity", **kw)


def reach_task(**kw) -> TaskConfig:
    kw.setdefault("train_max", 6)
    kw.setdefault("eval_difficulties", [6, 12])
    return TaskConfig(name="reachability", **kw)


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("answer", ["all", "final"])
def test_parity_labels_match_brute_force(answer):
    task = parity_task(answer=answer)
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 16, 64):
        ex = make_example(task, n, rng)
        assert ex.input_ids[0] == BOS and len(ex.input_ids) == sequence_length(task, n)
        bits = [1 if t == ONE else 0 for t in ex.input_ids[1:n + 1]]
        assert all(t in (ZERO, ONE) for t in ex.input_ids[1:n + 1])
        expected = [ONE if sum(bits[:i + 1]) % 2 else ZERO for i in range(n)]
        if answer == "all":
            assert ex.labels == [IGNORE_INDEX] + expected
        else:
            assert ex.input_ids[-1] == SEP
            assert ex.labels == [IGNORE_INDEX] * (n + 1) + [expected[-1]]


def test_parity_covers_every_string_of_a_short_length():
    task = parity_task()
    rng = np.random.default_rng(1)
    seen = {tuple(make_example(task, 4, rng).input_ids) for _ in range(400)}
    assert len(seen) == 16  # all 2^4 bit strings appear: the generator is not degenerate


# ---------------------------------------------------------------------------- reachability
def solve_by_search(ids: list[int]) -> dict[int, tuple[int, int]]:
    """Brute force from the token sequence alone: name token -> (value, hops) by walking parent links."""
    assert ids[0] == BOS
    statements = [ids[i:i + 3] for i in range(1, len(ids), 3) if ids[i + 1:i + 2] == [ARROW]]
    parent = {child: head for head, arrow, child in statements}
    out = {}
    for node in parent:
        hops, v = 0, node
        while parent[v] not in (ZERO, ONE):
            v, hops = parent[v], hops + 1
        out[node] = (1 if parent[v] == ONE else 0, hops)
    return out


@pytest.mark.parametrize("hops", [1, 2, 5, 12])
def test_reachability_labels_match_brute_force(hops):
    task = reach_task(eval_difficulties=[12])
    rng = np.random.default_rng(hops)
    for _ in range(20):
        ex = make_example(task, hops, rng)
        assert len(ex.input_ids) == sequence_length(task, hops)
        truth = solve_by_search(ex.input_ids)
        assert len(truth) == num_nodes(task, hops)
        defined = set()
        for i in range(1, len(ex.input_ids), 3):
            head, arrow, child = ex.input_ids[i:i + 3]
            assert arrow == ARROW and child >= FIRST_NAME and child not in defined  # names are unique
            assert head in (ZERO, ONE) or head in defined  # a parent is defined before its child
            defined.add(child)
            value = ONE if truth[child][0] else ZERO
            assert ex.labels[i + 1] == IGNORE_INDEX and ex.labels[i + 2] == value
            # a parent mention is asked for its own value (the same as its child's); a root's constant is not
            assert ex.labels[i] == (IGNORE_INDEX if head in (ZERO, ONE) else ONE if truth[head][0] else ZERO)
        # Difficulty = hops from a root to the deepest node; both root values appear.
        assert max(h for _, h in truth.values()) == hops
        assert sum(1 for i in range(1, len(ex.input_ids), 3) if ex.input_ids[i] in (ZERO, ONE)) == 2


def test_reachability_final_answer_asks_for_the_deepest_node():
    task = reach_task(answer="final")
    rng = np.random.default_rng(3)
    for hops in (1, 4, 6):
        ex = make_example(task, hops, rng)
        assert ex.input_ids[-2] == SEP
        truth = solve_by_search(ex.input_ids[:-2])
        value, depth = truth[ex.input_ids[-1]]
        assert depth == hops
        assert [lab for lab in ex.labels if lab != IGNORE_INDEX] == [ONE if value else ZERO]
        assert ex.labels[-1] == (ONE if value else ZERO)


def test_difficulty_increases_the_required_hops():
    task = reach_task(eval_difficulties=[16], num_names=64)
    rng = np.random.default_rng(0)
    mean_hops = []
    for hops in (2, 4, 8, 16):
        forests = [make_forest(task, hops, rng) for _ in range(20)]
        assert all(max(f.hops(v) for v in range(len(f.parent))) == hops for f in forests)
        mean_hops.append(np.mean([f.hops(v) for f in forests for v in range(len(f.parent))]))
    assert mean_hops == sorted(mean_hops) and mean_hops[-1] > 2 * mean_hops[0]
    # Parity: the number of chained xor steps behind the last answer is the length itself.
    assert [sequence_length(parity_task(), n) - 1 for n in (16, 32, 64)] == [16, 32, 64]


def test_reachability_refuses_too_few_names():
    with pytest.raises(ValueError, match="num_names"):
        TaskConfig(name="reachability", train_max=8, eval_difficulties=[40], num_names=32)


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", ["parity", "reachability"])
def test_generation_is_deterministic_by_seed(name):
    task = parity_task() if name == "parity" else reach_task()
    again = parity_task() if name == "parity" else reach_task()
    other = parity_task(seed=1) if name == "parity" else reach_task(seed=1)
    a = [e.input_ids for e in train_examples(task, step=5, batch_size=16)]
    assert a == [e.input_ids for e in train_examples(again, step=5, batch_size=16)]
    assert a != [e.input_ids for e in train_examples(task, step=6, batch_size=16)]
    assert a != [e.input_ids for e in train_examples(other, step=5, batch_size=16)]
    test = [e.input_ids for e in fixed_examples(task, TEST_SPLIT, 6, 32)]
    assert test == [e.input_ids for e in fixed_examples(again, TEST_SPLIT, 6, 32)]
    assert test != [e.input_ids for e in fixed_examples(task, VAL_SPLIT, 6, 32)]
    assert TRAIN_SPLIT not in (VAL_SPLIT, TEST_SPLIT)


def test_train_difficulties_span_the_configured_range():
    task = parity_task(train_min=3, train_max=9)
    diffs = [e.difficulty for step in range(10) for e in train_examples(task, step, 32)]
    assert min(diffs) == 3 and max(diffs) == 9


def test_vocab_is_tiny_and_every_token_fits():
    for task in (parity_task(), reach_task()):
        v = vocab_size(task)
        assert v <= 6 + task.num_names
        exs = list(itertools.chain(train_examples(task, 0, 32), fixed_examples(task, TEST_SPLIT, 12, 8)))
        assert max(max(e.input_ids) for e in exs) < v
