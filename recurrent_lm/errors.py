"""The one family of user-facing errors, and the one way every command line reports them.

Anything raised as a :class:`UserError` is bad input the user can fix (a setting, a file, a checkpoint, a
run directory): its message names the setting or file and the fix, so a command prints it as one line and
exits with status 2. Anything else is a bug and keeps its traceback. Each subclass also derives from the
builtin type a caller would naturally catch (``ValueError``, ``FileNotFoundError``, ...), so library users
keep catching what they caught before.

``RECURRENT_LM_DEBUG=1`` makes the commands re-raise user errors too, with their traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

DEBUG_ENV = "RECURRENT_LM_DEBUG"


class UserError(Exception):
    """Bad input the user can fix; the message says what was wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A setting, argument, or the content of a file (config, checkpoint, data) that cannot be used."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the input names that does not exist (or lacks a part it needs)."""


class NotWritableError(UserError, PermissionError):
    """An output directory that cannot be created or written."""


class StorageError(UserError, OSError):
    """A write that failed on the storage side (a full disk, an I/O error); nothing was replaced."""


class AlreadyExistsError(UserError, FileExistsError):
    """An output that exists and would be overwritten without the flag that allows it."""


class DivergedError(UserError, FloatingPointError):
    """A run whose loss or weights became non-finite; the message says which checkpoint is still good."""


class WaitTimeoutError(UserError, TimeoutError):
    """Another process (rank 0) never produced what this one waits for."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report_user_errors(prog: str, run: Callable[[], Optional[int]]) -> int:
    """``run()``'s exit status, or 2 after printing a :class:`UserError` as one line on stderr.

    Other exceptions propagate with their traceback; with ``RECURRENT_LM_DEBUG=1`` user errors do too.
    """
    try:
        return run() or 0
    except UserError as err:
        if debugging():
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
