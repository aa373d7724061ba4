"""The tokenizer side of Coconut: the thought markers, found or added, for either kind of model.

recurrent_lm's own tokenizer reserves ``<bot>``, ``<eot>`` and ``<latent>`` (ids 3..5). A Hugging Face
tokenizer usually lacks them: :func:`add_thought_tokens` adds them as special tokens and grows the model's
embeddings to match, initialising the new rows with the mean embedding so the markers start in the
region of embedding space the model already reads (a random row would start as an outlier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from recurrent_lm.coconut.sequences import SpecialIds
from recurrent_lm.data.tokenizer import WrappedTokenizer
from recurrent_lm.errors import ConfigError, MissingFileError

BOT, EOT, LATENT = "<bot>", "<eot>", "<latent>"
EOS_NAMES = ("<|eos|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")


class ThoughtTokenizer(WrappedTokenizer):
    """A ``tokenizers.Tokenizer`` with the ids of the Coconut markers, end of sequence and padding.

    Text is encoded as text (``encode_special_tokens``): a question that contains the string "<bot>" gets
    ordinary tokens, never the marker, so no record can inject control tokens.
    """

    def __init__(self, tokenizer: Tokenizer, origin: str = "the tokenizer") -> None:
        tokenizer.encode_special_tokens = True
        super().__init__(tokenizer)
        self.ids = _special_ids(tokenizer, origin)

    @classmethod
    def from_file(cls, path: str | Path) -> "ThoughtTokenizer":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no tokenizer.json here; a Coconut model directory holds one")
        return cls(Tokenizer.from_file(str(path)), origin=str(path))

    def decode(self, ids: list[int]) -> str:
        """Text without the markers and end-of-sequence (what an answer is compared on)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _special_ids(tokenizer: Tokenizer, origin: str) -> SpecialIds:
    def find(names: tuple[str, ...]) -> Optional[int]:
        return next((tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None), None)

    missing = [name for name in (BOT, EOT, LATENT) if tokenizer.token_to_id(name) is None]
    if missing:
        raise ConfigError(f"{origin} lacks the Coconut tokens {missing}; add them with "
                         "recurrent_lm.coconut.tokens.add_thought_tokens(tokenizer, model), which also grows the "
                         "model's embeddings")
    eos = find(EOS_NAMES)
    if eos is None:
        raise ConfigError(f"{origin} has no end-of-sequence token (looked for {list(EOS_NAMES)}); add one as a special "
                         "token so generation can stop")
    pad = find(PAD_NAMES)
    return SpecialIds(bot=tokenizer.token_to_id(BOT), eot=tokenizer.token_to_id(EOT),
                      latent=tokenizer.token_to_id(LATENT), eos=eos, pad=eos if pad is None else pad)


def add_thought_tokens(tokenizer: Tokenizer, model: Optional[nn.Module] = None) -> ThoughtTokenizer:
    """Add whichever of <bot>, <eot>, <latent> are missing; grow ``model``'s (Hugging Face) embeddings to the
    tokenizer's size, new rows at the mean embedding (tied heads follow; an untied head gets its mean too)."""
    missing = [name for name in (BOT, EOT, LATENT) if tokenizer.token_to_id(name) is None]
    if missing:
        added = tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in missing])
        if added != len(missing):
            raise ConfigError(f"the tokenizer refused some of {missing} ({added} added); use a tokenizer.json that "
                             "accepts added special tokens")
    if model is not None:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        old = model.get_input_embeddings().weight.shape[0]
        if size > old:
            _grow_embeddings(model, old, size)
    return ThoughtTokenizer(tokenizer)


def _grow_embeddings(model: nn.Module, old: int, size: int) -> None:
    inputs = model.get_input_embeddings().weight.detach()
    outputs = model.get_output_embeddings()
    head = None if outputs is None or outputs.weight is model.get_input_embeddings().weight else \
        outputs.weight.detach().clone()
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = inputs[:old].mean(0)
        if head is not None:
            model.get_output_embeddings().weight[old:] = head[:old].mean(0)
