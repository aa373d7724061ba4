"""The lm-eval model `recurrent_lm`: scores equal hand-computed log-softmax sums, rolling windows cover
every token once, generation stops at `until`, steps are accounted, bad input fails clearly."""

from __future__ import annotations

import shutil

import pytest
import torch
from eval_support import EOS, ManualScorer, make_model_dir

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from recurrent_lm.evaluation.errors import EvalError, ModelNotFoundError  # noqa: E402
from recurrent_lm.evaluation.harness import RecurrentLMEval  # noqa: E402

STEPS = 3




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("eval_model"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return RecurrentLMEval(pretrained=str(model_dir), num_steps=STEPS, batch_size=3, device="cpu")


@pytest.fixture(scope="module")
def manual(model_dir):
    return ManualScorer(model_dir, STEPS)


def requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def test_loglikelihood_equals_manual_log_softmax_sum(lm, manual):
    pairs = [("Every wumpus is a", " yumpus."), ("Tom is a", " wumpus or lorpus"), ("Q: What is 12 + 7?\nA:", " 19"),
             ("If music be the food of love,", " play on; give me excess of it"), ("Is Tom", " a"),
             ("Is Tom", " a b")]
    assert all(len(manual.encode(c)) > 1 for _, c in pairs[:4]), "want multi-token continuations"
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)  # batch 3: padded batches
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        ctx = manual.encode(context)
        cont = manual.encode(context + continuation)[len(ctx):]
        want, want_greedy = manual.continuation(ctx, cont)
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # The continuation's own tokens matter: the greedy token scores higher than any other one-token tail.
    ctx = manual.encode("Every wumpus is")
    top = int(manual.logprobs(ctx)[-1].argmax())
    (best, is_greedy), (other, not_greedy) = lm._loglikelihood_tokens(
        [(None, ctx, [top]), (None, ctx, [(top + 1) % 300])], disable_tqdm=True)
    assert is_greedy and not not_greedy and best > other


def test_empty_context_is_conditioned_on_eos(lm, manual):
    (logprob, _), = lm.loglikelihood(requests("loglikelihood", [("", "Every wumpus")]), disable_tqdm=True)
    assert logprob == pytest.approx(manual.continuation([EOS], manual.encode("Every wumpus"))[0], abs=1e-4)


def test_rolling_windows_score_every_token_exactly_once(model_dir, manual):
    short = RecurrentLMEval(pretrained=str(model_dir), num_steps=STEPS, max_length=16, batch_size=4)
    text = " ".join(["Every wumpus is a yumpus; if music be the food of love, play on."] * 4)
    tokens = short.tok_encode(text)
    assert len(tokens) > 3 * 16
    windows = short.rolling_windows(tokens)
    assert [t for _, cont in windows for t in cont] == tokens  # each token predicted once, in order
    for context, continuation in windows:
        assert len(context) + len(continuation) - 1 <= 16  # fits the model input
    # The first window conditions on EOS; later ones on the tokens right before their span.
    assert windows[0][0][0] == EOS
    # One float per request, equal to the windows scored by hand.
    got = short.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), ("Tom is a wumpus.",)]),
                                      disable_tqdm=True)
    assert len(got) == 2 and all(isinstance(x, float) for x in got)
    want = sum(manual.continuation(ctx, cont)[0] for ctx, cont in windows)
    assert got[0] == pytest.approx(want, abs=1e-3)
    # A text that fits one window is the plain sum of log p(token | EOS + prefix).
    small = manual.encode("Tom is a wumpus.")
    lp = manual.logprobs([EOS] + small[:-1])
    assert got[1] == pytest.approx(float(lp.gather(-1, torch.tensor(small)[:, None]).sum()), abs=1e-4)


def test_generate_until_stops_at_until(lm, manual):
    context = "Every wumpus is a"
    free = manual.greedy(context, max_new=12, stop="\0")
    # A stop string taken from the middle of the free-running output.
    cut = next(i for i in range(2, len(free)) if free[i].strip() and free.index(free[i]) == i)
    stop = free[cut]
    expected = free[: free.index(stop)]
    kwargs = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
    lm.reset_steps()
    [got] = lm.generate_until(requests("generate_until", [(context, kwargs)]), disable_tqdm=True)
    stopped_tokens = lm.steps_summary()["tokens"]
    assert got == expected == manual.greedy(context, 12, stop)
    lm.reset_steps()
    [unstopped] = lm.generate_until(requests("generate_until", [(context, {**kwargs, "until": ["\0"]})]),
                                    disable_tqdm=True)
    assert unstopped == free
    assert stopped_tokens < lm.steps_summary()["tokens"]  # it stopped decoding, not just cut the text
    # Batched (left-padded, mixed lengths) equals one by one.
    contexts = [context, "Tom", "If music be the food of love, play on;"]
    batch = lm.generate_until(requests("generate_until", [(c, kwargs) for c in contexts]), disable_tqdm=True)
    assert batch == [manual.greedy(c, 12, stop) for c in contexts]


