"""Typed schema of ``recurrent-lm-train``'s hydra config.

:class:`TrainConfig` holds what every run shares; :func:`recurrent_lm.train.app.register_configs` extends it
with one optional field per registered app (``data``, ``task``, ``coconut``: :mod:`recurrent_lm.train.app`), typed by the app's own
config class, and stores the result in hydra's ConfigStore as ``base_config``. It is listed first in
``conf/config.yaml``'s defaults, so every group file is merged *into* these dataclasses: a typo'd key or a
wrong type fails at compose time with the full key named, before any data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, get_args

from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.samplers import SamplerConfig
from recurrent_lm.model.attention import backend_problem
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.train.parallel import ParallelConfig

SCHEDULES = ("wsd", "cosine", "constant")
PRECISIONS = ("auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))
"""``auto`` and every precision string Lightning accepts."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay_on_norms_biases_embeddings: bool = True
    """Huginn/GPT practice: decay only the matmul weights."""
    schedule: str = "wsd"
    """wsd = warmup-stable-decay (linear warmup, constant, linear cool-down); cosine; constant."""
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    """wsd: share of max_steps spent in the final linear decay."""
    min_lr_ratio: float = 0.0
    """Final lr as a fraction of lr (cosine and wsd)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule={self.schedule!r} is unknown; choose one of {SCHEDULES}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.decay_fraction <= 1:
            raise ConfigError("optim: need lr > 0, warmup_steps >= 0 and 0 <= decay_fraction <= 1")


@dataclass
class TrainerConfig:
    """What is handed to ``lightning.Trainer`` (plus the few knobs it lacks).

    Every value is checked when the config is composed, before any data work. Intervals are counts
    of optimizer steps >= 1; where ``null`` is allowed it means "off" and says so below.
    """

    accelerator: str = "auto"
    devices: str = "auto"
    """Processes per node, one per device (a CPU run: processes that share the cores); under SLURM it must
    equal --ntasks-per-node. More than one process needs a distributed ``parallel`` strategy."""
    num_nodes: int = 1
    precision: str = "auto"
    """auto = bf16-mixed wherever bf16 is native (CUDA, CPUs with AVX512-BF16/AMX), else 32-true; or any
    Lightning precision string (bf16-mixed, 32-true, 16-mixed, ...)."""
    max_steps: int = 1000
    """Optimizer steps to train for (>= 1); the lr schedule is laid out over them."""
    micro_batch_size: int = 8
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    """Clip the global gradient norm to this; null = no clipping (the norm is still logged and checked)."""
    val_check_interval: Optional[int] = 250
    """Optimizer steps between validations (the training stream is infinite); null = no validation."""
    val_batches: int = 8
    """Validation batches per loader at each validation (>= 1; switch validation off with val_check_interval)."""
    eval_depths: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32])
    """Test-time depths at which validation loss is measured."""
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: Optional[int] = 250
    """Optimizer steps between step-N.ckpt/last.ckpt writes; null = only the final last.ckpt."""
    max_nonfinite_steps: int = 0
    """Optimizer steps with a non-finite gradient norm that are skipped before the run stops with an
    error; 0 stops at the first. A skipped step leaves weights and optimizer state untouched."""
    compile: bool = False
    """torch.compile each block (the depth loop itself stays eager)."""
    attn_backend: str = "sdpa"
    """How attention is computed: sdpa (torch, any device), flash (flash-attn: CUDA, fp16/bf16, no attn_window),
    eager (the plain reference). A runtime choice like compile: the model takes it when built, and an exported
    config.json does not record it."""
    deterministic: bool = False
    exit_loss_beta: Optional[float] = None
    """Ouro's stage I (recurrent_lm/exitgate/stage1.py): train an exit gate with the model on the expected loss
    under its exit distribution minus this weight times the distribution's entropy (Ouro: 0.05–0.1); null = the
    ordinary loss at the sampled depth, no gate."""
    throughput_window: int = 20
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        at_least_one = {"max_steps": self.max_steps, "micro_batch_size": self.micro_batch_size,
                        "accumulate_grad_batches": self.accumulate_grad_batches, "num_nodes": self.num_nodes,
                        "val_batches": self.val_batches, "log_every_n_steps": self.log_every_n_steps,
                        "throughput_window": self.throughput_window}
        optional = {"val_check_interval": self.val_check_interval,
                    "checkpoint_every_n_steps": self.checkpoint_every_n_steps}
        for key, value in {**at_least_one, **optional}.items():
            if value is not None and value < 1:
                off = ", or null to switch it off" if key in optional else ""
                raise ConfigError(f"trainer.{key}={value}: must be an integer >= 1{off}")
        if not self.eval_depths or min(self.eval_depths) < 1:
            raise ConfigError(f"trainer.eval_depths={self.eval_depths}: must be a non-empty list of depths >= 1")
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"trainer.max_nonfinite_steps={self.max_nonfinite_steps}: must be >= 0 "
                             "(0 stops at the first non-finite step)")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ConfigError(f"trainer.gradient_clip_val={self.gradient_clip_val}: must be > 0, or null for none")
        if self.exit_loss_beta is not None and not self.exit_loss_beta >= 0:
            raise ConfigError(f"trainer.exit_loss_beta={self.exit_loss_beta}: the entropy weight of stage I must be "
                             ">= 0 (Ouro uses 0.05–0.1), or null to train without an exit gate")
        problem = backend_problem(self.attn_backend)
        if problem:
            raise ConfigError(f"trainer.{problem}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r} is unknown; choose one of {list(PRECISIONS)}")
        count = self.devices.isdigit() and int(self.devices) >= 1
        indices = "," in self.devices and all(part.strip().isdigit() for part in self.devices.split(",") if part)
        if not (self.devices in ("auto", "-1") or count or indices):
            raise ConfigError(f"trainer.devices={self.devices!r}: give auto, a count >= 1, -1 (all), or device "
                             "indices such as '0,1'")


@dataclass
class LoggerConfig:
    csv: bool = True
    """logs/metrics.csv, continued across resumes: rows of re-run steps are superseded (train/metrics_log.py)."""
    flush_every_n_steps: int = 50

    def __post_init__(self) -> None:
        if self.flush_every_n_steps < 1:
            raise ConfigError(f"logger.flush_every_n_steps={self.flush_every_n_steps}: must be an integer >= 1")
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "recurrent_lm"


@dataclass
class TrainConfig:
    """Root config of ``recurrent-lm-train``: the part every app shares (the apps' groups are added by
    :func:`register_configs`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the run is spread over processes (conf/parallel/: single, ddp, fsdp, deepspeed)."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    init_from: Optional[str] = None
    """A model directory (config.json + safetensors) whose weights the run starts from, e.g. a Hugging Face model
    retrofitted by recurrent-lm-convert. Its config.json fixes the architecture; model.* may set only the recipe
    fields (train/init_from.py), so use it with model=pretrained. A resume takes the weights from the checkpoint.
    With coconut=, a Coconut export of a Hugging Face model (a run's export/, or recurrent-lm-convert --from
    coconut-ref): its model and tokenizer replace coconut.hf_model's."""
    name: str = "default"
    run_dir: str = "runs/${name}"
    """Everything of a run lives here: checkpoints/, logs/, config.yaml, export/."""
    resume: str = "auto"
    """auto = continue from the newest complete checkpoint in run_dir/checkpoints (last.ckpt or
    step-N.ckpt), else start fresh; none = start fresh (refused on a run dir that holds a run, unless
    overwrite=true); or the path of a checkpoint."""
    overwrite: bool = False
    """With resume=none: delete the run dir's checkpoints, logs and export, then start fresh."""
    allow_changes: list[str] = field(default_factory=list)
    """Settings a resume may change from the checkpoint's recipe, by key or group: e.g. [model.mean_recurrence],
    [optim], [data] (train/resume_guard.py). Any other change of model, sampler, optim or data is refused."""
    seed: int = 0
    export: bool = True
    """Write run_dir/export (safetensors + config.json + tokenizer.json) at the end."""
    sample_prompt: str = "ROMEO."
    sample_tokens: int = 48
    sample_temperature: float = 0.8
    """Temperature of the end-of-run sample (0 = greedy; a small model's greedy text loops on one phrase)."""
    sample_top_k: Optional[int] = 40
    """The end-of-run sample draws from the top_k most likely tokens (null = all)."""
    dry_run: bool = False
    """Compose, validate and print the config, build the model, then exit."""
    flop_budget: Optional[float] = None
    """Training FLOPs this run is meant to spend (an iso-FLOP grid point); conf/experiment/isoflop.yaml derives
    trainer.max_steps from it with the ${iso_flop_steps:...} resolver. Recorded for recurrent-lm-sweep."""

