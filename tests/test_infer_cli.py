"""`recurrent-lm-generate` on a real exported directory (tiny random model + a freshly trained tokenizer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from recurrent_lm.data.tokenizer import TextTokenizer
from recurrent_lm.infer import GenerationConfig, generate_text
from recurrent_lm.infer.cli import main
from recurrent_lm.infer.display import BARS
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import RecurrentDepthLM
from test_infer_generate import tiny_model

LINES = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "to be or not to be"] * 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("export")
    tokenizer = TextTokenizer.train(LINES, vocab_size=300)
    model = tiny_model(dtype=torch.float32, vocab_size=tokenizer.vocab_size, init_scale=1.0)
    model.save_pretrained(directory)
    tokenizer.save(directory / "tokenizer.json")
    return directory


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_streams_text_then_shows_depth_per_token(model_dir, capsys, tmp_path):
    report = tmp_path / "out.json"
    code, out, err = run(capsys, model_dir, "hello world", "--max-new-tokens", 7, "--num-steps", 10,
                         "--exit", "convergence", "--threshold", 0.1, "--json", report)
    assert code == 0, err
    record = json.loads(report.read_text())["results"][0]
    assert len(record["tokens"]) == len(record["steps"]) == 7
    assert "hello world" + record["text"] + "\n" in out  # the streamed pieces add up to the final text
    spark = next(line for line in out.splitlines() if line.startswith("depth  ")).split()[-1]
    assert len(spark) == 7 and set(spark) <= set(BARS)
    assert "7 tokens (length)" in out and "exit convergence" in out and "kv-cache full" in out
    # Piped (capsys is no terminal) the shading would be lost: each token with its count instead.
    pairs = next(line for line in out.splitlines() if line.startswith("tokens·steps  "))
    assert [int(n) for n in re.findall(r"·(\d+)(?= |$)", pairs)] == record["steps"] and "depth: " not in out
    config = json.loads(report.read_text())["config"]  # applied values, typed: not the flags' strings
    assert (config["num_steps"], config["threshold"], config["exit"], config["min_steps"]) == (10, 0.1, "convergence", 1)
    assert config["requested"]["num_steps"] == "10" and config["max_new_tokens"] == 7

    # The CLI passes its options through: the same run via the Python API gives the same tokens and depths.
    tokenizer = TextTokenizer.from_file(model_dir / "tokenizer.json")
    model = RecurrentDepthLM.from_pretrained(model_dir)
    api = generate_text(model, tokenizer, ["hello world"], GenerationConfig(
        max_new_tokens=7, num_steps=10, exit=ExitSpec("convergence", 0.1)), prefix_ids=[tokenizer.eos_id])
    assert record["tokens"] == api.tokens[0] and record["steps"] == api.steps[0]
    assert min(record["steps"]) < 10  # the exit really ran


def test_prompt_file_batched_equals_streamed_one_by_one(model_dir, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("to be or\n\nthe quick brown fox jumps\n")
    common = ["--max-new-tokens", 5, "--num-steps", 8, "--exit", "kl", "--threshold", 1e-3, "--kv-cache",
              "compressed", "--kv-window", 3, "--temperature", 0.8, "--top-p", 0.9]
    code, out, _ = run(capsys, model_dir, "--prompt-file", prompts, *common, "--json", tmp_path / "a.json")
    assert code == 0 and out.count("5 tokens") == 2 and "readouts (coda+head by the criterion) 0 " not in out
    code, _, _ = run(capsys, model_dir, "--prompt-file", prompts, *common, "--batch-size", 2,
                     "--json", tmp_path / "b.json")
    assert code == 0
    one = json.loads((tmp_path / "a.json").read_text())["results"]
    two = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["prompt"] for r in one] == ["to be or", "the quick brown fox jumps"]
    # Sampling seeds are per row (seed + row) in a batch; prompt-by-prompt every call is row 0.
    assert one[0]["tokens"] == two[0]["tokens"] and one[0]["steps"] == two[0]["steps"]


def test_stop_string_cuts_the_streamed_text(model_dir, capsys, tmp_path):
    code, _, _ = run(capsys, model_dir, "hello", "--max-new-tokens", 12, "--num-steps", 4,
                     "--json", tmp_path / "a.json")
    text = json.loads((tmp_path / "a.json").read_text())["results"][0]["text"]
    stop = text[3:5]
    assert code == 0 and len(stop) == 2
    code, out, _ = run(capsys, model_dir, "hello", "--max-new-tokens", 12, "--num-steps", 4, "--stop", stop,
                       "--json", tmp_path / "b.json")
    record = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert code == 0 and record["finish_reason"] == "stop"
    assert record["text"] == text[: text.find(stop)]
    assert "hello" + record["text"] + "\n" in out


@pytest.mark.parametrize("argv, message", [
    (["hi", "--exit", "wobble"], "exit='wobble' is not an exit criterion"),
    (["hi", "--exit", "kl", "--min-steps", 6, "--max-steps", 3], "min_steps=6 is greater than max_steps=3"),
    (["hi", "--exit", "kl", "--num-steps", 4, "--min-steps", 6], "min_steps=6 is greater than the step cap 4"),
    (["hi", "--kv-cache", "paged"], "kv_cache='paged' is unknown"),
    (["hello world " * 40], "longer than the model context (64 tokens)"),
    ([], "no prompts"),
])
def test_bad_input_gets_a_clear_error(model_dir, capsys, argv, message):
    code, out, err = run(capsys, model_dir, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_model_directory_with_missing_files(model_dir, capsys, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((model_dir / "config.json").read_text())
    code, _, err = run(capsys, partial, "hi")
    assert code == 2 and "lacks ['model.safetensors (or model.safetensors.index.json with its shards)', " \
                         "'tokenizer.json']" in err
    code, _, err = run(capsys, tmp_path / "nowhere", "hi")
    assert code == 2 and "does not exist" in err


def test_exit_benchmark_script_runs_and_reports_every_setting(model_dir, tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "exit.py"
    spec = importlib.util.spec_from_file_location("exit_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = tmp_path / "val.txt"
    text.write_text(" ".join(LINES) * 3)
    report = bench.main(["--model", str(model_dir), "--r-max", "4", "--data", str(text), "--eval-batches", "1",
                         "--batch-size", "2", "--seq-len", "24", "--decode-prompts", "1", "--prompt-len", "6",
                         "--decode-tokens", "4", "--repeats", "1", "--criteria", "convergence,kl",
                         "--thresholds", "convergence=0.1", "kl=1e-3,1e-2", "--json", str(tmp_path / "r.json")])
    assert [r["setting"] for r in report["rows"]] == ["fixed", "convergence=0.1", "kl=0.001", "kl=0.01"]
    fixed = report["rows"][0]
    assert fixed["iters_per_token"] == 4 and fixed["decode_readouts_per_token"] == 0
    assert all(r["decode_readouts_per_token"] > 0 for r in report["rows"] if r["criterion"] == "kl")
    for cache in report["caches"].values():
        assert cache["bytes"] == cache["predicted_bytes"]
    assert set(report["goals"]) == {"iterations", "decode_speed", "cache"}
    assert "Goals:" in capsys.readouterr().out and json.loads((tmp_path / "r.json").read_text())["r_max"] == 4


def test_depth_and_threshold_bounds_name_the_setting_the_cost_and_the_fix(model_dir, capsys):
    """--num-steps 100000 ran for minutes and grew a huge cache without a word; --threshold inf let every token exit
    at step 1. Both are refused in one line (exit 2); so is a cache projected beyond the memory there is."""
    from recurrent_lm.infer.depth_bound import check_depth
    from recurrent_lm.model import RecurrentDepthLM

    code, _, err = run(capsys, model_dir, "ROMEO.", "--num-steps", "100000")
    assert code == 2 and "--num-steps=100,000 is beyond 64× the model's mean_recurrence" in err
    assert "the full KV cache would take" in err and "Use --num-steps <=" in err
    code, _, err = run(capsys, model_dir, "ROMEO.", "--exit", "kl", "--threshold", "inf")
    assert code == 2 and "threshold=inf is infinite" in err
    config = RecurrentDepthLM.from_pretrained(model_dir).config
    with pytest.raises(ValueError, match=r"--num-steps=8: the full KV cache would take .* more than the 0 MiB of "
                                         r"memory available.*compressed or latest"):
        check_depth("--num-steps", 8, config, 10, 1, "full", 4, torch.float32, memory=1000)
    assert run(capsys, model_dir, "ROMEO.", "--num-steps", "8", "--max-new-tokens", "2", "--no-depth")[0] == 0


def test_json_records_the_threshold_and_depth_applied_by_default(model_dir, capsys, tmp_path):
    """No --threshold, no --num-steps: the JSON says which threshold and depth were used, not None."""
    report = tmp_path / "out.json"
    code, _, err = run(capsys, model_dir, "hello", "--max-new-tokens", 2, "--exit", "kl", "--json", report)
    assert code == 0, err
    config = json.loads(report.read_text())["config"]
    model_depth = RecurrentDepthLM.from_pretrained(model_dir).config.mean_recurrence
    assert config["threshold"] == 5e-4 and config["num_steps"] == model_depth
    assert config["requested"]["threshold"] is None
