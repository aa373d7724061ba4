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

from omegaconf import OmegaConf

RESOLVER = "rlm_job_dir"
MAX_NAME = 120
"""Characters of a job directory's name (file systems allow 255; the job number keeps truncated names unique)."""


def job_dir_name(num: int | str, override_dirname: str) -> str:
    """``<num>_<override_dirname>``, made one safe path component: path separators and other characters that
    would nest or break a directory name become ``_``, and a long name is cut."""
    safe = re.sub(r"[^\w.=,+\-\[\]]", "_", override_dirname)
    return f"{num}_{safe}"[:MAX_NAME] if safe else str(num)


def register_job_dir_resolver() -> None:
    """``${rlm_job_dir:${hydra.job.num},${hydra.job.override_dirname}}``, used by conf/config.yaml's
    hydra.sweep.subdir (registered before hydra composes, also in a submitit job's process)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda num, overrides="": job_dir_name(num, str(overrides)))
