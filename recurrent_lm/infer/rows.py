"""The finished-row bookkeeping of batched decoding, shared by token generation and Coconut's answer decoding.

A row that finishes (eos, a stop string, its budget, the context end) leaves the batch, and its cache rows
with it, instead of being fed padding: later steps cost what the live rows need. :class:`LiveRows` keeps the
original row of each batch position and each row's finish reason.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class LiveRows:
    def __init__(self, batch: int) -> None:
        self.alive = list(range(batch))
        """Original row of each batch position, in batch order."""
        self.finish = [""] * batch
        """Per original row: why it finished ('' while it runs)."""

    def settle(self, reasons: list[str], device: torch.device) -> Optional[Tensor]:
        """Record this step's ``reasons`` (one per batch position, '' = continue). Returns the batch positions that
        continue, as a (n,) index to select cache rows and per-row tensors with, or None when all continue;
        :attr:`done` says whether any row is left."""
        keep = []
        for j, (b, reason) in enumerate(zip(self.alive, reasons)):
            if reason:
                self.finish[b] = reason
            else:
                keep.append(j)
        if len(keep) == len(self.alive):
            return None
        self.alive = [self.alive[j] for j in keep]
        return torch.tensor(keep, device=device)

    @property
    def done(self) -> bool:
        return not self.alive
