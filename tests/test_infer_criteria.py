"""Each exit criterion, at generation level, against its rule applied by hand to a recorded trajectory.

A one-token prompt attends only to itself, so its latent trajectory s_1..s_R is exactly what fixed-depth
forwards at depth 1..R return, and its next-token distribution after i steps is that forward's logits.
The test applies each criterion's textbook rule to that recorded sequence and checks that `generate`
stops the token at the same step (and charges the expected readouts). Unit tests of the criteria on
toy sequences live in tests/test_loop.py.
"""

from __future__ import annotations

import pytest
import torch

from recurrent_lm.infer import generate
from recurrent_lm.loop import ExitSpec
from test_infer_generate import tiny_model

R = 14
TOKENS = [7, 50, 123, 260, 301, 444, 499, 12]


@pytest.fixture(scope="module")
def trajectory():
    """states (R+1, E, H) with s_0 = 0, log-probs (R+1, E, V) with row 0 unused."""
    model = tiny_model()
    x = torch.tensor(TOKENS)[:, None]  # (E, 1): E one-token prompts
    states, logprobs = [torch.zeros(len(TOKENS), model.config.d_model, dtype=torch.float64)], [None]
    with torch.no_grad():
        for depth in range(1, R + 1):
            out = model(x, num_steps=depth)
            states.append(out.state[:, 0])
            logprobs.append(out.logits[:, 0].double().log_softmax(-1))
    logprobs[0] = torch.zeros_like(logprobs[1])
    return model, torch.stack(states), torch.stack(logprobs)


def first_exit(signal, min_steps: int) -> list[int]:
    """Per element: the first step t >= min_steps where signal(t) holds, else R."""
    n = signal(1).shape[0]
    out = []
    for e in range(n):
        hit = [t for t in range(min_steps, R + 1) if bool(signal(t)[e])]
        out.append(hit[0] if hit else R)
    return out


def rule(name: str, threshold: float, states, logprobs, min_steps: int):
    def rel_change(t):
        return (states[t] - states[t - 1]).norm(dim=-1) / states[t].norm(dim=-1)

    def kl(t):
        p, q = logprobs[t], logprobs[t - 1]
        return (p.exp() * (p - q)).sum(-1)

    def entropy(t):
        return -(logprobs[t].exp() * logprobs[t]).sum(-1)

    if name == "convergence":
        return lambda t: rel_change(t) < threshold
    if name == "kl":
        return lambda t: kl(t) < threshold
    if name == "entropy":
        return lambda t: (entropy(t) - entropy(t - 1)).abs() < threshold
    if name == "argmax":
        # top-1 unchanged at `threshold` consecutive checks; checks (and the streak) start at min_steps
        def stable(t):
            first = t - int(threshold) + 1
            if first < min_steps:
                return torch.zeros(states.shape[1], dtype=torch.bool)
            tops = [logprobs[u].argmax(-1) for u in range(first - 1, t + 1)]
            return torch.stack([a == b for a, b in zip(tops, tops[1:])]).all(0)
        return stable
    raise AssertionError(name)


@pytest.mark.parametrize("name,threshold,min_steps", [
    ("convergence", 0.1, 1), ("convergence", 0.03, 4),
    ("kl", 1e-3, 2), ("kl", 1e-2, 2),
    ("entropy", 1e-2, 2), ("entropy", 1e-3, 3),
    ("argmax", 2, 3), ("argmax", 3, 4),
])
def test_generation_exits_where_the_rule_says(trajectory, name, threshold, min_steps):
    model, states, logprobs = trajectory
    want = first_exit(rule(name, threshold, states, logprobs, min_steps), min_steps)
    result = generate(model, [[t] for t in TOKENS], max_new_tokens=1, num_steps=R,
                      exit=ExitSpec(name, threshold, min_steps))
    got = [row[0] for row in result.steps]
    assert got == want
    assert [row[0] for row in result.prompt_steps] == want
    assert len(set(want)) > 1, "thresholds should give different depths across prompts"
    # Alone, each prompt's forward checks once per step from min_steps on, decoding the previous
    # state too at the first check; the latent criterion never decodes.
    alone = generate(model, [[TOKENS[0]]], max_new_tokens=1, num_steps=R,
                     exit=ExitSpec(name, threshold, min_steps))
    expected_readouts = 0 if name == "convergence" else want[0] - min_steps + 2
    assert alone.readouts[0] == [expected_readouts]


def test_exited_token_state_is_frozen_at_its_exit_step(trajectory):
    """The state a token leaves with (what warm start passes on) is s_exit, not s_R."""
    model, states, _ = trajectory
    result = generate(model, [[t] for t in TOKENS], max_new_tokens=1, num_steps=R,
                      exit=ExitSpec("convergence", 0.05))
    with torch.no_grad():
        out = model(torch.tensor(TOKENS)[:, None], num_steps=R,
                    exit_criterion=ExitSpec("convergence", 0.05, 1, R).build())
    exits = [row[0] for row in result.steps]
    assert out.steps_used[:, 0].tolist() == exits
    for e, t in enumerate(exits):
        torch.testing.assert_close(out.state[e, 0], states[t, e], rtol=1e-10, atol=1e-10)
