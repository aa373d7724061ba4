"""ReasoningDataModule: batch shapes, right padding, label masking, resumable stream, packing."""

from __future__ import annotations

import itertools

import pytest
import torch

from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.reasoning.config import TaskConfig, sequence_length
from recurrent_lm.reasoning.datamodule import ReasoningDataModule
from recurrent_lm.reasoning.tasks import BOS, IGNORE_INDEX, ONE, PAD, ROW_END, ZERO, collate, make_example


def first_batches(dm: ReasoningDataModule, n: int) -> list[dict]:
    return list(itertools.islice(iter(dm.train_dataloader()), n))


@pytest.mark.parametrize("name", ["parity", "reachability"])
def test_train_batches_are_padded_and_masked(name):
    task = TaskConfig(name=name, train_min=2, train_max=8, eval_difficulties=[8, 16])
    dm = ReasoningDataModule(task, batch_size=12, block_size=160, seed=0)
    assert dm.vocab_size == (6 if name == "parity" else 10)
    for batch in first_batches(dm, 3):
        ids, labels, diff = batch["input_ids"], batch["labels"], batch["difficulty"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] == 12
        assert "position_ids" not in batch
        lengths = torch.tensor([sequence_length(task, int(d)) for d in diff])
        assert ids.shape[1] == int(lengths.max())  # padded per batch to its longest example
        pos = torch.arange(ids.shape[1])[None, :]
        pad = pos >= lengths[:, None]
        assert (ids[pad] == PAD).all() and (ids[~pad] != PAD).all()
        assert (labels[pad] == IGNORE_INDEX).all()  # padding is never supervised
        supervised = labels != IGNORE_INDEX
        assert ((labels[supervised] == ZERO) | (labels[supervised] == ONE)).all()
        assert (supervised.sum(-1) > 0).all() and dm.vocab_size > int(ids.max())


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=6, block_size=64, d_model=32, n_heads=2, init_scale=0.0,
                                         mean_recurrence=3)).eval()
    task = TaskConfig()
    import numpy as np

    rng = np.random.default_rng(0)
    short, long = make_example(task, 5, rng), make_example(task, 20, rng)
    alone = model(torch.tensor([short.input_ids]), num_steps=3).logits[0]
    padded = model(collate([short, long])["input_ids"], num_steps=3).logits[0, : len(short.input_ids)]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def test_stream_is_deterministic_and_resumes_where_it_stopped():
    task = TaskConfig(train_max=8, eval_difficulties=[8, 16])
    batches = first_batches(ReasoningDataModule(task, batch_size=8, block_size=64), 5)
    again = first_batches(ReasoningDataModule(task, batch_size=8, block_size=64), 5)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    resumed = ReasoningDataModule(task, batch_size=8, block_size=64)
    resumed.load_state_dict({"start_step": 3})
    tail = first_batches(resumed, 2)
    assert torch.equal(tail[0]["input_ids"], batches[3]["input_ids"])
    assert torch.equal(tail[1]["labels"], batches[4]["labels"])


def test_fixed_train_set_cycles_over_num_train_examples():
    task = TaskConfig(train_max=8, eval_difficulties=[8], num_train=10)
    seqs = {tuple(row.tolist()) for b in first_batches(ReasoningDataModule(task, batch_size=16, block_size=64), 4)
            for row in b["input_ids"]}
    assert len(seqs) <= 10


def test_validation_loaders_cover_train_max_and_the_hardest_eval():
    task = TaskConfig(train_max=8, eval_difficulties=[8, 16, 32], num_val=20)
    dm = ReasoningDataModule(task, batch_size=8, block_size=64)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for loader, d in zip(loaders, (8, 32)):
        batches = list(loader)
        assert sum(b["input_ids"].shape[0] for b in batches) == 20
        assert all(b["input_ids"].shape[1] == sequence_length(task, d) for b in batches)


def test_block_size_too_small_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        ReasoningDataModule(TaskConfig(eval_difficulties=[64]), batch_size=4, block_size=32)


def test_packed_rows_hold_whole_independent_problems():
    task = TaskConfig(train_min=1, train_max=16, eval_difficulties=[16], pack_length=64)
    batch = first_batches(ReasoningDataModule(task, batch_size=6, block_size=64), 1)[0]
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape[1] <= 64
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        assert row_ids[0] == BOS and row_ids.count(BOS) >= 2  # several problems per row
        parity = 0
        for tok, lab in zip(row_ids, row_labels):
            if tok == BOS:
                parity = 0  # each problem restarts its prefix parity
                assert lab == IGNORE_INDEX
            elif tok == PAD:
                assert lab == IGNORE_INDEX
            else:
                parity ^= tok == ONE
                assert lab == (ONE if parity else ZERO)
    with pytest.raises(ValueError, match="pack_length"):
        TaskConfig(train_max=16, pack_length=10)


def test_packed_reachability_rows_hold_whole_mazes():
    task = TaskConfig(name="reachability", train_max=8, eval_difficulties=[16], pack_length=160)
    batch = first_batches(ReasoningDataModule(task, batch_size=6, block_size=160), 1)[0]
    for row in batch["input_ids"].tolist():
        row = row[:len(row) - row[::-1].index(ROW_END)]  # drop the padding
        starts = [i for i, tok in enumerate(row) if tok == BOS] + [len(row)]
        assert len(starts) >= 3 and len(row) <= 160
        assert all((b - a - 1) % (task.grid_width + 1) == 0 for a, b in zip(starts, starts[1:]))
