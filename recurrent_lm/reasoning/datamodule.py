"""A Lightning DataModule over the reasoning-task generators.

Batches are dicts of LongTensors::

    input_ids     (B, T)  right-padded with PAD
    labels        (B, T)  the answer token at supervised positions, -100 elsewhere (padding included)
    difficulty    (B,)    each example's difficulty (bits / maze rows)

Labels are aligned targets (the model scores ``cross_entropy(logits, labels)`` without a shift).
Right padding under causal attention leaves every real position unchanged. (No position offsets: RoPE
makes the model exactly invariant to a common shift of all positions, so a random start would change
nothing.)

Training data is an endless stream: batch ``i`` of the stream is generated from (task.seed, i), so
a resumed run that skips ``i`` batches replays exactly what it would have seen (``num_train > 0``
instead cycles over a fixed set of that size). Validation holds ``num_val`` examples at
``train_max`` and at the largest eval difficulty (dataloader 0 and 1).
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from recurrent_lm.errors import ConfigError
from recurrent_lm.reasoning.config import TaskConfig, sequence_length
from recurrent_lm.reasoning.tasks import (FIXED_TRAIN_SPLIT, VAL_SPLIT, Example, collate, fixed_examples,
                                          make_example, train_examples, vocab_size)


class _TrainStream(IterableDataset):
    """Endless, already-collated batches; batch i comes from (task.seed, i)."""

    def __init__(self, task: TaskConfig, batch_size: int, start: int = 0) -> None:
        self.task, self.batch_size, self.start = task, batch_size, start

    def __iter__(self) -> Iterator[dict]:
        step = self.start
        fixed = _fixed_train(self.task) if self.task.num_train else None
        while True:
            if fixed:
                rng = np.random.default_rng((self.task.seed, FIXED_TRAIN_SPLIT, 1, step))
                examples = [fixed[int(i)] for i in rng.integers(0, len(fixed), size=self.batch_size)]
            else:
                examples = train_examples(self.task, step, self.batch_size)
            yield collate(examples)
            step += 1


def _fixed_train(task: TaskConfig) -> list[Example]:
    """The fixed training set for num_train > 0: difficulties uniform over the train range."""
    rng = np.random.default_rng((task.seed, FIXED_TRAIN_SPLIT))
    diffs = rng.integers(task.train_min, task.train_max + 1, size=task.num_train)
    return [make_example(task, int(d), rng) for d in diffs]


class _ListDataset(Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


class ReasoningDataModule(L.LightningDataModule):
    """Train/val loaders for one :class:`TaskConfig`; ``vocab_size`` sizes the model's embedding.

    All data is drawn from ``task.seed`` (conf/task/*.yaml set it to the run's ``${seed}``); ``seed`` is
    kept for interface symmetry with the text DataModule. ``block_size`` is only checked against the
    longest sequence the task produces (pack_length, train_max, the eval difficulties).
    """

    def __init__(self, task: TaskConfig, batch_size: int = 64, block_size: int = 256, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.task, self.batch_size, self.block_size, self.seed = task, batch_size, block_size, seed
        self.num_workers = num_workers
        longest = max(task.pack_length, *(sequence_length(task, d) for d in (task.train_max, *task.eval_difficulties)))
        if longest > block_size:
            raise ConfigError(f"task {task.name} needs sequences of up to {longest} tokens (difficulties up to "
                             f"{max(task.train_max, *task.eval_difficulties)}, pack_length={task.pack_length}) but "
                             f"block_size={block_size}; raise model.block_size or lower task.eval_difficulties")
        self.start_step = 0

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.task)

    @property
    def val_difficulties(self) -> list[int]:
        return sorted({self.task.train_max, max(self.task.eval_difficulties)})

    def state_dict(self) -> dict:
        """Batches consumed so far, so that a resumed run continues the stream where it stopped."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            return {"start_step": int(trainer.global_step) * int(trainer.accumulate_grad_batches)}
        return {"start_step": self.start_step}

    def load_state_dict(self, state: dict) -> None:
        self.start_step = int(state.get("start_step", 0))

    def train_dataloader(self) -> DataLoader:
        stream = _TrainStream(self.task, self.batch_size, self.start_step)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(_ListDataset(fixed_examples(self.task, VAL_SPLIT, d, self.task.num_val)),
                           batch_size=self.batch_size, shuffle=False, collate_fn=collate)
                for d in self.val_difficulties]
