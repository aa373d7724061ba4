"""Records -> token layouts -> padded batches for :class:`ContinuousThoughtLM`.

A record is encoded once (question, each step, answer as separate token runs), then laid out per stage
without touching text again::

    prefix  = question <bot> [<latent> × n, pause baseline only]
    thoughts = n (continuous) or 0
    suffix  = <eot> step_{k+1} ... step_m ### answer <eos>      (the first k steps dropped at this stage)

Labels follow the paper's mask: nothing in the prefix, the thoughts or at <eot> itself is predicted; the
<eot> position predicts the first remaining token, and every later suffix token is a target.

``coconut.layout=reference`` (the default) is the reference's ``dataset.py`` token for token: the question
is encoded as ``question + "\n"`` *with* the tokenizer's special tokens (a BOS for Llama-family tokenizers),
each step as ``step + "\n"`` and the answer as ``"### " + answer``, verbatim; CoT and no-CoT carry no markers::

    prefix  = question[:-1]          suffix = question[-1] step_{1} ... step_m ### answer <eos>

(the question's last token opens the suffix because its logit predicts the first supervised token).
``coconut.layout=legacy`` is recurrent_lm's earlier layout: parts stripped, no special tokens, markers for every
method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from recurrent_lm.errors import ConfigError
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.curriculum import layout
from recurrent_lm.model.lm import IGNORE_INDEX

ANSWER_MARK = "### "
"""Separates the reasoning from the answer; exact match compares what follows it."""


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the markers a Coconut sequence uses."""

    bot: int
    eot: int
    latent: int
    eos: int
    pad: int


@dataclass  # not frozen: Lightning moves validation batches (lists of these) through apply_to_collection
class EncodedRecord:
    question: tuple[int, ...]
    """``question\\n``"""
    steps: tuple[tuple[int, ...], ...]
    """Each ``step\\n``."""
    answer: tuple[int, ...]
    """``### answer``"""

    def __len__(self) -> int:
        """Tokens of the record with every step kept."""
        return len(self.question) + sum(len(s) for s in self.steps) + len(self.answer)


@dataclass(frozen=True)
class ThoughtExample:
    prefix: tuple[int, ...]
    thoughts: int
    suffix: tuple[int, ...]


class Encoder(Protocol):
    """What encoding a record needs of a tokenizer (:class:`recurrent_lm.coconut.tokens.ThoughtTokenizer`)."""

    def encode(self, text: str) -> list[int]:
        """Text as text, no special tokens added."""

    def encode_with_specials(self, text: str) -> list[int]:
        """Text with the tokenizer's special tokens (its BOS, if it adds one)."""


def encode_record(tokenizer: Encoder, question: str, steps: Sequence[str], answer: str,
                  layout_name: str = "reference") -> EncodedRecord:
    """Tokenize a record's parts as ``layout_name`` lays them out (see the module docstring)."""
    legacy = layout_name == "legacy"
    clean = str.strip if legacy else str
    first = tokenizer.encode if legacy else tokenizer.encode_with_specials
    encode = tokenizer.encode
    return EncodedRecord(tuple(first(clean(question) + "\n")), tuple(tuple(encode(clean(s) + "\n")) for s in steps),
                         tuple(encode(ANSWER_MARK + clean(answer))))


def encode_records(tokenizer: Encoder, records: Sequence, config: CoconutConfig) -> list[EncodedRecord]:
    """Every record (anything with question, steps, answer) encoded in ``config.layout``."""
    return [encode_record(tokenizer, r.question, r.steps, r.answer, config.layout) for r in records]


def build_example(record: EncodedRecord, stage: int, config: CoconutConfig, ids: SpecialIds) -> ThoughtExample:
    """``record`` laid out at ``stage`` for ``config.method`` in ``config.layout``."""
    shape = layout(config, stage, len(record.steps))
    steps = [t for step in record.steps[shape.steps_dropped:] for t in step]
    if not config.has_markers:  # the reference's CoT / no-CoT: question, remaining steps, answer, nothing else
        if len(record.question) < 2:
            raise ConfigError(f"a question of {len(record.question)} token cannot be laid out without markers: its "
                             "last token predicts the first target, so one must precede it; write a longer question")
        return ThoughtExample(record.question[:-1], 0, (record.question[-1], *steps, *record.answer, ids.eos))
    pause = config.method == "pause"
    prefix = (*record.question, ids.bot, *([ids.latent] * shape.thoughts if pause else ()))
    suffix = (ids.eot, *steps, *record.answer, ids.eos)
    return ThoughtExample(prefix, 0 if pause else shape.thoughts, suffix)


def final_example(record: EncodedRecord, config: CoconutConfig, ids: SpecialIds,
                  stage: int | None = None) -> ThoughtExample:
    """``record`` as evaluation lays it out (:meth:`CoconutConfig.evaluation_stage`). Generation starts from its
    prefix, thought bound and first suffix token."""
    return build_example(record, config.evaluation_stage(stage), config, ids)


def collate(examples: Sequence[ThoughtExample], pad_id: int) -> dict[str, Tensor]:
    """Left-pad prefixes (so <bot> and every thought column line up), right-pad suffixes.

    Returns prefix_ids/prefix_mask (B, P), thoughts (B,), suffix_ids/suffix_mask (B, S) and labels (B, S),
    where labels[b, t] is the token suffix position t predicts.
    """
    batch = len(examples)
    p = max(len(e.prefix) for e in examples)
    s = max(len(e.suffix) for e in examples)
    prefix_ids = torch.full((batch, p), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((batch, p), dtype=torch.long)
    suffix_ids = torch.full((batch, s), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((batch, s), dtype=torch.long)
    labels = torch.full((batch, s), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        prefix_ids[b, p - len(e.prefix):] = torch.tensor(e.prefix)
        prefix_mask[b, p - len(e.prefix):] = 1
        suffix_ids[b, : len(e.suffix)] = torch.tensor(e.suffix)
        suffix_mask[b, : len(e.suffix)] = 1
        labels[b, : len(e.suffix) - 1] = torch.tensor(e.suffix[1:])
    thoughts = torch.tensor([e.thoughts for e in examples], dtype=torch.long)
    return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "thoughts": thoughts, "suffix_ids": suffix_ids,
            "suffix_mask": suffix_mask, "labels": labels}
