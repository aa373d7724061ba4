"""A hydra callback that ends a multirun with the sweep report (conf/experiment/isoflop.yaml sets it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    """``recurrent-lm-sweep <sweep dir> --out <sweep dir>/report`` once every job of the multirun has returned.

    A job refused with a user error or stopped by a signal lets the sweep go on (``recurrent-lm-train`` exits with
    its status once the multirun ends), so the report lists it. A job that crashed with a bug stops hydra before
    this hook; ``recurrent-lm-sweep <sweep dir>`` then reports the partial sweep.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from recurrent_lm.sweep.cli import main

        sweep_dir = Path(config.hydra.sweep.dir)
        main([str(sweep_dir), "--out", str(sweep_dir / "report"), "--overwrite"])
