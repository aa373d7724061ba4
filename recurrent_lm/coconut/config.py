"""What a Coconut run trains: the method, its curriculum, its data and (for Hugging Face) its model.

One dataclass, validated at construction; it doubles as the hydra schema of ``conf/coconut/*.yaml``, so
a typo'd key fails at compose time. The baselines of the paper are settings of the same code:

    method=coconut                      continuous thoughts with the stage curriculum
    method=coconut curriculum=false     the last stage from the first step ("w/o curriculum")
    method=pause                        the same curriculum, a learned <latent> token in each thought slot
    method=cot                          stage 0 forever: the language reasoning steps are the target
    method=no_cot                       no steps, no thoughts: question -> answer
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from recurrent_lm.coconut.markers import Markers
from recurrent_lm.config_dict import from_dict
from recurrent_lm.errors import ConfigError

METHODS = ("coconut", "pause", "cot", "no_cot")
LAYOUTS = ("reference", "legacy")
"""How records become tokens (:mod:`recurrent_lm.coconut.sequences`): ``reference`` is facebookresearch/coconut's
``dataset.py`` exactly; ``legacy`` is recurrent_lm's layout before it (kept so older exports evaluate as trained)."""


@dataclass
class CoconutConfig:
    """The Coconut curriculum (Hao et al. 2024, §3) and where its data and model come from."""

    method: str = "coconut"
    """coconut | pause | cot | no_cot (see the module docstring)."""
    curriculum: bool = True
    """False: train the last stage (every step replaced by thoughts) from the start; the paper's ablation."""
    thoughts_per_step: int = 1
    """c: continuous thoughts that replace one language reasoning step (ProsQA/ProntoQA 1, GSM8k 2)."""
    epochs_per_stage: int = 5
    """Epochs (passes over the training records) spent at each stage."""
    max_latent_stage: int = 6
    """Stage s replaces the first s steps by s·c thoughts; past this stage every step is dropped and the
    thoughts stay at max_latent_stage·c."""
    pad_latent_to_max: bool = False
    """True: a record with fewer steps than the stage still gets stage·c thoughts (capped at
    max_latent_stage·c), so every record of a stage thinks equally long; False: min(stage, its steps)·c."""
    uniform_prob: float = 0.0
    """Probability that a record is laid out at a uniformly drawn stage (0..its steps) instead of the
    scheduled one, which the paper uses to keep earlier stages in mind. Seeded by (seed, epoch, record)."""
    no_grad_thoughts: int = 0
    """The first thoughts run without gradient (the loop's truncated prefix); 0 = backprop through all."""
    train_file: str = ""
    """JSON list of {question, steps, answer} records to train on."""
    max_train_records: int = 0
    """Train on the first N records of train_file only (0 = all): a budget knob that keeps the stage schedule's
    epochs short on small hardware."""
    val_file: str = ""
    """Records whose loss (at the current stage) is validated, and whose answers the final evaluation scores."""
    test_file: str = ""
    """Records the final evaluation scores by exact match; empty = val_file."""
    generate: Optional[str] = None
    """'prosqa': write ProsQA-style splits (seeded by the run's seed) to train_file/val_file/test_file when they
    are missing, so an experiment runs from a fresh clone; None: the files must exist."""
    generate_sizes: list[int] = dataclasses.field(default_factory=lambda: [5000, 300, 500])
    """Records generated for train, valid and test with ``generate``."""
    num_eval: int = 200
    """Records of test_file scored at the end of the run (0 = skip the evaluation)."""
    hf_model: Optional[str] = None
    """Hugging Face causal LM instead of recurrent_lm's model: a local directory or a hub name (then loaded
    with its weights and its tokenizer.json), or ``config:<dir or name>`` for random weights from a config."""
    hf_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Overrides of the Hugging Face config when building from ``config:`` (e.g. n_layer, n_embd)."""
    markers: Any = "recurrent_lm"
    """The three marker tokens: a preset (``recurrent_lm``: <bot> <eot> <latent>; ``reference``: <|start-latent|>
    <|end-latent|> <|latent|>, the reference's names and ids) or a list [start, end, latent]. A tokenizer that
    already holds them keeps them (no resize); missing ones are added (:mod:`recurrent_lm.coconut.markers`)."""
    eval_stage: Optional[int] = None
    """The curriculum stage an evaluation lays questions out at (None: the last stage). An export records the stage
    its training reached here, so ``recurrent-lm-coconut-eval`` scores a model as far as it was trained."""
    layout: str = "reference"
    """``reference``: the question encoded with the tokenizer's special tokens (a BOS for Llama-family tokenizers),
    text kept verbatim, CoT / no-CoT without markers, as the reference's dataset.py. ``legacy``: recurrent_lm's
    earlier layout (question, steps and answer stripped, no special tokens, every method with markers); exports
    without a ``layout`` key in coconut.json are read as legacy."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"coconut.method={self.method!r} is unknown; choose one of {METHODS}")
        for name in ("thoughts_per_step", "epochs_per_stage"):
            if getattr(self, name) < 1:
                raise ConfigError(f"coconut.{name}={getattr(self, name)} must be >= 1")
        for name in ("max_latent_stage", "no_grad_thoughts", "num_eval", "max_train_records"):
            if getattr(self, name) < 0:
                raise ConfigError(f"coconut.{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ConfigError(f"coconut.uniform_prob={self.uniform_prob} must be a probability in [0, 1]")
        if self.generate not in (None, "prosqa"):
            raise ConfigError(f"coconut.generate={self.generate!r} is unknown; use prosqa or null")
        if len(self.generate_sizes) != 3 or min(self.generate_sizes) < 1:
            raise ConfigError(f"coconut.generate_sizes={self.generate_sizes} must be three counts >= 1 "
                             "(train, valid, test)")
        if self.eval_stage is not None and not 0 <= self.eval_stage <= self.last_stage:
            raise ConfigError(f"coconut.eval_stage={self.eval_stage} must be null or in 0..{self.last_stage} "
                             "(max_latent_stage + 1 is the last stage)")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"coconut.layout={self.layout!r} is unknown; choose one of {LAYOUTS}")
        Markers.parse(self.markers)

    def require_data(self) -> None:
        """Training needs both files; laying out examples or computing a loss from records does not."""
        if not self.train_file or not self.val_file:
            raise ConfigError("coconut.train_file and coconut.val_file must name JSON files of {question, steps, "
                             "answer} records (e.g. `recurrent-lm-coconut-data prosqa --out data/prosqa`)")

    @property
    def last_stage(self) -> int:
        """The stage past max_latent_stage, where every step is replaced (0 for CoT and no-CoT)."""
        return self.max_latent_stage + 1 if self.thinks else 0

    def evaluation_stage(self, stage: Optional[int] = None) -> int:
        """``stage`` if given, else the stage training reached (``eval_stage``), else the last stage."""
        if stage is not None:
            return stage
        return self.last_stage if self.eval_stage is None else self.eval_stage

    @property
    def marker_names(self) -> Markers:
        return Markers.parse(self.markers)

    @property
    def has_markers(self) -> bool:
        """Whether the layout carries start/end markers: the reference drops them for CoT and no-CoT."""
        return self.thinks or self.layout == "legacy"

    @property
    def eval_file(self) -> str:
        return self.test_file or self.val_file

    @property
    def thinks(self) -> bool:
        """Whether thought slots exist at all (continuous or pause)."""
        return self.method in ("coconut", "pause")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoconutConfig":
        return from_dict(cls, data)
