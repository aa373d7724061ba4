"""The pretraining app: a packed text corpus (config group ``data``), sampled depth, a sample at the end.

The default app of ``recurrent-lm-train``: it runs when no other app's group is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import lightning as L
from rich.console import Console
from torch import nn

from recurrent_lm.data import DataConfig
from recurrent_lm.data.tokenizer_dir import load_tokenizer, save_tokenizer_dir
from recurrent_lm.errors import ConfigError
from recurrent_lm.model.io import TOKENIZER_FILE
from recurrent_lm.train.app import Built, register_app
from recurrent_lm.train.datamodule import TextDataModule
from recurrent_lm.train.export import export_model
from recurrent_lm.train.init_from import load_initial_model, tokenizer_of
from recurrent_lm.train.module import RecurrentLMModule
from recurrent_lm.train.parallel import is_rank_zero, wait_for_file
from recurrent_lm.train.resume_guard import check_data
from recurrent_lm.train.run_dir import EXPORT_DIR, Resume
from recurrent_lm.train.schema import TrainConfig


@dataclass
class SampleReport:
    """The export path and a text sampled at the model's default depth, with the settings that drew it."""

    export: Optional[Path]
    sample: Optional[str]
    settings: str = ""
    figures: list[Path] = field(default_factory=list)

    def print(self, console: Console) -> None:
        if self.export is not None:
            console.print(f"exported model: [bold]{self.export}[/bold]")
        if self.sample is not None:
            console.rule(f"sample ({self.settings})")
            console.print(self.sample, markup=False, highlight=False)

    def next_steps(self) -> list[str]:
        if self.export is None:
            return []
        return [f'recurrent-lm-generate {self.export} "**ROMEO**" --temperature 0.8 --top-k 40 '
                "--exit convergence   # sample, adaptive depth per token",
                f"recurrent-lm-eval sweep --model_args pretrained={self.export} --num_steps 1,2,4,8,16 "
                "--tasks rlm_offline --output_dir out/sweep   # lm-eval by depth",
                "recurrent-lm-train -m experiment=demo sampler.mean=2,4,8   # a training-depth sweep "
                "(recurrent-lm-sweep reports it)"]


@register_app
class PretrainApp:
    key: ClassVar[str] = "data"
    config_class: ClassVar[type] = DataConfig
    default: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ()
    own_init_from: ClassVar[bool] = False

    def build(self, cfg: TrainConfig, run_dir: Path, resume: Resume) -> Built:
        datamodule = text_datamodule(cfg, run_dir, resume)
        return Built(datamodule, language_module(cfg, resume), datamodule.tokenizer)

    def callbacks(self, cfg: TrainConfig) -> list[L.Callback]:
        return []

    def batch_positions(self, batch: Any) -> int:
        return batch["input_ids"].numel()

    def after_fit(self, cfg: TrainConfig, model: nn.Module, built: Built, run_dir: Path, step: int) -> SampleReport:
        export = export_model(model, run_dir, run_dir / EXPORT_DIR, step, "the end of training") if cfg.export else None
        return SampleReport(export, *sample_text(cfg, model, built.tokenizer))


def text_datamodule(cfg: TrainConfig, run_dir: Path, resume: Resume) -> TextDataModule:
    """The packed corpus of ``cfg.data``, prepared and set up; its tokenizer is saved into the run directory, where a
    resume and the export find it, unless it is there already. A resume's data and tokenizer are first checked against
    the checkpoint's (:func:`check_data`), so a refused resume writes nothing."""
    data: DataConfig = cfg.data
    if cfg.init_from is not None and data.tokenizer_path is None:  # init_from's ids need its tokenizer
        data.tokenizer_path = tokenizer_of(cfg.init_from)
    saved = run_dir / TOKENIZER_FILE
    if not is_rank_zero():
        wait_for_file(saved, "rank 0 to prepare the data")  # prepared once, by rank 0
    t = cfg.trainer
    datamodule = TextDataModule(data, block_size=cfg.model.block_size, micro_batch_size=t.micro_batch_size,
                                val_batches=t.val_batches, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                          f"{cfg.model.vocab_size}; raise model.vocab_size or use a smaller tokenizer")
    if is_rank_zero():
        stored = (resume.checkpoint or {}).get(TextDataModule.__qualname__, {}).get("data")
        check_data(resume, stored, datamodule.data_record(), saved,
                   load_tokenizer(saved).fingerprint if saved.is_file() else None, cfg.allow_changes)
        if resume.checkpoint is None or not saved.is_file():
            save_tokenizer_dir(tokenizer, run_dir)
    return datamodule


def language_module(cfg: TrainConfig, resume: Resume) -> RecurrentLMModule:
    """The module of a run that trains a RecurrentDepthLM on token batches (pretraining, reasoning tasks);
    ``init_from``'s weights are loaded unless resuming (the checkpoint then holds newer ones)."""
    t = cfg.trainer
    initial = load_initial_model(cfg.init_from, cfg.model, t.attn_backend) if cfg.init_from and resume.path is None \
        else None
    return RecurrentLMModule(cfg.model, cfg.sampler, cfg.optim, t.eval_depths, attn_backend=t.attn_backend,
                             compile_blocks=t.compile, telemetry_every=t.log_every_n_steps,
                             seed=cfg.seed, max_nonfinite_steps=t.max_nonfinite_steps,
                             lm=initial, parallel=cfg.parallel, exit_loss_beta=t.exit_loss_beta)


def sample_text(cfg: TrainConfig, model: nn.Module, tokenizer: Any) -> tuple[Optional[str], str]:
    """(``cfg.sample_prompt`` continued by ``cfg.sample_tokens`` sampled tokens at the model's default depth, the
    settings used): temperature and top-k keep a small model's text readable where greedy decoding loops."""
    if cfg.sample_tokens <= 0:
        return None, ""
    from recurrent_lm.infer import GenerationConfig, generate

    prompt = tokenizer.encode(cfg.sample_prompt)
    settings = GenerationConfig(max_new_tokens=cfg.sample_tokens, seed=cfg.seed, num_steps=cfg.model.mean_recurrence,
                                temperature=cfg.sample_temperature, top_k=cfg.sample_top_k)
    result = generate(model, [prompt], settings, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    described = (f"r = {settings.num_steps}, temperature {settings.temperature}, top-k {settings.top_k}, "
                 f"seed {settings.seed}")
    return cfg.sample_prompt + tokenizer.decode(result.tokens[0]), described
