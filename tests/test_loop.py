"""The shared loop (`recurrent_lm.loop.unroll`) and its exit criteria, on toy step functions."""

from __future__ import annotations

import pytest
import torch

from recurrent_lm.loop import (ArgmaxStable, CausalConvergence, Convergence, EntropyChange, KLDivergence, LoopStats,
                                SequenceConvergence, ExitSpec, relative_change, token_correlation, unroll)


C = torch.tensor([1.0, -2.0, 0.5])


def contraction(state: torch.Tensor, i: int, active) -> torch.Tensor:
    """s -> 0.5 s + c: converges to 2c, halving the distance each step."""
    return 0.5 * state + C


def closed_form(s0: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """State after n contraction steps: 2c + 0.5^n (s0 - 2c), n per element."""
    return 2 * C + 0.5 ** n.unsqueeze(-1).double() * (s0.double() - 2 * C)


def s0_at_distances(*distances: float) -> torch.Tensor:
    """Elements starting at 2c + d·(1,1,1): the farther, the later they converge."""
    return torch.stack([2 * C + d for d in distances]).float()  # (E, 3)


# ---------------------------------------------------------------------------------------- fixed depth
def test_fixed_depth_runs_all_steps_and_passes_iteration_indices():
    seen = []

    def step(s, i, active):
        seen.append((i, active))
        return contraction(s, i, active)

    s0 = s0_at_distances(1.0, 4.0)
    out = unroll(step, s0, 2, 3)
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert all(a is None for _, a in seen)  # no criterion -> no mask
    assert len(seen) == 5 and out.readouts == 0 and out.stats is None
    assert out.steps_used.shape == (2,) and (out.steps_used == 5).all()
    torch.testing.assert_close(out.state.double(), closed_form(s0, torch.full((2,), 5)))


def test_negative_step_counts_are_refused():
    with pytest.raises(ValueError, match="n_no_grad"):
        unroll(contraction, torch.zeros(3), -1, 2)


# ---------------------------------------------------------------------------------------- convergence exit
def expected_exit_step(d: float, threshold: float, n: int) -> int:
    """First step t with ‖s_t − s_{t−1}‖/‖s_t‖ < threshold for one element, by direct simulation."""
    s = (2 * C + d).double()
    for t in range(1, n + 1):
        new = 0.5 * s + C
        if ((new - s).norm() / new.norm()).item() < threshold:
            return t
        s = new
    return n


def test_convergence_freezes_exited_elements_and_counts_their_steps():
    distances, threshold, n = (0.01, 1.0, 50.0, 1e4), 0.01, 30
    s0 = s0_at_distances(*distances).view(2, 2, 3)  # element shape (2, 2): per-token over a batch
    actives = []

    def step(s, i, active):
        actives.append(active.clone())
        return contraction(s, i, active)

    out = unroll(step, s0, 0, n, criterion=Convergence(threshold))
    want = torch.tensor([expected_exit_step(d, threshold, n) for d in distances]).view(2, 2)
    assert len(set(want.flatten().tolist())) == 4  # elements really exit at different steps
    assert torch.equal(out.steps_used, want)
    assert len(actives) == want.max()  # stops once every element has exited
    # Frozen: each element holds exactly its state after its own number of steps.
    torch.testing.assert_close(out.state.double(), closed_form(s0, want), rtol=1e-5, atol=1e-5)
    # The step sees which elements are still active.
    for i, active in enumerate(actives):
        assert torch.equal(active, want > i)


def test_batched_exit_equals_each_element_alone():
    distances = (0.3, 3.0, 300.0)
    s0 = s0_at_distances(*distances)
    batched = unroll(contraction, s0, 1, 20, criterion=Convergence(0.02))
    for j in range(len(distances)):
        alone = unroll(contraction, s0[j : j + 1], 1, 20, criterion=Convergence(0.02))
        assert batched.steps_used[j] == alone.steps_used[0]
        torch.testing.assert_close(batched.state[j], alone.state[0])


def test_threshold_zero_equals_fixed_depth():
    s0 = s0_at_distances(0.5, 5.0)
    fixed = unroll(contraction, s0, 3, 4)
    never = unroll(contraction, s0, 3, 4, criterion=Convergence(0.0))
    assert torch.equal(never.state, fixed.state)
    assert (never.steps_used == 7).all()


def test_budget_caps_each_element_and_freezes_it_at_its_count():
    s0 = s0_at_distances(1.0, 2.0, 3.0, 4.0)
    budget = torch.tensor([0, 2, 5, 3])
    actives = []

    def step(s, i, active):
        actives.append(active.clone())
        return contraction(s, i, active)

    out = unroll(step, s0, 1, 9, budget=budget)
    assert out.steps_used.tolist() == [0, 2, 5, 3] and len(actives) == 5  # stops at the largest budget
    torch.testing.assert_close(out.state.double(), closed_form(s0, budget))
    assert [a.tolist() for a in actives[:3]] == [[False, True, True, True]] * 2 + [[False, False, True, True]]
    # With a criterion too, an element stops at whichever comes first.
    both = unroll(contraction, s0, 0, 50, budget=torch.tensor([50, 50, 2, 50]), criterion=Convergence(0.01))
    alone = unroll(contraction, s0, 0, 50, criterion=Convergence(0.01))
    assert both.steps_used.tolist() == [alone.steps_used[0], alone.steps_used[1], 2, alone.steps_used[3]]
    with pytest.raises(ValueError, match="budget has shape"):
        unroll(contraction, s0, 0, 3, budget=torch.tensor([1, 2]))


def test_min_and_max_steps():
    s0 = s0_at_distances(0.0001, 1.0)
    capped = unroll(contraction, s0, 0, 50, criterion=Convergence(0.0, max_steps=6))
    assert (capped.steps_used == 6).all()
    floor = unroll(contraction, s0, 0, 50, criterion=Convergence(1e9, min_steps=3))
    assert (floor.steps_used == 3).all()  # bad bounds never reach a criterion: ExitSpec refuses them (test_exit_spec)


# ---------------------------------------------------------------------------------------- stats
def test_stats_shapes_and_values():
    s0 = s0_at_distances(1.0, 2.0, 3.0).view(3, 1, 3)
    out = unroll(contraction, s0, 2, 3, record_stats=True)
    assert isinstance(out.stats, LoopStats)
    norms, changes = out.stats.as_tensors()
    assert norms.shape == (5,) and changes.shape == (5,)
    states = [s0]
    for i in range(5):
        states.append(contraction(states[-1], i, None))
    want_norms = torch.stack([s.norm(dim=-1).mean() for s in states[1:]])
    want_changes = torch.stack([relative_change(a, b).mean() for a, b in zip(states, states[1:])])
    torch.testing.assert_close(norms, want_norms)
    torch.testing.assert_close(changes, want_changes)
    assert (changes[1:] < changes[:-1]).all()  # a contraction converges


def test_telemetry_helpers():
    s = torch.randn(2, 5, 8)
    assert relative_change(s, s).abs().max() == 0
    torch.testing.assert_close(relative_change(torch.zeros(3), torch.ones(3)), torch.tensor(1.0))
    collapsed = torch.ones(2, 5, 8)
    assert token_correlation(collapsed).item() == pytest.approx(1.0, abs=1e-6)
    orthogonal = torch.eye(8)[:5].expand(2, 5, 8)
    assert token_correlation(orthogonal).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------- gradients
class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 4, generator=g) / 2)
        self.c = torch.nn.Parameter(torch.randn(4, generator=g))

    def forward(self, s, i, active):
        return torch.tanh(s @ self.w) + self.c


