"""Deterministic, rank-sharded, exactly resumable batches of token windows from a flat token array.

A sample is window i = tokens[i·T : i·T + T + 1] (T = block_size): input w[:-1], labels w[1:]. The stride is T,
not T + 1, so consecutive windows share one boundary token and every token after the first is a label
exactly once per epoch: no target is skipped and none is seen twice.

Training order is a pure function of (seed, epoch, rank, world size, batch position): epoch e is the
permutation `default_rng((seed, e))` of all windows, cut into global batches of batch_size × world_size windows,
each rank taking its own slice of every global batch. The windows that would not fill a global batch are
dropped for that epoch (a different tail each epoch), so every rank runs the same number of batches and no rank
waits on a straggler. Because nothing depends on history, resuming is just positioning: `set_position(n)`
makes the next iteration yield exactly what an uninterrupted run yields from its n-th batch on.

Batches are gathered whole (one fancy-index into the memory map per batch), so a plain
``torch.utils.data.DataLoader`` with ``batch_size=None`` and one of these batch samplers is the whole loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from recurrent_lm.errors import ConfigError


class TokenWindows(Dataset[dict[str, torch.Tensor]]):
    """The block_size + 1 token windows of `tokens`, fetched a whole batch of window indices at a time."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if block_size < 1:
            raise ConfigError(f"block_size={block_size}: must be a positive number of tokens")
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block_size)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """`{"input_ids", "labels"}`, both LongTensor[len(indices), block_size]."""
        starts = np.asarray(indices, dtype=np.int64) * self.block_size
        windows = torch.from_numpy(self.tokens[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}


def shard_batches(order: np.ndarray, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's batches of `order`, shape [n, batch_size].

    Global batch k is order[k·W·B : (k+1)·W·B] (W ranks, B = batch_size); rank r takes its r-th slice of B.
    The tail too short for a whole global batch is dropped.
    """
    per_step = batch_size * world_size
    steps = len(order) // per_step
    return order[: steps * per_step].reshape(steps, world_size, batch_size)[:, rank]


class TrainBatchSampler(Sampler[list[int]]):
    """Endless, shuffled, rank-sharded batches of window indices, resumable at any batch.

    It has no `__len__`: Lightning then treats the loader as infinite, and training stops at max_steps.
    """

    def __init__(self, num_windows: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        _check_layout(rank, world_size, batch_size)
        self.num_windows = num_windows
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.batches_per_epoch = num_windows // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise _too_few_windows("train", num_windows, batch_size, world_size)
        self._position = 0

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self._position, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[offset:]:
                self._position += 1
                yield batch.tolist()
            epoch, offset = epoch + 1, 0

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of `epoch`, shape [batches_per_epoch, batch_size]."""
        order = np.random.default_rng((self.seed, epoch)).permutation(self.num_windows)
        return shard_batches(order, self.batch_size, self.rank, self.world_size)

    def set_position(self, batches_consumed: int) -> None:
        """Make the next iteration start at this rank's batch number `batches_consumed` (counted over all epochs).

        Pass what the trainer actually consumed (global_step × gradient-accumulation steps), not
        `state_dict()`: the DataLoader fetches ahead, so the sampler has handed out more batches than were used.
        A running iterator is unaffected; the position applies to the next `iter()`.
        """
        if batches_consumed < 0:
            raise ConfigError(f"batches_consumed={batches_consumed}: must be >= 0")
        self._position = batches_consumed

    def state_dict(self) -> dict[str, Any]:
        """The batches handed out so far (including any the DataLoader prefetched) and the layout they assume."""
        return {"batches_consumed": self._position, "num_windows": self.num_windows, "batch_size": self.batch_size,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; refuses a state saved under a different layout, whose order differs."""
        saved = {key: state[key] for key in ("num_windows", "batch_size", "world_size", "seed")}
        current = {key: value for key, value in self.state_dict().items() if key in saved}
        if saved != current:
            raise ConfigError(f"loader state was saved with {saved} but this loader has {current}; resuming would "
                             "replay or skip data. Resume with the original data, batch size, device count and seed")
        self.set_position(state["batches_consumed"])


def train_loader(tokens: np.ndarray, block_size: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> DataLoader:
    """An endless training DataLoader; resume it through its `.sampler` (a `TrainBatchSampler`)."""
    windows = TokenWindows(tokens, block_size)
    sampler = TrainBatchSampler(len(windows), batch_size, rank=rank, world_size=world_size, seed=seed)
    return DataLoader(windows, sampler=sampler, batch_size=None)


def validation_loader(tokens: np.ndarray, block_size: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                      max_batches: int | None = None) -> DataLoader:
    """One pass over the windows in order, sharded like training, capped at `max_batches` per rank."""
    _check_layout(rank, world_size, batch_size)
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches={max_batches}: must be >= 1, or None for the whole split")
    windows = TokenWindows(tokens, block_size)
    batches = shard_batches(np.arange(len(windows)), batch_size, rank, world_size)[:max_batches]
    if len(batches) == 0:
        raise _too_few_windows("validation", len(windows), batch_size, world_size)
    return DataLoader(windows, sampler=batches.tolist(), batch_size=None)


def _check_layout(rank: int, world_size: int, batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")


def _too_few_windows(split: str, num_windows: int, batch_size: int, world_size: int) -> ConfigError:
    return ConfigError(f"the {split} split has {num_windows} windows of block_size tokens, fewer than one global "
                      f"batch of batch_size × world_size = {batch_size} × {world_size}; lower the batch size or "
                      "block_size, or use more data")
