"""How a run is spread over processes: the ``parallel`` config group and the Lightning strategy it builds.

    parallel=single      one process (default; Lightning's ``auto``)
    parallel=ddp         a full replica per process, gradients all-reduced (gloo on CPU, NCCL on GPU)
    parallel=fsdp        FSDP2 ``fully_shard`` through Lightning's ModelParallelStrategy
    parallel=deepspeed   ZeRO stage 1-3 (``parallel.zero_stage``); needs the ``gpu`` extra and CUDA

Why FSDP2 and not Lightning's ``fsdp``: that strategy is FSDP1, which asserts when a training step runs
more than one forward, and Coconut runs one per thought. FSDP2 hooks each unit's own forward: pretraining
gets one unit per block (:func:`shard_model`), Coconut one unit whose single call is the whole step of
forwards (:func:`shard_step`). The sharding is applied in ``configure_model``, where Lightning hands over
the device mesh.

Every strategy keeps the app's guarantees: the depth sampler and the s_0 noise are pure functions of the
step (so every rank draws the same depth without communicating), each rank reads its own disjoint slice of
every global batch, data is prepared once before the processes start, and checkpoints resume exactly.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from recurrent_lm.errors import ConfigError, WaitTimeoutError

STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
CHECKPOINTING = ("none", "block", "iteration")
GPU_EXTRA = "pip install 'recurrent_lm[gpu]'"


@dataclass
class ParallelConfig:
    """The ``parallel`` group: which strategy, and the parallel-side settings that do not change the model."""

    strategy: str = "single"
    """single | ddp | fsdp | deepspeed. Processes: trainer.devices per node × trainer.num_nodes."""
    zero_stage: int = 2
    """deepspeed only: ZeRO stage 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)."""
    activation_checkpointing: str = "none"
    """What is recomputed in backward (applied in configure_model, any strategy): none; block = every
    transformer block (prelude, core, coda); iteration = each gradient-carrying core iteration as a whole
    (memory flat in k too). The only activation-checkpointing switch of a run."""
    reshard_after_forward: bool = True
    """fsdp only: free gathered parameters after each unit's forward (ZeRO-3-like memory); false keeps them
    until backward (ZeRO-2-like: more memory, one all-gather fewer per unit)."""
    sharded_checkpoint: bool = True
    """fsdp only: each rank writes its shard (the checkpoint is a directory; nothing is gathered); false gathers
    full weights and optimizer states on rank 0 into one file."""
    process_group_backend: Optional[str] = None
    """null: gloo on CPU, nccl on CUDA."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"parallel.strategy={self.strategy!r} is unknown; choose one of {list(STRATEGIES)} "
                             "(or select a preset: parallel=ddp, parallel=fsdp, ...)")
        if self.activation_checkpointing not in CHECKPOINTING:
            was_bool = self.activation_checkpointing.lower() in ("true", "false")
            hint = " (the former true is block; false is none)" if was_bool else ""
            raise ConfigError(f"parallel.activation_checkpointing={self.activation_checkpointing!r} is unknown; "
                              f"choose one of {list(CHECKPOINTING)}{hint}")
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"parallel.zero_stage={self.zero_stage}: DeepSpeed ZeRO has stages 1, 2 and 3")

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"


def device_count(devices: str, accelerator: str) -> int:
    """Processes per node that ``trainer.devices`` asks for ('auto' is 1 process on CPU, every GPU on CUDA)."""
    if "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices.isdigit():
        return int(devices)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return max(1, torch.cuda.device_count()) if on_gpu else 1


def planned_world_size(devices: str, accelerator: str, num_nodes: int) -> int:
    return device_count(devices, accelerator) * num_nodes


def slurm_tasks_per_node(env: Optional[dict[str, str]] = None) -> Optional[int]:
    """Tasks SLURM starts on this node (``--ntasks-per-node``), or None outside an srun/sbatch allocation."""
    env = os.environ if env is None else env
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"])
    if "SLURM_TASKS_PER_NODE" in env:  # e.g. "2(x3)" or "2,1": this node's count is the first
        return int(env["SLURM_TASKS_PER_NODE"].split("(")[0].split(",")[0])
    return None


def check_launch(parallel: ParallelConfig, devices: str, accelerator: str, num_nodes: int,
                 env: Optional[dict[str, str]] = None) -> None:
    """Refuse a process layout that would hang or train on the wrong data, before anything is written.

    Under SLURM each task is one process, so ``trainer.devices`` must equal ``--ntasks-per-node`` and
    ``trainer.num_nodes`` must equal ``--nodes``; otherwise Lightning waits for ranks that never start.
    """
    env = os.environ if env is None else env
    world = planned_world_size(devices, accelerator, num_nodes)
    if world > 1 and not parallel.distributed:
        raise ConfigError(f"trainer.devices={devices} × trainer.num_nodes={num_nodes} is {world} processes but "
                         "parallel.strategy=single; choose parallel=ddp (or fsdp, deepspeed), or trainer.devices=1")
    if parallel.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"parallel.strategy=deepspeed needs DeepSpeed, which is not installed; {GPU_EXTRA}")
        if accelerator == "cpu" or not torch.cuda.is_available():
            raise ConfigError("parallel.strategy=deepspeed runs on CUDA only (Lightning's DeepSpeed strategy refuses "
                             "CPUs); on this machine use parallel=fsdp, which shards on CPU too")
    per_node = slurm_tasks_per_node(env)
    if per_node is None or "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    count = device_count(devices, accelerator)
    if count != per_node:
        raise ConfigError(f"trainer.devices={devices} ({count} per node) but SLURM starts {per_node} task(s) per node "
                         f"(--ntasks-per-node={per_node}); one task drives one device: set trainer.devices="
                         f"{per_node} or submit with --ntasks-per-node={count}")
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", num_nodes)))
    if nodes != num_nodes:
        raise ConfigError(f"trainer.num_nodes={num_nodes} but the SLURM job has {nodes} node(s); set "
                         f"trainer.num_nodes={nodes} or submit with --nodes={num_nodes}")