def toy_grads(n_no_grad: int, n_grad: int, checkpoint: bool):
    toy = Toy()
    s0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    out = unroll(toy, s0, n_no_grad, n_grad, checkpoint=checkpoint)
    (out.state ** 2).sum().backward()
    return toy.w.grad, toy.c.grad, s0.grad


@pytest.mark.parametrize("n_no_grad", [0, 3])
def test_checkpoint_gives_the_same_gradients(n_no_grad):
    plain = toy_grads(n_no_grad, 4, checkpoint=False)
    ckpt = toy_grads(n_no_grad, 4, checkpoint=True)
    for a, b in zip(plain, ckpt):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)


def test_truncation_matches_a_detached_reference():
    w, c, s0_grad = toy_grads(3, 2, checkpoint=False)
    assert s0_grad is None
    _, _, s0_full = toy_grads(0, 5, checkpoint=False)
    assert s0_full is not None and s0_full.abs().sum() > 0

    toy = Toy()
    s = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i in range(3):
            s = toy(s, i, None)
    s = s.detach()
    for i in range(3, 5):
        s = toy(s, i, None)
    (s ** 2).sum().backward()
    torch.testing.assert_close(w, toy.w.grad)
    torch.testing.assert_close(c, toy.c.grad)


def test_no_grad_context_is_respected():
    toy = Toy()
    with torch.no_grad():
        out = unroll(toy, torch.randn(2, 4), 0, 3)
    assert not out.state.requires_grad


