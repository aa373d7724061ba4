"""ExitSpec and resolve_depth: the one owner of the exit and depth settings, and the same message for a
bad value from every entry point (the spec GenerationConfig and Coconut's Depth hold, the reasoning TaskConfig's
exits, the lm-eval model args and both CLIs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from eval_support import make_model_dir

from recurrent_lm.infer import generate
from recurrent_lm.infer.cli import main as generate_main
from recurrent_lm.loop import (CRITERIA, ArgmaxStable, CausalConvergence, Convergence, ExitSpec, KLDivergence,
                               resolve_depth)
from recurrent_lm.loop.criteria import DEFAULT_THRESHOLDS
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.reasoning.config import TaskConfig
from recurrent_lm.reasoning.evaluate import evaluate, main as reasoning_main
from recurrent_lm.reasoning.tasks import vocab_size

CHOICES = str(["none", *CRITERIA])


# ------------------------------------------------------------------------------ the spec
def test_defaults_are_fixed_depth():
    spec = ExitSpec()
    assert (spec.criterion, spec.threshold, spec.min_steps, spec.max_steps) == (None, None, 1, None)
    assert not spec.adaptive and spec.build() is None
    assert ExitSpec("none") == spec


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_an_unset_threshold_is_the_criterions_default(name):
    spec = ExitSpec(name)
    assert spec.adaptive and spec.threshold == DEFAULT_THRESHOLDS[name]
    assert spec == ExitSpec(name, DEFAULT_THRESHOLDS[name])  # two specs that run the same are equal
    assert type(spec.build()) is CRITERIA[name]


def test_parse_reads_text_and_unset_words():
    assert ExitSpec.parse("argmax", "4", "2", "9") == ExitSpec("argmax", 4.0, 2, 9)
    assert ExitSpec.parse(" kl ", 1e-3, 3.0, None) == ExitSpec("kl", 1e-3, 3)
    assert ExitSpec.parse("none", "none", "", "default") == ExitSpec()
    assert ExitSpec.parse() == ExitSpec()
    assert ExitSpec.parse(threshold="0.5") == ExitSpec(threshold=0.5)  # kept: the reasoning CLI overrides it


def test_the_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExitSpec("kl").threshold = 1.0  # type: ignore[misc]


def test_build_gives_a_fresh_criterion_with_the_specs_settings():
    spec = ExitSpec("kl", 0.01, min_steps=2, max_steps=9)
    first, second = spec.build(), spec.build()
    assert isinstance(first, KLDivergence) and first is not second  # a criterion holds memory of one unroll
    assert (first.threshold, first.min_steps, first.max_steps) == (0.01, 2, 9)
    watch = torch.tensor([[True, False]])
    causal = ExitSpec("causal_convergence").build(watch=watch)
    assert isinstance(causal, CausalConvergence) and causal.watch is watch
    assert isinstance(ExitSpec("argmax", 3).build(watch=watch), ArgmaxStable)  # watch: convergence kinds only


@pytest.mark.parametrize("kwargs, message", [
    (dict(criterion="wobble"), f"exit='wobble' is not an exit criterion; choose one of {CHOICES}"),
    (dict(criterion="kl", threshold=-1), "threshold=-1.0 is negative; give a number >= 0, or none for the "
                                         "criterion's default"),
    (dict(threshold="abc"), "threshold='abc' is not a number; give a number >= 0, or none for the criterion's "
                            "default"),
    (dict(threshold=float("nan")), "threshold=nan is not a number"),
    (dict(min_steps=0), "min_steps=0 is below 1; give a positive integer"),
    (dict(min_steps=2.5), "min_steps=2.5 is not an integer"),
    (dict(min_steps=True), "min_steps=True is not an integer"),
    (dict(max_steps=0), "max_steps=0 is below 1"),
    (dict(min_steps=6, max_steps=3), "min_steps=6 is greater than max_steps=3; lower min_steps or raise max_steps"),
])
def test_bad_settings_name_the_setting_and_the_fix(kwargs, message):
    with pytest.raises(ValueError) as err:
        ExitSpec(**kwargs)
    assert str(err.value).startswith(message)
    with pytest.raises(ValueError) as parsed:  # the same text when the value comes as text
        ExitSpec.parse(**{k: v if isinstance(v, (bool, float)) else str(v) for k, v in kwargs.items()})
    assert str(parsed.value) == str(err.value)


def test_a_criterion_refuses_a_threshold_off_its_own_scale_through_the_spec():
    with pytest.raises(ValueError, match=r"^threshold=1.5 is not a probability; exit=learned .*give a value in "
                                         r"\(0, 1\]"):
        ExitSpec("learned", 1.5)
    with pytest.raises(ValueError, match=r"^threshold=0.0 is not a probability"):
        ExitSpec.parse("learned", "0")
    assert ExitSpec("convergence", 1.5).threshold == 1.5  # a relative change may exceed 1
    assert Convergence.threshold_problem(1.5) is None


@pytest.mark.parametrize("text, spec", [
    ("learned=0.9", ExitSpec("learned", 0.9)),
    ("kl=5e-4", ExitSpec("kl", 5e-4)),
    ("convergence", ExitSpec("convergence")),  # the criterion's default threshold
    (" argmax = 3 ", ExitSpec("argmax", 3)),
    ("none", ExitSpec()),
])
def test_from_text_reads_the_compact_spelling(text, spec):
    assert ExitSpec.from_text(text) == spec
    assert ExitSpec.from_text(text, min_steps=2, max_steps=9) == dataclasses.replace(spec, min_steps=2, max_steps=9)


@pytest.mark.parametrize("text, message", [
    ("learned=", "exit='learned=' gives no threshold after '='; write NAME=THRESHOLD (e.g. learned=0.9)"),
    ("wobble=0.1", "exit='wobble' is not an exit criterion"),
    ("kl=abc", "threshold='abc' is not a number"),
    ("learned=2", "threshold=2.0 is not a probability"),
])
def test_from_text_refuses_bad_text_by_setting(text, message):
    with pytest.raises(ValueError) as err:
        ExitSpec.from_text(text)
    assert str(err.value).startswith(message)


# ------------------------------------------------------------------------------ resolve_depth
@pytest.mark.parametrize("request_, spec, cap", [
    (None, None, 8), ("default", None, 8), ("", None, 8), ("none", None, 8),
    (5, None, 5), ("12", None, 12), (3.0, None, 3),
    (5, ExitSpec("kl"), 5), (None, ExitSpec("kl", max_steps=6), 6), (20, ExitSpec("kl", max_steps=6), 6),
    (4, ExitSpec(min_steps=6), 4),  # fixed depth: min_steps has nothing to hold back
])
def test_resolve_depth_gives_the_cap(request_, spec, cap):
    assert resolve_depth(request_, 8, spec) == cap


@pytest.mark.parametrize("request_, message", [
    (0, "num_steps=0 is below 1; give a positive integer (core iterations per token, e.g. num_steps=32)"),
    (-3, "num_steps=-3 is below 1"),
    ("deep", "num_steps='deep' is not an integer; give a positive integer"),
    (2.5, "num_steps=2.5 is not an integer"),
    (True, "num_steps=True is not an integer"),
])
def test_resolve_depth_refuses_bad_requests(request_, message):
    with pytest.raises(ValueError) as err:
        resolve_depth(request_, 8)
    assert str(err.value).startswith(message)


def test_min_steps_must_fit_under_the_cap():
    message = "min_steps=6 is greater than the step cap 4 (max_steps, else num_steps); lower min_steps or raise the cap"
    with pytest.raises(ValueError) as err:
        resolve_depth(4, 8, ExitSpec("kl", min_steps=6))
    assert str(err.value) == message
    with pytest.raises(ValueError, match="the step cap 5"):
        resolve_depth(None, 5, ExitSpec("kl", min_steps=6))  # the default depth is the cap


def test_the_model_checks_a_direct_depth_request_the_same_way(tiny_model):
    model = tiny_model()
    x = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError) as err:
        model(x, num_steps=0)
    assert str(err.value).startswith("num_steps=0 is below 1")
    assert model.resolve_steps("3") == (0, 3) and model.resolve_steps(None) == (0, model.config.mean_recurrence)


# ------------------------------------------------------------------------------ one message everywhere
BAD = {  # settings (as a user would type them) -> the start of the one message
    "min_above_max": (dict(exit="kl", min_steps="6", max_steps="3"),
                      "min_steps=6 is greater than max_steps=3; lower min_steps or raise max_steps"),
    "unknown_criterion": (dict(exit="wobble"), "exit='wobble' is not an exit criterion; choose one of"),
    "negative_threshold": (dict(exit="kl", threshold="-1"), "threshold=-1.0 is negative; give a number >= 0"),
    "text_threshold": (dict(exit="kl", threshold="abc"), "threshold='abc' is not a number; give a number >= 0"),
    "zero_min_steps": (dict(exit="kl", min_steps="0"), "min_steps=0 is below 1; give a positive integer"),
}


def from_python(settings: dict) -> str:
    """What GenerationConfig(exit=...), Depth(exit=...) and TaskConfig(exits=[...]) hold: a spec."""
    with pytest.raises(ValueError) as err:
        ExitSpec.parse(settings.pop("exit"), **settings)
    return str(err.value)


def from_lm_eval_model_args(settings: dict, tmp_path) -> str:
    """Through lm-eval's own model-args parser, into the model's constructor (which checks before loading)."""
    pytest.importorskip("lm_eval")
    from lm_eval.utils import simple_parse_args_string

    from recurrent_lm.evaluation.errors import EvalError
    from recurrent_lm.evaluation.harness import RecurrentLMEval

    text = ",".join(f"{k}={v}" for k, v in {"pretrained": tmp_path / "never_loaded", **settings}.items())
    with pytest.raises(EvalError) as err:
        RecurrentLMEval(**simple_parse_args_string(text))
    return str(err.value)


def from_task_config(settings: dict) -> str:
    """task.json and the hydra group: each entry of ``exits`` is a mapping (its message names the entry)."""
    with pytest.raises(ValueError) as err:
        TaskConfig.from_dict({"exits": [{"criterion": settings.pop("exit"), **settings}]})
    prefix = "task.exits[0]: "
    assert str(err.value).startswith(prefix)
    return str(err.value).removeprefix(prefix)


def flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def reasoning_flags(settings: dict) -> list[str]:
    """The reasoning CLI's spelling: ``--exit NAME[=THRESHOLD]``, bounds as flags."""
    threshold = settings.pop("threshold", None)
    exit_ = settings.pop("exit") + ("" if threshold is None else f"={threshold}")
    return ["--exit", exit_, *flags(settings)]


