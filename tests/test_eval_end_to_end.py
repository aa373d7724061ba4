"""lm_eval.simple_evaluate, the depth sweep and the console script, on a real tiny model and local tasks.

Expected metrics are computed by scoring with the model's forward by hand, so a wrong harness changes
the numbers; the data is chosen so the expected values are neither 0 nor 1.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from eval_support import ManualScorer, make_model_dir

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from recurrent_lm.evaluation.cli import main  # noqa: E402
from recurrent_lm.evaluation.harness import RecurrentLMEval  # noqa: E402
from recurrent_lm.evaluation.sweep import aggregate, run_sweep, y_range  # noqa: E402
from recurrent_lm.evaluation.tasks import Sources, build_task_manager  # noqa: E402

STEPS = 2
MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
"""
PPL_TEXT = ("If music be the food of love, play on; give me excess of it, that, surfeiting, the appetite may "
            "sicken, and so die.\n\nThat strain again! it had a dying fall: O, it came o'er my ear like the sweet "
            "sound that breathes upon a bank of violets, stealing and giving odour!\n")
GEN_PROMPTS = ["Tom is a", "Every wumpus", "If music be", "Q: 3 + 4 =", "Stella is not", "play on;"]
NAMES = ["wumpus", "yumpus", "lorpus", "brimpus", "zumpus", "gorpus"]




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model dir, local task YAMLs with data whose expected metrics are known, and a task manager."""
    root = tmp_path_factory.mktemp("eval_e2e")
    model_dir = make_model_dir(root / "model")
    manual = ManualScorer(model_dir, STEPS)
    tasks = root / "tasks"
    tasks.mkdir()
    # Multiple choice: the gold label is the hand-scored best choice for 8 docs and the worst for 4.
    mc, hits = [], 0
    for i in range(12):
        a, b = NAMES[i % 6], NAMES[(i * 5 + 1) % 6]
        question = f"Every {a} is a {b}. Is Tom a {a} or {b}?"
        scores = [manual.pair(question + "\nAnswer:", " " + c) for c in (a, b)]
        best = int(scores[1] > scores[0])
        label = best if i % 3 else 1 - best
        hits += label == best
        mc.append({"question": question, "choices": [a, b], "label": label})
    assert sum(r["label"] == 0 for r in mc) != hits, "a harness scoring all choices alike must not pass"
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (tasks / "tiny_mc.yaml").write_text(MC_YAML.format(data=root / "mc.jsonl"))
    # Generation: the target is the hand-decoded greedy answer for even docs, something else for odd ones.
    gen = []
    for i, prompt in enumerate(GEN_PROMPTS):
        answer = manual.greedy(prompt, 6, "\n").strip()
        gen.append({"prompt": prompt, "target": answer if i % 2 == 0 else "zzz"})
        assert answer != "zzz"
    assert len({r["target"] for r in gen[::2]}) == 3, "the model should answer each prompt differently"
    (root / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    (tasks / "tiny_gen.yaml").write_text(GEN_YAML.format(data=root / "gen.jsonl"))
    (root / "held_out.txt").write_text(PPL_TEXT)
    manager = build_task_manager(["tiny_mc", "tiny_gen", "rlm_shakespeare_ppl"], include_path=str(tasks),
                                 cache_dir=root / "cache", sources=Sources(ppl_source=str(root / "held_out.txt")))
    return {"root": root, "model_dir": model_dir, "manual": manual, "manager": manager, "tasks": tasks,
            "mc_acc": hits / 12}


def test_simple_evaluate_gives_the_hand_computed_metrics(setup):
    manual = setup["manual"]
    lm = RecurrentLMEval(pretrained=str(setup["model_dir"]), num_steps=STEPS, batch_size=4)
    out = lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_gen", "rlm_shakespeare_ppl"],
                                  task_manager=setup["manager"], log_samples=False)
    results = out["results"]
    assert 0 < setup["mc_acc"] < 1
    assert results["tiny_mc"]["acc,none"] == pytest.approx(setup["mc_acc"], abs=1e-12)
    assert results["tiny_gen"]["exact_match,strip"] == pytest.approx(0.5, abs=1e-12)
    # Held-out perplexity from the real offline template: bits per byte of hand-scored rolling windows.
    doc = "\n\n".join(p.strip("\n") for p in PPL_TEXT.split("\n\n"))
    tokens = manual.encode(doc)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, 64, 1)]
    assert len(windows) > 1
    loglik = sum(manual.continuation(ctx, cont)[0] for ctx, cont in windows)
    want = -loglik / len(doc.encode("utf-8")) / math.log(2)
    assert results["rlm_shakespeare_ppl"]["bits_per_byte,none"] == pytest.approx(want, rel=1e-4)
    assert lm.steps_summary()["mean_steps_used"] == STEPS


def test_sweep_writes_results_table_and_plots(setup, tmp_path):
    common = {"tasks": ["tiny_mc", "tiny_gen"], "task_manager": setup["manager"], "limit": 4}
    fixed = run_sweep(f"pretrained={setup['model_dir']},batch_size=4", "2,1", output_dir=tmp_path / "fixed", **common)
    assert [p.name for p in fixed] == ["results_r1.json", "results_r2.json"]
    record = json.loads(fixed[1].read_text())
    assert record["recurrent_lm"]["num_steps"] == 2 and record["recurrent_lm"]["mean_steps_used"] == 2
    assert (tmp_path / "fixed" / "sweep.md").is_file() and (tmp_path / "fixed" / "sweep_depth.png").is_file()
    assert not (tmp_path / "fixed" / "sweep_steps.png").exists()  # no exit run, no steps plot
    # An exit run that stops every token after one iteration, aggregated together with the fixed runs.
    run_sweep({"pretrained": str(setup["model_dir"]), "exit": "convergence", "threshold": 1e9}, [1, 2],
              output_dir=tmp_path / "exit", plot=False, **common)
    written = aggregate([tmp_path / "fixed", tmp_path / "exit"], tmp_path / "all")
    rows = list(csv.DictReader(written["csv"].open()))
    assert {(r["exit"], r["num_steps"], float(r["mean_steps_used"])) for r in rows} == {
        ("none", "1", 1.0), ("none", "2", 2.0), ("convergence", "1", 1.0), ("convergence", "2", 1.0)}
    assert {(r["task"], r["metric"]) for r in rows} == {("tiny_mc", "acc"), ("tiny_gen", "exact_match")}
    table = written["markdown"].read_text()
    assert "## tiny_mc (fixed depth)" in table and "## tiny_mc (exit=convergence@1e+09)" in table
    assert "| metric | r=1 | r=2 |" in table and "| mean steps used | 1 | 1 |" in table
    assert "--limit 4" in table and "| acc (↑ better) |" in table
    for key in ("depth_plot", "steps_plot"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[key].stat().st_size > 5000


def test_console_script_runs_lm_eval_and_reports_bad_input(setup, tmp_path, capsys):
    model = f"pretrained={setup['model_dir']}"
    cache = str(setup["root"] / "cache")
    rc = main(["--model_args", f"{model},num_steps=2,batch_size=2", "--tasks", "rlm_arith", "--limit", "2",
               "--eval_cache", cache, "--output_path", str(tmp_path / "out")])
    assert rc == 0
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    data = json.loads(result.read_text())
    assert "exact_match,strip" in data["results"]["rlm_arith"]
    assert data["config"]["model"] == "recurrent_lm"
    # A single run records its depth and exit settings, so `aggregate` takes it like a sweep's depth.
    assert data["recurrent_lm"]["num_steps"] == 2 and data["recurrent_lm"]["mean_steps_used"] == 2
    assert main(["aggregate", str(tmp_path / "out"), "--output_dir", str(tmp_path / "agg"), "--no_plot"]) == 0
    [row] = list(csv.DictReader((tmp_path / "agg" / "sweep.csv").open()))
    assert (row["num_steps"], row["exit"], row["limit"], row["higher_is_better"]) == ("2", "none", "2.0", "True")
    capsys.readouterr()
    bad = {
        "num_stepz=2": "unknown model arg(s) ['num_stepz']",
        "num_steps=0": "num_steps=0 is below 1",
    }
    for arg, message in bad.items():
        assert main(["--model_args", f"{model},{arg}", "--tasks", "rlm_arith", "--limit", "1",
                     "--eval_cache", cache]) == 2
        assert message in capsys.readouterr().err
    assert main(["--model_args", f"pretrained={tmp_path / 'missing'}", "--tasks", "rlm_arith", "--limit", "1",
                 "--eval_cache", cache]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["--model_args", model, "--tasks", str(tmp_path / "nowhere.yaml")]) == 2
    assert "task file" in capsys.readouterr().err
    assert main(["sweep", "--model_args", model, "--num_steps", "0,2", "--tasks", "rlm_arith",
                 "--output_dir", str(tmp_path / "s")]) == 2
    assert "num_steps=0" in capsys.readouterr().err


def test_depth_plot_axis_keeps_small_changes_small():
    """A 0–1 metric spans its whole scale; a perplexity changing by 0.3% gets an axis ≥ 10% of its value."""
    assert y_range("acc", [0.30, 0.301], [0.0, 0.0]) == (-0.02, 1.02)
    low, high = y_range("word_perplexity", [100.0, 100.3], [0.0, 0.0])
    assert high - low >= 10.0 and low < 100.0 and high > 100.3
    low, high = y_range("bits_per_byte", [0.9, 2.5], [0.05, 0.05])  # a real change keeps its own span
    assert low < 0.85 and high > 2.55 and high - low < 2.0
