"""The reasoning evaluation: table shape, the one-unroll depth sweep, the exit columns, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.reasoning.config import TaskConfig
from recurrent_lm.loop import ExitSpec, SequenceConvergence
from recurrent_lm.reasoning.evaluate import depth_sweep, evaluate, load_task, main, save_task
from recurrent_lm.reasoning.tasks import ONE, ZERO, collate, fixed_examples, vocab_size


def tiny(task: TaskConfig, **kw) -> RecurrentDepthLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab_size(task), block_size=160, d_model=32, n_heads=2, mlp_hidden=64,
               mean_recurrence=4)
    return RecurrentDepthLM(ModelConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("name", ["parity", "reachability"])
def test_report_has_one_cell_per_difficulty_and_depth(name):
    diffs = (2, 4, 8) if name == "parity" else (1, 2, 4)
    names = ["convergence", "causal_convergence", "sequence_convergence"]
    task = TaskConfig(name=name, train_max=4, eval_difficulties=list(diffs), eval_depths=[1, 3, 6], num_eval=12,
                      exits=[ExitSpec(n, 0.03, max_steps=8) for n in names])
    report = evaluate(tiny(task), task, batch_size=8)
    assert set(report.accuracy) == {(d, r) for d in diffs for r in (1, 3, 6)}
    assert all(0.0 <= v <= 1.0 for v in [*report.accuracy.values(), *report.token_accuracy.values()])
    assert [e.name for e in report.exits] == names
    for e in report.exits:
        assert set(e.mean_steps) == set(e.deepest_steps) == set(e.accuracy) == set(diffs)
        assert all(1 <= e.mean_steps[d] <= e.deepest_steps[d] <= 8 for d in diffs)
    md = report.to_markdown().splitlines()
    assert md[0].startswith("| difficulty | r=1 | r=3 | r=6 | convergence: steps (mean / deepest) | acc |")
    assert md[0].endswith("| sequence_convergence: steps (mean / deepest) | acc |")
    assert len([line for line in md if line.startswith("| ") and line[2].isdigit()]) == 3
    assert report.to_csv().splitlines()[0].split(",")[:4] == ["difficulty", "acc@1", "acc@3", "acc@6"]
    assert json.loads(json.dumps(report.to_dict()))["accuracy"]["4@6"] == report.accuracy[(4, 6)]


def test_depth_sweep_matches_separate_forwards():
    task = TaskConfig(train_max=4, eval_difficulties=[6])
    model = tiny(task, init_scale=0.0)  # deterministic initial state: sweep and forward must agree exactly
    ids = collate(fixed_examples(task, 2, 6, 5))["input_ids"]
    for r, logits in depth_sweep(model, ids, [5, 1, 3]):
        torch.testing.assert_close(logits, model(ids, num_steps=r).logits, rtol=1e-5, atol=1e-5)


def test_sequence_exit_stops_each_example_at_its_own_depth():
    task = TaskConfig(train_max=4, eval_difficulties=[6])
    model = tiny(task, init_scale=0.0)
    batch = collate(fixed_examples(task, 2, 6, 4))
    ids, mask = batch["input_ids"], batch["labels"] != -100

    def run(rows, threshold, cap):
        with torch.no_grad():
            out = model(ids[rows], num_steps=cap, exit_criterion=SequenceConvergence(threshold, watch=mask[rows]))
        return out.logits, out.steps_used[:, 0]

    logits, steps = run(slice(None), 0.0, 5)
    assert steps.tolist() == [5] * 4  # nothing converges below 0: everyone runs to the cap
    torch.testing.assert_close(logits, model(ids, num_steps=5).logits, rtol=1e-5, atol=1e-5)
    assert run(slice(None), 10.0, 5)[1].tolist() == [1] * 4  # any change is "small": one step each
    _, steps = run(slice(None), 0.05, 30)
    for b, r in enumerate(steps.tolist()):  # each example's logits are those of its own depth
        single, _ = run(slice(b, b + 1), 0.05, 30)
        torch.testing.assert_close(single[0], model(ids[b:b + 1], num_steps=r).logits[0], rtol=1e-4, atol=1e-5)


def test_exact_match_counts_the_whole_answer():
    task = TaskConfig(train_max=4, eval_difficulties=[4], eval_depths=[1], num_eval=16, exits=[])

    class Oracle(torch.nn.Module):
        """Answers every prefix parity right except, optionally, the last bit's."""

        def __init__(self, wrong_last: bool) -> None:
            super().__init__()
            self.wrong_last = wrong_last
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, num_steps=1, readout_depths=(), **_):
            bits = (input_ids == ONE).long()
            bits[:, 0] = 0
            parity = bits.cumsum(-1) % 2
            if self.wrong_last:
                parity[:, -1] = 1 - parity[:, -1]
            logits = torch.nn.functional.one_hot(parity + ZERO, 6).float()
            return type("Out", (), {"logits": logits, "depth_logits": {r: logits for r in readout_depths}})()

    assert evaluate(Oracle(False), task).accuracy[(4, 1)] == 1.0
    wrong = evaluate(Oracle(True), task)
    assert wrong.accuracy[(4, 1)] == 0.0 and wrong.token_accuracy[(4, 1)] == pytest.approx(0.75)


