"""Offline task data and YAML rendering: deterministic generators, correct answers, absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recurrent_lm.evaluation import tasks as T
from recurrent_lm.evaluation.errors import TaskNotFoundError

REPO = Path(__file__).resolve().parents[1]


def reachable(edges: list[tuple[str, str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for a, b in edges:
            if a == node and b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def test_prosqa_problems_are_deterministic_and_answerable():
    problems = T.prosqa_problems(40, seed=3)
    assert problems == T.prosqa_problems(40, seed=3) and problems != T.prosqa_problems(40, seed=4)
    for p in problems:
        facts = p["question"].rsplit(" Is ", 1)[0].split(". ")
        edges = [tuple(f.removeprefix("Every ").rstrip(".").split(" is a ")) for f in facts if f.startswith("Every")]
        starts = [f.rstrip(".").split(" is a ")[1] for f in facts if f.startswith(p["entity"] + " is a")]
        known = set().union(*(reachable(edges, start) for start in starts))
        answer, other = p["choices"][p["label"]], p["choices"][1 - p["label"]]
        assert p["answer"] == f"{p['entity']} is a {answer}." and answer in known and other not in known
        assert p["question"].endswith(f"Is {p['entity']} a {p['choices'][0]} or {p['choices'][1]}?")
        assert 3 <= p["hops"] <= 6 and len(p["steps"]) == p["hops"]
        assert p["steps"][-1].endswith(f"is a {answer}.")
        # the one generator: the same graph keys as the Coconut data (and ProsQA's files)
        assert {"idx_to_symbol", "edges", "root", "target", "neg_target"} <= set(p)
        assert p["idx_to_symbol"][p["target"]] == answer and p["idx_to_symbol"][p["neg_target"]] == other
    assert {p["label"] for p in problems} == {0, 1}


def test_arith_and_document_splitting():
    rows = T.arith_problems(20, seed=1)
    assert rows == T.arith_problems(20, seed=1)
    assert all(str(r["a"] + r["b"]) == r["answer"] for r in rows)
    text = "\n\n".join(f"para {i} " + "x" * 90 for i in range(30))
    docs = T.split_documents(text, max_chars=400)
    assert len(docs) > 5 and all(len(d) <= 400 for d in docs)
    assert "\n\n".join(docs) == text  # whole paragraphs, nothing lost or reordered


def test_prepare_renders_absolute_paths_and_writes_data(tmp_path):
    source = tmp_path / "held_out.txt"
    source.write_text("First paragraph.\n\nSecond paragraph.\n")
    include = T.prepare_tasks(["rlm_shakespeare_ppl", "rlm_prosqa", "rlm_arith"], cache_dir=tmp_path / "cache",
                              sources=T.Sources(ppl_source=str(source)))
    assert include == (tmp_path / "cache" / "tasks").resolve()
    for name in ("rlm_shakespeare_ppl", "rlm_prosqa", "rlm_arith"):
        config = yaml.safe_load((include / f"{name}.yaml").read_text())
        assert config["task"] == name and config["dataset_path"] == "json"
        for path in config["dataset_kwargs"]["data_files"].values():
            assert Path(path).is_absolute() and Path(path).is_file() and "${" not in path
    ppl = [json.loads(x) for x in (tmp_path / "cache" / "data" / "rlm_shakespeare_ppl_test.jsonl").open()]
    assert ppl == [{"text": "First paragraph.\n\nSecond paragraph."}]
    assert not (include / "rlm_prontoqa.yaml").exists()  # only what was asked for


def test_prontoqa_is_read_in_place(tmp_path):
    data = tmp_path / "prontoqa"
    data.mkdir()
    for name in T.PRONTOQA_FILES:
        (data / name).write_text(json.dumps([{"question": "Q?", "steps": [], "answer": "True"}]))
    include = T.prepare_tasks(["rlm_prontoqa"], cache_dir=tmp_path / "cache", sources=T.Sources(prontoqa_dir=data))
    files = yaml.safe_load((include / "rlm_prontoqa.yaml").read_text())["dataset_kwargs"]["data_files"]
    assert files == {"validation": str(data / "prontoqa_valid.json"), "test": str(data / "prontoqa_test.json")}
    assert not list((tmp_path / "cache" / "data").glob("*prontoqa*"))  # never copied
    with pytest.raises(TaskNotFoundError, match="prontoqa_dir"):
        T.prepare_tasks(["rlm_prontoqa"], cache_dir=tmp_path / "c2", sources=T.Sources(prontoqa_dir=tmp_path / "no"))


def test_task_selection_and_missing_task_files(tmp_path):
    everything = T.offline_tasks()
    assert set(everything) == {"rlm_arith", "rlm_prontoqa", "rlm_prosqa", "rlm_shakespeare_ppl"}
    assert T.requested_offline(["rlm_offline"]) == (everything, [])
    assert T.requested_offline(["rlm_arith,hellaswag"]) == (["rlm_arith"], ["hellaswag"])
    with pytest.raises(TaskNotFoundError, match="task file .*missing.yaml not found"):
        T.requested_offline([str(tmp_path / "missing.yaml")])
    with pytest.raises(TaskNotFoundError, match="unknown offline task 'rlm_arithmetic'"):
        T.requested_offline(["rlm_arithmetic"])
    with pytest.raises(TaskNotFoundError, match="no task templates"):
        T.template_dir(tmp_path)
    # Every checked-in template parses and names the task after its file.
    for path in (REPO / "evals" / "tasks").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["task"] == path.stem


def test_every_shipped_metric_declares_aggregation_and_direction():
    """lm-eval warns once per metric and task build (six times per depth of a sweep) when a task YAML leaves
    aggregation or higher_is_better to defaults; the declared ones are lm-eval's own defaults for the metric."""
    pytest.importorskip("lm_eval")
    import lm_eval.api.metrics  # noqa: F401  (registers the metrics and aggregations)
    from lm_eval.api.registry import get_aggregation, get_metric_aggregation, is_higher_better

    for path in sorted((REPO / "evals" / "tasks").glob("*.yaml")):
        for metric in yaml.safe_load(path.read_text())["metric_list"]:
            assert {"aggregation", "higher_is_better"} <= set(metric), (path.name, metric)
            if metric["metric"] in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
                assert get_aggregation(metric["aggregation"]) is get_metric_aggregation(metric["metric"])
                assert metric["higher_is_better"] == is_higher_better(metric["metric"])
