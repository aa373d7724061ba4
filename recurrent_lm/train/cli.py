"""``recurrent-lm-train`` / ``python -m recurrent_lm.train``: the hydra entry point of pretraining.

    recurrent-lm-train experiment=demo                     # the README's main job
    recurrent-lm-train model=small trainer.max_steps=5000  # any group or key, typed and checked
    recurrent-lm-train -m model.mean_recurrence=4,8,16     # hydra multirun sweep

Run directory (``run_dir``, default ``runs/<name>``)::

    config.yaml        resolved config of this run
    tokenizer.json     the tokenizer the data was packed with
    checkpoints/       last.ckpt (+ step-*.ckpt); ``resume=auto`` continues from last.ckpt
    logs/              metrics.csv and TensorBoard events
    export/            model.safetensors + config.json + tokenizer.json (RecurrentDepthLM.from_pretrained)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from recurrent_lm.model.io import TOKENIZER_FILE
from recurrent_lm.train.callbacks import DepthThroughputMonitor
from recurrent_lm.train.checkpoint_io import SafeCheckpointIO
from recurrent_lm.train.datamodule import TextDataModule
from recurrent_lm.train.hardware import resolve_precision
from recurrent_lm.train.export import CHECKPOINT_DIR, EXPORT_DIR, LAST_CHECKPOINT, export_model
from recurrent_lm.train.module import RecurrentLMModule
from recurrent_lm.train.report import print_report
from recurrent_lm.train.schema import TrainConfig, register_configs

if TYPE_CHECKING:
    from recurrent_lm.reasoning import ReasoningReport, TaskConfig


def conf_dir() -> Path:
    """The hydra config tree: $RECURRENT_LM_CONF, else conf/ at the repository root."""
    path = Path(os.environ.get("RECURRENT_LM_CONF", Path(__file__).resolve().parents[2] / "conf"))
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"hydra config tree not found at {path}; run from a source checkout "
                                "(pip install -e .) or set RECURRENT_LM_CONF to the repository's conf/ directory")
    return path


def resolve_resume(resume: str, run_dir: Path) -> Optional[Path]:
    """resume=auto -> last.ckpt if the run has one; none -> fresh; else an explicit checkpoint path."""
    if resume == "none":
        return None
    if resume == "auto":
        last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint; use resume=auto, resume=none, or the path "
                                f"of an existing .ckpt (e.g. {run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT})")
    return path


def prepare_run_dir(run_dir: Path) -> None:
    try:
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"run_dir={run_dir} cannot be created ({err.strerror}); set run_dir= to a writable "
                              "directory") from err
    if not os.access(run_dir, os.W_OK) or not os.access(run_dir / CHECKPOINT_DIR, os.W_OK):
        raise PermissionError(f"run_dir={run_dir} is not writable; set run_dir= to a writable directory")


def build_datamodule(cfg: TrainConfig) -> L.LightningDataModule:
    t = cfg.trainer
    if cfg.task is not None:
        from recurrent_lm.reasoning.datamodule import ReasoningDataModule

        return ReasoningDataModule(cfg.task, batch_size=t.micro_batch_size, block_size=cfg.model.block_size,
                                   seed=cfg.seed)
    return TextDataModule(cfg.data, block_size=cfg.model.block_size, micro_batch_size=t.micro_batch_size,
                          val_batches=t.val_batches, seed=cfg.seed)


def build_loggers(cfg: TrainConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(run_dir, name="logs", version="", flush_logs_every_n_steps=cfg.logger.flush_every_n_steps))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False))
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logger.wandb_project, name=cfg.name, save_dir=str(run_dir)))
    return loggers


def build_trainer(cfg: TrainConfig, run_dir: Path) -> L.Trainer:
    t = cfg.trainer
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="step-{step}", auto_insert_metric_name=False,
                        every_n_train_steps=t.checkpoint_every_n_steps, save_last=True, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        DepthThroughputMonitor(batch_size_fn=lambda b: b["input_ids"].shape[0],
                               length_fn=lambda b: b["input_ids"].numel(), window_size=t.throughput_window),
    ]
    if t.enable_progress_bar:
        callbacks.append(RichProgressBar())
    devices: Any = int(t.devices) if str(t.devices).isdigit() else t.devices
    return L.Trainer(
        accelerator=t.accelerator, devices=devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t.precision, t.accelerator), max_steps=t.max_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, callbacks=callbacks,
        logger=build_loggers(cfg, run_dir) or False, plugins=[SafeCheckpointIO()], default_root_dir=run_dir,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, use_distributed_sampler=False,
    )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Fit (or resume), validate across depths, export. Returns a summary dict (used by the report)."""
    run_dir = Path(cfg.run_dir)
    prepare_run_dir(run_dir)
    ckpt_path = resolve_resume(cfg.resume, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                             f"{cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer")
        tokenizer.save(run_dir / TOKENIZER_FILE)
    module = RecurrentLMModule(cfg.model, cfg.sampler, cfg.optim, cfg.trainer.eval_depths,
                               compile_blocks=cfg.trainer.compile, telemetry_every=cfg.trainer.log_every_n_steps)
    trainer = build_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # Lightning already validated at the last step when val_check_interval divides it: reuse that.
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    if trainer.global_step % cfg.trainer.val_check_interval != 0 or not val:
        val = {k: v for results in trainer.validate(module, datamodule=datamodule, verbose=False)
               for k, v in results.items()}
    summary: dict[str, Any] = {"run_dir": run_dir, "val": val, "tokenizer": tokenizer, "model": module.model,
                               "step": trainer.global_step}
    if cfg.export and trainer.is_global_zero:
        tokenizer_file = run_dir / TOKENIZER_FILE
        summary["export"] = export_model(module.model.float().eval(), tokenizer_file if tokenizer_file.is_file()
                                         else None, run_dir / EXPORT_DIR)
    if cfg.task is not None and trainer.is_global_zero:
        summary["reasoning"] = evaluate_task(cfg.task, module.model.float().eval(), run_dir, summary.get("export"),
                                             cfg.seed)
    return summary


def evaluate_task(task: TaskConfig, model: torch.nn.Module, run_dir: Path, export_dir: Optional[Path],
                  seed: int) -> ReasoningReport:
    """The reasoning evaluation of a task run, written to ``<run_dir>/reasoning_eval.{md,csv,json}``; the
    task also goes into the export (task.json) so ``recurrent-lm-reasoning-eval --model <export>``
    re-runs it without arguments."""
    from recurrent_lm.reasoning.evaluate import evaluate, save_report, save_task

    if export_dir is not None:
        save_task(task, export_dir)
    report = evaluate(model, task, seed=seed)
    save_report(report, run_dir / "reasoning_eval.md")
    return report


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run(cfg: DictConfig) -> dict[str, Any]:
    typed: TrainConfig = OmegaConf.to_object(cfg)  # runs every dataclass __post_init__ check
    if typed.dry_run:
        from recurrent_lm.model import RecurrentDepthLM, count_params

        with torch.device("meta"):
            counts = count_params(RecurrentDepthLM(typed.model))
        print(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"parameters: {counts.total:,} ({counts})")
        return {}
    prepare_run_dir(Path(typed.run_dir))
    rank_zero_only(save_resolved_config)(cfg, Path(typed.run_dir))
    summary = train(typed)
    rank_zero_only(print_report)(typed, summary)
    return summary


register_configs()


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
