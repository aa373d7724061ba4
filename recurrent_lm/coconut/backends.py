"""The causal LMs that continuous thoughts run on, behind one small interface.

Coconut needs four things from a model: its input embeddings, a cache that grows by one position per
thought, one forward over new input *embeddings* that returns the last hidden state (after the final
norm: the LM head's input, which is what is fed back), and the head. :class:`RecurrentBackend` gives them
for our :class:`RecurrentDepthLM`, where every forward also runs the recurrent core at a chosen depth (or
to an adaptive exit): thoughts × depth. :class:`HFBackend` gives them for any Hugging Face causal LM
through ``inputs_embeds`` and the transformers 5 ``DynamicCache``.

Padding convention (both backends): ``attention_mask`` (B, past + T) covers every cached column and the
new ones; 0 marks a column nobody may attend to (left padding of the question, or a thought slot of a
row that has stopped thinking). Positions count real columns only, so a padded row computes exactly what
it would compute alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import Tensor, nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop import ExitSpec
from recurrent_lm.model.cache import RecurrentKVCache
from recurrent_lm.model.context import real_positions
from recurrent_lm.model.lm import NumSteps, RecurrentDepthLM


@dataclass(frozen=True)
class Depth:
    """Depth of every forward of a recurrent backend: ``num_steps`` as in :meth:`RecurrentDepthLM.forward`
    (an int r, an (n_no_grad, n_grad) pair, or None for the model default), and an optional per-token
    exit. A Hugging Face model has no depth and refuses anything but the default."""

    num_steps: NumSteps = None
    exit: Optional[ExitSpec] = None


FIXED = Depth()


@dataclass
class BackendOutput:
    hidden: Tensor
    """(B, T, H) last hidden state (after the final norm)."""
    steps_used: Optional[Tensor] = None
    """(B, T) core iterations each position received; None for a model without a recurrent core."""


class CausalBackend(Protocol):
    model: nn.Module
    hidden_size: int

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) -> (B, T, H) input embeddings, in the space the hidden state is fed back into."""

    def new_cache(self) -> Any:
        """An empty KV cache for one batch."""

    def forward(self, embeds: Tensor, attention_mask: Tensor, cache: Any, depth: Depth = FIXED,
                generator: Optional[torch.Generator] = None) -> BackendOutput:
        """Run (B, T, H) new input embeddings after the cached columns, extending ``cache`` by T."""

    def logits(self, hidden: Tensor) -> Tensor:
        """(B, T, H) last hidden state -> (B, T, V) next-token logits."""

    def select_rows(self, cache: Any, rows: Tensor) -> None:
        """Keep only batch rows ``rows`` (1-D index) of ``cache``: generation drops finished rows."""


class RecurrentBackend:
    """:class:`RecurrentDepthLM` as a Coconut backend: each forward runs prelude, core × depth, coda.

    ``s0_seed`` draws the random initial state from the model's per-position table instead of fresh noise
    (evaluation: results then do not depend on batching); training leaves it None and passes a seeded
    ``generator`` per forward, as pretraining does.
    """

    def __init__(self, model: RecurrentDepthLM, s0_seed: Optional[int] = None) -> None:
        self.model = model
        self.hidden_size = model.config.d_model
        self._s0 = model.initial_state_table(s0_seed) if s0_seed is not None else None  # (block_size, H)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def new_cache(self) -> RecurrentKVCache:
        return RecurrentKVCache("full")

    def forward(self, embeds: Tensor, attention_mask: Tensor, cache: RecurrentKVCache, depth: Depth = FIXED,
                generator: Optional[torch.Generator] = None) -> BackendOutput:
        init = None if self._s0 is None else self._s0[real_positions(attention_mask, embeds.shape[1])]  # (B, T, H)
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, past_key_values=cache,
                         num_steps=depth.num_steps, exit_criterion=depth.exit.build() if depth.exit else None,
                         init_state=init, generator=generator)
        return BackendOutput(out.hidden, out.steps_used)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def select_rows(self, cache: RecurrentKVCache, rows: Tensor) -> None:
        cache.select_rows(rows)


class HFBackend:
    """Any Hugging Face causal LM (GPT-2, Llama, Qwen, ...) as a Coconut backend.

    The base model (``model.base_model``) returns the post-final-norm hidden state without computing
    logits for every position; the output embedding is applied only where logits are needed. The cache
    is a ``DynamicCache`` extended through the model's own forward: no legacy tuples, which transformers 5
    removed.
    """

    def __init__(self, model: nn.Module) -> None:
        check_hf_model(model)
        self.model = model
        self.hidden_size = model.get_input_embeddings().embedding_dim

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def forward(self, embeds: Tensor, attention_mask: Tensor, cache: Any, depth: Depth = FIXED,
                generator: Optional[torch.Generator] = None) -> BackendOutput:
        if depth != FIXED:
            raise ConfigError(f"depth={depth}: a Hugging Face model has no recurrent core; thoughts × depth needs a "
                             "recurrent_lm model (leave the thought depth and depth exit unset)")
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                    position_ids=real_positions(attention_mask, embeds.shape[1]),
                                    past_key_values=cache, use_cache=True)
        return BackendOutput(out.last_hidden_state)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)

    def select_rows(self, cache: Any, rows: Tensor) -> None:
        cache.batch_select_indices(rows)


def check_hf_model(model: nn.Module) -> None:
    """Refuse a model that cannot take thoughts as input embeddings, before any training starts."""
    import inspect

    name = type(model).__name__
    base = getattr(model, "base_model", None)
    if base is None or model.get_output_embeddings() is None:
        raise ConfigError(f"{name} is not a Hugging Face causal LM with an LM head (AutoModelForCausalLM); "
                         "Coconut feeds hidden states back through the base model and decodes them with the head")
    if "inputs_embeds" not in inspect.signature(base.forward).parameters:
        raise ConfigError(f"{name}'s base model ({type(base).__name__}) takes no inputs_embeds, so a hidden state "
                         "cannot be fed back as the next input; pick a decoder-only model whose forward accepts "
                         "inputs_embeds")


def backend_for(model: nn.Module, s0_seed: Optional[int] = None) -> CausalBackend:
    """The backend for ``model``: ours or a Hugging Face causal LM."""
    if isinstance(model, RecurrentDepthLM):
        return RecurrentBackend(model, s0_seed)
    return HFBackend(model)
