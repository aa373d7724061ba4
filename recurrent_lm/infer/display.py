"""Thinking depth per token, for a terminal: tokens shaded by the core iterations they used.

``depth_text`` gives a ``rich`` Text (background from pale = shallow to dark red = deep) for a terminal;
``depth_pairs`` the same as plain text (each token with its count) for a pipe or a log, where the shading is
lost; ``sparkline`` a one-line overview (▁ … █).
"""

from __future__ import annotations

from typing import Callable, Sequence

from rich.text import Text

BARS = "▁▂▃▄▅▆▇█"
# Pale yellow -> dark red, dark enough at the deep end for white text.
PALETTE = ("#fff7bc", "#fee391", "#fec44f", "#fe9929", "#ec7014", "#cc4c02", "#993404", "#662506")


def level(steps: int, cap: int, levels: int) -> int:
    """0..levels-1: where ``steps`` sits between 1 and ``cap`` iterations."""
    if cap <= 1:
        return levels - 1
    frac = (min(max(steps, 1), cap) - 1) / (cap - 1)
    return min(levels - 1, int(frac * levels))


def sparkline(steps: Sequence[int], cap: int) -> str:
    """One block character per token, its height proportional to the steps it used."""
    return "".join(BARS[level(s, cap, len(BARS))] for s in steps)


def depth_text(pieces: Sequence[str], steps: Sequence[int], cap: int) -> Text:
    """Each token's text on a background shaded by its depth (newlines shown as ↵)."""
    text = Text()
    for piece, s in zip(pieces, steps):
        i = level(s, cap, len(PALETTE))
        shown = piece.replace("\n", "↵\n") if piece else "∅"
        text.append(shown, style=f"{'white' if i >= 5 else 'black'} on {PALETTE[i]}")
    return text


def depth_pairs(pieces: Sequence[str], steps: Sequence[int]) -> str:
    """``'ROM'·4 'EO'·6 '.'·3``: each token's text (quoted, escapes visible) and the iterations it used."""
    return " ".join(f"{piece!r}·{s}" for piece, s in zip(pieces, steps))


def legend(cap: int) -> Text:
    """The shade of each depth band, e.g. `1-4 5-8 ... 29-32` for cap 32."""
    text = Text("depth: ")
    for i, colour in enumerate(PALETTE):
        members = [s for s in range(1, cap + 1) if level(s, cap, len(PALETTE)) == i]
        if not members:
            continue
        label = f"{members[0]}" if len(members) == 1 else f"{members[0]}-{members[-1]}"
        text.append(f" {label} ", style=f"{'white' if i >= 5 else 'black'} on {colour}")
    return text


def token_pieces(tokens: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text of each token on its own (a byte-level piece of a multi-byte character shows as �)."""
    return [decode([t]) for t in tokens]


def steps_summary(steps: Sequence[int], cap: int) -> str:
    if not steps:
        return "no tokens"
    mean = sum(steps) / len(steps)
    return f"steps/token mean {mean:.2f} min {min(steps)} max {max(steps)} (cap {cap})"
