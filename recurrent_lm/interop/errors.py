"""The one error type of the interop formats."""

from __future__ import annotations


class FormatError(ValueError):
    """A checkpoint or config that does not fit the mapping; the message names the key, file and fix.

    A ValueError, so ``recurrent-lm-convert`` prints it as one line and exits 2.
    """
