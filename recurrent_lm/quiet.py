"""Library noise the user cannot act on, filtered at the source, each by message and emitting module.

Every CLI calls :func:`quiet_libraries` first. Each entry names the exact message and the module that emits
it, so a new or different warning from the same library still shows. What is filtered and why:

* Lightning's product tips ("💡 Tip: ... litlogger / litmodels"): advertisements, logged at INFO by
  ``lightning.pytorch.utilities.rank_zero`` when a Trainer is built or first logs.
* ``isinstance(treespec, LeafSpec)`` is deprecated: torch 2.13 deprecates a class that Lightning 2.6's
  ``lightning.pytorch.utilities._pytree`` still uses; only a Lightning release can change it.
"""

from __future__ import annotations

import logging
import warnings

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
