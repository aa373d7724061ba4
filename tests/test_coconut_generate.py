"""Coconut generation: batched + cached equals one-by-one and the uncached reference; adaptive thoughts; scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_coconut_thoughts import BOT, DEPTH, EOT, LATENT, PAD, VOCAB, gpt2_model, naive_logits
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from recurrent_lm.coconut.backends import Depth, HFBackend, RecurrentBackend
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.export import load_coconut_model, save_coconut_model
from recurrent_lm.coconut.generate import answer_of, exact_match, generate
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.coconut.tokens import ThoughtTokenizer, add_thought_tokens
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import ModelConfig, RecurrentDepthLM

IDS = SpecialIds(bot=BOT, eot=EOT, latent=LATENT, eos=1, pad=PAD)


def recurrent_lm() -> tuple[ContinuousThoughtLM, Depth]:
    """Random initial states (init_scale 1) drawn from the seeded per-position table: batch-invariant."""
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=64, d_model=32, n_heads=4, n_prelude=1,
                                         n_core=1, n_coda=1, init_scale=1.0, mean_recurrence=DEPTH))
    return ContinuousThoughtLM(RecurrentBackend(model, s0_seed=0)), Depth(num_steps=DEPTH)


def gpt2_lm() -> tuple[ContinuousThoughtLM, Depth]:
    """GPT-2 (dropout 0) with matrices spread wider than its 0.02 init, under which greedy output barely varies."""
    model = gpt2_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.1)
    return ContinuousThoughtLM(HFBackend(model)), Depth()


LMS = {"recurrent": recurrent_lm, "gpt2": gpt2_lm}


def prefixes(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[*torch.randint(6, VOCAB, (n,), generator=g).tolist(), BOT] for n in lengths]


@pytest.mark.parametrize("kind", LMS)
def test_batched_generation_equals_one_by_one(kind):
    lm, depth = LMS[kind]()
    questions, bounds = prefixes([9, 3, 6, 1]), [2, 4, 0, 3]
    batched = generate(lm, questions, bounds, IDS, max_new_tokens=6, depth=depth)
    # Make the second token of row 0 an end of sequence: that row stops early and leaves the batch while
    # the others go on, which one-by-one generation must reproduce too.
    ids = SpecialIds(bot=BOT, eot=EOT, latent=LATENT, eos=batched.tokens[0][1], pad=PAD)
    batched = generate(lm, questions, bounds, ids, max_new_tokens=6, depth=depth)
    assert batched.finish_reasons[0] == "eos" and len(batched.tokens[0]) <= 2
    assert "length" in batched.finish_reasons
    for b, (question, bound) in enumerate(zip(questions, bounds)):
        alone = generate(lm, [question], bound, ids, max_new_tokens=6, depth=depth)
        assert batched.tokens[b] == alone.tokens[0]
        assert batched.thoughts[b] == alone.thoughts[0] == bound
        if kind == "recurrent":
            assert batched.token_steps[b] == alone.token_steps[0] == [DEPTH] * len(alone.tokens[0])
            assert batched.thought_steps[b] == bound * DEPTH
        else:
            assert batched.token_steps is None and batched.thought_steps is None
    assert batched.num_generated == sum(bounds) + sum(len(t) for t in batched.tokens)


@pytest.mark.parametrize("kind", LMS)
def test_cached_generation_equals_the_uncached_reference(kind):
    """The reference recomputes the whole sequence for every new token, its thoughts filled by n + 1 passes."""
    lm, depth = LMS[kind]()
    question, bound = prefixes([7], seed=1)[0], 3
    cached = generate(lm, [question], bound, IDS, max_new_tokens=4, depth=depth).tokens[0]
    reference: list[int] = []
    with torch.no_grad():
        for _ in range(len(cached)):
            logits = naive_logits(lm.backend, ThoughtExample(tuple(question), bound, (EOT, *reference)), depth)
            reference.append(int(logits[0, -1].argmax()))
    assert cached == reference


def test_pause_prefix_thinks_no_continuous_thought():
    lm, depth = recurrent_lm()
    out = generate(lm, [[*prefixes([5])[0], LATENT, LATENT]], 0, IDS, max_new_tokens=3, depth=depth)
    assert out.thoughts == [0] and out.thought_steps == [0] and out.num_generated == 3


def test_adaptive_thoughts_between_one_and_the_bound_per_row():
    lm, depth = recurrent_lm()
    questions, bounds = prefixes([5, 8, 4], seed=2), [3, 5, 0]
    never = generate(lm, questions, bounds, IDS, max_new_tokens=2, depth=depth,
                     thought_exit=ExitSpec("convergence", threshold=0.0))
    always = generate(lm, questions, bounds, IDS, max_new_tokens=2, depth=depth,
                      thought_exit=ExitSpec("convergence", threshold=1e9))
    assert never.thoughts == [3, 5, 0]
    assert always.thoughts == [1, 1, 0]
    assert always.thought_steps == [DEPTH, DEPTH, 0]


def test_sampling_is_per_row_and_seeded():
    lm, depth = gpt2_lm()
    questions = prefixes([4, 6], seed=3)
    kwargs = dict(max_new_tokens=5, depth=depth, temperature=1.0, top_k=20, seed=7)
    both = generate(lm, questions, 1, IDS, **kwargs)
    assert both.tokens == generate(lm, questions, 1, IDS, **kwargs).tokens
    assert both.tokens[0] == generate(lm, questions[:1], 1, IDS, **kwargs).tokens[0]
    assert both.tokens != generate(lm, questions, 1, IDS, **{**kwargs, "seed": 8}).tokens


def test_generation_refuses_a_prefix_past_the_context():
    lm, depth = recurrent_lm()
    with pytest.raises(ValueError, match="exceed the model's 64 positions"):
        generate(lm, prefixes([60]), 4, IDS, depth=depth)
    with pytest.raises(ValueError, match="2 thought bounds for 1 prefixes"):
        generate(lm, prefixes([3]), [1, 2], IDS, depth=depth)


def test_depth_on_a_hugging_face_model_is_refused():
    lm, _ = gpt2_lm()
    with pytest.raises(ValueError, match="no recurrent core"):
        generate(lm, prefixes([3]), 1, IDS, depth=Depth(num_steps=4))


@pytest.mark.parametrize("text, answer", [
    ("Tom is a wumpus.\n### Tom is a yumpus.", "Tom is a yumpus."),
    ("### 12\n### 18 ", "18"),
    ("no mark at all", ""),
    ("### ", ""),
])
def test_answer_is_the_text_after_the_last_mark(text, answer):
    assert answer_of(text) == answer


def test_exact_match_compares_stripped_answers():
    assert exact_match("step\n### 18", " 18\n")
    assert not exact_match("step\n### 180", "18")
    assert not exact_match("18", "18")  # no answer mark: no answer given


# --- the evaluation CLI on tiny random exports ---------------------------------------------------------------

RECORDS = [
    {"question": "Every wumpus is a yumpus. Tom is a wumpus. Is Tom a yumpus or lorpus?",
     "steps": ["Tom is a wumpus.", "Every wumpus is a yumpus."], "answer": "Tom is a yumpus."},
    {"question": "Every brimpus is a lorpus. Ann is a brimpus. Is Ann a lorpus or yumpus?",
     "steps": ["Ann is a brimpus.", "Every brimpus is a lorpus."], "answer": "Ann is a lorpus."},
    {"question": "Every gorpus is a zumpus. Max is a gorpus. Is Max a zumpus or wumpus?",
     "steps": ["Max is a gorpus.", "Every gorpus is a zumpus."], "answer": "Max is a zumpus."},
]


from recurrent_lm.coconut.evaluate import evaluate_model, main
from recurrent_lm.coconut.records import load_records


def bpe(specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([json.dumps(r) for r in RECORDS] * 10, trainer)
    return tokenizer


def coconut_config(method: str) -> CoconutConfig:
    return CoconutConfig(method=method, max_latent_stage=2, train_file="train.json", val_file="val.json")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A recurrent Coconut export (our tokenizer reserves the markers) and a GPT-2 CoT export (markers added)."""
    root = tmp_path_factory.mktemp("exports")
    ours = ThoughtTokenizer(bpe(["<|bos|>", "<|eos|>", "<|pad|>", "<bot>", "<eot>", "<latent>"]))
    torch.manual_seed(0)
    recurrent = RecurrentDepthLM(ModelConfig(vocab_size=ours.vocab_size, block_size=128, d_model=32, n_heads=4,
                                             n_prelude=1, n_core=1, n_coda=1, init_scale=1.0, mean_recurrence=2))
    save_coconut_model(recurrent, ours, coconut_config("coconut"), root / "coconut")
    hf_tokens = bpe(["<|endoftext|>"])
    gpt2 = gpt2_model()
    gpt2.resize_token_embeddings(hf_tokens.get_vocab_size(), mean_resizing=False)
    save_coconut_model(gpt2, add_thought_tokens(hf_tokens, gpt2), coconut_config("cot"), root / "cot")
    data = root / "test.json"
    data.write_text(json.dumps(RECORDS))
    return {"coconut": root / "coconut", "cot": root / "cot", "data": data, "root": root}


