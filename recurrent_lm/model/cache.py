"""KV cache for a recurrent-depth model: prelude and coda layers, plus (iteration, layer) for the core.

Core entries live in *slots*. ``full`` gives every iteration its own slot; ``compressed`` keeps
``kv_window`` slots and maps iteration i to slot i mod kv_window (so a cache with kv_window >= r is the
full cache); ``latest`` keeps one slot, i.e. each position's most recent K/V. A token that exited early
has no K/V for later iterations: every strategy serves its latest computed entry instead, both for
tokens exited in an earlier forward and for exited tokens inside a batch (``CacheView.active``);
a slot that already holds an entry of the exited token from this forward (a reused compressed or
latest slot) keeps it. Either way the cache ends up as if the loop had stopped when the token
exited, which is what makes batched decoding with per-token exit equal to one-by-one decoding.

Under compaction (:class:`recurrent_lm.loop.compaction.Subset`) a core iteration computes K/V for the
active tokens only; the others' entries are exactly the ones the masked computation would keep (their
latest, or the slot's entry of this forward), so the two give the same cache and the same attention.
Read-only updates (exit criteria's readouts through the coda) likewise keep each new token's newest
readout K/V, which a compacted readout serves for the tokens it skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.compaction import Subset

CACHE_STRATEGIES = ("full", "compressed", "latest")
DEFAULT_KV_WINDOW = 4
"""Iterations a compressed cache keeps per core layer unless told otherwise: the one default of ``kv_window``."""
KV = tuple[Tensor, Tensor]


class RecurrentKVCache:
    """Grows by ``commit(n)`` after each forward; entries are (B, Hkv, S, D) tensors."""

    def __init__(self, strategy: str = "full", kv_window: Optional[int] = None) -> None:
        if strategy not in CACHE_STRATEGIES:
            raise ConfigError(f"unknown kv_cache strategy {strategy!r}; choose one of {CACHE_STRATEGIES}")
        if strategy == "compressed" and (kv_window is None or kv_window < 1):
            raise ConfigError(f"kv_window={kv_window!r}: kv_cache='compressed' needs kv_window >= 1 (iterations kept "
                             "per core layer)")
        self.strategy = strategy
        self.n_slots = {"full": None, "compressed": kv_window, "latest": 1}[strategy]
        self.length = 0  # committed positions
        self._store: dict[tuple, KV] = {}
        self._pending: dict[int, KV] = {}  # core layer -> K/V of the newest iteration in this forward
        self._written: set[tuple] = set()
        self._readout: dict[tuple, KV] = {}  # non-core slot -> newest read-only K/V of this forward's tokens

    def view(self, active: Optional[Union[Tensor, Subset]] = None, read_only: bool = False) -> "CacheView":
        return CacheView(self, active, read_only)

    def slot_key(self, slot: tuple) -> tuple:
        if slot[0] != "core":
            return slot
        _, iteration, layer = slot
        return ("core", iteration if self.n_slots is None else iteration % self.n_slots, layer)

    def update(self, slot: tuple, k: Tensor, v: Tensor, active: Optional[Union[Tensor, Subset]],
               read_only: bool) -> KV:
        """Store the new tokens' K/V of ``slot`` and return (K, V) over past + new tokens, (B, Hkv, S, D); under
        a :class:`Subset` ``k``/``v`` hold its (B', Hkv, M, D) tokens and the result its B' rows."""
        key = self.slot_key(slot)
        subset = active if isinstance(active, Subset) else None
        if slot[0] == "core":
            layer = slot[2]
            latest = (k, v)
            if subset is not None:
                if layer not in self._pending:
                    raise RuntimeError("a compacted core iteration needs a full one before it in this forward "
                                       "(the first iteration computes every token)")
                pending_k, pending_v = self._pending[layer]
                latest = (subset.scatter_heads(pending_k, k), subset.scatter_heads(pending_v, v))
                if key in self._written:  # as below: an exited token keeps this forward's entry of the slot
                    held_k, held_v = (t[:, :, self.length:] for t in self._store[key])
                    k, v = subset.scatter_heads(held_k, k), subset.scatter_heads(held_v, v)
                else:
                    k, v = latest
            elif active is not None and layer in self._pending:
                keep = active[:, None, :, None]  # (B, 1, T, 1): exited tokens keep their latest K/V
                pending_k, pending_v = self._pending[layer]
                latest = (torch.where(keep, k, pending_k), torch.where(keep, v, pending_v))
                if key in self._written:
                    # The slot already holds an entry of this forward (compressed/latest reuse slots):
                    # an exited token keeps it, so the slot ends up with the token's own last
                    # iterations, as if the loop had stopped when the token exited (batch invariance).
                    held_k, held_v = (t[:, :, self.length:] for t in self._store[key])
                    k, v = torch.where(keep, k, held_k), torch.where(keep, v, held_v)
                else:
                    k, v = latest
            if not read_only:
                self._pending[layer] = latest
        elif read_only:
            if subset is not None:
                if key not in self._readout:
                    raise RuntimeError("a compacted readout needs a full one before it in this forward")
                held_k, held_v = self._readout[key]
                k, v = subset.scatter_heads(held_k, k), subset.scatter_heads(held_v, v)
            self._readout[key] = (k, v)
        past = self._past(key)
        full_k, full_v = (k, v) if past is None else (torch.cat((past[0], k), 2), torch.cat((past[1], v), 2))
        if not read_only:
            self._store[key] = (full_k, full_v)
            self._written.add(key)
        if subset is not None and subset.rows.numel() < full_k.shape[0]:
            return full_k[subset.rows], full_v[subset.rows]
        return full_k, full_v

    def _past(self, key: tuple) -> Optional[KV]:
        """Committed entries of a slot; a core slot seen for the first time starts from the latest."""
        if key in self._store:
            k, v = self._store[key]
            return k[:, :, : self.length], v[:, :, : self.length]
        if key[0] == "core" and self.length > 0:
            layer_slots = [s for s in self._store if s[0] == "core" and s[2] == key[2]]
            k, v = self._store[max(layer_slots, key=lambda s: s[1])]  # highest slot holds each latest
            return k[:, :, : self.length], v[:, :, : self.length]
        return None

    def commit(self, new_tokens: int) -> None:
        """Close a forward: slots that did not run this time get the new tokens' latest K/V."""
        for layer, (k, v) in self._pending.items():
            # Only slots that exist: a compressed cache whose kv_window exceeds every depth run so far
            # then holds exactly the full cache's slots (and bytes). A slot created later starts
            # from the highest one, which holds each position's latest entry (see _past).
            wanted = {s[1] for s in self._store if s[0] == "core" and s[2] == layer}
            for slot_index in wanted:
                key = ("core", slot_index, layer)
                if key not in self._written:
                    past = self._past(key)
                    self._store[key] = (k, v) if past is None else \
                        (torch.cat((past[0], k), 2), torch.cat((past[1], v), 2))
        self.length += new_tokens
        self._pending.clear()
        self._written.clear()
        self._readout.clear()

    def select_rows(self, rows: Tensor) -> None:
        """Keep only batch rows ``rows`` (a 1-D index tensor), e.g. to drop finished sequences.

        Call between forwards (after ``commit``); the cache then serves a batch of ``len(rows)``.
        """
        if self._pending:
            raise RuntimeError("RecurrentKVCache.select_rows during a forward; call it after commit()")
        self._store = {key: (k[rows], v[rows]) for key, (k, v) in self._store.items()}

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self._store.values())

    def core_slots(self) -> int:
        return len({s[1] for s in self._store if s[0] == "core"})


@dataclass
class CacheView:
    """The cache as one forward (or one core iteration of it) sees it."""

    cache: RecurrentKVCache
    active: Optional[Union[Tensor, Subset]] = None  # (B, T) bool or a compacted step's Subset
    read_only: bool = False  # exit-criterion readouts must not write coda entries

    def update(self, slot: tuple, k: Tensor, v: Tensor) -> KV:
        return self.cache.update(slot, k, v, self.active, self.read_only)
