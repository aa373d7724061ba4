"""The Coconut data layer: the record loader, the ProsQA-style generator and its CLI.

The generator checks re-derive everything from the metadata with their own graph search, so a
generator bug (a broken path, a reachable distractor, a shortcut) cannot hide behind shared code.
"""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path

import pytest

from recurrent_lm.coconut import (ProsQAConfig, ProsQAProblem, RecordError, ReasoningRecord, generate_split,
                                  generate_splits, load_records, write_records)
from recurrent_lm.coconut.make_data import main

PRONTOQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prontoqa"
CONFIG = ProsQAConfig()


@pytest.fixture(scope="module")
def problems() -> list[ProsQAProblem]:
    return generate_split(150, seed=0, split="train")


def distances(n: int, edges, source: int) -> dict[int, int]:
    """Breadth-first hop counts from ``source`` to every node it reaches."""
    children = {u: [] for u in range(n)}
    for u, v in edges:
        children[u].append(v)
    dist, queue = {source: 0}, deque([source])
    while queue:
        u = queue.popleft()
        for v in children[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def path_of(problem: ProsQAProblem) -> list[int]:
    """Node ids along the steps, parsed back from the sentences."""
    ids = {name: i for i, name in enumerate(problem.idx_to_symbol)}
    person = problem.idx_to_symbol[problem.root]
    first = re.fullmatch(rf"{person} is a (\w+)\.", problem.steps[0])
    assert first, problem.steps[0]
    path = [problem.root, ids[first.group(1)]]
    for step in problem.steps[1:]:
        hop = re.fullmatch(r"Every (\w+) is a (\w+)\.", step)
        assert hop and ids[hop.group(1)] == path[-1], f"step {step!r} does not continue the path"
        path.append(ids[hop.group(2)])
    return path


# ---------------------------------------------------------------------------------- generator
def test_steps_are_a_shortest_path_from_the_person_to_the_answer(problems):
    for p in problems:
        path = path_of(p)
        assert set(zip(path, path[1:])) <= set(p.edges), "a step states an edge the graph lacks"
        assert path[-1] == p.target and len(p.steps) == p.hops
        assert distances(len(p.idx_to_symbol), p.edges, p.root)[p.target] == p.hops, "a shorter proof exists"
        assert p.answer == f"{p.idx_to_symbol[p.root]} is a {p.idx_to_symbol[p.target]}."


def test_the_wrong_option_is_unreachable_and_the_question_names_both(problems):
    for p in problems:
        reach = distances(len(p.idx_to_symbol), p.edges, p.root)
        assert p.neg_target not in reach and p.target in reach
        options = re.fullmatch(r".* Is (\w+) a (\w+) or (\w+)\?", p.question)
        assert options and options.group(1) == p.idx_to_symbol[p.root]
        assert {options.group(2), options.group(3)} == {p.idx_to_symbol[p.target], p.idx_to_symbol[p.neg_target]}


def test_question_states_every_edge_once_and_nothing_else(problems):
    for p in problems:
        names = p.idx_to_symbol
        facts = re.findall(r"[^.?]+[.?]", p.question)[:-1]
        expected = [f"{names[0]} is a {names[v]}." if u == 0 else f"Every {names[u]} is a {names[v]}."
                    for u, v in p.edges]
        assert sorted(f.strip() for f in facts) == sorted(expected)


def test_graph_sizes_and_hops_fall_in_the_configured_ranges(problems):
    for p in problems:
        n = len(p.idx_to_symbol)
        assert CONFIG.nodes[0] <= n <= CONFIG.nodes[1]
        assert CONFIG.edges[0] <= len(p.edges) <= CONFIG.edges[1]
        assert CONFIG.hops[0] <= p.hops <= CONFIG.hops[1]
        assert len(set(p.edges)) == len(p.edges) and all(u < v for u, v in p.edges), "not a simple DAG"
        assert len(set(p.idx_to_symbol)) == n, "two nodes share a name"
        mentioned = {u for e in p.edges for u in e}
        assert mentioned == set(range(n)), "a concept never appears in the question"
    assert {p.hops for p in problems} == set(range(CONFIG.hops[0], CONFIG.hops[1] + 1))


def test_a_narrow_config_is_honoured_exactly():
    config = ProsQAConfig(nodes=(14, 14), edges=(20, 20), hops=(6, 6))
    for p in generate_split(20, seed=3, split="test", config=config):
        assert (len(p.idx_to_symbol), len(p.edges), p.hops) == (14, 20, 6)
        assert distances(14, p.edges, 0)[p.target] == 6 and p.neg_target not in distances(14, p.edges, 0)


@pytest.mark.parametrize("kwargs", [dict(hops=(4, 3)), dict(hops=(0, 3)), dict(nodes=(10, 30), hops=(3, 6)),
                                    dict(edges=(10, 40)), dict(edges=(32, 60))])
def test_infeasible_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        ProsQAConfig(**kwargs)


def test_splits_are_disjoint_and_sized():
    splits = generate_splits({"train": 120, "valid": 30, "test": 30}, seed=0)
    questions = {name: {p.question for p in ps} for name, ps in splits.items()}
    assert {name: len(q) for name, q in questions.items()} == {"train": 120, "valid": 30, "test": 30}
    assert not questions["train"] & questions["valid"]
    assert not questions["train"] & questions["test"]
    assert not questions["valid"] & questions["test"]


def test_excluded_questions_are_redrawn():
    first = generate_split(1, seed=0, split="test")[0]
    again = generate_split(1, seed=0, split="test", exclude={first.question})[0]
    assert again.question != first.question


def test_same_seed_same_problems_other_seed_or_split_other_problems():
    dump = lambda ps: json.dumps([p.to_dict() for p in ps])  # noqa: E731
    assert dump(generate_split(10, 7, "valid")) == dump(generate_split(10, 7, "valid"))
    assert dump(generate_split(10, 7, "valid")) != dump(generate_split(10, 8, "valid"))
    assert dump(generate_split(10, 7, "valid")) != dump(generate_split(10, 7, "test"))


# ------------------------------------------------------------------------------------- loader
def test_loader_reads_the_real_prontoqa_test_file():
    path = PRONTOQA / "prontoqa_test.json"
    if not path.exists():
        pytest.skip(f"ProntoQA data not found at {PRONTOQA} (a checkout beside ../shared/data has it)")
    records = load_records(path)
    assert len(records) == 800
    assert all(len(r.steps) == 6 and r.answer in ("True", "False") for r in records)
    assert records[0].question.endswith("True or false: Stella is not floral.")


def test_loader_round_trips_a_generated_prosqa_file_ignoring_its_metadata(tmp_path, problems):
    path = write_records((p.to_dict() for p in problems[:20]), tmp_path / "prosqa_train.json")
    assert "neg_target" in json.loads(path.read_text())[0]
    assert load_records(path) == [p.record for p in problems[:20]]


def test_loader_reads_gsm8k_aug_records_and_integer_answers(tmp_path):
    path = tmp_path / "gsm.json"
    path.write_text(json.dumps([
        {"question": "Ann has 2 bags of 3 apples and buys 4 more. How many?", "steps": ["<<2*3=6>>", "<<6+4=10>>"],
         "answer": "10", "source": "gsm8k-aug"},
        {"question": "What is 5*5?", "steps": ["<<5*5=25>>"], "answer": 25},
    ]))
    assert load_records(path) == [
        ReasoningRecord("Ann has 2 bags of 3 apples and buys 4 more. How many?", ("<<2*3=6>>", "<<6+4=10>>"), "10"),
        ReasoningRecord("What is 5*5?", ("<<5*5=25>>",), "25"),
    ]


def test_no_cot_data_needs_no_steps_when_asked(tmp_path):
    path = tmp_path / "nocot.json"
    path.write_text(json.dumps([{"question": "q?", "answer": "a"}, {"question": "r?", "steps": [], "answer": "b"}]))
    assert load_records(path, require_steps=False) == [ReasoningRecord("q?", (), "a"), ReasoningRecord("r?", (), "b")]
    with pytest.raises(RecordError, match="record 0 lacks 'steps'"):
        load_records(path)


GOOD = {"question": "q?", "steps": ["s."], "answer": "a"}


@pytest.mark.parametrize("name,content,index,fragment", [
    ("bad.json", '[{"question": "q?",', None, "not valid JSON"),
    ("bad.jsonl", json.dumps(GOOD) + "\n" + json.dumps(GOOD), None, "JSON Lines is not supported"),
    ("bad.json", json.dumps(GOOD), None, "holds an object, not a list"),
    ("bad.json", "[]", None, "holds no records"),
    ("bad.json", json.dumps([GOOD, "text", 3]), 1, "is a string, not an object"),
    ("bad.json", json.dumps([GOOD, GOOD, {"question": "q?", "answer": "a"}, {}]), 2, "lacks 'steps'"),
    ("bad.json", json.dumps([{**GOOD, "question": 7}]), 0, "'question' is a number, not a string"),
    ("bad.json", json.dumps([GOOD, {**GOOD, "answer": 18.0}]), 1, "'answer' is a number, not a string"),
    ("bad.json", json.dumps([GOOD, {**GOOD, "answer": True}]), 1, "'answer' is a boolean"),
    ("bad.json", json.dumps([{**GOOD, "answer": " "}]), 0, "'answer' is empty"),
    ("bad.json", json.dumps([GOOD, {**GOOD, "steps": "s1. s2."}]), 1, "'steps' is a string, not a list"),
    ("bad.json", json.dumps([GOOD, GOOD, GOOD, {**GOOD, "steps": ["s.", None]}]), 3, "step 1 is null"),
    ("bad.json", json.dumps([GOOD, {**GOOD, "steps": []}, {**GOOD, "steps": []}]), 1, "has no steps"),
])
def test_each_loader_error_names_the_file_and_the_first_bad_record(tmp_path, name, content, index, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(RecordError) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message
    assert re.findall(r"record \d+", message) == ([f"record {index}"] if index is not None else [])


def test_non_utf8_file_is_a_record_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"question": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(RecordError, match=re.escape(str(path)) + ".*not UTF-8"):
        load_records(path)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_records([ReasoningRecord("q?", ("s.",), "a")], tmp_path / "d.json")
    with pytest.raises(TypeError):
        write_records([{"question": object()}], path)
    assert load_records(path) == [ReasoningRecord("q?", ("s.",), "a")]
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


# ---------------------------------------------------------------------------------------- CLI
def test_cli_writes_three_loadable_disjoint_files(tmp_path, capsys):
    out = tmp_path / "prosqa"
    assert main(["prosqa", "--out", str(out), "--train", "30", "--valid", "5", "--test", "6", "--seed", "0"]) == 0
    counts = {s: len(load_records(out / f"prosqa_{s}.json")) for s in ("train", "valid", "test")}
    assert counts == {"train": 30, "valid": 5, "test": 6}
    test_questions = {r.question for r in load_records(out / "prosqa_test.json")}
    assert not test_questions & {r.question for r in load_records(out / "prosqa_train.json")}
    assert "prosqa_test.json: 6 problems" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [], ["prosqa"], ["gsm8k", "--out", "x"], ["prosqa", "--out", "d", "--train", "-1"],
    ["prosqa", "--out", "d", "--valid", "many"], ["prosqa", "--out", "d", "--hops", "6-3"],
    ["prosqa", "--out", "d", "--nodes", "a-b"], ["prosqa", "--out", "d", "--bogus"],
    ["prosqa", "--out", "d", "--edges", "10-12"], ["prosqa", "--out", "FILE"],
])
def test_cli_refuses_bad_arguments_in_one_line_with_status_2(tmp_path, capsys, argv):
    (tmp_path / "FILE").write_text("not a directory")
    argv = [str(tmp_path / a) if a in ("d", "FILE") else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "error:" in captured.err
    assert not (tmp_path / "d").exists()
