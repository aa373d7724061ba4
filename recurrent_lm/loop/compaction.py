"""Compaction: the still-active elements of a (B, T, ...) loop state as a dense sub-batch.

Per-element exit saves compute only if exited elements stop being computed. With masking (the state of
an exited element is computed and then discarded) a batch costs its deepest element's depth times the
whole batch. :class:`Subset` gathers the active elements into a dense (B', M, ...) tensor: the rows
with any active element, each row's active positions packed to the left in order and padded to the
longest row. A step runs on that, and its result is scattered back. A row keeps its own positions
together, so attention inside the sub-batch needs only the row's keys (which the KV cache supplies for
every position, see :mod:`recurrent_lm.model.cache`), gathered masks and RoPE angles.

Padding slots repeat the row's first active position: they compute something harmless (a real query
with a real mask row) that is never scattered back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Subset:
    """Which elements of a (B, T, ...) tensor a compacted step computes, and how to move data both ways."""

    mask: Tensor
    """(B, T) bool, the full active mask."""
    rows: Tensor
    """(B',) long: rows with at least one active element, in order."""
    index: Tensor
    """(B', M) long: active positions of each kept row, left-packed in order; padding repeats the first."""
    valid: Tensor
    """(B', M) bool: which entries of ``index`` are real (not padding)."""
    flat_rows: Tensor
    """(N,) long: the row of each active element (N = mask.sum())."""
    flat_index: Tensor
    """(N,) long: the position of each active element."""

    @staticmethod
    def padded_size_of(mask: Tensor) -> int:
        """B'·M of the subset of ``mask`` (B, T), without building it: the cost of a compacted step."""
        counts = mask.sum(1)  # (B,)
        return int((counts > 0).sum()) * int(counts.max())

    @classmethod
    def of(cls, mask: Tensor) -> "Subset":
        """The subset of the True entries of ``mask`` (B, T)."""
        counts = mask.sum(1)  # (B,)
        rows = counts.nonzero().squeeze(1)  # (B',)
        kept = mask[rows]  # (B', T)
        width = int(counts.max()) if rows.numel() else 0
        # A stable sort of "inactive" brings each row's active positions to the front in their order.
        order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # (B', M)
        valid = torch.arange(width, device=mask.device)[None, :] < counts[rows][:, None]  # (B', M)
        index = torch.where(valid, order, order[:, :1])
        return cls(mask=mask, rows=rows, index=index, valid=valid,
                   flat_rows=rows[:, None].expand_as(index)[valid], flat_index=index[valid])

    @property
    def size(self) -> int:
        """Active elements (what a compacted step computes, padding excluded)."""
        return int(self.flat_rows.numel())

    def gather(self, x: Tensor) -> Tensor:
        """(B, T, ...) or a (1, T, ...) broadcast -> (B', M, ...)."""
        rows = self.rows if x.shape[0] != 1 else torch.zeros_like(self.rows)
        return x[rows[:, None], self.index]

    def scatter(self, full: Tensor, part: Tensor) -> Tensor:
        """``full`` (B, T, ...) with the valid entries of ``part`` (B', M, ...) written in; out of place, so
        autograd flows to both (an exited element's gradient goes to its frozen state)."""
        return full.index_put((self.flat_rows, self.flat_index), part[self.valid])

    def scatter_heads(self, full: Tensor, part: Tensor) -> Tensor:
        """:meth:`scatter` for attention's head-major layout: full (B, Hd, T, D), part (B', Hd, M, D)."""
        return self.scatter(full.transpose(1, 2), part.transpose(1, 2)).transpose(1, 2)
