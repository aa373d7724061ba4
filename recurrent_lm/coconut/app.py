"""The Coconut app of ``recurrent-lm-train``: tokenizer, model, data and module, then export and score.

The run goes through the same app as pretraining (run directory lock, checkpoints, exact resume, logs);
only these pieces differ. The tokenizer is decided once per run directory and kept in it, so a resumed
run (and its export) tokenizes exactly as the first session did:

* recurrent_lm's model, or a Hugging Face model built from a config (``hf_model: config:gpt2``): a
  byte-level BPE trained on the training records (its reserved ids hold the markers);
* a pretrained Hugging Face model (a directory, or a hub name for online users): its own tokenizer.json,
  with the markers added and the embeddings grown to match.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import lightning as L
from rich.console import Console
from torch import nn

from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.datamodule import CoconutDataModule
from recurrent_lm.coconut.module import CoconutModule, OptimizerResetOnStage
from recurrent_lm.coconut.records import load_records
from recurrent_lm.coconut.tokens import ThoughtTokenizer, add_thought_tokens
from recurrent_lm.errors import ConfigError, MissingFileError
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.io import TOKENIZER_FILE, atomic_write
from recurrent_lm.train.app import Built, register_app
from recurrent_lm.train.parallel import is_rank_zero, planned_world_size, wait_for_file
from recurrent_lm.train.run_dir import Resume
from recurrent_lm.train.schema import TrainConfig

CONFIG_PREFIX = "config:"
EVAL_FILE = "coconut_eval.json"


def _hf_config(coconut: CoconutConfig, tokenizer: ThoughtTokenizer):
    from transformers import AutoConfig

    source = coconut.hf_model.removeprefix(CONFIG_PREFIX)
    ids = tokenizer.ids
    overrides = {**coconut.hf_config, "vocab_size": tokenizer.vocab_size, "bos_token_id": ids.eos,
                 "eos_token_id": ids.eos, "pad_token_id": ids.pad}
    if Path(source).is_dir():
        config = AutoConfig.from_pretrained(source, **overrides)
    else:  # a model type (gpt2, llama, qwen2, ...): the class defaults, nothing downloaded
        config = AutoConfig.for_model(source, **overrides)
    return config


def initial_export(cfg: TrainConfig) -> Optional[tuple[nn.Module, ThoughtTokenizer]]:
    """``init_from``'s model and tokenizer: a Coconut export of a Hugging Face model whose markers are the run's."""
    if cfg.init_from is None:
        return None
    from recurrent_lm.coconut.export import load_coconut_model

    model, tokenizer, trained = load_coconut_model(Path(cfg.init_from).expanduser())
    if isinstance(model, RecurrentDepthLM):
        raise ConfigError(f"init_from={cfg.init_from} holds a recurrent_lm Coconut model; continue it by resuming its "
                         "run (same run_dir) instead. init_from with coconut= takes a Hugging Face Coconut export")
    if trained.marker_names != cfg.coconut.marker_names:
        raise ConfigError(f"init_from={cfg.init_from} was trained with the markers {trained.marker_names.names} but "
                         f"coconut.markers={cfg.coconut.markers!r}; set coconut.markers={trained.markers!r}")
    return model.train(), tokenizer


def build_tokenizer(cfg: TrainConfig, run_dir: Path, initial: Optional[ThoughtTokenizer] = None) -> ThoughtTokenizer:
    """The run's tokenizer: the one saved in ``run_dir`` (a resume), else ``initial`` (init_from's), else made as
    the module docstring says."""
    coconut = cfg.coconut
    saved = run_dir / TOKENIZER_FILE
    if saved.is_file():
        return ThoughtTokenizer.from_file(saved, coconut.markers)
    if initial is not None:
        return initial
    if coconut.hf_model is not None and not coconut.hf_model.startswith(CONFIG_PREFIX):
        from tokenizers import Tokenizer

        source = Path(coconut.hf_model)
        if source.is_dir():
            if not (source / TOKENIZER_FILE).is_file():
                raise MissingFileError(f"coconut.hf_model={coconut.hf_model}: no {TOKENIZER_FILE} in that directory; "
                                        "Coconut needs a fast (tokenizers) tokenizer saved beside the model")
            return add_thought_tokens(Tokenizer.from_file(str(source / TOKENIZER_FILE)), markers=coconut.markers)
        return add_thought_tokens(Tokenizer.from_pretrained(coconut.hf_model),  # a hub name: online users only
                                  markers=coconut.markers)
    from recurrent_lm.data.tokenizer import TextTokenizer

    records = load_records(coconut.train_file, require_steps=False)
    texts = (text for r in records for text in (r.question, *r.steps, r.answer))
    bpe = TextTokenizer.train(texts, cfg.model.vocab_size).tokenizer
    add_thought_tokens(bpe, markers=coconut.markers)  # no-op for the recurrent_lm preset (its reserved ids)
    atomic_write(saved, lambda tmp: bpe.save(str(tmp)))  # other ranks wait for this file
    return ThoughtTokenizer.from_file(saved, coconut.markers)


def build_model(coconut: CoconutConfig, tokenizer: ThoughtTokenizer,
                initial: Optional[nn.Module] = None) -> Optional[nn.Module]:
    """The Hugging Face model of the run: ``initial`` (init_from's), else coconut.hf_model's (None: recurrent_lm's
    model, built by the module from model.*). Its embeddings grow to hold the markers if they must (a CoT import)."""
    if initial is None and coconut.hf_model is None:
        return None
    from transformers import AutoModelForCausalLM

    if initial is not None:
        model = initial
    elif coconut.hf_model.startswith(CONFIG_PREFIX):
        model = AutoModelForCausalLM.from_config(_hf_config(coconut, tokenizer))
    else:
        model = AutoModelForCausalLM.from_pretrained(coconut.hf_model)
    add_thought_tokens(tokenizer.tokenizer, model, coconut.markers)  # grows the embeddings to the tokenizer if needed
    return model.float()


DATA_KEYS = {"train": "coconut.train_file", "valid": "coconut.val_file", "test": "coconut.test_file"}
"""The data-file keys by ProsQA split, as the user sets them (docs/coconut.md)."""


def generate_data(coconut: CoconutConfig, seed: int, run_dir: Path) -> None:
    """``coconut.generate=prosqa``: write the ProsQA-style splits that are missing, and only into the run directory.

    A file that exists is never touched, whoever named it (a regenerated split once replaced the user's own
    prosqa_valid.json because a sibling file was missing). A missing file outside ``run_dir`` is a path the user
    named: refused, since writing there could land on their data. Missing splits are generated with the questions
    of the existing ones excluded, so no question is shared between splits.
    """
    if coconut.generate is None:
        return
    from recurrent_lm.coconut.prosqa import generate_split
    from recurrent_lm.coconut.records import write_records

    files = {"train": Path(coconut.train_file), "valid": Path(coconut.val_file), "test": Path(coconut.eval_file)}
    missing = {split: path for split, path in files.items() if not path.is_file()}
    outside = [split for split, path in missing.items() if not path.resolve().is_relative_to(run_dir.resolve())]
    if outside:
        named = ", ".join(f"{DATA_KEYS[s]}={missing[s]}" for s in outside)
        raise MissingFileError(f"{named}: no such file, and coconut.generate={coconut.generate} writes only into the "
                                f"run directory ({run_dir}), never to a path you set. Point the key at an existing "
                                "file, leave it at its default (under run_dir/data/) to have it generated, or write "
                                "the data first: python -m recurrent_lm.coconut.make_data prosqa --out DIR")
    if not missing:
        return
    sizes = dict(zip(("train", "valid", "test"), coconut.generate_sizes))
    taken = {r.question for split, path in files.items() if split not in missing
             for r in load_records(path, require_steps=False)}
    written: dict[Path, str] = {}  # test_file empty: the test split is the valid file, generated once
    for split, path in missing.items():
        if path not in written:
            problems = generate_split(sizes[split], seed, split, exclude=taken)
            taken.update(p.question for p in problems)
            write_records((p.to_dict() for p in problems), path)
            written[path] = f"{len(problems)} {split} -> {path}"
    kept = [f"{DATA_KEYS[s]}={p}" for s, p in files.items() if s not in missing]
    print("generated ProsQA-style data: " + ", ".join(written.values())
          + (f" (kept the existing {', '.join(kept)})" if kept else ""))


@dataclass
class CoconutReport:
    """The export and the exact-match evaluation of ``num_eval`` records (also in ``coconut_eval.json``)."""

    export: Optional[Path]
    evaluation: Optional[dict[str, Any]]
    written: Path
    figures: list[Path] = field(default_factory=list)

    def next_steps(self) -> list[str]:
        if self.export is None:
            return []
        return [f"recurrent-lm-coconut-eval --model coconut={self.export} --data <records.json>   # evaluate again"]

    def print(self, console: Console) -> None:
        if self.export is not None:
            console.print(f"exported model: [bold]{self.export}[/bold]")
        e = self.evaluation
        if e is not None:
            console.print(f"coconut ({e['method']}): exact match {100 * e['accuracy']:.1f}% on {e['examples']} records "
                          f"of {e['file']}; {e['mean_tokens']:.1f} generated tokens ({e['mean_thoughts']:.1f} thoughts) "
                          f"per answer; written to {self.written}", markup=False)


@register_app
class CoconutApp:
    """Coconut continuous-thought training on {question, steps, answer} records (config group ``coconut``)."""

    key: ClassVar[str] = "coconut"
    config_class: ClassVar[type] = CoconutConfig
    default: ClassVar[bool] = False
    reads: ClassVar[tuple[str, ...]] = ()
    own_init_from: ClassVar[bool] = True
    """init_from is a Coconut export of a Hugging Face model (coconut/app.py: initial_export)."""

    def build(self, cfg: TrainConfig, run_dir: Path, resume: Resume) -> Built:
        coconut: CoconutConfig = getattr(cfg, self.key)
        if cfg.parallel.activation_checkpointing != "none":  # a recompute would see a cache later thoughts grew
            raise ConfigError(f"parallel.activation_checkpointing={cfg.parallel.activation_checkpointing} cannot "
                              "train Coconut: a recomputed block would re-read the KV cache after later thoughts "
                              "extended it; set parallel.activation_checkpointing=none")
        if not is_rank_zero():
            wait_for_file(run_dir / TOKENIZER_FILE, "rank 0 to prepare the data")  # prepared once, by rank 0
        coconut.require_data()
        generate_data(coconut, cfg.seed, run_dir)
        initial = initial_export(cfg)
        tokenizer = build_tokenizer(cfg, run_dir, initial[1] if initial else None)
        lm = build_model(coconut, tokenizer, initial[0] if initial else None)
        if lm is None and tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size="
                              f"{cfg.model.vocab_size}; raise model.vocab_size")
        t = cfg.trainer
        datamodule = CoconutDataModule(coconut, tokenizer, t.micro_batch_size, t.val_batches, cfg.seed,
                                       block_size=cfg.model.block_size if lm is None else None,
                                       world_size=planned_world_size(t.devices, t.accelerator, t.num_nodes))
        module = CoconutModule(cfg.model, cfg.sampler, cfg.optim, coconut, t.eval_depths, tokenizer.ids,
                               datamodule.batches_per_epoch, lm=lm, seed=cfg.seed,
                               max_nonfinite_steps=t.max_nonfinite_steps, parallel=cfg.parallel,
                               attn_backend=t.attn_backend)
        if not (run_dir / TOKENIZER_FILE).is_file():  # whole or absent: other ranks wait on it
            atomic_write(run_dir / TOKENIZER_FILE, tokenizer.save)
        return Built(datamodule, module, tokenizer)

    def callbacks(self, cfg: TrainConfig) -> list[L.Callback]:
        return [OptimizerResetOnStage()]

    def batch_positions(self, batch: Any) -> int:
        """Prefix + suffix positions of a training batch (thoughts extra), or the records' tokens (validation,
        laid out by the module)."""
        if isinstance(batch, list):
            return sum(len(record) for record in batch)
        return batch["prefix_ids"].numel() + batch["suffix_ids"].numel()

    def after_fit(self, cfg: TrainConfig, model: nn.Module, built: Built, run_dir: Path, step: int) -> CoconutReport:
        """Export the model (with its tokenizer and coconut.json, recording the curriculum stage training reached as
        ``eval_stage``), then score ``num_eval`` records of the eval file by exact match at that stage, as
        ``recurrent-lm-coconut-eval`` would."""
        from recurrent_lm.coconut.evaluate import evaluate_model, needs_steps
        from recurrent_lm.coconut.export import save_coconut_model
        from recurrent_lm.train.run_dir import EXPORT_DIR, write_text_atomic

        coconut = dataclasses.replace(getattr(cfg, self.key), eval_stage=built.module.stage_at(step))
        tokenizer = built.tokenizer
        export = save_coconut_model(model, tokenizer, coconut, run_dir / EXPORT_DIR) if cfg.export else None
        result = None
        if coconut.num_eval:
            records = load_records(coconut.eval_file, require_steps=needs_steps(coconut))[: coconut.num_eval]
            result = {"method": coconut.method, "file": coconut.eval_file,
                      **evaluate_model(model, tokenizer, coconut, records, batch_size=cfg.trainer.micro_batch_size)}
            write_text_atomic(run_dir / EVAL_FILE, json.dumps(result, indent=2))
        return CoconutReport(export, result, run_dir / EVAL_FILE)
