"""How ``recurrent-lm-train exitgate=...`` builds its run: the frozen ``init_from`` model, the run's data
(text corpus or reasoning task, exactly as pretraining reads them) and the gate module. Training, checkpoints,
resume, logs and the export (``export/`` with ``exit_gate.safetensors`` beside the unchanged weights) are the
normal app's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from recurrent_lm.exitgate.module import ExitGateModule

if TYPE_CHECKING:
    from recurrent_lm.train.schema import TrainConfig


def build(cfg: TrainConfig, run_dir: Path) -> tuple[Any, ExitGateModule, Any]:
    """(datamodule, module, tokenizer) of a gate run; refuses one without ``init_from``."""
    from recurrent_lm.data.tokenizer_dir import save_tokenizer_dir
    from recurrent_lm.train.cli import build_datamodule
    from recurrent_lm.train.init_from import load_initial_model

    if cfg.init_from is None:
        raise ValueError("exitgate= trains a gate on a frozen model, and init_from is not set; pass "
                         "model=pretrained init_from=<exported model directory>")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is not None:
        save_tokenizer_dir(tokenizer, run_dir)
    # A resume takes the gate (and the frozen LM, unchanged) from the checkpoint; the architecture is init_from's.
    lm = load_initial_model(cfg.init_from, cfg.model)
    return datamodule, ExitGateModule(lm, cfg.exitgate, cfg.optim.lr), tokenizer
