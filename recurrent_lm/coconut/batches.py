"""The public way in: records (or the reference's flat batches) -> our batch -> the Coconut loss.

    from recurrent_lm.coconut import CoconutConfig, coconut_loss, records_batch
    config = CoconutConfig(markers="reference")                 # no data files needed to lay out examples
    out = coconut_loss(model, tokenizer, records, config, stage=2)   # out.loss, out.logits, out.thoughts
    out.loss.backward()

``records`` are anything with ``question``, ``steps`` and ``answer`` (:class:`ReasoningRecord`, or the
objects of a ProsQA/ProntoQA file read with :func:`load_records`). :func:`from_reference_batch` takes what the
reference's ``MyCollator`` yields instead: flat ``input_ids``/``attention_mask``/``labels``/``position_ids``
with a ``<|latent|>`` token in every thought slot, and returns the same batch, so the two losses are the same
number (``evals/verify/coconut_parity.py`` checks it against the reference code).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from recurrent_lm.errors import ConfigError
from recurrent_lm.coconut.backends import backend_for
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample, build_example, collate, encode_records
from recurrent_lm.coconut.thoughts import CoconutOutput, ContinuousThoughtLM
from recurrent_lm.coconut.tokens import ThoughtTokenizer
from recurrent_lm.model.lm import IGNORE_INDEX


def records_batch(tokenizer: ThoughtTokenizer, records: Sequence[Any], config: CoconutConfig,
                  stage: int) -> dict[str, Tensor]:
    """``records`` laid out at ``stage`` (``config.method``, ``config.layout``) and collated."""
    examples = [build_example(r, stage, config, tokenizer.ids) for r in encode_records(tokenizer, records, config)]
    return collate(examples, tokenizer.ids.pad)


def coconut_loss(model: nn.Module, tokenizer: ThoughtTokenizer, records: Sequence[Any],
                 config: Optional[CoconutConfig] = None, stage: int = 0, **forward: Any) -> CoconutOutput:
    """The Coconut forward and loss of ``records`` at ``stage`` on ``model`` (ours or a Hugging Face causal LM).

    ``forward`` goes to :meth:`ContinuousThoughtLM.__call__` (depth, no_grad_thoughts, thought_exit, generator).
    """
    config = CoconutConfig() if config is None else config
    batch = records_batch(tokenizer, records, config, stage)
    device = next(model.parameters()).device
    return ContinuousThoughtLM(backend_for(model))({k: v.to(device) for k, v in batch.items()}, **forward)


def from_reference_batch(batch: dict[str, Tensor], ids: SpecialIds) -> dict[str, Tensor]:
    """The reference's flat batch (``input_ids``, ``attention_mask``, ``labels``, optional ``position_ids``; (B, T),
    any padding) as our prefix / thoughts / suffix batch with the same loss.

    Each row's real tokens (attention mask 1) are split at its run of ``ids.latent`` tokens: the tokens before it
    are the prefix, the run's length is the thought count, the rest is the suffix. A row without latents splits
    before the token that predicts its first supervised label. Labels are moved to our convention (the label of
    position t is what t predicts). Refused, naming the row: latents that are not one run, positions that do not
    count the real tokens from 0, and supervised labels before the suffix (our forward computes no logits there).
    """
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"].bool(), batch["labels"]
    examples: list[ThoughtExample] = []
    targets: list[list[int]] = []
    for b in range(input_ids.shape[0]):
        tokens, row_labels = input_ids[b][mask[b]].tolist(), labels[b][mask[b]].tolist()
        if "position_ids" in batch and batch["position_ids"][b][mask[b]].tolist() != list(range(len(tokens))):
            raise ConfigError(f"reference batch row {b}: position_ids do not count its real tokens from 0; "
                             "pass the batch as the reference's MyCollator builds it")
        start, thoughts = _split(tokens, row_labels, ids.latent, b)
        examples.append(ThoughtExample(tuple(tokens[:start - thoughts]), thoughts, tuple(tokens[start:])))
        targets.append(row_labels[start + 1:] + [IGNORE_INDEX])
    out = collate(examples, ids.pad)
    out["labels"] = torch.full_like(out["labels"], IGNORE_INDEX)
    for b, row in enumerate(targets):
        out["labels"][b, :len(row)] = torch.tensor(row)
    return out


def _split(tokens: list[int], labels: list[int], latent: int, row: int) -> tuple[int, int]:
    """(first suffix position, thoughts) of one row; see :func:`from_reference_batch`."""
    slots = [t for t, token in enumerate(tokens) if token == latent]
    if slots:
        if slots != list(range(slots[0], slots[0] + len(slots))):
            raise ConfigError(f"reference batch row {row}: its latent tokens at {slots} are not one run; a Coconut "
                             "row holds question, markers and one run of thought slots")
        start = slots[-1] + 1
        thoughts = len(slots)
    else:
        supervised = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
        start, thoughts = (supervised[0] - 1 if supervised else len(tokens) - 1), 0
    if start - thoughts < 1 or start >= len(tokens):
        raise ConfigError(f"reference batch row {row}: no question before the thoughts or no token after them")
    if any(label != IGNORE_INDEX for label in labels[:start + 1]):
        raise ConfigError(f"reference batch row {row}: labels before position {start + 1} are supervised, but the "
                         "question, markers and thoughts carry no loss in Coconut; mask them with -100")
    return start, thoughts
