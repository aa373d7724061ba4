"""The learned exit gate: its stage-II target, its exit rule, its training app, its storage and its refusal."""

from __future__ import annotations

import math
import pytest
import torch
from test_init_from import source_export  # noqa: F401 (a fixture: a tiny model trained 4 steps, exported)
from train_support import compose_cfg, overrides

from recurrent_lm.errors import ConfigError
from recurrent_lm.exitgate import ExitGateConfig, exit_depth, stage2_loss, stage2_targets
from recurrent_lm.exitgate.stage1 import exit_distribution, stage1_loss
from recurrent_lm.infer import GenerationConfig, generate
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.exit_gate import GATE_FILE, INITIAL_BIAS, ExitGate
from recurrent_lm.train.cli import run


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_stage2_target_on_a_hand_made_loss_curve():
    # CE after 1..6 iterations: gains of 0.02 and exactly the margin, a slight loss, a gain of 0.04, nothing.
    ce = torch.tensor([2.0, 1.98, 1.975, 1.977, 1.937, 1.937], dtype=torch.float64)
    want = [sigmoid(50 * (0.02 - 0.005)), 0.5, sigmoid(50 * (0.0 - 0.005)), sigmoid(50 * (0.04 - 0.005)),
            sigmoid(50 * (0.0 - 0.005))]
    torch.testing.assert_close(stage2_targets(ce), torch.tensor(want, dtype=torch.float64))
    # The loss is BCE(1 − λ_t, w_t) over t >= 2: a gate whose 1 − λ equals the target scores the target's entropy.
    w = stage2_targets(ce)
    logits = torch.cat((torch.zeros(1), -torch.logit(w)))  # 1 − λ_t = σ(−logit) = w_t; t = 1 has no target
    entropy = -(w * w.log() + (1 - w) * (1 - w).log()).mean()
    torch.testing.assert_close(stage2_loss(logits, ce, torch.tensor(True)), entropy.float())
    assert stage2_loss(logits + 1, ce, torch.tensor(True)) > entropy
    # Lookahead: iteration t is worth leaving only if no later one gains more than the margin.
    best_later = [1.937, 1.937, 1.937, 1.937, 1.937]
    want = [sigmoid(50 * (max(0.0, c - b) - 0.005)) for c, b in zip(ce[:-1].tolist(), best_later)]
    torch.testing.assert_close(stage2_targets(ce, lookahead=True), torch.tensor(want, dtype=torch.float64))


def test_stage1_loss_on_a_hand_made_loss_curve_and_exit_distribution():
    # λ = 0.5, 0.25, (any): p = 0.5, 0.5 · 0.25, the rest 0.375 (the last iteration takes it).
    logits = torch.logit(torch.tensor([[0.5, 0.9], [0.25, 0.9], [0.7, 0.9]], dtype=torch.float64))  # (R=3, 2)
    ce = torch.tensor([[2.0, 9.0], [1.0, 9.0], [0.5, 9.0]], dtype=torch.float64)
    p = [0.5, 0.125, 0.375]
    torch.testing.assert_close(exit_distribution(logits)[:, 0], torch.tensor(p, dtype=torch.float64).float())
    expected = 0.5 * 2.0 + 0.125 * 1.0 + 0.375 * 0.5
    entropy = -sum(q * math.log(q) for q in p)
    valid = torch.tensor([True, False])  # the second element is not supervised: its huge loss must not count
    for beta in (0.0, 0.1):
        want = torch.tensor(expected - beta * entropy).float()
        torch.testing.assert_close(stage1_loss(logits, ce, valid, beta), want)


def test_stage1_pretraining_trains_the_gate_with_the_model(corpus_dir, tmp_path):
    """trainer.exit_loss_beta: an ordinary pretraining run gains an exit gate, trained jointly. With a large entropy
    bonus the exit distribution spreads out from the untrained gate's "go to the end" (λ ≈ 0.018): the learned exit
    moves earlier. (Without the key a run has no gate: the other tests' exports.)"""
    run_dir = tmp_path / "stage1"
    summary = run(compose_cfg(overrides(corpus_dir, run_dir, **{
        "sampler": "fixed", "model.mean_recurrence": 4, "sampler.backprop_depth": 4, "trainer.exit_loss_beta": 5.0,
        "trainer.max_steps": 12, "trainer.val_check_interval": "null", "optim.lr": 0.1, "optim.schedule": "constant"})))
    assert summary.step == 12
    gated = RecurrentDepthLM.from_pretrained(run_dir / "export")
    assert gated.exit_gate is not None and gated.exit_gate.proj.bias.item() > INITIAL_BIAS + 0.1
    untrained = RecurrentDepthLM.from_pretrained(run_dir / "export")
    untrained.exit_gate = ExitGate(untrained.config.d_model)
    ids = torch.randint(0, untrained.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    spec = ExitSpec("learned", 0.3)  # the untrained gate's exit CDF after 4 iterations: 1 − 0.982^4 ≈ 0.07
    before = untrained(ids, num_steps=4, exit_criterion=spec.build()).steps_used.float().mean()
    after = gated(ids, num_steps=4, exit_criterion=spec.build()).steps_used.float().mean()
    assert before == 4 and after < before - 0.5


def test_exit_depth_is_the_first_iteration_whose_exit_cdf_reaches_the_threshold():
    lam = torch.tensor([[0.5, 0.1], [0.5, 0.1], [0.5, 0.1], [0.5, 0.1]])  # (R=4, 2 elements)
    depth = exit_depth(torch.logit(lam), threshold=0.85)
    assert depth.tolist() == [3, 4]  # CDF 0.5, 0.75, 0.875 | 0.1 … 0.34 never: the last iteration takes the rest


def test_learned_exit_in_the_loop_follows_the_gate(tiny_model):
    model = tiny_model()
    model.exit_gate = ExitGate(model.config.d_model)
    torch.nn.init.constant_(model.exit_gate.proj.bias, 0.0)  # λ = 0.5 everywhere: CDF 1 − 0.5^t
    ids = torch.randint(0, 512, (2, 8))
    out = model(ids, num_steps=10, exit_criterion=ExitSpec("learned", 0.9).build())
    assert (out.steps_used == 4).all()  # 1 − 0.5^4 = 0.9375 is the first to reach 0.9
    # min_steps only delays the decision: the CDF still counts λ of the steps before it (exit_depth's rule)
    for min_steps, want in ((3, 4), (6, 6)):
        out = model(ids, num_steps=10, exit_criterion=ExitSpec("learned", 0.9, min_steps).build())
        assert (out.steps_used == want).all(), (min_steps, out.steps_used)
    with pytest.raises(ValueError, match=r"threshold=1.5 is not a probability; exit=learned"):
        ExitSpec("learned", 1.5).build()


def test_exit_learned_without_a_gate_is_refused_by_name(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match="exit=learned needs a learned exit gate, and this model has none"):
        generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=2, exit=ExitSpec("learned")))


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_a_gate_threshold_off_the_probability_scale_is_refused_with_exit_learneds_message(threshold):
    with pytest.raises(ConfigError, match=rf"exitgate.threshold={threshold} is not a probability; .* in \(0, 1\]"):
        ExitGateConfig(threshold=threshold)
    with pytest.raises(ConfigError, match="is not a probability"):
        ExitSpec("learned", threshold)


