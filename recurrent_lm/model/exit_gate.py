"""The learned exit gate: a linear head on the normalised state after each core iteration (Ouro's gate).

    λ_t = σ(gate(norm(s_t)))        the probability of exiting after iteration t

A token exits at the first t where the exit distribution's CDF, 1 − ∏_{j ≤ t}(1 − λ_j), reaches the
threshold (:class:`recurrent_lm.loop.criteria.LearnedExit`). The gate is trained with the LM frozen
(:mod:`recurrent_lm.exitgate`) and lives in the model directory as its own file, ``exit_gate.safetensors``:
the LM's weights stay byte-identical to the model it was trained on, and a model without the file simply
has no gate (``exit=learned`` is then refused by name).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from recurrent_lm.errors import ConfigError

GATE_FILE = "exit_gate.safetensors"
GATE_PREFIX = "exit_gate."
"""Where the gate's tensors sit in a model's state_dict (and are split out of model.safetensors)."""
INITIAL_BIAS = -4.0
"""An untrained gate exits with λ ≈ 0.018 per iteration: it leaves the model at (nearly) full depth."""


class ExitGate(nn.Module):
    """Linear(h, 1): (*, H) normalised state -> (*,) exit logit."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, INITIAL_BIAS)

    def forward(self, normed: Tensor) -> Tensor:
        return self.proj(normed).squeeze(-1)


def save_gate(state: dict[str, Tensor], directory: Path) -> None:
    """Write the gate's tensors (``exit_gate.*`` keys of a model state_dict, prefix dropped) atomically."""
    from recurrent_lm.model.io import atomic_write

    tensors = {k.removeprefix(GATE_PREFIX): v.detach().contiguous() for k, v in state.items()}
    atomic_write(directory / GATE_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def load_gate(directory: Path, d_model: int, map_location: str) -> ExitGate:
    """The gate stored in ``directory``; a file that does not fit the model is refused naming it."""
    path = directory / GATE_FILE
    gate = ExitGate(d_model)
    try:
        gate.load_state_dict(load_file(str(path), device=map_location))
    except (RuntimeError, OSError, ValueError) as err:
        raise ConfigError(f"{path} is not an exit gate for this model (d_model={d_model}): {err}; retrain it with "
                         "the exitgate app or delete the file") from err
    return gate.to(map_location)


def has_gate(directory: Path) -> bool:
    return (directory / GATE_FILE).is_file()

