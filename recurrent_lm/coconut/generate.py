"""Batched, KV-cached generation after continuous thoughts, for any backend, and exact-match scoring.

One left-padded batch goes through four kinds of forward that share one cache::

    prefix   (B, P)   question <bot> [<latent>×n]     one forward
    thoughts (B,)     up to the bound per row          ContinuousThoughtLM.think (the shared loop)
    <eot>    (B, 1)                                    one forward -> logits of the first answer token
                      (a layout without markers feeds the question's last token here instead: ``openers``)
    decode   (n, 1)   the previous token               one forward per new token, n rows still alive

The reference implementation generates one question at a time and recomputes the whole sequence for
every new token; here every position is computed once. Batched output equals one-by-one output because
left padding and the thought columns of rows that stopped thinking are masked out of attention with
positions counting real columns only (:mod:`recurrent_lm.coconut.backends`), each row samples from its own
generator, and a row that finishes is dropped from the batch and the cache instead of being fed padding.

Counting follows the paper's Table 1: a continuous thought is a generated token (it costs one forward, as
a language token does); the tokens fed by the caller (the prefix with any pause <latent>s, and <eot>) are
not. A final <eos> is counted: the model produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from recurrent_lm.coconut.backends import FIXED, Depth
from recurrent_lm.coconut.sequences import ANSWER_MARK, SpecialIds, ThoughtExample, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.errors import ConfigError
from recurrent_lm.infer.rows import LiveRows
from recurrent_lm.infer.sampling import row_generators, select_tokens
from recurrent_lm.loop import ExitSpec


@dataclass
class CoconutGeneration:
    tokens: list[list[int]]
    """Decoded token ids per row (prefix, thoughts and <eot> excluded; a final <eos> included)."""
    thoughts: list[int]
    """Continuous thoughts each row took (its bound, or fewer under a thought exit)."""
    finish_reasons: list[str]
    """Per row: eos | length (max_new_tokens) | context (the model's last position was reached)."""
    thought_steps: Optional[list[int]]
    """Core iterations each row spent on its thoughts (recurrent backends; None otherwise)."""
    token_steps: Optional[list[list[int]]]
    """Core iterations of the forward that produced each decoded token (recurrent backends; None otherwise)."""

    def generated(self, row: int) -> int:
        """Tokens row ``row`` generated, thoughts counted as the paper counts them."""
        return self.thoughts[row] + len(self.tokens[row])

    @property
    def num_generated(self) -> int:
        return sum(self.generated(b) for b in range(len(self.tokens)))

    def core_steps(self, row: int) -> Optional[int]:
        """Core iterations row ``row`` spent on everything it generated (thoughts and tokens)."""
        if self.thought_steps is None or self.token_steps is None:
            return None
        return self.thought_steps[row] + sum(self.token_steps[row])


def generate(lm: ContinuousThoughtLM, prefixes: Sequence[Sequence[int]], thoughts: Union[int, Sequence[int]],
             ids: SpecialIds, *, max_new_tokens: int = 64, thought_exit: Optional[ExitSpec] = None,
             depth: Depth = FIXED, temperature: float = 0.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, seed: int = 0,
             openers: Optional[Sequence[int]] = None) -> CoconutGeneration:
    """Think, then decode, for every prefix (token ids ending in <bot>, or in pause <latent>s) in one batch.

    ``thoughts`` is the bound per row (one int for all); ``thought_exit`` stops a row's thinking early
    once its thoughts converge. ``depth`` is used for every forward (thoughts × depth on our model).
    Greedy unless ``temperature`` > 0; row b then samples from its own generator seeded ``seed + b``.
    ``openers`` is the token fed after the thoughts per row (None: <eot>); a layout without markers
    passes the question's last token (:attr:`ThoughtExample.suffix` ``[0]``).
    """
    prefixes = [[int(t) for t in p] for p in prefixes]
    bounds = [int(thoughts)] * len(prefixes) if isinstance(thoughts, int) else [int(n) for n in thoughts]
    openers = [ids.eot] * len(prefixes) if openers is None else [int(t) for t in openers]
    _check_inputs(lm, prefixes, bounds, max_new_tokens)
    if len(openers) != len(prefixes):
        raise ValueError(f"generate: {len(openers)} openers for {len(prefixes)} prefixes; give one per prefix")
    model = lm.backend.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _generate(lm, prefixes, bounds, openers, ids, max_new_tokens, thought_exit, depth,
                             (temperature, top_k, top_p), seed)
    finally:
        model.train(was_training)


def _generate(lm: ContinuousThoughtLM, prefixes: list[list[int]], bounds: list[int], openers: list[int],
              ids: SpecialIds,
              max_new_tokens: int, thought_exit: Optional[ExitSpec], depth: Depth,
              sampling: tuple[float, Optional[int], Optional[float]], seed: int) -> CoconutGeneration:
    backend = lm.backend
    device = next(lm.backend.model.parameters()).device
    batch = collate([ThoughtExample(tuple(p), n, (o,)) for p, n, o in zip(prefixes, bounds, openers)], ids.pad)
    batch = {k: v.to(device) for k, v in batch.items()}
    generators = None if sampling[0] == 0 else row_generators([seed + b for b in range(len(prefixes))], device)
    limit = context_length(lm)

    cache = backend.new_cache()
    prefix = backend.forward(backend.embed(batch["prefix_ids"]), batch["prefix_mask"], cache, depth)  # (B, P, H)
    thought = lm.think(prefix.hidden[:, -1], batch["prefix_mask"], cache, batch["thoughts"], exit=thought_exit,
                       depth=depth)
    mask, feed = thought.attention_mask, batch["suffix_ids"]  # (B, P + N), (B, 1) = <eot> or the opener

    tokens: list[list[int]] = [[] for _ in prefixes]
    steps: list[list[int]] = [[] for _ in prefixes]
    rows = LiveRows(len(prefixes))
    while True:
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)  # (n, L + 1)
        out = backend.forward(backend.embed(feed), mask, cache, depth)  # hidden (n, 1, H)
        chosen = select_tokens(backend.logits(out.hidden[:, -1]), *sampling,
                               generators=None if generators is None else [generators[b] for b in rows.alive])  # (n,)
        spent = None if out.steps_used is None else out.steps_used[:, -1].tolist()
        length = mask.sum(-1).tolist()  # real positions so far: the next token's position
        reasons = []
        for j, (b, token) in enumerate(zip(rows.alive, chosen.tolist())):
            tokens[b].append(token)
            if spent is not None:
                steps[b].append(spent[j])
            if token == ids.eos:
                reasons.append("eos")
            elif len(tokens[b]) >= max_new_tokens:
                reasons.append("length")
            elif limit is not None and length[j] >= limit:  # the token would be fed at position `limit`
                reasons.append("context")
            else:
                reasons.append("")
        kept = rows.settle(reasons, device)
        if rows.done:
            break
        if kept is not None:
            backend.select_rows(cache, kept)
            mask, chosen = mask[kept], chosen[kept]
        feed = chosen[:, None]  # (n, 1)

    recurrent = prefix.steps_used is not None
    thought_steps = None
    if recurrent:
        thought_steps = thought.core_steps.tolist() if thought.core_steps is not None else [0] * len(prefixes)
    return CoconutGeneration(tokens, thought.used.tolist(), rows.finish, thought_steps, steps if recurrent else None)


