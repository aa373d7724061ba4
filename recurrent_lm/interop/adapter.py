"""One converter protocol for every checkpoint format (torchtitan's ``StateDictAdapter`` shape).

A format is a key map plus two conversions of state dicts:

* ``key_map()`` — each of the format's tensor names -> the names of ours it fills (several for a tensor we split,
  such as Huginn's ``qk_bias``; a name shared by several of theirs for a tensor we fuse, such as Llama's q/k/v;
  none for a tensor a retrofit drops);
* ``to_ours(theirs)`` — their tensors -> ours. It takes any subset whose fused groups are complete, so an
  importer can stream a checkpoint tensor by tensor (or group by group) and hold one copy of the weights;
* ``from_ours(ours, names)`` — our state dict -> their tensors (all, or only ``names``, so an exporter can build
  each tensor just before it is written).

The mapping modules (:mod:`huginn`, :mod:`hf_llama`, :mod:`coconut_ref`) implement it; the ``*_io`` modules do the
file work and never know a tensor name.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Protocol

from torch import Tensor

from recurrent_lm.interop.errors import FormatError


class StateDictAdapter(Protocol):
    def key_map(self) -> dict[str, tuple[str, ...]]:
        """Their tensor name -> our tensor names it contributes to."""

    def to_ours(self, theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Their tensors (complete fused groups) as ours."""

    def from_ours(self, ours: Mapping[str, Tensor], names: Optional[Iterable[str]] = None) -> dict[str, Tensor]:
        """Their tensors ``names`` (default: all of the key map) built from our state dict."""


def check_names(adapter: StateDictAdapter, names: Iterable[str], origin: str, ignored: Iterable[str] = ()) -> None:
    """Refuse a checkpoint whose tensor names differ from the adapter's key map, naming what is missing or extra."""
    expected, found = set(adapter.key_map()), set(names) - set(ignored)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise FormatError(f"{origin}: the tensors do not match the format: missing {missing[:6]}"
                          f"{' …' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                          f"{' …' if len(unexpected) > 6 else ''}; check that the checkpoint and its config belong "
                          "together")
