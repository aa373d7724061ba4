"""Where a hydra multirun puts its jobs: one directory per sweep, one per job named after its overrides.

    runs/multirun/<name>/<sweep start, to the second>/<job number>_<overrides>/
    e.g. runs/multirun/default/2026-12-06_18-40-12/1_model.mean_recurrence=8

Jobs used to land in ``runs/multirun/<name>/<job number>``: a second sweep with other overrides found the
first sweep's job 0 there and resumed it. A per-sweep directory keeps sweeps apart; the overrides in the job's
name make a listing readable. To continue an interrupted sweep, pass its directory back:
``hydra.sweep.dir=runs/multirun/<name>/<time>`` (a requeued SLURM job keeps it by itself).
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from omegaconf import OmegaConf

RESOLVER = "rlm_job_dir"
MAX_NAME = 120
"""Characters of a job directory's name (file systems allow 255; the job number keeps truncated names unique)."""


def swept_keys(argv: Sequence[str]) -> set[str]:
    """The keys that the command line sweeps (``model.mean_recurrence=4,8``, ``range(...)``): they go first in a job's
    name, so a cut name still says what differs. Empty where the command line is not the sweep's: a submitit job
    names its directory in its own process, where the keys then come in hydra's (sorted) order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # not hydra overrides: nothing to put first
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_dir_name(num: int | str, override_dirname: str, first: set[str] = frozenset()) -> str:
    """``<num>_<override_dirname>`` with the ``first`` keys' items in front, made one safe path component: path
    separators and other characters that would nest or break a directory name become ``_``, and a long name is cut."""
    items = re.split(r",(?=[\w.+~/-]+=)", override_dirname) if override_dirname else []
    items.sort(key=lambda item: item.split("=")[0].lstrip("+~") not in first)
    safe = re.sub(r"[^\w.=,+\-\[\]]", "_", ",".join(items))
    return f"{num}_{safe}"[:MAX_NAME] if safe else str(num)


def register_job_dir_resolver() -> None:
    """``${rlm_job_dir:${hydra.job.num},${hydra.job.override_dirname}}``, used by conf/config.yaml's
    hydra.sweep.subdir (registered before hydra composes, also in a submitit job's process)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda num, overrides="": job_dir_name(num, str(overrides),
                                                                                  swept_keys(sys.argv[1:])))
