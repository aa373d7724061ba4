"""Batched generation with per-token adaptive exit, a KV cache across the recurrence, warm start and sampling.

One prefill forward over the left-padded prompts, then one cached forward per new token. Every
forward is the model's own (the depth loop is :func:`recurrent_lm.loop.unroll` inside it); this
module only feeds tokens, keeps the attention mask, samples, and decides when each row ends.

Why batched output equals one-by-one output:

* left padding is masked out of attention, and positions count real tokens only, so a padded row
  sees exactly what it would see alone;
* exit is per token and an exited token's state and K/V stay frozen while the rest of the batch
  keeps iterating (the cache serves its latest entry), so one row's depth never leaks into another;
* initial states come from a per-position table seeded by ``config.seed`` (zeros when the model's
  ``init_scale`` is 0) and each row samples from its own generator (seed + row index), so neither
  depends on which rows share the batch;
* finished rows are dropped from the batch (and the cache) instead of being fed padding.

Token accounting: ``steps[b][k]`` is the number of core iterations of the forward that *produced*
generated token k of row b (for k = 0 that is the prefill's last prompt position). ``readouts[b][k]``
counts the coda + head evaluations the exit criterion made in that forward: the extra cost of the
output-based criteria (KL, entropy, argmax); the latent criterion (convergence) makes none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError
from recurrent_lm.infer.config import GenerationConfig
from recurrent_lm.infer.rows import LiveRows
from recurrent_lm.infer.sampling import row_generators, select_tokens
from recurrent_lm.loop import resolve_depth
from recurrent_lm.model.cache import RecurrentKVCache
from recurrent_lm.model.context import real_positions

if TYPE_CHECKING:
    from recurrent_lm.model.lm import RecurrentDepthLM

TokenCallback = Callable[[int, int, int], None]
"""``on_token(row, token_id, steps)``, called as soon as a token is chosen (for streaming)."""

FINISH_REASONS = ("eos", "stop", "step_budget", "length", "context")


@dataclass
class GenerationResult:
    tokens: list[list[int]]
    """Generated token ids per row (the prompt excluded; a final EOS included)."""
    steps: list[list[int]]
    """Core iterations of the forward that produced each generated token."""
    readouts: list[list[int]]
    """Coda + head evaluations the exit criterion spent in the forward that produced each token."""
    finish_reasons: list[str]
    """Per row: eos | stop | step_budget | length (max_new_tokens) | context (block_size reached)."""
    prompt_steps: list[list[int]]
    """Core iterations each prompt token used in the prefill."""
    texts: Optional[list[str]] = None
    """Decoded generated text per row (EOS dropped, cut before a stop string) when ``decode`` was given."""
    num_steps: int = 0
    """The per-token cap on core iterations that was in force."""
    cache_strategy: str = "full"
    cache_bytes: int = 0
    """Peak bytes held by the KV cache (K and V of every layer and slot, padding included)."""
    cache_slots: int = 0
    """Core slots per layer the cache ended with."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    """Wall time of the forwards after the prefill (one per new token)."""
    logits: Optional[list[Tensor]] = None
    """Per row, the (n_generated, V) fp32 logits each token was chosen from (``return_logits=True``)."""

    @property
    def num_generated(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def mean_steps(self) -> float:
        """Mean core iterations per generated token."""
        n = self.num_generated
        return sum(sum(s) for s in self.steps) / n if n else 0.0

    @property
    def total_readouts(self) -> int:
        return sum(sum(r) for r in self.readouts)

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens produced by the cached decode forwards per second (the prefill's first token excluded)."""
        n = self.num_generated - len(self.tokens)
        return n / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def generate(
    model: "RecurrentDepthLM",
    prompts: Sequence[Sequence[int]],
    config: Optional[GenerationConfig] = None,
    *,
    eos_id: Optional[int] = None,
    pad_id: Optional[int] = None,
    decode: Optional[Callable[[list[int]], str]] = None,
    on_token: Optional[TokenCallback] = None,
    return_logits: bool = False,
    **overrides,
) -> GenerationResult:
    """Generate continuations of ``prompts`` (token id lists) in one left-padded batch.

    ``overrides`` patch ``config`` field by field (``generate(model, p, max_new_tokens=8)``).
    ``decode`` (ids -> text) is needed for stop strings and fills ``GenerationResult.texts``.
    ``pad_id`` only fills padding (it is masked); it defaults to ``eos_id`` or 0.
    ``return_logits`` keeps each row's next-token logits (n_generated, V) in ``result.logits``.
    """
    config = GenerationConfig() if config is None else config
    if overrides:
        config = replace(config, **overrides)
    if config.stop and decode is None:
        raise ConfigError("stop strings need decode= (a function from token ids to text, e.g. tokenizer.decode)")
    mc = model.config
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts:
        raise ConfigError("generate: no prompts given")
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty; give at least one token (e.g. the eos/bos id as a document start)")
        if len(p) > mc.block_size:
            raise ConfigError(f"prompt {i} has {len(p)} tokens, longer than the model context "
                             f"block_size={mc.block_size}; shorten or truncate the prompt")
        bad = [t for t in p if not 0 <= t < mc.vocab_size]
        if bad:
            raise ConfigError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {mc.vocab_size})")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _generate(model, prompts, config, eos_id, pad_id, decode, on_token, return_logits)
    finally:
        model.train(was_training)