def test_a_gate_trained_on_a_model_whose_depth_does_not_pay_exits_earlier(corpus_dir, source_export, tmp_path):
    """On a barely trained model the iterations buy (almost) nothing, so the targets say "stop": a few stage-II
    steps through the normal app must move the learned exit from the full depth (untrained gate) down."""
    run_dir = tmp_path / "gate"
    summary = run(compose_cfg(overrides(corpus_dir, run_dir, init_from=str(source_export), **{
        "model": "pretrained", "exitgate": "stage2", "exitgate.num_steps": 6, "trainer.max_steps": 25,
        "trainer.val_check_interval": 25, "trainer.val_batches": 1, "optim.lr": 0.2})))
    export = run_dir / "export"
    assert (export / GATE_FILE).is_file() and summary.step == 25
    # The run resumes like any other, and recurrent-lm-export rebuilds the gate from its checkpoint.
    resumed = run(compose_cfg(overrides(corpus_dir, run_dir, init_from=str(source_export), **{
        "model": "pretrained", "exitgate": "stage2", "exitgate.num_steps": 6, "trainer.max_steps": 26,
        "trainer.val_check_interval": "null", "optim.lr": 0.2, "export": False})))
    assert resumed.step == 26
    from recurrent_lm.train.export import export_run

    assert (export_run(run_dir, tmp_path / "re-export") / GATE_FILE).is_file()
    assert summary.val["val/exit_depth"] < 6
    source, gated = RecurrentDepthLM.from_pretrained(source_export), RecurrentDepthLM.from_pretrained(export)
    assert source.exit_gate is None and gated.exit_gate is not None
    for (name, a), b in zip(source.state_dict().items(), gated.state_dict().values()):  # the LM stays frozen
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    untrained = RecurrentDepthLM.from_pretrained(source_export)
    untrained.exit_gate = ExitGate(untrained.config.d_model)
    ids = torch.randint(0, untrained.config.vocab_size, (2, 16))
    spec = ExitSpec("learned", 0.9)
    before = untrained(ids, num_steps=6, exit_criterion=spec.build()).steps_used.float().mean()
    after = gated(ids, num_steps=6, exit_criterion=spec.build()).steps_used.float().mean()
    assert before == 6 and after < before - 0.5


def test_exit_learned_in_lm_eval_and_the_reasoning_evaluation(tmp_path):
    """A model directory with a gate of λ = 0.5 everywhere: exit=learned at 0.9 gives every token 4 iterations
    in the lm-eval model and in the reasoning evaluation; the same directory without its gate file refuses."""
    pytest.importorskip("lm_eval")
    from eval_support import make_model_dir
    from lm_eval.api.instance import Instance

    from recurrent_lm.evaluation.harness import RecurrentLMEval
    from recurrent_lm.reasoning import TaskConfig
    from recurrent_lm.reasoning.evaluate import evaluate

    directory = make_model_dir(tmp_path / "model")
    model = RecurrentDepthLM.from_pretrained(directory)
    model.exit_gate = ExitGate(model.config.d_model)
    torch.nn.init.constant_(model.exit_gate.proj.bias, 0.0)
    model.save_pretrained(directory)
    lm = RecurrentLMEval(pretrained=str(directory), num_steps=8, exit="learned", threshold=0.9)
    lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=("Tom is", " a wumpus"), idx=0)],
                     disable_tqdm=True)
    assert lm.steps_summary()["mean_steps_used"] == 4
    task = TaskConfig(name="parity", eval_difficulties=[8], eval_depths=[2, 8], num_eval=4,
                      exits=[ExitSpec("learned", 0.9)])
    report = evaluate(RecurrentDepthLM.from_pretrained(directory), task)
    assert report.exits[0].name == "learned" and report.exits[0].mean_steps[8] == 4
    (directory / GATE_FILE).unlink()
    with pytest.raises(ValueError, match="exit=learned needs a learned exit gate"):
        evaluate(RecurrentDepthLM.from_pretrained(directory), task)
