"""LightningDataModule over the packed text corpus, with exact mid-epoch resume."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from torch.utils.data import DataLoader

from recurrent_lm.data import DataConfig, PreparedData, prepare_data, train_loader, validation_loader
from recurrent_lm.train.resume_guard import data_record


class TextDataModule(L.LightningDataModule):
    """Tokenizer + packed shards from :func:`prepare_data`; an endless, seeded, rank-sharded train stream.

    Resume works by position, not by replaying the loader: the checkpoint stores how many
    micro-batches were *consumed* (global_step × accumulation, which the DataLoader's prefetch
    cannot inflate), and the sampler restarts exactly there.
    """

    def __init__(self, config: DataConfig, block_size: int, micro_batch_size: int, val_batches: int,
                 seed: int) -> None:
        super().__init__()
        self.config, self.block_size = config, block_size
        self.micro_batch_size, self.val_batches, self.seed = micro_batch_size, val_batches, seed
        self.prepared: Optional[PreparedData] = None
        self._resume: Optional[dict[str, Any]] = None
        self._train: Optional[DataLoader] = None

    def prepare_data(self) -> None:
        prepare_data(self.config, self.block_size)  # local rank 0 only: trains tokenizer, packs shards

    def setup(self, stage: str) -> None:
        if self.prepared is None:
            self.prepared = prepare_data(self.config, self.block_size)  # reuses the cache built above

    @property
    def tokenizer(self):
        self.setup("fit")
        return self.prepared.tokenizer

    def train_dataloader(self) -> DataLoader:
        self._train = train_loader(self.prepared.train, self.block_size, self.micro_batch_size,
                                   rank=self.trainer.global_rank, world_size=self.trainer.world_size, seed=self.seed)
        if self._resume is not None:
            self._train.sampler.load_state_dict(self._resume)
        return self._train

    def val_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return validation_loader(self.prepared.validation, self.block_size, self.micro_batch_size,
                                 rank=rank, world_size=world, max_batches=self.val_batches)

    def data_record(self) -> dict[str, Any]:
        """The tokenizer and packing recipe of this data, stored in every checkpoint and checked by a resume."""
        self.setup("fit")
        return data_record(self.prepared.tokenizer.fingerprint, self.prepared.meta.recipe)

    def state_dict(self) -> dict[str, Any]:
        if self._train is None:
            return {}
        state = self._train.sampler.state_dict()
        state["batches_consumed"] = self.trainer.global_step * self.trainer.accumulate_grad_batches
        state["data"] = self.data_record()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {k: v for k, v in state.items() if k != "data"} or None