# ---------------------------------------------------------------------------------------- output criteria
def scripted(sequence: torch.Tensor):
    """A step that ignores its input and emits sequence[i+1] (steps, *elements, V); s_0 = sequence[0]."""
    def step(s, i, active):
        return sequence[i + 1].clone()

    return step


def identity_readout(calls: list):
    def readout(s):
        calls.append(1)
        return s

    return readout


LOGITS = {  # each element's logits after steps 0..6 (vocabulary of 4)
    "settles": [[0, 0, 1, 0], [5, 0, 0, 0], [5.001, 0, 0, 0], [0, 5, 0, 0], [0, 5, 0, 0], [0, 5, 0, 0],
                [0, 5, 0, 0]],
    "flips": [[0, 0, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [5, 0, 0, 0], [0, 5, 0, 0], [5, 0, 0, 0],
              [0, 5, 0, 0]],
    "permutes": [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 2, 3], [3, 2, 1, 0],
                 [1, 3, 0, 2]],
    "still": [[1, 2, 3, 4]] * 7,
}
NEVER = 6  # steps available: an element that never exits uses all of them


def sequence(*names: str) -> torch.Tensor:
    return torch.tensor([LOGITS[n] for n in names], dtype=torch.float32).transpose(0, 1)  # (7, E, 4)


@pytest.mark.parametrize("criterion,want", [
    # KL(p_t || p_t-1) < 1e-3: "settles" at step 2 (logit 5 -> 5.001), "still" at once; the others
    # keep moving their mass.
    (KLDivergence(1e-3), {"settles": 2, "flips": NEVER, "permutes": NEVER, "still": 1}),
    # |H_t - H_t-1| < 1e-3: permutations keep the entropy, so "permutes" exits at 1 and "flips" at 2
    # (its first step leaves the uniform distribution); "settles" changes H by 1e-4 at step 2.
    (EntropyChange(1e-3), {"settles": 2, "flips": 2, "permutes": 1, "still": 1}),
    # top-1 unchanged for 2 consecutive checks. "settles": argmax 2,0,0,1,1,1 -> streak 0,1,0,1,2 -> 5.
    (ArgmaxStable(2), {"settles": 5, "flips": NEVER, "permutes": NEVER, "still": 2}),
])
def test_output_criteria_on_constructed_sequences(criterion, want):
    names = list(want)
    seq = sequence(*names)
    calls: list = []
    out = unroll(scripted(seq), seq[0], 0, NEVER, criterion=criterion, readout=identity_readout(calls))
    got = dict(zip(names, out.steps_used.tolist()))
    assert got == want
    # Exited elements are frozen at their own exit step's output.
    for j, name in enumerate(names):
        torch.testing.assert_close(out.state[j], seq[want[name], j])
    # The first check decodes s_0 and s_1; each later one decodes only the new state.
    assert out.readouts == len(calls) == out.steps_used.max() + 1


