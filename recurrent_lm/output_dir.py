"""Writing a whole output directory without losing anything: refuse a non-empty destination unless told to
replace it, build the new contents in a hidden temporary sibling, and move it into place only when complete.

Used by every command that writes a directory (``recurrent-lm-convert``, ``recurrent-lm-export``, the Coconut data
generator, the training run's export). A failure (a full disk, a bad source) leaves the destination as it was --
absent, or the user's old directory -- and no half-written or empty directory behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recurrent_lm.errors import AlreadyExistsError


def check_destination(dst: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse ``dst`` when it is a file, or a non-empty directory and ``overwrite`` is off, naming the fix."""
    if dst.exists() and not dst.is_dir():
        raise AlreadyExistsError(f"{dst} exists and is not a directory; choose another output directory")
    if not overwrite and dst.is_dir() and any(dst.iterdir()):
        raise AlreadyExistsError(f"{dst} already exists and is not empty; pass {flag} to replace it (its files are "
                              "removed only once the new output is complete), or choose another output directory")


@contextmanager
def staged_dir(dst: Path, overwrite: bool, flag: str = "--overwrite") -> Iterator[Path]:
    """A temporary sibling ``.<name>.<random>.tmp`` to write into; it replaces ``dst`` when the block completes.

    The name matches the partial writes that :func:`recurrent_lm.train.run_dir.remove_partial_writes` clears, so a
    killed writer's leftovers inside a run directory are removed by the next launch.
    """
    check_destination(dst, overwrite, flag)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    try:
        yield tmp
        if dst.exists():  # two renames: the old directory survives until the new one is complete and in place
            old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old.", suffix=".tmp"))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
