"""The reasoning-task configuration: one dataclass, validated at construction.

Every field is a primitive, a list of ints or a list of :class:`~recurrent_lm.loop.ExitSpec` (a dataclass of
primitives), so the class doubles as the hydra structured-config schema for ``conf/task/*.yaml``. Each field's
docstring is its CLI help.

"Difficulty" is task specific: for ``parity`` it is the number of input bits; for
``reachability`` it is the number of rows of the maze (its longest path grows with it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from recurrent_lm.config_dict import from_dict
from recurrent_lm.errors import ConfigError
from recurrent_lm.loop.exit_spec import ExitSpec

TASKS = ("parity", "reachability")
ANSWERS = ("all", "final")
CONVERGENCE_SCOPES = ("convergence", "causal_convergence", "sequence_convergence")
MOVED_FIELDS = {name: "task.exits, a list with a threshold and bounds per exit, e.g. "
                      "task.exits=[{criterion:convergence,threshold:0.03,max_steps:48}]"
                for name in ("exit_criteria", "threshold", "min_steps", "max_steps")}
"""TaskConfig keys that became ``exits`` -> the new spelling: a task.json written before still loads
(:meth:`TaskConfig.from_dict` converts it); a hydra override naming one is refused with this text."""


@dataclass
class TaskConfig:
    """Which synthetic task, its train/eval difficulty ranges, and how it is evaluated."""

    moved_fields: ClassVar[dict[str, str]] = MOVED_FIELDS
    """Old keys refused by name with their new spelling (``recurrent-lm-train`` checks overrides against it)."""

    name: str = "parity"
    """'parity' (prefix parity of a bit string) or 'reachability' (which maze cells the start reaches)."""
    answer: str = "all"
    """'all': supervise every intermediate answer (each prefix parity / every open cell);
    'final': supervise only the last answer (the parity of the whole string / the bottom-right cell)."""
    train_min: int = 1
    """Smallest training difficulty (inclusive)."""
    train_max: int = 16
    """Largest training difficulty (inclusive)."""
    eval_difficulties: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Difficulties the evaluation reports (typically train_max, 2x, 4x ...)."""
    eval_depths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 96])
    """Test-time core iterations the evaluation sweeps."""
    num_train: int = 0
    """Size of a fixed training set; 0 = an endless stream, each batch generated from (seed, step)."""
    num_val: int = 256
    """Validation examples at each of train_max and the largest eval difficulty."""
    num_eval: int = 512
    """Test examples per eval difficulty."""
    seed: int = 0
    """Seeds every generator: train, validation and test sets never overlap in seed space."""
    pack_length: int = 0
    """0: one problem per training row. N > 0: each training row packs whole problems (each with its own
    BOS) back to back up to N tokens, so that the model meets long contexts (and attention distances up
    to N) without any problem being harder than train_max. Validation and test rows hold one problem."""
    exits: list[ExitSpec] = field(default_factory=lambda: [ExitSpec(name, 0.03) for name in CONVERGENCE_SCOPES])
    """Exits whose chosen depth and accuracy the evaluation reports, each a full ExitSpec with its own threshold
    (criteria differ in scale: a relative latent change, a KL, a probability): ``{criterion: learned,
    threshold: 0.9}``; an unset threshold is the criterion's default, an unset ``max_steps`` caps the exit runs
    at max(eval_depths); empty = none. The three convergence scopes differ in whose latent change counts: each
    token's own ('convergence'), every token of its prefix ('causal_convergence'), or the whole example's
    ('sequence_convergence')."""
    grid_width: int = 8
    """reachability: columns of the maze; the upper neighbour of a cell is grid_width + 1 tokens back."""
    wall_prob: float = 0.25
    """reachability: probability that a cell is a wall. Just below directed percolation's threshold (≈ 0.29)
    whether a cell is reached depends on long paths, not just on its neighbourhood, and about half of the
    16-row mazes are still open in their last row."""

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ConfigError(f"task.name={self.name!r} is unknown; choose one of {TASKS}")
        if self.answer not in ANSWERS:
            raise ConfigError(f"task.answer={self.answer!r} is unknown; choose one of {ANSWERS}")
        if not 1 <= self.train_min <= self.train_max:
            raise ConfigError(f"task.train_min={self.train_min}, train_max={self.train_max}: "
                             "need 1 <= train_min <= train_max")
        if not self.eval_difficulties or min(self.eval_difficulties) < 1:
            raise ConfigError(f"task.eval_difficulties={self.eval_difficulties} must be a non-empty list of ints >= 1")
        if not self.eval_depths or min(self.eval_depths) < 1:
            raise ConfigError(f"task.eval_depths={self.eval_depths} must be a non-empty list of ints >= 1")
        for name in ("num_train", "num_val", "num_eval", "pack_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"task.{name}={getattr(self, name)} must be >= 0")
        if self.pack_length and self.pack_length < sequence_length(self, self.train_max):
            raise ConfigError(f"task.pack_length={self.pack_length} is shorter than one problem of difficulty "
                             f"train_max={self.train_max} ({sequence_length(self, self.train_max)} tokens)")
        for i, spec in enumerate(self.exits):
            if not isinstance(spec, ExitSpec) or not spec.adaptive:
                raise ConfigError(f"task.exits[{i}]={spec!r} is not an exit criterion; give ExitSpec(criterion, "
                                  "threshold, ...) (in YAML {criterion: convergence, threshold: 0.03}), or drop it")
        names = [spec.criterion for spec in self.exits]
        if len(set(names)) < len(names):
            raise ConfigError(f"task.exits lists a criterion twice ({names}); the report has one column per "
                              "criterion: keep one threshold for each")
        if self.grid_width < 1:
            raise ConfigError(f"task.grid_width={self.grid_width} must be >= 1")
        if not 0.0 <= self.wall_prob < 1.0:
            raise ConfigError(f"task.wall_prob={self.wall_prob} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskConfig":
        """From task.json: ``exits`` as dicts; a file written before the exits were specs (one shared
        threshold over ``exit_criteria``) still loads, each criterion taking the shared settings."""
        data = dict(data)
        if set(data) & set(MOVED_FIELDS) and "exits" not in data:
            shared = {k: data.pop(k) for k in ("threshold", "min_steps", "max_steps") if k in data}
            data["exits"] = [{"criterion": name, **shared} for name in data.pop("exit_criteria", [])]
        if "exits" in data:
            data["exits"] = [spec if isinstance(spec, ExitSpec) else _exit_from_dict(i, spec)
                             for i, spec in enumerate(data["exits"])]
        return from_dict(cls, data)


def _exit_from_dict(index: int, data: Any) -> ExitSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"task.exits[{index}]={data!r} is not a mapping; write {{criterion: convergence, "
                          "threshold: 0.03}}")
    try:
        return from_dict(ExitSpec, data)
    except ConfigError as err:
        raise ConfigError(f"task.exits[{index}]: {err}") from None


def sequence_length(task: TaskConfig, difficulty: int) -> int:
    """Tokens of one problem at this difficulty (every problem of a difficulty has this length)."""
    if task.name == "parity":
        return 1 + difficulty + (task.answer == "final")
    return 1 + difficulty * (task.grid_width + 1)