def test_argmax_stable_counts_consecutive_agreement():
    # argmax of s_0..s_8: 1, 0, 0, 1, 0, 0, 0, 0, 1 -> streak 0, 1, 0, 0, 1, 2, 3 -> exits after step 7
    seq = torch.tensor([[[0, 9.0]], [[9.0, 0]], [[9.0, 1]], [[0, 9.0]], [[9.0, 2]], [[9.0, 3]], [[9.0, 4]],
                        [[9.0, 5]], [[0, 9.0]]])
    out = unroll(scripted(seq), seq[0], 0, 8, criterion=ArgmaxStable(3), readout=lambda s: s)
    assert out.steps_used.tolist() == [7]


def test_output_criterion_without_readout_is_refused():
    with pytest.raises(ValueError, match="readout"):
        unroll(contraction, torch.zeros(2, 3), 0, 3, criterion=KLDivergence(0.1))


def test_criterion_memory_is_reset_between_unrolls():
    seq = sequence("settles", "still")
    crit = KLDivergence(1e-3)
    a = unroll(scripted(seq), seq[0], 0, 5, criterion=crit, readout=lambda s: s)
    b = unroll(scripted(seq), seq[0], 0, 5, criterion=crit, readout=lambda s: s)
    assert torch.equal(a.steps_used, b.steps_used)


def test_exit_spec_builds_criteria_by_name():
    assert ExitSpec(None).build() is None and ExitSpec("none").build() is None
    assert isinstance(ExitSpec("convergence").build(), Convergence)
    kl = ExitSpec("kl", threshold=0.01, min_steps=2, max_steps=9).build()
    assert isinstance(kl, KLDivergence) and (kl.threshold, kl.min_steps, kl.max_steps) == (0.01, 2, 9)
    with pytest.raises(ValueError, match="exit='cosine-ish' is not an exit criterion"):
        ExitSpec("cosine-ish").build()


def test_sequence_convergence_exits_whole_sequences_once_every_watched_element_is_still():
    # s <- c*s + 1: relative change shrinks like c^t for c < 1, but only like 1/t for c = 1.
    rates = torch.tensor([[0.5, 0.5, 1.0], [0.5, 0.9, 0.5]]).unsqueeze(-1)  # (groups, elements, 1)

    def step(s, i, active):
        return rates * s + 1

    def run(watch):
        return unroll(step, torch.zeros(2, 3, 4), 0, 200, criterion=SequenceConvergence(0.01, watch=watch),
                      sequence_axis=1).steps_used

    watch = torch.tensor([[True, True, False], [True, True, True]])
    used = run(watch)
    assert (used == used[:, :1]).all()  # every element of a group exits at the same step
    assert used[1, 0] > used[0, 0]  # group 1 waits for its slow (c = 0.9) watched element
    per_token = unroll(step, torch.zeros(2, 3, 4), 0, 200, criterion=Convergence(0.01)).steps_used
    assert used[0, 0] == per_token[0, 0]  # group 0 exits when its watched elements do, ignoring (0, 2)
    assert run(None)[0, 0] > 10 * used[0, 0]  # watching the slow (c = 1: change 1/t) element delays group 0


def wave(length: int):
    """A step that changes token i at iteration i only: a solution travelling along the sequence, with
    tokens ahead of it sitting still while they wait."""

    def step(s, i, active):
        new = s.clone()
        if i < length:
            new[..., i, :] += 10.0
        return new

    return step


@pytest.mark.parametrize("scope, expected", [
    (Convergence, [2, 1, 1, 1, 1, 1]),            # each token alone: the waiting ones stop at once
    (CausalConvergence, [2, 3, 4, 5, 6, 7]),      # a token stops once its whole prefix is still
    (SequenceConvergence, [7, 7, 7, 7, 7, 7]),    # everyone waits for the last token
])
def test_convergence_scopes_on_a_wave(scope, expected):
    used = unroll(wave(6), torch.ones(2, 6, 3), 0, 50, criterion=scope(0.01), sequence_axis=1).steps_used
    assert used.tolist() == [expected, expected]


