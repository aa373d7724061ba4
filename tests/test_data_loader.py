"""The window loader: sample layout, deterministic order, rank shards, and exact resume."""

from itertools import islice

import numpy as np
import pytest
import torch

from recurrent_lm.data import TokenWindows, TrainBatchSampler, shard_batches, train_loader, validation_loader

BLOCK = 8
TOKENS = np.arange(1000, dtype=np.uint16)  # token value == position, so every sample shows where it came from
WINDOWS = (len(TOKENS) - 1) // BLOCK  # 124


def take(sampler: TrainBatchSampler, count: int) -> list[list[int]]:
    return list(islice(iter(sampler), count))


def test_windows_overlap_by_one_token_so_every_token_is_a_label_once() -> None:
    windows = TokenWindows(TOKENS, BLOCK)
    batch = windows[[0, 3, WINDOWS - 1]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["input_ids"].shape == batch["labels"].shape == (3, BLOCK)
    assert batch["input_ids"][1].tolist() == list(range(24, 32)) and batch["labels"][1].tolist() == list(range(25, 33))
    labels = windows[list(range(WINDOWS))]["labels"].flatten().tolist()
    assert labels == list(range(1, WINDOWS * BLOCK + 1))


def test_each_epoch_is_a_seeded_permutation_that_changes_with_epoch_and_seed() -> None:
    sampler = TrainBatchSampler(WINDOWS, 4, seed=3)
    epoch0, epoch1 = sampler.epoch_batches(0), sampler.epoch_batches(1)
    assert np.array_equal(epoch0, TrainBatchSampler(WINDOWS, 4, seed=3).epoch_batches(0))
    assert len(set(epoch0.flatten().tolist())) == epoch0.size == WINDOWS // 4 * 4
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, TrainBatchSampler(WINDOWS, 4, seed=4).epoch_batches(0))
    assert np.array_equal(epoch0, np.random.default_rng((3, 0)).permutation(WINDOWS).reshape(31, 4))


def test_training_stream_runs_on_through_epochs() -> None:
    sampler = TrainBatchSampler(WINDOWS, 5, seed=0)
    assert sampler.batches_per_epoch == 24
    stream = take(sampler, 60)
    assert stream[:24] == sampler.epoch_batches(0).tolist() and stream[24:48] == sampler.epoch_batches(1).tolist()
    with pytest.raises(TypeError):
        len(train_loader(TOKENS, BLOCK, 5))  # no length: Lightning treats the loader as endless


def test_ranks_get_disjoint_equal_shards_covering_each_global_batch() -> None:
    world, batch = 3, 4
    shards = [TrainBatchSampler(WINDOWS, batch, rank=r, world_size=world, seed=9).epoch_batches(2)
              for r in range(world)]
    assert {len(shard) for shard in shards} == {WINDOWS // (world * batch)}
    permutation = np.random.default_rng((9, 2)).permutation(WINDOWS)
    for step in range(len(shards[0])):
        together = np.concatenate([shard[step] for shard in shards])
        assert together.tolist() == permutation[step * world * batch:(step + 1) * world * batch].tolist()
    seen = np.concatenate([shard.flatten() for shard in shards])
    assert len(set(seen.tolist())) == len(seen) == WINDOWS // (world * batch) * world * batch


@pytest.mark.parametrize("position", [0, 1, 17, 24, 25, 50])
def test_set_position_resumes_the_exact_stream_across_epoch_boundaries(position: int) -> None:
    uninterrupted = take(TrainBatchSampler(WINDOWS, 5, rank=1, world_size=2, seed=7), 60)
    resumed = TrainBatchSampler(WINDOWS, 5, rank=1, world_size=2, seed=7)
    assert resumed.batches_per_epoch == 12
    resumed.set_position(position)
    assert take(resumed, 60 - position) == uninterrupted[position:]


def test_state_dict_round_trip_resumes_the_dataloader_stream() -> None:
    uninterrupted = [batch["input_ids"] for batch in islice(train_loader(TOKENS, BLOCK, 4, seed=1), 40)]
    first = train_loader(TOKENS, BLOCK, 4, seed=1)
    consumed = list(islice(first, 33))
    assert len(consumed) == 33
    second = train_loader(TOKENS, BLOCK, 4, seed=1)
    second.sampler.load_state_dict(first.sampler.state_dict())
    for expected, batch in zip(uninterrupted[33:], islice(second, 7), strict=True):
        assert torch.equal(batch["input_ids"], expected)


def test_a_state_from_another_layout_is_refused() -> None:
    state = TrainBatchSampler(WINDOWS, 4, world_size=2).state_dict()
    with pytest.raises(ValueError, match="replay or skip data"):
        TrainBatchSampler(WINDOWS, 4, world_size=4).load_state_dict(state)


def test_validation_is_one_fixed_order_pass_sharded_and_capped() -> None:
    loader = validation_loader(TOKENS, BLOCK, 10)
    batches = [batch["input_ids"][:, 0].tolist() for batch in loader]
    assert batches == [[BLOCK * w for w in range(start, start + 10)] for start in range(0, 120, 10)]
    assert batches == [batch["input_ids"][:, 0].tolist() for batch in loader]  # a second pass is identical
    ranks = [[batch["input_ids"][:, 0] // BLOCK for batch in validation_loader(TOKENS, BLOCK, 10, rank=r,
                                                                             world_size=2)] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert not set(torch.cat(ranks[0]).tolist()) & set(torch.cat(ranks[1]).tolist())
    assert len(validation_loader(TOKENS, BLOCK, 10, max_batches=3)) == 3


def test_too_few_windows_for_one_global_batch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"the train split has 124 windows.*64 × 2"):
        train_loader(TOKENS, BLOCK, 64, world_size=2)
    with pytest.raises(ValueError, match=r"the validation split has 4 windows"):
        validation_loader(TOKENS[:40], BLOCK, 8)


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        TrainBatchSampler(WINDOWS, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batches_consumed=-1"):
        TrainBatchSampler(WINDOWS, 4).set_position(-1)


def test_shard_batches_drops_only_the_incomplete_global_batch() -> None:
    order = np.arange(23)
    assert shard_batches(order, 2, 1, 3).tolist() == [[2, 3], [8, 9], [14, 15]]
