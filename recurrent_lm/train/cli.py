"""``recurrent-lm-train`` / ``python -m recurrent_lm.train``: the hydra entry point of every training app.

    recurrent-lm-train experiment=demo                     # the README's main job (pretraining)
    recurrent-lm-train task=parity                         # another app: its config group is set (train/app.py)
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
and the resume is chosen and checked (:mod:`recurrent_lm.train.run_dir`, :mod:`recurrent_lm.train.resume_guard`:
shapes, recipe, data and tokenizer against the checkpoint's); ``config.yaml`` is written, and stale step-N
checkpoints removed, only once the checkpoint has been restored. A refusal at any point changes nothing.

Exit status: 0 finished; 2 bad input or a refusal (one line, ``recurrent-lm-train: error: ...``); 75
(``PREEMPTED_EXIT``) stopped by SIGTERM/SIGUSR1/SIGUSR2 after saving ``last.ckpt``, to be resumed; 1 a crash.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from recurrent_lm.errors import ConfigError, MissingFileError, report_user_errors
from recurrent_lm.model.config import MOVED_FIELDS
from recurrent_lm.model.io import make_writable_dir
from recurrent_lm.model.precision import resolve_precision
from recurrent_lm.train.app import (APPS, App, app_for, batch_rows, read_group, register_configs,
                                    selected_key)
from recurrent_lm.train.callbacks import PREEMPTED_EXIT, DepthThroughputMonitor, OnRestored, Preemption, RunCheckpoint
from recurrent_lm.quiet import quiet_libraries
from recurrent_lm.train.checkpoint_io import SafeCheckpointIO
from recurrent_lm.train.init_from import PRETRAINED_GROUP, model_config_from
from recurrent_lm.train.metrics_log import RunCSVLogger
from recurrent_lm.train.parallel import build_strategy, check_launch, is_rank_zero, planned_world_size
from recurrent_lm.train.progress import StepProgressBar
from recurrent_lm.train.report import RunSummary, print_next_steps, print_report
from recurrent_lm.train.resume_guard import check_recipe
from recurrent_lm.train.run_dir import (CHECKPOINT_DIR, LOG_DIR, Resume, RunDirLock, check_parallel, clear_run,
                                        enforce_retention, remove_partial_writes, resolve_resume, write_text_atomic)
from recurrent_lm.train.schema import TrainConfig
from recurrent_lm.train.sweep_dirs import register_job_dir_resolver

PROG = "recurrent-lm-train"


def conf_dir() -> Path:
    """The hydra config tree: $RECURRENT_LM_CONF, else the package's conf/ (a symlink to the repository's
    conf/ in a checkout, a copy in a wheel), so an installed package runs from any directory."""
    path = Path(os.environ.get("RECURRENT_LM_CONF", Path(__file__).resolve().parents[1] / "conf")).resolve()
    if not (path / "config.yaml").is_file():
        raise MissingFileError(f"hydra config tree not found at {path}; reinstall recurrent_lm (the package "
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


def build_trainer(cfg: TrainConfig, app: App, run_dir: Path, resume: Resume, on_restored: OnRestored) -> L.Trainer:
    t = cfg.trainer
    loggers = build_loggers(cfg, run_dir, resume)
    checkpoint = RunCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="step-{step}", auto_insert_metric_name=False,
                               every_n_train_steps=t.checkpoint_every_n_steps or 0, every_n_epochs=0, save_last=True,
                               save_top_k=1, enable_version_counter=False)
    callbacks: list[Any] = [
        checkpoint, Preemption(checkpoint), on_restored,
        DepthThroughputMonitor(batch_size_fn=batch_rows, length_fn=app.batch_positions, window_size=t.throughput_window),
        *app.callbacks(cfg),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if t.enable_progress_bar:
        callbacks.append(StepProgressBar(length_fn=app.batch_positions))
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


def record_session(config_yaml: str, run_dir: Path, resume: Resume) -> None:
    """The writes a launch makes once its checkpoint is restored (never before: a refusal must change nothing):
    the resolved config.yaml, and checkpoint retention over what earlier sessions left (rank 0 only)."""
    if is_rank_zero():
        write_text_atomic(run_dir / "config.yaml", config_yaml)
        enforce_retention(run_dir, resume.step)


def train(cfg: TrainConfig, resume: Resume, config_yaml: str = "") -> RunSummary:
    """Fit (or resume), validate across depths, then the app's after-fit step (export, evaluation) on rank 0. A run
    stopped by a signal returns a summary marked ``preempted`` (at the step saved), and nothing else is done."""
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    app = app_for(cfg)
    built = app.build(cfg, run_dir, resume)
    on_restored = OnRestored(lambda: record_session(config_yaml, run_dir, resume))
    trainer = build_trainer(cfg, app, run_dir, resume, on_restored)
    if resume.path is not None and is_rank_zero():
        print(f"resuming from {resume.path} (step {resume.step})")
    trainer.fit(built.module, datamodule=built.datamodule, ckpt_path=resume.path, weights_only=True)
    on_restored.fire()  # a finished run re-run: the fit loop had nothing to do and never started training
    preempted = next(c.preempted_at for c in trainer.callbacks if isinstance(c, Preemption))
    if preempted is not None:  # no validation or export: the requeued job continues from the checkpoint
        return RunSummary(run_dir, preempted, {}, None, preempted=True)
    # Lightning already validated at the last step when val_check_interval divides it: reuse that.
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    interval = cfg.trainer.val_check_interval
    if resume.step >= cfg.trainer.max_steps:
        trainer.loggers = []  # a finished run re-run: its logs already hold this validation
    if interval is not None and (trainer.global_step % interval != 0 or not val):
        val = {k: v for results in trainer.validate(built.module, datamodule=built.datamodule, verbose=False)
               for k, v in results.items()}
    model = built.module.full_model()  # unsharded on rank 0 (collective under FSDP2); None on the other ranks
    summary = RunSummary(run_dir, trainer.global_step, val, model)
    if trainer.is_global_zero:
        summary.model = model.float().eval()
        summary.app = app.after_fit(cfg, summary.model, built, run_dir, trainer.global_step)
    return summary


def unselected_apps(cfg: DictConfig) -> list[str]:
    """Config keys of the apps this run neither trains nor reads (the default app's group is composed even then)."""
    chosen = selected_key(cfg)
    kept = {chosen, read_group(cfg, chosen)}
    return [key for key in APPS if key not in kept and getattr(cfg, key, None) is not None]


def run(cfg: DictConfig) -> RunSummary:
    for key in unselected_apps(cfg):  # an app that does not run keeps no (validated) config
        cfg[key] = None
    typed: TrainConfig = OmegaConf.to_object(cfg)  # runs every dataclass __post_init__ check
    if typed.init_from is not None and not app_for(typed).own_init_from:  # the architecture is init_from's
        typed.model = model_config_from(typed.init_from, typed.model)
        cfg.model = OmegaConf.structured(typed.model)
    if typed.dry_run:
        from recurrent_lm.model import RecurrentDepthLM, count_params

        with torch.device("meta"):
            counts = count_params(RecurrentDepthLM(typed.model))
        print(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"parameters: {counts.total:,} ({counts})")
        return RunSummary(Path(typed.run_dir), 0, {}, None)
    run_dir = Path(typed.run_dir)
    t = typed.trainer
    check_launch(typed.parallel, t.devices, t.accelerator, t.num_nodes)
    make_writable_dir(run_dir, "run_dir")
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if not is_rank_zero():  # rank 0 guards the directory; the others follow its resume choice
        return train(typed, resolve_resume(typed.resume, run_dir, overwrite=True), config_yaml)
    with RunDirLock(run_dir):
        remove_partial_writes(run_dir)
        resume = resolve_resume(typed.resume, run_dir, typed.overwrite)
        check_recipe(resume, typed.model, typed.sampler, typed.optim, typed.allow_changes)
        check_parallel(resume, typed.parallel.strategy, planned_world_size(t.devices, t.accelerator, t.num_nodes))
        if typed.resume == "none" and typed.overwrite:
            clear_run(run_dir)
        summary = train(typed, resume, config_yaml)
        if not summary.preempted:
            print_report(typed, summary)
    return summary


register_configs()
register_job_dir_resolver()


def own_run_dir_per_sweep_job(cfg: DictConfig) -> None:
    """In a multirun, give each job its own run dir (hydra's sweep dir/subdir) unless run_dir= is set.

    ``run_dir`` defaults to ``runs/${name}``, the same for every job of a sweep: the second job would
    find the first one's checkpoint and "resume" it (or, run in parallel, be refused by the lock). The sweep
    dir is per sweep (``runs/multirun/<name>/<start time>``) and the job's is named after its overrides
    (:mod:`recurrent_lm.train.sweep_dirs`), so a second sweep never lands on an earlier one's runs.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and not any(o.startswith("run_dir=") for o in hydra_cfg.overrides.task):
        cfg.run_dir = hydra_cfg.runtime.output_dir


def require_init_from(cfg: DictConfig) -> None:
    """model=pretrained holds no architecture: without init_from it would silently train ModelConfig's defaults."""
    if HydraConfig.get().runtime.choices.get("model") == PRETRAINED_GROUP and cfg.init_from is None:
        raise ConfigError(f"model={PRETRAINED_GROUP} takes the architecture from init_from=DIR, and none is set; pass "
                         "init_from=<model directory> (e.g. the output of recurrent-lm-convert --from hf), or choose "
                         "another model group")


_composed: list[bool] = []
"""Set once hydra has composed a config and called the app: an exit 1 before that is a composition error."""
_failed_jobs: list[int] = []
"""Exit statuses of a multirun's refused or preempted jobs: the other jobs, and the sweep's report, still run."""


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    _composed.append(True)
    own_run_dir_per_sweep_job(cfg)

    def guarded() -> int:
        require_init_from(cfg)
        summary = run(cfg)
        if summary.preempted:  # saved, not finished: `recurrent-lm-train ... && next-step` must not go on
            return PREEMPTED_EXIT
        if HydraConfig.get().mode != RunMode.MULTIRUN and is_rank_zero() and not cfg.dry_run:
            print_next_steps([summary])
        return 0

    status = report_user_errors(PROG, guarded)
    if status and HydraConfig.get().mode == RunMode.MULTIRUN:
        _failed_jobs.append(status)  # the sweep goes on (its report lists this run); main() exits with the status
    elif status:
        sys.exit(status)


def moved_to(key: str) -> Optional[str]:
    """The new spelling of a config key that moved (``model.activation_checkpointing``; an app config's
    ``moved_fields``, e.g. ``task.threshold``), else None."""
    key = key.lstrip("+~")
    if key.startswith("model."):
        return MOVED_FIELDS.get(key.removeprefix("model."))
    app_key, _, name = key.partition(".")
    return getattr(APPS[app_key].config_class, "moved_fields", {}).get(name) if app_key in APPS else None


def check_group_file(path: Path, group: str) -> None:
    """A group file written for an older schema (a user's experiment with ``task: {threshold: ...}``): its moved
    keys refused by name and new spelling, where hydra would only say the key is not in the schema."""
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # keys only: nothing is interpolated
    sections = data if path.read_text().lstrip().startswith("# @package _global_") else {group: data}
    for section, body in (sections.items() if isinstance(sections, dict) else ()):
        for name in body if isinstance(body, dict) else ():
            moved = moved_to(f"{section}.{name}")
            if moved:
                raise ConfigError(f"{path}: {section}.{name} is now {moved}; set that instead")


def check_overrides(overrides: Sequence[str], conf: Path) -> None:
    """Refuse, before hydra composes (so the refusal is one line with exit status 2 like every other bad
    setting), a key that moved (:func:`moved_to`; its new name is given), in an override or in a group file the
    overrides choose, and a ``group=name`` that names no file of the group (``experiment=dmeo``)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        moved = moved_to(key)
        if moved:
            raise ConfigError(f"{key} is now {moved}; set that instead")
        group = conf / key
        if not sep or not key.isidentifier() or not group.is_dir() or value in ("null", ""):
            continue
        known = sorted(p.stem for p in group.glob("*.yaml"))
        unknown = [v for v in value.split(",") if v not in known]  # a multirun sweep lists several
        if unknown:
            raise ConfigError(f"{key}={','.join(unknown)}: no such {key} (conf/{key}/); choose one of {known}")
        for name in value.split(","):
            check_group_file(group / f"{name}.yaml", key)


def main() -> None:
    """The console script. A bad override hydra finds itself (a syntax error, an unknown key) it reports with its
    own message and exit status 1, the status of a crash; it is a user error, so it exits 2 like every other."""
    quiet_libraries()
    status = report_user_errors(PROG, lambda: check_overrides(sys.argv[1:], conf_dir()))
    if status:
        sys.exit(status)
    try:
        _hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _composed:
            sys.exit(2)
        raise
    if _failed_jobs:  # a refusal (2) outranks a preemption (75): the sweep did not only need more time
        sys.exit(2 if 2 in _failed_jobs else _failed_jobs[0])


if __name__ == "__main__":
    main()
