"""A hydra callback that ends a multirun with the sweep report (conf/experiment/isoflop.yaml sets it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    """``recurrent-lm-sweep <sweep dir> --out <sweep dir>/report`` once every job of the multirun has returned.

    A job that raised stops hydra before this hook; the report of such a partial sweep is one command away and
    lists the failed run as such: ``recurrent-lm-sweep <sweep dir>``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from recurrent_lm.sweep.cli import main

        sweep_dir = Path(config.hydra.sweep.dir)
        main([str(sweep_dir), "--out", str(sweep_dir / "report"), "--overwrite"])
