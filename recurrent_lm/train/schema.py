"""Typed schema of the pretraining app's hydra config.

Registered in hydra's ConfigStore as ``base_config`` and listed first in ``conf/config.yaml``'s
defaults, so every group file is merged *into* these dataclasses: a typo'd key or a wrong type
fails at compose time with the full key named, before any data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from recurrent_lm.data.config import DataConfig
from recurrent_lm.loop.samplers import SamplerConfig
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.reasoning.config import TaskConfig

SCHEDULES = ("wsd", "cosine", "constant")


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
            raise ValueError(f"optim.schedule={self.schedule!r} is unknown; choose one of {SCHEDULES}")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.decay_fraction <= 1:
            raise ValueError("optim: need lr > 0, warmup_steps >= 0 and 0 <= decay_fraction <= 1")


@dataclass
class TrainerConfig:
    """What is handed to ``lightning.Trainer`` (plus the few knobs it lacks)."""

    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    """auto | ddp | fsdp | deepspeed_stage_2 | ... (Lightning strategy names)."""
    precision: str = "auto"
    """auto = bf16-mixed wherever bf16 is native (CUDA, CPUs with AVX512-BF16/AMX), else 32-true; or any
    Lightning precision string (bf16-mixed, 32-true, 16-mixed, ...)."""
    max_steps: int = 1000
    micro_batch_size: int = 8
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    val_check_interval: int = 250
    """Optimizer steps between validations (the training stream is infinite)."""
    val_batches: int = 8
    eval_depths: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32])
    """Test-time depths at which validation loss is measured."""
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 250
    compile: bool = False
    """torch.compile each block (the depth loop itself stays eager)."""
    deterministic: bool = False
    throughput_window: int = 20
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    csv: bool = True
    """logs/metrics.csv (appended across resumes: the last row of a step wins)."""
    flush_every_n_steps: int = 50
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "recurrent_lm"


@dataclass
class TrainConfig:
    """Root config of ``recurrent-lm-train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    task: Optional[TaskConfig] = None
    """A synthetic reasoning task (conf/task/) instead of the text corpus."""
    name: str = "default"
    run_dir: str = "runs/${name}"
    """Everything of a run lives here: checkpoints/, logs/, config.yaml, export/."""
    resume: str = "auto"
    """auto = continue from run_dir/checkpoints/last.ckpt if present; none; or a checkpoint path."""
    seed: int = 0
    export: bool = True
    """Write run_dir/export (safetensors + config.json + tokenizer.json) at the end."""
    sample_prompt: str = "ROMEO."
    sample_tokens: int = 48
    dry_run: bool = False
    """Compose, validate and print the config, build the model, then exit."""


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=TrainConfig)
