"""``recurrent-lm-train`` / ``python -m recurrent_lm.train``: the hydra entry point of pretraining.

    recurrent-lm-train experiment=demo                     # the README's main job
    recurrent-lm-train model=small trainer.max_steps=5000  # any group or key, typed and checked
    recurrent-lm-train -m model.mean_recurrence=4,8,16     # hydra multirun sweep
    recurrent-lm-train parallel=fsdp trainer.devices=2     # several processes (train/parallel.py)

Run directory (``run_dir``, default ``runs/<name>``)::

    config.yaml        resolved config of the latest session
    tokenizer.json     the tokenizer the data was packed with
    .lock              held by the live run (host, pid, SLURM job id); a second launch is refused
    checkpoints/       last.ckpt (+ step-N.ckpt), files or shard directories; ``resume=auto`` continues from
                       the newest complete one
    logs/              metrics.csv and tensorboard/, continued (not restarted) by every resume
    export/            model.safetensors + config.json + tokenizer.json (RecurrentDepthLM.from_pretrained)

Before anything is written the run directory is locked, partial writes of a killed run are removed,
and the resume is chosen and checked (see :mod:`recurrent_lm.train.run_dir`): a refusal changes nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from recurrent_lm.data.tokenizer_dir import save_tokenizer_dir
from recurrent_lm.model.io import TOKENIZER_FILE, atomic_write, make_writable_dir
from recurrent_lm.quiet import quiet_libraries
from recurrent_lm.train.callbacks import DepthThroughputMonitor, Preemption, RunCheckpoint
from recurrent_lm.train.checkpoint_io import SafeCheckpointIO
from recurrent_lm.train.datamodule import TextDataModule
from recurrent_lm.train.hardware import resolve_precision
from recurrent_lm.train.init_from import PRETRAINED_GROUP, load_initial_model, model_config_from, tokenizer_of
from recurrent_lm.train.export import export_model
from recurrent_lm.train.metrics_log import RunCSVLogger
from recurrent_lm.train.module import RecurrentLMModule
from recurrent_lm.train.progress import StepProgressBar
from recurrent_lm.train.report import print_next_steps, print_report
from recurrent_lm.train.parallel import build_strategy, check_launch, is_rank_zero, planned_world_size, wait_for_file
from recurrent_lm.train.run_dir import (CHECKPOINT_DIR, EXPORT_DIR, LOG_DIR, Resume, RunDirInUse, RunDirLock,
                                        check_compatible, check_parallel, clear_run, remove_partial_writes,
                                        resolve_resume, write_text_atomic)
from recurrent_lm.train.schema import TrainConfig, register_configs

if TYPE_CHECKING:
    from recurrent_lm.reasoning import ReasoningReport, TaskConfig


def conf_dir() -> Path:
    """The hydra config tree: $RECURRENT_LM_CONF, else the package's conf/ (a symlink to the repository's
    conf/ in a checkout, a copy in a wheel), so an installed package runs from any directory."""
    path = Path(os.environ.get("RECURRENT_LM_CONF", Path(__file__).resolve().parents[1] / "conf")).resolve()
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"hydra config tree not found at {path}; reinstall recurrent_lm (the package "
                                "ships conf/) or set RECURRENT_LM_CONF to a directory holding config.yaml")
    return path


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The app's config composed from Python (a notebook, a script), exactly as the CLI would compose it.

        cfg = compose_config(["experiment=demo", "trainer.max_steps=10"]); summary = run(cfg)

    Registers the typed schema first (hydra's compose API alone fails with "Could not load
    'base_config'") and works from any working directory.
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def build_datamodule(cfg: TrainConfig) -> L.LightningDataModule:
    t = cfg.trainer
    if cfg.task is not None:
        from recurrent_lm.reasoning.datamodule import ReasoningDataModule

        return ReasoningDataModule(cfg.task, batch_size=t.micro_batch_size, block_size=cfg.model.block_size,
                                   seed=cfg.seed)
    return TextDataModule(cfg.data, block_size=cfg.model.block_size, micro_batch_size=t.micro_batch_size,
                          val_batches=t.val_batches, seed=cfg.seed)


def build_loggers(cfg: TrainConfig, run_dir: Path, resume: Resume) -> list[Logger]:
    """Loggers that continue the run's history from the resumed step: rows and events of steps that are
    about to be re-run are superseded (CSV rows dropped, TensorBoard's purge_step), never duplicated."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        carried = resume.checkpoint.get("step_log") if resume.checkpoint is not None else None
        loggers.append(RunCSVLogger(run_dir / LOG_DIR, resume.step, flush_every_n_steps=cfg.logger.flush_every_n_steps,
                                    carried_row=carried))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(run_dir, name=LOG_DIR, version="tensorboard", default_hp_metric=False,
                                         purge_step=resume.step or None))
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logger.wandb_project, name=cfg.name, save_dir=str(run_dir)))
    return loggers