def test_eval_cli_prints_table_1(exports, capsys):
    argv = ["--model", f"coconut={exports['coconut']}", "--model", f"cot={exports['cot']}",
            "--data", str(exports["data"]), "--max-new-tokens", "4", "--batch-size", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("| method | stage | accuracy % | tokens | thoughts | thoughts used (count×rows) | "
                        "core iterations / token |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| coconut", "| cot"]
    coconut, cot = (line.strip("| ").split(" | ") for line in lines[2:])
    assert coconut[1] == "3 (last)" and cot[1] == "0 (last)"  # no stage recorded: the last one, said so
    assert coconut[4] == "2.0" and 2.0 < float(coconut[3]) <= 6.0 and coconut[5] == "2×3" and coconut[6] == "2.0"
    assert cot[4] == "0.0" and cot[5] == "0×3" and cot[6] == "–"


def test_eval_cli_depth_and_adaptive_rows_and_report(exports, capsys):
    out = exports["root"] / "report.md"
    argv = ["--model", f"coconut={exports['coconut']}", "--data", str(exports["data"]), "--num-examples", "2",
            "--max-new-tokens", "3", "--depths", "1", "3", "--thought-exit", "convergence",
            "--thought-threshold", "1e9", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    labels = [r["label"] for r in report["rows"]]
    assert labels == ["coconut", "coconut (r=1)", "coconut (r=3)", "coconut (adaptive thoughts τ=1e+09)",
                      "coconut (r=1, adaptive thoughts τ=1e+09)", "coconut (r=3, adaptive thoughts τ=1e+09)"]
    assert [r["mean_thoughts"] for r in report["rows"]] == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    assert [r["mean_core_steps"] for r in report["rows"][:3]] == [2.0, 1.0, 3.0]
    assert report["examples"] == 2 and out.read_text().strip() == printed.strip()


def test_eval_cli_depth_exit_rows_run_the_depth_loop_inside_each_thought(exports, capsys):
    """--depth-exit: every forward (each thought, each token) leaves the core adaptively, capped by the row's
    depth; a threshold nothing reaches spends the cap, one everything reaches spends one iteration."""
    def rows(threshold: str) -> list[dict]:
        argv = ["--model", f"coconut={exports['coconut']}", "--data", str(exports["data"]), "--num-examples", "2",
                "--max-new-tokens", "3", "--depths", "3", "--depth-exit", "convergence", "--depth-threshold",
                threshold, "--out", str(exports["root"] / f"depth{threshold}.md")]
        assert main(argv) == 0
        return json.loads((exports["root"] / f"depth{threshold}.json").read_text())["rows"]

    never, always = rows("0"), rows("1e9")
    assert [r["label"] for r in never] == ["coconut", "coconut (r=3)", "coconut (depth exit convergence τ=0)",
                                           "coconut (r≤3, depth exit convergence τ=0)"]
    assert never[3]["mean_core_steps"] == never[1]["mean_core_steps"] == 3.0  # nothing converges: the cap
    assert always[3]["mean_core_steps"] == 1.0 and always[3]["depth_exit"]["exit"] == "convergence"
    assert main(["--model", f"coconut={exports['coconut']}", "--data", str(exports["data"]), "--depth-exit",
                 "convergence", "--depth-threshold", "-1"]) == 2
    assert "threshold=-1.0" in capsys.readouterr().err


def test_eval_cli_logs_samples_reports_progress_and_takes_a_stage(exports, capsys):
    """--log-samples: one line per question and row with what was generated and the gold answer; progress on
    stderr; --stage lays the questions out at another stage and the table says it was given."""
    dump = exports["root"] / "samples.jsonl"
    argv = ["--model", f"coconut={exports['coconut']}", "--data", str(exports["data"]), "--max-new-tokens", "3",
            "--stage", "1", "--log-samples", str(dump), "--out", str(exports["root"] / "staged.md")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "coconut: 3/3 questions" in captured.err
    samples = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [s["gold"] for s in samples] == [r["answer"] for r in RECORDS]
    assert set(samples[0]) == {"row", "question", "generated", "answer", "gold", "correct", "thoughts", "finish"}
    assert samples[0]["question"] == RECORDS[0]["question"] and all(s["thoughts"] == 1 for s in samples)
    row = json.loads((exports["root"] / "staged.json").read_text())["rows"][0]
    assert row["stage"] == 1 and row["stage_source"] == "--stage" and row["thought_counts"] == {"1": 3}
    assert main(argv[:-4] + ["--stage", "9"]) == 2
    assert "--stage 9: give 'last' or a stage in 0..3" in capsys.readouterr().err


def test_evaluate_model_does_not_depend_on_the_batch_size(exports):
    model, tokenizer, config = load_coconut_model(exports["coconut"])
    records = load_records(exports["data"])
    one = evaluate_model(model, tokenizer, config, records, batch_size=1, max_new_tokens=4)
    three = evaluate_model(model, tokenizer, config, records, batch_size=3, max_new_tokens=4)
    assert one == three and one["examples"] == 3 and one["mean_thoughts"] == 2.0
    assert not model.training  # a model in eval mode stays there, and one in training mode goes back to it
    evaluate_model(model.train(), tokenizer, config, records[:1], max_new_tokens=1)
    assert model.training


@pytest.mark.parametrize("case, flag", [
    ("missing dir", "--model"), ("not coconut", "--model"), ("no equals", "--model"), ("hf depth", "--depths"),
    ("bad json", "--data"), ("missing data", "--data"), ("zero batch", "--batch-size"),
])
def test_eval_cli_bad_input_exits_2_with_an_error_line(exports, capsys, case, flag):
    plain = exports["root"] / "plain"
    plain.mkdir(exist_ok=True)
    bad = exports["root"] / "bad.json"
    bad.write_text("{not json")
    model, data, extra = f"coconut={exports['coconut']}", str(exports["data"]), []
    if case == "missing dir":
        model = f"coconut={exports['root'] / 'nowhere'}"
    elif case == "not coconut":
        model = f"coconut={plain}"
    elif case == "no equals":
        model = str(exports["coconut"])
    elif case == "hf depth":
        model, extra = f"cot={exports['cot']}", ["--depths", "4"]
    elif case == "bad json":
        data = str(bad)
    elif case == "missing data":
        data = str(exports["root"] / "absent.json")
    elif case == "zero batch":
        extra = ["--batch-size", "0"]
    assert main(["--model", model, "--data", data, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # loading a Hugging Face model may print progress first
    assert err[-1].startswith(f"recurrent-lm-coconut-eval: error: {flag}") and "Traceback" not in err


def test_eval_cli_question_longer_than_the_context_is_one_error_line(exports, capsys):
    long = exports["root"] / "long.json"
    long.write_text(json.dumps([{"question": "Every wumpus is a yumpus. " * 400, "steps": ["a"], "answer": "b"}]))
    assert main(["--model", f"coconut={exports['coconut']}", "--data", str(long)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "exceed the model's" in err[-1] and err[-1].startswith("recurrent-lm-coconut-eval: error:")
    assert "Traceback" not in "\n".join(err)


def test_the_default_answer_budget_covers_the_longest_reference_continuation():
    """CoT answers run through every step: a fixed small budget would cut them before '### answer'."""
    from recurrent_lm.coconut.evaluate import SLACK, answer_budget

    short, long = ThoughtExample((7, BOT), 0, (EOT, 9, 1)), ThoughtExample((7, BOT), 0, (EOT, *range(10, 110), 1))
    assert answer_budget([short, long]) == 101 + SLACK
