"""The app protocol of ``recurrent-lm-train``: what a kind of job supplies, and the registry that finds it.

``train/`` owns everything every job shares (the run directory and its guards, the Trainer, checkpoints, logs,
exact resume) and names no job. A job is an :class:`App`: pretraining (:mod:`recurrent_lm.train.pretrain`), the
reasoning tasks (:mod:`recurrent_lm.reasoning.app`), Coconut (:mod:`recurrent_lm.coconut.app`). Each owns one
top-level config group (``data``, ``task``, ``coconut``) whose schema it registers, and builds its data module
and LightningModule, adds its callbacks, counts a batch's positions for the throughput monitor, and runs what
follows ``fit`` (export, evaluation), returning a typed report.

The apps register themselves when their module is imported; :func:`load_apps` imports the built-in ones and
those other packages declare under the ``recurrent_lm.apps`` entry-point group, so a new app needs no edit here.
A run selects the app whose config group is set; the default app (pretraining) gives way to any other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, make_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Optional, Protocol

import lightning as L
from hydra.core.config_store import ConfigStore
from rich.console import Console
from torch import nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.train.run_dir import Resume
from recurrent_lm.train.schema import TrainConfig

BUILTIN_APPS = ("recurrent_lm.train.pretrain", "recurrent_lm.reasoning.app", "recurrent_lm.coconut.app",
                "recurrent_lm.exitgate.app")
"""Modules whose import registers the apps that ship with recurrent_lm."""
ENTRY_POINT_GROUP = "recurrent_lm.apps"


class AppReport(Protocol):
    """What an app's after-fit step produced (an export path, an evaluation), printed in the final report."""

    figures: list[Path]
    """Pictures the app drew into the run directory (named in the final printout)."""

    def print(self, console: Console) -> None: ...

    def next_steps(self) -> list[str]:
        """Commands worth running next on what the run wrote (its export), one per line with a # comment."""


@dataclass
class Built:
    """An app's pieces of a run: the tokenizer is saved into the run directory by the app."""

    datamodule: L.LightningDataModule
    module: L.LightningModule
    tokenizer: Any


class App(Protocol):
    """One kind of training job; an instance is made per run from the run's typed config."""

    key: ClassVar[str]
    """The top-level config group holding the app's typed config (``cfg.<key>``)."""
    config_class: ClassVar[type]
    """The dataclass of that group: the hydra schema its YAML files are checked against."""
    default: ClassVar[bool]
    """True for the one app that runs when no other app's group is set (pretraining)."""
    reads: ClassVar[tuple[str, ...]]
    """Other apps' config groups this app can take its data from (the exit gate trains on pretraining's corpus or a
    reasoning task). A run reads one of them (:func:`read_group`): kept in the run's config, and not counted as a
    second app; the others are dropped like any app that does not run."""
    own_init_from: ClassVar[bool]
    """True when the app reads ``init_from`` itself (Coconut's exports); else the run takes init_from's
    architecture into ``model`` before building."""

    def build(self, cfg: TrainConfig, run_dir: Path, resume: Resume) -> Built:
        """Data module (prepared and set up for fit) and module; when ``resume`` has a checkpoint, weights come
        from it, and the app checks its data and tokenizer against the checkpoint's before writing anything."""

    def callbacks(self, cfg: TrainConfig) -> list[L.Callback]:
        """Callbacks beyond the shared ones (checkpoints, preemption, throughput, lr)."""

    def batch_positions(self, batch: Any) -> int:
        """Token positions a batch carries: the throughput monitor's tokens/s."""

    def after_fit(self, cfg: TrainConfig, model: nn.Module, built: Built, run_dir: Path,
                  step: int) -> Optional[AppReport]:
        """Rank 0, after a fit of ``step`` steps that was not preempted: export, evaluate; the report is printed
        at the end."""


APPS: dict[str, type[App]] = {}
"""config key -> app class, filled by :func:`register_app`."""


def register_app(cls: type[App]) -> type[App]:
    """Class decorator: make ``cls`` selectable by setting its config group."""
    APPS[cls.key] = cls
    return cls


def load_apps() -> dict[str, type[App]]:
    """Import the built-in apps and those of installed packages (entry points); returns :data:`APPS`."""
    for module in BUILTIN_APPS:
        importlib.import_module(module)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()
    return APPS


def selected_key(cfg: Any) -> str:
    """The config key of the app a composed config runs: the one non-default app whose group is set, else the
    default app. Two non-default groups at once are refused by name."""
    chosen = [key for key, cls in APPS.items() if not cls.default and getattr(cfg, key, None) is not None]
    read = {group for key in chosen for group in APPS[key].reads}
    chosen = [key for key in chosen if key not in read]  # a group another chosen app reads is its data
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(f'{k}=' for k in chosen)} are all set; a run trains one app "
                          f"(set all but one to null, e.g. {chosen[1]}=null)")
    if chosen:
        return chosen[0]
    return next(key for key, cls in APPS.items() if cls.default)


def read_group(cfg: Any, key: str) -> Optional[str]:
    """The group app ``key`` takes its data from in this run: the one of its ``reads`` that is a non-default app's
    group and set (``task=parity``), else the default app's (pretraining's ``data``, always composed); None for an
    app that reads none."""
    reads = APPS[key].reads
    chosen = [g for g in reads if g in APPS and not APPS[g].default and getattr(cfg, g, None) is not None]
    return next(iter(chosen), next((g for g in reads if g in APPS and APPS[g].default), None))


def register_configs() -> type:
    """Store the root schema, :class:`TrainConfig` + one optional field per registered app typed by its config
    class, in hydra's ConfigStore as ``base_config``; returns it."""
    from recurrent_lm.sweep.flops import register_resolver

    register_resolver()  # ${iso_flop_steps:...} of conf/experiment/isoflop.yaml
    apps = [(key, Optional[cls.config_class], field(default=None)) for key, cls in load_apps().items()]
    schema = make_dataclass("RunConfig", apps, bases=(TrainConfig,))
    schema.__module__ = __name__
    ConfigStore.instance().store(name="base_config", node=schema)
    return schema


def app_for(cfg: TrainConfig) -> App:
    return APPS[selected_key(cfg)]()


def batch_rows(batch: Any) -> int:
    """Rows of a batch: a dict of (B, ...) tensors, or a list of records."""
    return len(batch) if isinstance(batch, list) else next(iter(batch.values())).shape[0]