def batch_rows(batch: Any) -> int:
    return len(batch) if isinstance(batch, list) else next(iter(batch.values())).shape[0]


def batch_positions(batch: Any) -> int:
    """Token positions of a batch: input_ids (pretraining, tasks), prefix + suffix (Coconut training; thoughts
    extra), or the records' tokens (Coconut validation, laid out by the module)."""
    if isinstance(batch, list):
        return sum(len(record) for record in batch)
    return batch["input_ids"].numel() if "input_ids" in batch else batch["prefix_ids"].numel() + batch["suffix_ids"].numel()


def build_trainer(cfg: TrainConfig, run_dir: Path, resume: Resume) -> L.Trainer:
    t = cfg.trainer
    loggers = build_loggers(cfg, run_dir, resume)
    checkpoint = RunCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="step-{step}", auto_insert_metric_name=False,
                               every_n_train_steps=t.checkpoint_every_n_steps or 0, every_n_epochs=0, save_last=True,
                               save_top_k=1, enable_version_counter=False)
    callbacks: list[Any] = [
        checkpoint, Preemption(checkpoint),
        DepthThroughputMonitor(batch_size_fn=batch_rows, length_fn=batch_positions, window_size=t.throughput_window),
    ]
    if cfg.coconut is not None:
        from recurrent_lm.coconut.module import OptimizerResetOnStage

        callbacks.append(OptimizerResetOnStage())
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if t.enable_progress_bar:
        callbacks.append(StepProgressBar(length_fn=batch_positions))
    devices: Any = int(t.devices) if str(t.devices).isdigit() else t.devices
    plugins: list[Any] = [SafeCheckpointIO(preloaded=(resume.path, resume.checkpoint)
                                           if resume.path is not None and resume.path.is_file() else None)]
    if SLURMEnvironment.detect():  # Preemption owns the signals: no second, silent requeue path
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        accelerator=t.accelerator, devices=devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg.parallel),
        precision=resolve_precision(t.precision, t.accelerator), max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, val_check_interval=t.val_check_interval or t.max_steps,
        check_val_every_n_epoch=None, limit_val_batches=t.val_batches if t.val_check_interval else 0,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        callbacks=callbacks, logger=loggers or False, default_root_dir=run_dir,
        plugins=plugins,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, use_distributed_sampler=False,
    )


def build_run(cfg: TrainConfig, run_dir: Path, resuming: bool = False
              ) -> tuple[L.LightningDataModule, L.LightningModule, Any]:
    """(datamodule, module, tokenizer) of a pretraining, reasoning-task or Coconut run; the tokenizer is saved
    into the run directory, where a resume and the export find it. ``init_from``'s weights are loaded unless
    ``resuming`` (the checkpoint then holds newer ones)."""
    if not is_rank_zero() and cfg.task is None:
        wait_for_file(run_dir / TOKENIZER_FILE, "rank 0 to prepare the data")  # prepared once, by rank 0
    if cfg.coconut is not None:
        from recurrent_lm.coconut.app import build

        datamodule, module = build(cfg, run_dir)
        atomic_write(run_dir / TOKENIZER_FILE, datamodule.tokenizer.save)  # whole or absent: other ranks wait on it
        return datamodule, module, datamodule.tokenizer
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                             f"{cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer")
        save_tokenizer_dir(tokenizer, run_dir)
    initial = load_initial_model(cfg.init_from, cfg.model) if cfg.init_from and not resuming else None
    module = RecurrentLMModule(cfg.model, cfg.sampler, cfg.optim, cfg.trainer.eval_depths,
                               compile_blocks=cfg.trainer.compile, telemetry_every=cfg.trainer.log_every_n_steps,
                               seed=cfg.seed, max_nonfinite_steps=cfg.trainer.max_nonfinite_steps,
                               lm=initial, parallel=cfg.parallel)
    return datamodule, module, tokenizer