def from_cli(main, argv: list[str], prefix: str, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(prefix) and "Traceback" not in err
    return err.removeprefix(prefix)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_value_gets_the_same_message_from_every_entry_point(case, tmp_path, capsys):
    settings, expected = BAD[case]
    messages = {
        "ExitSpec": from_python(dict(settings)),
        "lm-eval model args": from_lm_eval_model_args(dict(settings), tmp_path),
        "TaskConfig": from_task_config(dict(settings)),
        "recurrent-lm-generate": from_cli(generate_main, [str(tmp_path / "never_loaded"), "hi", *flags(settings)],
                                          "recurrent-lm-generate: error: ", capsys),
        "recurrent-lm-reasoning-eval": from_cli(reasoning_main, ["--model", str(tmp_path / "never_loaded"),
                                                                 "--task", "parity", *reasoning_flags(dict(settings))],
                                                "recurrent-lm-reasoning-eval: error: ", capsys),
    }
    assert messages["ExitSpec"].startswith(expected)
    assert all(m == messages["ExitSpec"] for m in messages.values()), messages


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("exit_spec_model"))


def test_min_steps_above_the_cap_gets_the_same_message_from_every_entry_point(model_dir, capsys):
    """The cap needs the model (its default depth), so resolve_depth checks it, once, wherever the run starts."""
    expected = "min_steps=6 is greater than the step cap 4 (max_steps, else num_steps); lower min_steps or raise the cap"
    model = RecurrentDepthLM.from_pretrained(model_dir)
    with pytest.raises(ValueError) as err:
        generate(model, [[7]], num_steps=4, exit=ExitSpec("kl", min_steps=6))
    messages = [str(err.value)]
    pytest.importorskip("lm_eval")
    from recurrent_lm.evaluation.errors import EvalError
    from recurrent_lm.evaluation.harness import RecurrentLMEval

    with pytest.raises(EvalError) as err:
        RecurrentLMEval(pretrained=str(model_dir), num_steps="4", exit="kl", min_steps="6")
    messages.append(str(err.value))
    messages.append(from_cli(generate_main, [str(model_dir), "hi", "--num-steps", "4", "--exit", "kl",
                                             "--min-steps", "6"], "recurrent-lm-generate: error: ", capsys))
    task = TaskConfig(train_max=4, eval_difficulties=[4], eval_depths=[2, 4], num_eval=2,
                      exits=[ExitSpec("convergence", min_steps=6)])  # the cap: the largest depth
    reasoning_model = RecurrentDepthLM(ModelConfig(vocab_size=vocab_size(task), block_size=16, d_model=32,
                                                   n_heads=2, mlp_hidden=64, mean_recurrence=2))
    with pytest.raises(ValueError) as err:
        evaluate(reasoning_model, task)
    messages.append(str(err.value))
    assert messages == [expected] * 4


def test_the_lm_eval_model_resolves_the_depth_with_its_spec(model_dir):
    pytest.importorskip("lm_eval")
    from recurrent_lm.evaluation.harness import RecurrentLMEval

    lm = RecurrentLMEval(pretrained=str(model_dir), num_steps="default", exit="kl", max_steps="3")
    assert lm.num_steps == 3  # max_steps caps the default depth
    assert {k: lm.settings()[k] for k in ("exit", "threshold", "min_steps", "max_steps")} == {
        "exit": "kl", "threshold": DEFAULT_THRESHOLDS["kl"], "min_steps": 1, "max_steps": 3}
    assert lm.set_num_steps(2) == 3  # under max_steps every request has the same cap