def test_too_long_difficulty_is_refused():
    task = TaskConfig(eval_difficulties=[200])
    with pytest.raises(ValueError, match="block_size"):
        evaluate(tiny(task), task)


def test_cli_reads_task_json_and_writes_tables(tmp_path, capsys):
    task = TaskConfig(train_max=4, eval_difficulties=[4, 8], eval_depths=[2, 4], num_eval=8)
    model = tiny(task)
    model.save_pretrained(tmp_path / "model")
    save_task(task, tmp_path / "model")
    assert load_task(tmp_path / "model") == task
    out = tmp_path / "res" / "parity.md"
    assert main(["--model", str(tmp_path / "model"), "--depths", "1", "2", "--out", str(out)]) == 0
    assert "| difficulty | r=1 | r=2 |" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".csv").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["difficulties"] == [4, 8]


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("recurrent-lm-reasoning-eval: error: ")
    task = TaskConfig(train_max=4, eval_difficulties=[4])
    tiny(task).save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model")]) == 2  # no task.json and no --task
    assert "pass --task" in capsys.readouterr().err
    save_task(task, tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--exit", "causal"]) == 2
    assert "exit='causal' is not an exit criterion; choose one of" in capsys.readouterr().err


def test_cli_exit_flags_override_the_tasks_exit_settings(tmp_path, capsys):
    task = TaskConfig(train_max=4, eval_difficulties=[4], eval_depths=[2, 4], num_eval=4,
                      exits=[ExitSpec("convergence", 0.5), ExitSpec("kl", 1e-3, max_steps=2)])
    tiny(task).save_pretrained(tmp_path / "model")
    save_task(task, tmp_path / "model")
    out = tmp_path / "exit.md"

    def exits(*flags: str) -> list[tuple]:
        assert main(["--model", str(tmp_path / "model"), *flags, "--out", str(out)]) == 0
        report = json.loads(out.with_suffix(".json").read_text())
        return [(e["name"], e["threshold"], e["max_steps"]) for e in report["exits"]]

    assert exits() == [("convergence", 0.5, 4), ("kl", 1e-3, 2)]  # the task's own: its cap, else the largest depth
    assert exits("--max-steps", "3") == [("convergence", 0.5, 3), ("kl", 1e-3, 3)]  # bounds for every exit
    # --exit replaces the list, each with its own threshold (a bare name: the criterion's default)
    assert exits("--exit", "kl", "convergence=0.2", "--min-steps", "2", "--max-steps", "3") == [
        ("kl", 5e-4, 3), ("convergence", 0.2, 3)]
    [kl, _] = json.loads(out.with_suffix(".json").read_text())["exits"]
    assert 2 <= kl["mean_steps"]["4"] <= 3
    assert exits("--exit") == []
    capsys.readouterr()
    assert main(["--model", str(tmp_path / "model"), "--exit", "kl", "--threshold", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "recurrent-lm-reasoning-eval: error: --threshold is gone: each exit has its own threshold; write it after "
        "the criterion, e.g. --exit convergence=0.03 learned=0.9")


def test_task_json_from_before_the_exit_settings_were_renamed_still_loads(tmp_path):
    old = {k: v for k, v in TaskConfig().to_dict().items() if k != "exits"}
    old.update(exit_criteria=["convergence", "kl"], exit_threshold=0.1, exit_max_steps=0, min_steps=1)
    (tmp_path / "task.json").write_text(json.dumps(old))
    task = load_task(tmp_path)
    assert task.exits == [ExitSpec("convergence", 0.1), ExitSpec("kl", 0.1)]  # exit_max_steps 0: no cap