def train(cfg: TrainConfig, resume: Resume) -> dict[str, Any]:
    """Fit (or resume), validate across depths, export. Returns a summary dict (used by the report)."""
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, tokenizer = build_run(cfg, run_dir, resuming=resume.path is not None)
    trainer = build_trainer(cfg, run_dir, resume)
    if resume.path is not None and is_rank_zero():
        print(f"resuming from {resume.path} (step {resume.step})")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
    preempted = next(c.preempted_at for c in trainer.callbacks if isinstance(c, Preemption))
    if preempted is not None:  # no validation or export: the requeued job continues from the checkpoint
        return {"run_dir": run_dir, "val": {}, "tokenizer": None, "model": None, "step": preempted}
    # Lightning already validated at the last step when val_check_interval divides it: reuse that.
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    interval = cfg.trainer.val_check_interval
    if resume.step >= cfg.trainer.max_steps:
        trainer.loggers = []  # a finished run re-run: its logs already hold this validation
    if interval is not None and (trainer.global_step % interval != 0 or not val):
        val = {k: v for results in trainer.validate(module, datamodule=datamodule, verbose=False)
               for k, v in results.items()}
    model = module.full_model()  # unsharded on rank 0 (collective under FSDP2); None on the other ranks
    summary: dict[str, Any] = {"run_dir": run_dir, "val": val, "tokenizer": tokenizer, "model": model,
                               "step": trainer.global_step}
    if not trainer.is_global_zero:
        return summary
    model = model.float().eval()
    if cfg.coconut is not None:
        from recurrent_lm.coconut.app import export_and_score

        summary["tokenizer"] = None  # no free-text sample: the report shows the Coconut evaluation instead
        summary.update(export_and_score(cfg, model, tokenizer, run_dir, run_dir / EXPORT_DIR))
        return summary
    if cfg.export:
        summary["export"] = export_model(model, run_dir, run_dir / EXPORT_DIR)
    if cfg.task is not None:
        summary["reasoning"] = evaluate_task(cfg.task, model, run_dir, summary.get("export"), cfg.seed)
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


def run(cfg: DictConfig) -> dict[str, Any]:
    typed: TrainConfig = OmegaConf.to_object(cfg)  # runs every dataclass __post_init__ check
    if typed.init_from is not None:  # architecture and tokenizer are init_from's: resolved before anything is built
        typed.model = model_config_from(typed.init_from, typed.model)
        cfg.model = OmegaConf.structured(typed.model)
        if typed.task is None and typed.data.tokenizer_path is None:
            typed.data.tokenizer_path = cfg.data.tokenizer_path = tokenizer_of(typed.init_from)
    if typed.dry_run:
        from recurrent_lm.model import RecurrentDepthLM, count_params

        with torch.device("meta"):
            counts = count_params(RecurrentDepthLM(typed.model))
        print(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"parameters: {counts.total:,} ({counts})")
        return {}
    run_dir = Path(typed.run_dir)
    t = typed.trainer
    check_launch(typed.parallel, t.devices, t.accelerator, t.num_nodes)
    make_writable_dir(run_dir, "run_dir")
    if not is_rank_zero():  # rank 0 guards the directory; the others follow its resume choice
        return train(typed, resolve_resume(typed.resume, run_dir, overwrite=True))
    with RunDirLock(run_dir):
        remove_partial_writes(run_dir)
        resume = resolve_resume(typed.resume, run_dir, typed.overwrite)
        check_compatible(resume, typed.model)
        check_parallel(resume, typed.parallel.strategy, planned_world_size(t.devices, t.accelerator, t.num_nodes))
        if typed.resume == "none" and typed.overwrite:
            clear_run(run_dir)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        summary = train(typed, resume)
        print_report(typed, summary)
    return summary


register_configs()


USER_ERRORS = (ValueError, OSError, RunDirInUse, FloatingPointError)
"""What bad input, a guarded run directory or a diverging run raise: each message names the setting or
file and the fix, so it is printed as one line (exit status 2) instead of a traceback."""


def own_run_dir_per_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, give each job its own run dir (hydra's sweep dir/subdir) unless run_dir= is set.

    ``run_dir`` defaults to ``runs/${name}``, the same for every job of a sweep: the second job would
    find the first one's checkpoint and "resume" it (or, run in parallel, be refused by the lock).
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and not any(o.startswith("run_dir=") for o in hydra_cfg.overrides.task):
        cfg.run_dir = hydra_cfg.runtime.output_dir


def require_init_from(cfg: DictConfig) -> None:
    """model=pretrained holds no architecture: without init_from it would silently train ModelConfig's defaults."""
    if HydraConfig.get().runtime.choices.get("model") == PRETRAINED_GROUP and cfg.init_from is None:
        raise ValueError(f"model={PRETRAINED_GROUP} takes the architecture from init_from=DIR, and none is set; pass "
                         "init_from=<model directory> (e.g. the output of recurrent-lm-convert --from hf), or choose "
                         "another model group")


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    own_run_dir_per_sweep_job(cfg)
    try:
        require_init_from(cfg)
        summary = run(cfg)
        if summary and HydraConfig.get().mode != RunMode.MULTIRUN and is_rank_zero():
            print_next_steps([summary])
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"recurrent-lm-train: error: {err}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    quiet_libraries()
    _hydra_main()


if __name__ == "__main__":
    main()
