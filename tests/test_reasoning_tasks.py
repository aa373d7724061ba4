"""The reasoning-task generators: answers checked by brute force, determinism, difficulty."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recurrent_lm.loop import ExitSpec
from recurrent_lm.reasoning.config import TaskConfig, sequence_length
from recurrent_lm.reasoning.tasks import (BOS, IGNORE_INDEX, ONE, ROW_END, SEP, START, TEST_SPLIT, TRAIN_SPLIT,
                                          VAL_SPLIT, WALL, ZERO, fixed_examples, make_example, train_examples,
                                          vocab_size)


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
def solve_by_search(ids: list[int], width: int) -> set[tuple[int, int]]:
    """Breadth-first search from S over right/down moves, from the token sequence alone."""
    assert ids[0] == BOS
    rows = [ids[1 + i:1 + i + width] for i in range(0, len(ids) - 1, width + 1)]
    assert all(ids[i + width] == ROW_END for i in range(1, len(ids), width + 1))
    assert rows[0][0] == START
    seen, frontier = {(0, 0)}, [(0, 0)]
    while frontier:
        i, j = frontier.pop()
        for a, b in ((i + 1, j), (i, j + 1)):
            if a < len(rows) and b < width and rows[a][b] != WALL and (a, b) not in seen:
                seen.add((a, b))
                frontier.append((a, b))
    return seen


@pytest.mark.parametrize("answer", ["all", "final"])
def test_reachability_labels_match_search(answer):
    task = reach_task(answer=answer, grid_width=5)
    rng = np.random.default_rng(0)
    for rows in (1, 2, 5, 12):
        for _ in range(20):
            ex = make_example(task, rows, rng)
            assert len(ex.input_ids) == sequence_length(task, rows) and ex.difficulty == rows
            reached = solve_by_search(ex.input_ids, 5)
            for i in range(rows):
                for j in range(5):
                    pos = 1 + i * 6 + j
                    tok, label = ex.input_ids[pos], ex.labels[pos]
                    asked = tok != WALL and (answer == "all" or (i, j) == (rows - 1, 4))
                    assert label == ((ONE if (i, j) in reached else ZERO) if asked else IGNORE_INDEX)
            if answer == "final":
                assert ex.input_ids[-2] != WALL and sum(lab != IGNORE_INDEX for lab in ex.labels) == 1


def test_reachability_paths_grow_with_the_difficulty():
    """More rows: the reached cells lie further from S (more hops), and both answers stay common."""
    task = reach_task()
    rng = np.random.default_rng(1)
    far, shares = [], []
    for rows in (2, 4, 8, 16):
        examples = [make_example(task, rows, rng) for _ in range(100)]
        far.append(np.mean([max(i + j for i, j in solve_by_search(e.input_ids, task.grid_width))
                            for e in examples]))
        labels = np.array([lab for e in examples for lab in e.labels if lab != IGNORE_INDEX])
        shares.append((labels == ONE).mean())
    assert far == sorted(far) and far[-1] > 2 * far[0]
    assert all(0.3 < s < 0.8 for s in shares)


@pytest.mark.parametrize("overrides, message", [
    ({"grid_width": 0}, "grid_width"), ({"wall_prob": 1.0}, "wall_prob"), ({"wall_prob": -0.1}, "wall_prob"),
])
def test_reachability_config_errors(overrides, message):
    with pytest.raises(ValueError, match=rf"task.{message}="):
        reach_task(**overrides)


def test_unknown_exit_criterion_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^task.exits\[1\]: exit='causal' is not an exit criterion; choose one of"):
        TaskConfig.from_dict({"exits": [{"criterion": "convergence"}, {"criterion": "causal"}]})
    with pytest.raises(ValueError, match=r"^task.exits\[0\]: ExitSpec: unknown field\(s\) \['treshold'\]"):
        TaskConfig.from_dict({"exits": [{"criterion": "kl", "treshold": 0.1}]})
    with pytest.raises(ValueError, match=r"^exit='causal' is not an exit criterion"):
        TaskConfig(exits=[ExitSpec("causal")])


def test_each_exit_keeps_its_own_threshold_and_bounds():
    task = TaskConfig.from_dict({"exits": [{"criterion": "learned", "threshold": 0.9},
                                           {"criterion": "convergence", "threshold": 0.03, "max_steps": 48},
                                           {"criterion": "kl"}]})
    assert task.exits == [ExitSpec("learned", 0.9), ExitSpec("convergence", 0.03, max_steps=48), ExitSpec("kl", 5e-4)]
    assert TaskConfig.from_dict(task.to_dict()) == task  # task.json round trip


@pytest.mark.parametrize("exits, message", [
    ([ExitSpec()], r"task.exits\[0\]=ExitSpec\(criterion=None.* is not an exit criterion; give ExitSpec"),
    (["kl"], r"task.exits\[0\]='kl' is not an exit criterion"),
    ([ExitSpec("kl"), ExitSpec("kl", 1e-3)], r"task.exits lists a criterion twice \(\['kl', 'kl'\]\)"),
])
def test_exits_that_report_nothing_or_twice_are_refused(exits, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(exits=exits)


def test_task_json_with_one_shared_threshold_still_loads_as_one_spec_per_criterion():
    old = {k: v for k, v in TaskConfig().to_dict().items() if k != "exits"}
    old.update(exit_criteria=["convergence", "kl"], threshold=None, min_steps=2, max_steps=9)
    task = TaskConfig.from_dict(old)
    assert task.exits == [ExitSpec("convergence", None, 2, 9), ExitSpec("kl", None, 2, 9)]


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
        assert v == (6 if task.name == "parity" else 10)
        exs = list(itertools.chain(train_examples(task, 0, 32), fixed_examples(task, TEST_SPLIT, 12, 8)))
        assert max(max(e.input_ids) for e in exs) < v