def is_rank_zero(env: Optional[dict[str, str]] = None) -> bool:
    """Whether this process is global rank 0, decided before any process group exists: torchrun's RANK,
    SLURM's SLURM_PROCID, or Lightning's own launcher (NODE_RANK and LOCAL_RANK both 0)."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID"):
        if key in env:
            return int(env[key]) == 0
    return int(env.get("NODE_RANK", 0)) == 0 and int(env.get("LOCAL_RANK", 0)) == 0


def wait_for_file(path: Path, what: str, timeout_s: float = 3600.0) -> None:
    """Block until ``path`` exists: how the other ranks wait for rank 0 before a process group exists."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"waited {timeout_s:.0f} s for {what} ({path} never appeared); see rank 0's log")
        time.sleep(0.5)


def build_strategy(parallel: ParallelConfig) -> Any:
    """The Lightning strategy for ``parallel`` (a name or an instance)."""
    if parallel.strategy == "single":
        return "auto"
    if parallel.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Every parameter takes part in every step (the depth varies, the modules used do not).
        return DDPStrategy(process_group_backend=parallel.process_group_backend, find_unused_parameters=False)
    if parallel.strategy == "fsdp":
        from recurrent_lm.train.sharded import FSDP2Strategy

        return FSDP2Strategy(save_distributed_checkpoint=parallel.sharded_checkpoint,
                             process_group_backend=parallel.process_group_backend)
    from recurrent_lm.train.sharded import AtomicDeepSpeedStrategy

    return AtomicDeepSpeedStrategy(stage=parallel.zero_stage, process_group_backend=parallel.process_group_backend)


def apply_activation_checkpointing(model: nn.Module, mode: str = "block") -> None:
    """``parallel.activation_checkpointing``: ``block`` recomputes each block in backward (the composable
    ``checkpoint`` keeps parameter names unchanged, so checkpoints and exports are the same with or without
    it); ``iteration`` has a RecurrentDepthLM recompute each gradient-carrying core iteration as a whole."""
    if mode == "iteration":
        if not hasattr(model, "checkpoint_iterations"):
            raise ConfigError(f"parallel.activation_checkpointing=iteration needs a recurrent core, and "
                              f"{type(model).__name__} has none; use block")
        model.checkpoint_iterations = True
    elif mode == "block":
        from torch.distributed._composable import checkpoint

        for block in transformer_blocks(model):
            checkpoint(block)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: prelude/core/coda of a RecurrentDepthLM, the layer list of a Hugging
    Face causal LM (any ModuleList whose items are all the same class)."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1 \
                and not any(isinstance(m, nn.ModuleList) for m in module):
            blocks.extend(module)
    return blocks


def shard_model(model: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> None:
    """FSDP2 on a RecurrentDepthLM: one unit per block, one for the (possibly tied) embedding + LM head, and
    the root for the rest (adapter, final norm). For a step of several forwards that share one graph
    (Coconut) use :func:`shard_step` instead.

    The embedding and the head get a unit of their own (tied weights must share one unit) so that calling
    them outside the root's forward still gathers them, and the root is initialised eagerly: FSDP2 otherwise
    makes the first unit that runs the root, and the real root's forward then fails.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return  # configure_model runs again for trainer.validate: the model is already sharded
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard([model.embed, model.lm_head], mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    model._get_fsdp_state()._lazy_init()  # see the docstring; no public API does this in torch 2.13


class StepUnit(nn.Module):
    """A module whose forward is one whole training forward ``step`` over ``model``: the FSDP2 unit of
    :func:`shard_step`. It owns no parameters of its own."""

    def __init__(self, model: nn.Module, step: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.step(*args, **kwargs)


def shard_step(model: nn.Module, step: Callable[..., Any], mesh: Any, reshard_after_forward: bool = True) -> StepUnit:
    """FSDP2 for a training forward made of several model forwards that share one autograd graph (Coconut:
    the answer attends to K/V cached by the question's and the thoughts' forwards). Returns the unit to call
    in place of ``step``; ``model``'s parameters become its shards, under their usual names.

    The whole model is one unit and the whole step one call of it, which is the contract FSDP2's hooks
    assume. Per-block units break it: a unit's post-backward hook fires when the gradient reaches the inputs
    of one of its calls, while gradients from the other calls (the cached K/V, the tied embedding's lookups)
    still have to arrive. FSDP2 then reduces only the gradients complete at that moment (lost: the tied
    embedding's at curriculum stage 0, where the weight still lacks its lookups' share when the head's
    hook fires) and which ones those are depends on each rank's graph (its thought counts), so the ranks'
    reduce-scatters disagree. With one unit, the only hook is on the step's output: every gradient is
    reduced once, after the whole backward, in the same order on every rank.

    Cost: the weights, and then their gradients, are whole on every rank during the step (gathered in one
    piece, no per-block overlap), as every forward of the step uses every block anyway; between steps they
    and the optimizer states are sharded.
    """
    from torch.distributed.fsdp import fully_shard

    unit = StepUnit(model, step)
    fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return unit
