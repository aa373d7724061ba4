"""A Lightning DataModule over {question, steps, answer} records, laid out by the stage curriculum.

Training is an endless stream of micro-batches. Micro-batch ``i`` belongs to epoch
``i // batches_per_epoch``; the epoch's record order is a permutation seeded by (seed, epoch), and each
record's stage comes from :func:`recurrent_lm.coconut.curriculum.record_stage`. Every batch is therefore
a pure function of (seed, i): a resumed run that starts the stream at the consumed count replays the
uninterrupted run exactly, mid-stage or not. Ranks take disjoint slices of each global batch.

Validation yields encoded records, not tensors: the module lays them out at the stage it is training,
which only it knows (it follows the optimizer step).
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.curriculum import check_stages, record_stage
from recurrent_lm.coconut.records import load_records
from recurrent_lm.coconut.sequences import EncodedRecord, SpecialIds, build_example, collate, encode_records
from recurrent_lm.coconut.tokens import ThoughtTokenizer
from recurrent_lm.errors import ConfigError


def longest_layout(records: list[EncodedRecord], config: CoconutConfig, ids: SpecialIds) -> int:
    """Most tokens + thought slots any record occupies at any stage (the model's context must hold it)."""
    def size(r: EncodedRecord, stage: int) -> int:
        example = build_example(r, stage, config, ids)
        return len(example.prefix) + example.thoughts + len(example.suffix)

    stages = range(config.max_latent_stage + 2) if config.thinks else (0,)
    return max(size(r, s) for r in records for s in stages)


class _TrainStream(IterableDataset):
    def __init__(self, module: "CoconutDataModule", start: int) -> None:
        self.data, self.start = module, start

    def __iter__(self) -> Iterator[dict]:
        i = self.start
        while True:
            yield self.data.train_batch(i)
            i += 1


class CoconutDataModule(L.LightningDataModule):
    """Records from ``config.train_file``/``val_file``, tokenized once; ``tokenizer`` carries the markers."""

    def __init__(self, config: CoconutConfig, tokenizer: ThoughtTokenizer, micro_batch_size: int, val_batches: int,
                 seed: int, block_size: Optional[int] = None, world_size: int = 1) -> None:
        """``world_size``: the processes the run will have, known before the trainer, so that
        ``batches_per_epoch`` (which the module's stage schedule reads at build time) is right from the start."""
        super().__init__()
        self.config, self.tokenizer, self.seed = config, tokenizer, seed
        self.micro_batch_size, self.val_batches = micro_batch_size, val_batches
        config.require_data()
        needs_steps = config.method != "no_cot"
        train = load_records(config.train_file, require_steps=needs_steps)
        self.train_records = encode_records(tokenizer, train[: config.max_train_records or None], config)
        self.val_records = encode_records(tokenizer, load_records(config.val_file, require_steps=needs_steps), config)
        check_stages(config, max(len(r.steps) for r in self.train_records), config.train_file)
        longest = longest_layout(self.train_records + self.val_records, config, tokenizer.ids)
        if block_size is not None and longest > block_size:
            raise ConfigError(f"the longest Coconut sequence of {config.train_file} / {config.val_file} takes {longest} "
                             f"positions (question, markers, thoughts, steps, answer) but model.block_size={block_size}; "
                             "raise model.block_size or drop the longest records")
        self.start = 0
        self.rank, self.world = 0, world_size

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches (per rank) in one pass over the training records."""
        return math.ceil(len(self.train_records) / (self.micro_batch_size * self.world))

    def epoch_of(self, micro_batch: int) -> int:
        return micro_batch // self.batches_per_epoch

    def train_batch(self, i: int) -> dict:
        """Micro-batch ``i`` of the stream on this rank (see the module docstring)."""
        epoch, j = divmod(i, self.batches_per_epoch)
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.train_records))
        size = self.micro_batch_size
        first = (j * self.world + self.rank) * size
        chosen = order[first:first + size] if first < len(order) else order[:size]
        if len(chosen) < size:  # the epoch's last global batch: fill from its start, as a drop-free sampler would
            chosen = np.concatenate([chosen, order[: size - len(chosen)]])
        examples = [build_example(self.train_records[k],
                                  record_stage(self.config, epoch, int(k), len(self.train_records[k].steps), self.seed),
                                  self.config, self.tokenizer.ids) for k in chosen]
        return collate(examples, self.tokenizer.ids.pad)

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.rank, self.world = self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_TrainStream(self, self.start), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        shard = self.val_records[self.rank::self.world][: self.val_batches * self.micro_batch_size]
        return DataLoader(shard, batch_size=self.micro_batch_size, collate_fn=list)

    def state_dict(self) -> dict:
        """Micro-batches consumed, so that a resumed run continues the stream where it stopped."""
        if self.trainer is not None:
            return {"start": int(self.trainer.global_step) * int(self.trainer.accumulate_grad_batches)}
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.start = int(state.get("start", 0))
