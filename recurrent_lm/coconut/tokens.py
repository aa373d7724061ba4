"""The tokenizer side of Coconut: the thought markers, found or added, for either kind of model.

The marker names are a setting (:mod:`recurrent_lm.coconut.markers`). recurrent_lm's own tokenizer reserves
``<bot>``, ``<eot>`` and ``<latent>`` (ids 3..5); a tokenizer saved by a reference run holds the reference's
three. Whatever lacks them gets them from :func:`add_thought_tokens`, as special tokens in start, end, latent
order (the order, hence the ids, the reference's ``run.py`` gives them), and the model's embeddings grow to
match, new rows at the mean embedding so the markers start in the region of embedding space the model already
reads (a random row would start as an outlier). A tokenizer that has them is used without any resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from recurrent_lm.coconut.markers import PRESETS, Markers, MarkerSetting
from recurrent_lm.coconut.sequences import SpecialIds
from recurrent_lm.data.tokenizer import WrappedTokenizer
from recurrent_lm.errors import ConfigError, MissingFileError

BOT, EOT, LATENT = PRESETS["recurrent_lm"]
EOS_NAMES = ("<|eos|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")


class ThoughtTokenizer(WrappedTokenizer):
    """A ``tokenizers.Tokenizer`` with the ids of the Coconut markers, end of sequence and padding.

    Text is encoded as text (``encode_special_tokens``): a question that contains the string "<bot>" gets
    ordinary tokens, never the marker, so no record can inject control tokens.
    """

    def __init__(self, tokenizer: Tokenizer, origin: str = "the tokenizer",
                 markers: MarkerSetting = "recurrent_lm") -> None:
        tokenizer.encode_special_tokens = True
        super().__init__(tokenizer)
        self.markers = Markers.parse(markers)
        self.ids = _special_ids(tokenizer, origin, self.markers)

    @classmethod
    def from_file(cls, path: str | Path, markers: MarkerSetting = "recurrent_lm") -> "ThoughtTokenizer":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no tokenizer.json here; a Coconut model directory holds one")
        return cls(Tokenizer.from_file(str(path)), origin=str(path), markers=markers)

    def encode_with_specials(self, text: str) -> list[int]:
        """``text`` with the tokenizer's own special tokens (its post-processor: a BOS for Llama-family
        tokenizers, nothing for GPT-2), as the reference encodes a question (``add_special_tokens=True``)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        """Text without the markers and end-of-sequence (what an answer is compared on)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _special_ids(tokenizer: Tokenizer, origin: str, markers: Markers) -> SpecialIds:
    def find(names: tuple[str, ...]) -> Optional[int]:
        return next((tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None), None)

    missing = [name for name in markers.names if tokenizer.token_to_id(name) is None]
    if missing:
        raise ConfigError(f"{origin} lacks the Coconut tokens {missing}; add them with "
                         "recurrent_lm.coconut.tokens.add_thought_tokens(tokenizer, model, markers), which also grows "
                         "the model's embeddings, or set coconut.markers to the names the tokenizer has")
    eos = find(EOS_NAMES)
    if eos is None:
        raise ConfigError(f"{origin} has no end-of-sequence token (looked for {list(EOS_NAMES)}); add one as a special "
                         "token so generation can stop")
    pad = find(PAD_NAMES)
    return SpecialIds(bot=tokenizer.token_to_id(markers.start), eot=tokenizer.token_to_id(markers.end),
                      latent=tokenizer.token_to_id(markers.latent), eos=eos, pad=eos if pad is None else pad)


def add_thought_tokens(tokenizer: Tokenizer, model: Optional[nn.Module] = None,
                       markers: MarkerSetting = "recurrent_lm") -> ThoughtTokenizer:
    """Add whichever of the three markers are missing (start, end, latent order); grow ``model``'s (Hugging Face)
    embeddings to the tokenizer's size, new rows at the mean embedding (tied heads follow; an untied head gets
    its mean too). Nothing is added or resized when the tokenizer and the model already hold them."""
    markers = Markers.parse(markers)
    missing = [name for name in markers.names if tokenizer.token_to_id(name) is None]
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
    return ThoughtTokenizer(tokenizer, markers=markers)


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
