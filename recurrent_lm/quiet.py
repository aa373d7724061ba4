"""Library noise the user cannot act on, filtered at the source, each by message and emitting module.

Every CLI calls :func:`quiet_libraries` first. Each entry names the exact message and the module that emits
it, so a new or different warning from the same library still shows. What is filtered and why:

* Lightning's product tips ("💡 Tip: ... litlogger / litmodels"): advertisements, logged at INFO by
  ``lightning.pytorch.utilities.rank_zero`` when a Trainer is built or first logs.
* ``isinstance(treespec, LeafSpec)`` is deprecated: torch 2.13 deprecates a class that Lightning 2.6's
  ``lightning.pytorch.utilities._pytree`` still uses; only a Lightning release can change it.
* ``fatal: not a git repository``: lm-eval records the git hash of the working directory by running
  ``git describe`` with git's stderr on the terminal; outside a repository git says so on every evaluation
  (:func:`quiet_lm_eval_git`, for the evaluation CLIs).
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from typing import Optional

LIBRARY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # (message regex, category, module regex)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
TIP_PREFIX = "💡 Tip:"


class _DropProductTips(logging.Filter):
    """Drops Lightning's "💡 Tip:" records; every other record of the logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_libraries() -> None:
    """Install the filters (idempotent: a second call adds nothing)."""
    for message, category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropProductTips) for f in logger.filters):
            logger.addFilter(_DropProductTips())


def git_hash_quietly() -> Optional[str]:
    """lm-eval's ``get_git_commit_hash`` (same command, same fallback), with git's stderr discarded."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        from lm_eval.loggers.utils import get_commit_from_path

        return get_commit_from_path(os.getcwd())


def quiet_lm_eval_git() -> None:
    """Make lm-eval's evaluator record the git hash without printing git's errors (lm_eval imported here)."""
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = git_hash_quietly