def test_causal_convergence_ignores_unwatched_tokens_and_exits_in_prefix_order():
    watch = torch.tensor([True, True, True, False, True, True])
    used = unroll(wave(6), torch.ones(6, 3), 0, 50, criterion=CausalConvergence(0.01, watch=watch),
                  sequence_axis=0).steps_used
    assert used.tolist() == [2, 3, 4, 4, 4, 4]  # token 3 changing (step 4) holds nobody back
    torch.manual_seed(0)
    noisy = unroll(lambda s, i, a: s + torch.randn_like(s) / (i + 1) ** 2, torch.ones(3, 8, 4), 0, 60,
                   criterion=CausalConvergence(0.02), sequence_axis=1).steps_used
    assert (noisy[:, 1:] >= noisy[:, :-1]).all()  # exits never overtake an earlier token


def test_observe_sees_every_step_in_order():
    seen = []
    unroll(lambda s, i, active: s + 1, torch.zeros(2, 3), 2, 3,
           observe=lambda n, s: seen.append((n, float(s[0, 0]))))
    assert seen == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]


# ------------------------------------------------------------------ the sequence axis (Coconut's loop)
def test_carry_travels_through_the_steps_explicitly():
    """A step with a carry (here a growing list standing for a KV cache / the thoughts so far) gets it
    and returns the new one; the result holds the last carry."""
    def think(state, i, active, thoughts):  # state (B, H): one thought vector per example
        return state * 0.5 + 1.0, thoughts + [state]

    out = unroll(think, torch.zeros(2, 4), 1, 3, carry=[])
    assert len(out.carry) == 4 and torch.equal(out.carry[0], torch.zeros(2, 4))
    assert torch.allclose(out.state, torch.full((2, 4), 1.875))
    assert torch.equal(out.carry[3], torch.full((2, 4), 1.75))


def test_checkpointing_a_step_with_a_carry_is_refused():
    with pytest.raises(ValueError, match="checkpoint=True recomputes each step in backward.*carry"):
        unroll(lambda s, i, a, c: (s, c), torch.zeros(2, 4, requires_grad=True), 0, 2, checkpoint=True, carry={})


@pytest.mark.parametrize("criterion", [CausalConvergence, SequenceConvergence])
def test_sequence_scopes_are_refused_on_a_state_without_a_sequence_axis(criterion):
    """A (B, H) thought state has no sequence axis: a causal scope would run cummin over the batch."""
    with pytest.raises(ValueError, match="acts along a sequence, but this loop's state has no sequence axis"):
        unroll(contraction, torch.ones(3, 4), 0, 5, criterion=criterion(0.01))
    with pytest.raises(ValueError, match="sequence_axis=2 is not an element axis"):
        unroll(contraction, torch.ones(3, 4, 2), 0, 5, criterion=criterion(0.01), sequence_axis=2)
    per_example = unroll(contraction, s0_at_distances(1.0, 4.0), 0, 50, criterion=Convergence(0.05))
    assert per_example.steps_used[0] != per_example.steps_used[1]  # per element, across the batch


def _two_ranks_exit(rank: int, world: int, init: str, results) -> None:
    import torch.distributed as dist

    from recurrent_lm.loop import all_ranks_exited

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        # rank 0's elements go still after 2 steps, rank 1's after 5: both must run 5 iterations
        still_after = 2 if rank == 0 else 5

        def iterations(exit_sync) -> int:  # how often the loop called its step
            calls = []

            def step(s, i, active):
                calls.append(i)
                return s if i >= still_after else s + 1.0

            unroll(step, torch.ones(1, 3), 0, 50, criterion=Convergence(1e-6), exit_sync=exit_sync)
            return len(calls)

        results[rank] = (iterations(all_ranks_exited), iterations(None))
    finally:
        dist.destroy_process_group()


def test_exit_sync_makes_every_rank_leave_the_loop_at_the_same_iteration(tmp_path):
    """Two real gloo processes: without the hook each leaves when its own elements are still (a rank
    running FSDP collectives would then hang); with all_ranks_exited both run until the slower one's
    elements exit."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_two_ranks_exit, args=(2, f"file://{tmp_path / 'rendezvous'}", results), nprocs=2)
    assert dict(results) == {0: (6, 3), 1: (6, 6)}
