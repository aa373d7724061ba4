"""Collective loop decisions: every rank leaves an adaptive loop at the same iteration."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def all_ranks_exited(local_done: Tensor) -> Tensor:
    """True only when every rank's elements have all exited (an all-reduce MIN of the local flag).

    Pass as ``unroll(exit_sync=all_ranks_exited)`` when each step runs collectives (FSDP gathers
    parameters inside the step): a rank that stopped early would leave the others waiting forever.
    Without an initialised process group it is the local flag.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return local_done
    flag = local_done.to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag[0].bool()