def test_steps_used_are_recorded(model_dir):
    fixed = RecurrentLMEval(pretrained=str(model_dir), num_steps=4)
    fixed.loglikelihood(requests("loglikelihood", [("Tom is", " a wumpus")]), disable_tqdm=True)
    summary = fixed.steps_summary()
    assert summary["mean_steps_used"] == 4 and summary["tokens"] == len(fixed.tok_encode("Tom is a wumpus")) - 1
    # A criterion that always fires exits every token after min_steps.
    eager = RecurrentLMEval(pretrained=str(model_dir), num_steps=8, exit="convergence", threshold=1e9, min_steps=2)
    eager.loglikelihood(requests("loglikelihood", [("Tom is", " a wumpus")]), disable_tqdm=True)
    eager.generate_until(requests("generate_until", [("Tom", {"until": ["\0"], "max_gen_toks": 3})]),
                         disable_tqdm=True)
    by_type = eager.steps_summary()["by_request_type"]
    assert by_type["loglikelihood"]["mean_steps_used"] == 2
    assert by_type["generate_until"]["mean_steps_used"] == 2 and by_type["generate_until"]["tokens"] > 0
    assert eager.settings()["exit"] == "convergence"


def test_run_dir_with_export_is_accepted(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "run" / "export")
    lm = RecurrentLMEval(pretrained=str(tmp_path / "run"), num_steps="2")
    assert lm.model_dir == tmp_path / "run" / "export" and lm.num_steps == 2


@pytest.mark.parametrize("args, message", [
    ({"num_step": 4}, r"unknown model arg\(s\) \['num_step'\].*valid args are"),
    ({"num_steps": 0}, r"num_steps=0 is below 1"),
    ({"num_steps": -3}, r"num_steps=-3 is below 1"),
    ({"num_steps": "deep"}, r"num_steps='deep' is not an integer"),
    ({"num_steps": 100000}, r"num_steps=100,000 is beyond 64× the model's mean_recurrence=\d+ \(\d+\): the full "
                            r"KV cache would take [\d,]+ MiB .*Use num_steps <= \d+"),
    ({"threshold": "inf", "exit": "kl"}, r"threshold=inf is infinite \(every token would exit after one step\)"),
    ({"exit": "magic"}, r"exit='magic' is not an exit criterion"),
    ({"kv_cache": "huge"}, r"kv_cache='huge'"),
    ({"dtype": "int8"}, r"dtype='int8'"),
    ({"batch_size": 0}, r"batch_size=0"),
])
def test_bad_model_args_fail_clearly(model_dir, args, message):
    with pytest.raises(EvalError, match=message):
        RecurrentLMEval(pretrained=str(model_dir), **args)


def test_missing_model_directory_fails_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        RecurrentLMEval(pretrained=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="recurrent-lm-export"):
        RecurrentLMEval(pretrained=str(tmp_path / "empty"))


def test_generation_kwargs_warning_is_given_once_and_not_for_greedy_temperature(model_dir, caplog):
    """lm-eval passes temperature=0 with do_sample=False on every greedy task: that is greedy decoding, not an
    ignored setting; a really unsupported kwarg is reported once per run, not once per batch."""
    fresh = RecurrentLMEval(pretrained=str(model_dir), num_steps=2, batch_size=1)
    greedy = {"until": ["\0"], "max_gen_toks": 2, "do_sample": False, "temperature": 0.0}
    with caplog.at_level("WARNING", logger="recurrent_lm.evaluation.harness"):
        fresh.generate_until(requests("generate_until", [("Tom", greedy), ("Tim", greedy)]), disable_tqdm=True)
        assert "ignores the generation kwargs" not in caplog.text
        odd = {**greedy, "repetition_penalty": 1.3}
        fresh.generate_until(requests("generate_until", [("Tom", odd), ("Tim", odd), ("Ann", odd)]),
                             disable_tqdm=True)
    assert caplog.text.count("ignores the generation kwargs ['repetition_penalty']") == 1
