"""The one error type of the interop formats."""

from __future__ import annotations

from recurrent_lm.errors import ConfigError


class FormatError(ConfigError):
    """A checkpoint or config that does not fit the mapping; the message names the key, file and fix.

    A :class:`~recurrent_lm.errors.UserError`, so ``recurrent-lm-convert`` prints it as one line and exits 2.
    """