def generate_text(model: "RecurrentDepthLM", tokenizer, prompts: Sequence[str],
                  config: Optional[GenerationConfig] = None, *, prefix_ids: Sequence[int] = (),
                  on_token: Optional[TokenCallback] = None, **overrides) -> GenerationResult:
    """:func:`generate` on text: encode with ``tokenizer`` (a ``TextTokenizer``), decode the results.

    ``prefix_ids`` go before every prompt; ``[tokenizer.eos_id]`` marks a document start the way the
    packed training stream does (every document follows the previous one's EOS).
    """
    ids = [list(prefix_ids) + tokenizer.encode(p) for p in prompts]
    return generate(model, ids, config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                    decode=tokenizer.decode, on_token=on_token, **overrides)


def _generate(model, prompts, config: GenerationConfig, eos_id, pad_id, decode, on_token,
              return_logits: bool) -> GenerationResult:
    mc = model.config
    device = next(model.parameters()).device
    batch = len(prompts)
    longest = max(len(p) for p in prompts)
    spec = config.exit
    cap = resolve_depth(config.num_steps, mc.mean_recurrence, spec)
    criterion = spec.build()
    cache = RecurrentKVCache(config.kv_cache, config.kv_window if config.kv_cache == "compressed" else None)
    noise = model.initial_state_table(config.seed)
    generators = None if config.greedy else row_generators([config.seed + b for b in range(batch)], device)

    fill = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    ids = torch.full((batch, longest), fill, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p):] = torch.tensor(p)
        mask[b, longest - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = real_positions(mask)  # (B, L) real positions; padding sits at 0

    tokens: list[list[int]] = [[] for _ in range(batch)]
    steps: list[list[int]] = [[] for _ in range(batch)]
    readouts: list[list[int]] = [[] for _ in range(batch)]
    kept_logits: list[list[Tensor]] = [[] for _ in range(batch)]
    texts: list[Optional[str]] = [None] * batch
    spent = [0] * batch
    rows = LiveRows(batch)

    start = time.perf_counter()
    # The prompt's criterion watches real tokens only: left padding must not hold a row back (causal and
    # sequence convergence look past each token's own change).
    prefill_criterion = spec.build(watch=mask.bool())
    out = model(ids, num_steps=cap, attention_mask=mask, past_key_values=cache, exit_criterion=prefill_criterion,
                init_state=None if noise is None else noise[positions])
    used = out.steps_used.tolist()
    prompt_steps = [used[b][longest - len(p):] for b, p in enumerate(prompts)]
    peak = cache.nbytes()
    prefill_seconds, decode_seconds, first = 0.0, 0.0, True

    while True:
        logits = out.logits[:, -1]  # (n, V)
        next_tokens = select_tokens(logits, config.temperature, config.top_k, config.top_p,
                                    None if generators is None else [generators[b] for b in rows.alive])
        chosen, depth = next_tokens.tolist(), out.steps_used[:, -1].tolist()
        elapsed = time.perf_counter() - start  # the forward and the choice of tokens, not the callbacks
        if first:
            prefill_seconds, first = elapsed, False
        else:
            decode_seconds += elapsed
        reasons = []
        for j, b in enumerate(rows.alive):
            tok = chosen[j]
            tokens[b].append(tok)
            steps[b].append(depth[j])
            readouts[b].append(out.readouts)
            if return_logits:
                kept_logits[b].append(logits[j].float().cpu())
            spent[b] += depth[j]
            if on_token is not None:
                on_token(b, tok, depth[j])
            reasons.append(_finish_reason(b, tok, prompts[b], tokens[b], spent[b], config, eos_id, decode, texts,
                                          mc))
        kept = rows.settle(reasons, device)
        if rows.done:
            break
        state_last = out.state[:, -1:]  # (n, 1, H) final latent of the newest position
        if kept is not None:
            cache.select_rows(kept)
            mask, next_tokens, state_last = mask[kept], next_tokens[kept], state_last[kept]
        start = time.perf_counter()
        new_position = mask.sum(-1, keepdim=True)  # (n, 1) the fed token's position
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        if config.warm_start:
            init = state_last
        else:
            init = None if noise is None else noise[new_position]
        out = model(next_tokens[:, None], num_steps=cap, attention_mask=mask, past_key_values=cache,
                    exit_criterion=criterion, init_state=init)
        peak = max(peak, cache.nbytes())

    if decode is not None:
        for b in range(batch):
            if texts[b] is None:
                body = tokens[b][:-1] if rows.finish[b] == "eos" else tokens[b]
                texts[b] = decode(body)
    return GenerationResult(
        tokens=tokens, steps=steps, readouts=readouts, finish_reasons=rows.finish, prompt_steps=prompt_steps,
        texts=texts if decode is not None else None, num_steps=cap, cache_strategy=config.kv_cache,
        cache_bytes=peak, cache_slots=cache.core_slots(), prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        logits=[torch.stack(rows) for rows in kept_logits] if return_logits else None,
    )


def _finish_reason(b: int, tok: int, prompt: list[int], generated: list[int], spent: int,
                   config: GenerationConfig, eos_id, decode, texts: list, mc) -> str:
    if eos_id is not None and tok == eos_id:
        return "eos"
    if config.stop:
        text = decode(generated)
        cut = _first_stop(text, config.stop)
        if cut is not None:
            texts[b] = text[:cut]
            return "stop"
    if config.step_budget is not None and spent >= config.step_budget:
        return "step_budget"
    if len(generated) >= config.max_new_tokens:
        return "length"
    if len(prompt) + len(generated) > mc.block_size:  # the next forward would need position block_size
        return "context"
    return ""


def _first_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