def context_length(lm: ContinuousThoughtLM) -> Optional[int]:
    """Positions the model can address (our block_size, a Hugging Face max_position_embeddings), if bounded."""
    config = lm.backend.model.config
    return getattr(config, "block_size", None) or getattr(config, "max_position_embeddings", None)


def _check_inputs(lm: ContinuousThoughtLM, prefixes: list[list[int]], bounds: list[int], max_new_tokens: int) -> None:
    if not prefixes:
        raise ConfigError("generate: no prefixes given")
    if len(bounds) != len(prefixes):
        raise ConfigError(f"generate: {len(bounds)} thought bounds for {len(prefixes)} prefixes; give one per "
                         "prefix or a single int")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    limit = context_length(lm)
    for i, (p, n) in enumerate(zip(prefixes, bounds)):
        if not p:
            raise ConfigError(f"prefix {i} is empty; a prefix is the question followed by <bot>")
        if n < 0:
            raise ConfigError(f"prefix {i}: thought bound {n} must be >= 0")
        if limit is not None and len(p) + n + 1 > limit:
            raise ConfigError(f"prefix {i}: {len(p)} tokens + {n} thoughts + <eot> exceed the model's {limit} "
                             "positions; shorten the question or lower the thought bound")


def answer_of(text: str) -> str:
    """What follows the last answer mark ("### "), stripped; "" when the text gives no answer."""
    _, mark, answer = text.rpartition(ANSWER_MARK)
    return answer.strip() if mark else ""


def exact_match(text: str, answer: str) -> bool:
    """Whether generated ``text`` answers exactly ``answer`` (both stripped), as the paper scores."""
    return answer_of(text) == answer.strip()
