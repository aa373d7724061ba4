"""The recurrent-depth language model: prelude -> r × recurrent core -> coda -> LM head.

    e   = prelude(embed(x) · √h)                     (· √h unless scale_embeddings=False)
    s_0 ~ TruncNormal · init_scale · √h              (fresh draw per forward; 0 gives zeros)
    s_i = core(adapter(concat(s_{i-1}, e)))           (i = 1..r, through recurrent_lm.loop.unroll)
    y   = head(norm(coda(norm(s_r))))                 (norm(coda(s_r)) when norm_before_coda=False)

The two switches default to Huginn's recipe; a model converted from a Hugging Face Llama turns both off,
so that at r = 1 it is the source's plain layer stack.

The depth loop lives in :mod:`recurrent_lm.loop`; this module only defines the step it runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.loop import DepthRequest, ExitCriterion, LoopStats, resolve_depth, unroll
from recurrent_lm.loop.compaction import Subset
from recurrent_lm.model.attention import AttnContext, check_backend
from recurrent_lm.model.block import Block
from recurrent_lm.model.cache import RecurrentKVCache
from recurrent_lm.model.config import ModelConfig
from recurrent_lm.model.context import attention_context
from recurrent_lm.model.exit_gate import ExitGate
from recurrent_lm.model.norm import RMSNorm
from recurrent_lm.model.rope import rope_tables

NumSteps = Union[DepthRequest, tuple[int, int]]
COMPACT_FILL = 0.5
"""Default of ``compact_exits``: compaction pays once at most half the batch is left (benchmarks/adaptive.py's
table: near-full sub-batches cost 1.1-1.4x the masked step on CPU, half-full ones 0.77-1.06x)."""
IGNORE_INDEX = -100
"""Label of positions that carry no loss (cross_entropy's ignore_index); the one definition."""


@dataclass
class RecurrentLMOutput:
    logits: Tensor
    """(B, T, V) next-token logits."""
    loss: Optional[Tensor]
    """Mean next-token cross-entropy when labels were given (labels already shifted, -100 ignored)."""
    state: Tensor
    """(B, T, H) final latent state of the core."""
    hidden: Tensor
    """(B, T, H) last hidden state (after the coda and the final norm): the LM head's input."""
    steps_used: Tensor
    """(B, T) core iterations each token received."""
    num_steps: tuple[int, int]
    """(n_no_grad, n_grad) actually requested."""
    readouts: int
    """Extra coda+head evaluations spent by output-based exit criteria."""
    stats: Optional[LoopStats]
    depth_logits: dict[int, Tensor] = field(default_factory=dict)
    """r -> (B, T, V) logits after r core iterations, for each r of ``readout_depths``."""
    depth_states: dict[int, Tensor] = field(default_factory=dict)
    """r -> (B, T, H) core state after r iterations, for each r of ``readout_depths`` (what the exit gate reads)."""


def next_token_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (B, T, V) against aligned labels (B, T), IGNORE_INDEX positions skipped: their mean
    (``reduction='mean'``), or per token (``'none'``: (B, T), 0 at skipped positions)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
    return loss.view_as(labels) if reduction == "none" else loss

class RecurrentDepthLM(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str = "sdpa") -> None:
        """``attn_backend`` ('sdpa', 'flash', 'eager': :mod:`recurrent_lm.model.attention`) is how attention is
        computed, a runtime choice: it is not part of ``config`` and never written to config.json."""
        super().__init__()
        check_backend(attn_backend, config)
        self.config = config
        self.attn_backend = attn_backend
        self.checkpoint_iterations = False
        """Recompute each gradient-carrying core iteration in backward: a runtime choice, set by
        ``parallel.activation_checkpointing=iteration`` (train/parallel.py), not part of the architecture."""
        h = config.d_model
        self.embed = nn.Embedding(config.vocab_size, h)
        self.prelude = nn.ModuleList(Block(config, attn_backend) for _ in range(config.n_prelude))
        self.adapter = nn.Linear(2 * h, h, bias=False) if config.injection == "linear" else None
        self.core = nn.ModuleList(Block(config, attn_backend) for _ in range(config.n_core))
        self.coda = nn.ModuleList(Block(config, attn_backend) for _ in range(config.n_coda))
        self.norm = RMSNorm(h, config.norm_eps)
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta, config.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.compact_exits = COMPACT_FILL
        """Under an exit criterion, run a core iteration on the still-active tokens only (compaction, same
        result as masking) when their padded sub-batch is at most this fraction of the batch (unroll's
        ``compact``; 0 = always mask). A runtime setting, not architecture: benchmarks set it to compare.
        The flash backend takes causal masks only, so it always masks."""
        self.exit_gate: Optional[ExitGate] = None
        """The learned exit gate (``exit=learned``), when the model directory holds one; see
        :mod:`recurrent_lm.model.exit_gate`. Not part of the architecture: it is trained after the LM."""
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Spike-No-More: std sqrt(2/5h) everywhere, output projections / sqrt(2·expected depth)."""
        std = self.config.base_std
        out_std = std / math.sqrt(2 * self.config.expected_depth)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                _trunc_normal(p, out_std)
            elif name.endswith(("q_bias", "k_bias")):
                nn.init.zeros_(p)
            elif p.ndim == 1:
                nn.init.ones_(p)  # norm gains
            else:
                _trunc_normal(p, std)

    def initial_state(self, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Huginn's s_0: truncated normal (±3σ, σ = sqrt(2/5h)) · √h · init_scale; fresh every call.

        ``generator`` makes the draw a pure function of its seed. Training passes one seeded by
        (seed, step, rank), so a resumed run redraws exactly the noise of the uninterrupted one;
        without it the global RNG is used, whose position depends on everything touched before.
        """
        scale = self.config.init_scale
        if scale == 0:
            return torch.zeros_like(like)
        std = math.sqrt(2 / (5 * self.config.d_model))
        s = torch.empty(like.shape, device=like.device, dtype=torch.float32)
        nn.init.trunc_normal_(s, std=std, a=-3 * std, b=3 * std, generator=generator)
        return (s * (scale * math.sqrt(self.config.d_model))).to(like.dtype)

    def initial_state_table(self, seed: int) -> Optional[Tensor]:
        """(block_size, H) initial states, one per position, drawn from s_0's distribution with ``seed``.

        None when init_scale is 0 (s_0 is then deterministic zeros). Drawing once per position rather
        than once per forward makes a token's s_0 independent of batching: generation and the lm-eval
        model index it by position, so every score is reproducible.
        """
        if self.config.init_scale == 0:
            return None
        param = next(self.parameters())
        like = torch.empty(self.config.block_size, self.config.d_model, dtype=param.dtype)
        return self.initial_state(like, torch.Generator().manual_seed(seed)).to(param.device)

    # ------------------------------------------------------------------ pieces
    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """(B, T) -> (B, T, H) input embeddings, scaled by √h unless scale_embeddings=False (what Coconut
        splices thoughts into)."""
        x = self.embed(input_ids)
        return x * math.sqrt(self.config.d_model) if self.config.scale_embeddings else x

    def resolve_steps(self, num_steps: NumSteps) -> tuple[int, int]:
        """(n_no_grad, n_grad) for a forward. A pair is the training split, as given: truncated backprop
        (k = n_grad) is always the caller's draw (the depth sampler's), never a model default. Any other
        request (an int, or None = r̄) is a test-time depth: :func:`recurrent_lm.loop.resolve_depth` checks it,
        the same check every entry point makes, and all its steps run (and carry gradient in training)."""
        if isinstance(num_steps, (tuple, list)):
            pair = tuple(int(n) for n in num_steps)
            if len(pair) != 2 or min(pair) < 0 or sum(pair) < 1:
                raise ConfigError(f"num_steps={num_steps!r}: give a pair (n_no_grad, n_grad) of counts >= 0 with "
                                 "at least one core iteration, or an int r")
            return pair  # type: ignore[return-value]
        return 0, resolve_depth(num_steps, self.config.mean_recurrence)

    def attention_context(self, batch: int, seq: int, device: torch.device, *,
                          attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                          document_ids: Optional[Tensor] = None,
                          cache: Optional[RecurrentKVCache] = None) -> AttnContext:
        """RoPE tables and mask for ``seq`` new tokens: :func:`recurrent_lm.model.context.attention_context`."""
        return attention_context(self.config, self.rope_cos, self.rope_sin, batch, seq, device,
                                 attention_mask=attention_mask, position_ids=position_ids,
                                 document_ids=document_ids, cache=cache)

    def run_layers(self, layers: nn.ModuleList, x: Tensor, ctx: AttnContext, name: str) -> Tensor:
        for i, block in enumerate(layers):
            x = block(x, ctx, (name, i))
        return x

    def core_step(self, state: Tensor, e: Tensor, ctx: AttnContext, iteration: int,
                  active: Optional[Union[Tensor, Subset]] = None) -> Tensor:
        """One iteration of the recurrent block: inject e, run the core layers. (B, T, H) -> (B, T, H); under
        compaction ``active`` is a :class:`Subset` and ``state`` its gathered (B', M, H) tokens."""
        if isinstance(active, Subset):
            e, ctx = active.gather(e), ctx.select(active)  # (B', M, H)
        elif ctx.cache is not None:
            ctx = replace(ctx, cache=ctx.cache.cache.view(active=active))
        x = self.adapter(torch.cat((state, e), dim=-1)) if self.adapter is not None else state + e
        for i, block in enumerate(self.core):
            x = block(x, ctx, ("core", iteration, i))
        return x

    def require_exit_gate(self) -> ExitGate:
        """The learned exit gate, or the refusal of ``exit=learned`` on a model without one."""
        if self.exit_gate is None:
            raise ConfigError("exit=learned needs a learned exit gate, and this model has none (no "
                             "exit_gate.safetensors in its directory); train one with `recurrent-lm-train exitgate=stage2 model=pretrained "
                             "init_from=<model dir>`, or choose another exit")
        return self.exit_gate

    def exit_logit(self, state: Tensor) -> Tensor:
        """(*, H) state -> (*,) the exit gate's logit on the normalised state (λ = σ of it), fp32."""
        return self.require_exit_gate()(self.norm(state)).float()

    def decode_hidden(self, state: Tensor, ctx: AttnContext) -> Tensor:
        """(B, T, H) final state -> (B, T, H) last hidden state: norm (if norm_before_coda), coda, norm. The LM
        head's input, and what Coconut feeds back as the next thought's input embedding."""
        x = self.norm(state) if self.config.norm_before_coda else state
        return self.norm(self.run_layers(self.coda, x, ctx, "coda"))

    def decode(self, state: Tensor, ctx: AttnContext) -> Tensor:
        """(B, T, H) final state -> (B, T, V) logits."""
        return self.lm_head(self.decode_hidden(state, ctx))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        num_steps: NumSteps = None,
        *,
        labels: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        document_ids: Optional[Tensor] = None,
        past_key_values: Optional[RecurrentKVCache] = None,
        exit_criterion: Optional[ExitCriterion] = None,
        init_state: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        record_stats: bool = False,
        readout_depths: Sequence[int] = (),
    ) -> RecurrentLMOutput:
        """Run the model at test-time depth ``num_steps`` (see :meth:`resolve_steps`).

        ``inputs_embeds`` (B, T, H) replaces ``embed_tokens(input_ids)``. ``init_state`` (B, T, H)
        replaces the random s_0 (warm start); ``generator`` seeds the random one. With
        ``past_key_values`` the cache is extended by T. ``readout_depths`` also decodes the state after
        each of those iterations, from the same unroll (``depth_logits``): a depth sweep at the cost of
        its deepest run. Depths past an early exit read the frozen final state.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        batch, seq, _ = x.shape
        n_no_grad, n_grad = self.resolve_steps(num_steps)
        if exit_criterion is not None:
            exit_criterion.attach(self)  # a criterion that needs the model's parts (the gate) takes or refuses them
        cache = past_key_values
        if cache is None and exit_criterion is not None:
            # An exited token must keep serving its latest K/V to later iterations, exactly as in
            # cached decoding; a throwaway one-slot cache does that bookkeeping.
            cache = RecurrentKVCache("latest")
        ctx = self.attention_context(batch, seq, x.device, attention_mask=attention_mask,
                                     position_ids=position_ids, document_ids=document_ids,
                                     cache=cache)
        e = self.run_layers(self.prelude, x, ctx, "prelude")  # (B, T, H)
        s0 = self.initial_state(e, generator) if init_state is None else init_state.to(e.dtype)
        readout_ctx = replace(ctx, cache=ctx.cache.cache.view(read_only=True)) if ctx.cache else ctx
        wanted = set(readout_depths)
        if wanted and not 1 <= min(wanted) <= max(wanted) <= n_no_grad + n_grad:
            raise ConfigError(f"readout_depths={sorted(wanted)}: each must be in 1..{n_no_grad + n_grad} (num_steps)")
        depth_logits: dict[int, Tensor] = {}
        depth_states: dict[int, Tensor] = {}

        def read_depth(steps: int, state: Tensor) -> None:
            if steps in wanted:
                depth_states[steps] = state
            if steps in wanted and steps < n_no_grad + n_grad:  # the last depth is the final decode below
                depth_logits[steps] = self.decode(state, readout_ctx)

        loop = unroll(
            lambda s, i, active: self.core_step(s, e, ctx, i, active),
            s0,
            n_no_grad,
            n_grad,
            checkpoint=self.training and self.checkpoint_iterations,
            criterion=exit_criterion,
            sequence_axis=1,  # the state is (B, T, H): tokens run along axis 1
            readout=lambda s, subset=None: self.decode(s, readout_ctx.select(subset) if subset else readout_ctx),
            compact=self.compact_exits if exit_criterion is not None and self.attn_backend != "flash" else 0.0,
            record_stats=record_stats,
            observe=read_depth if wanted else None,
        )
        hidden = self.decode_hidden(loop.state, ctx)
        logits = self.lm_head(hidden)
        depth_logits.update({r: logits for r in wanted - depth_logits.keys()})
        depth_states.update({r: loop.state for r in wanted - depth_states.keys()})
        if past_key_values is not None:
            past_key_values.commit(seq)
        loss = None
        if labels is not None:
            loss = next_token_loss(logits, labels)
        return RecurrentLMOutput(logits=logits, loss=loss, state=loop.state, hidden=hidden, steps_used=loop.steps_used,
                                 num_steps=(n_no_grad, n_grad), readouts=loop.readouts, stats=loop.stats,
                                 depth_logits=dict(sorted(depth_logits.items())),
                                 depth_states=dict(sorted(depth_states.items())))

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Write config.json + model.safetensors, each atomically (tmp file, then rename)."""
        from recurrent_lm.model.io import save_model_dir

        return save_model_dir(self, Path(directory))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], map_location: str = "cpu",
                        attn_backend: str = "sdpa", **overrides) -> "RecurrentDepthLM":
        """Load an exported model directory on CPU, without Lightning; ``overrides`` patch the config."""
        from recurrent_lm.model.io import load_model_dir

        return load_model_dir(cls, Path(directory), map_location, overrides, attn_backend)

    def compile_blocks(self, **kwargs) -> None:
        """torch.compile each block; the data-dependent depth loop stays in eager Python."""
        for stack in (self.prelude, self.core, self.coda):
            for block in stack:
                block.compile(**kwargs)


def _trunc_normal(p: Tensor, std: float) -> None:
    nn.init.trunc_normal_(p, std=std, a=-3 * std, b=3 * std)

