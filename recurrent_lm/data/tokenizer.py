"""Byte-level BPE tokenizer with the special tokens every part of recurrent_lm relies on.

Byte-level (ByteLevel pre-tokenizer and decoder, the full 256-byte initial alphabet) means every string
encodes and decodes back exactly: there is no unknown token and no normalisation.

The special tokens occupy fixed ids 0..5 so that model code, the Coconut adapter and exported checkpoints can
refer to them by id without carrying the tokenizer around. Text is always encoded as text: a corpus that
happens to contain the literal string ``<latent>`` yields ordinary byte tokens, never the special id, so
no document can inject control tokens. Callers that need a special token insert its id directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from recurrent_lm.errors import ConfigError, MissingFileError

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<bot>", "<eot>", "<latent>")
"""Reserved tokens, in id order: bos, eos, pad, then Coconut's begin-thought, end-thought and thought slot."""


class WrappedTokenizer:
    """A `tokenizers.Tokenizer` with the few operations the pipeline uses. Subclasses say where the special
    tokens are: ours at reserved ids (:class:`TextTokenizer`), a foreign directory's by name
    (:class:`recurrent_lm.data.tokenizer_dir.HFTokenizer`), Coconut's markers by name
    (:class:`recurrent_lm.coconut.tokens.ThoughtTokenizer`)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (e.g. to add tokens to it)."""
        return self._tokenizer

    def save(self, path: str | Path) -> None:
        self._tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once: the Rust side spreads them over all cores and skips computing offsets."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Exact inverse of `encode`; special tokens are rendered as their strings, not dropped."""
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical (key-sorted, compact) tokenizer JSON: equal iff the tokenizers are the same."""
        canonical = json.dumps(json.loads(self._tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TextTokenizer(WrappedTokenizer):
    """A `tokenizers.Tokenizer` holding `SPECIAL_TOKENS` at ids 0..5."""

    def __init__(self, tokenizer: Tokenizer, origin: str = "the tokenizer") -> None:
        """Wrap `tokenizer`; `origin` names it in the error raised when it lacks the reserved specials."""
        _check_specials(tokenizer, origin)
        tokenizer.encode_special_tokens = True  # runtime flag, not serialised: see the module docstring
        super().__init__(tokenizer)

    def __reduce__(self) -> tuple[type[TextTokenizer], tuple[Tokenizer]]:
        # Rebuild through __init__ on unpickling (e.g. in Dataset.map worker processes): a pickled Tokenizer
        # forgets encode_special_tokens, and a worker that treated "<latent>" in text as the special would
        # silently corrupt the packed data.
        return TextTokenizer, (self._tokenizer,)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, max_chars: int | None = None) -> TextTokenizer:
        """Train a byte-level BPE of `vocab_size` tokens (fewer if the text supports fewer merges).

        `max_chars` caps the text read, so training time stays bounded on large corpora; BPE merges
        stabilise long before the whole of a large corpus has been seen.
        """
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts if max_chars is None else _first_chars(texts, max_chars), trainer)
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        """Load a tokenizer.json; it must hold `SPECIAL_TOKENS` at ids 0..5."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no tokenizer file here; point data.tokenizer_path at a tokenizer.json "
                                    "or leave it unset to train one")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception for any parse error
            raise ConfigError(f"{path} is not a valid tokenizer.json ({err}); point data.tokenizer_path at a file "
                             "saved by the `tokenizers` library, or leave it unset to train one") from err
        return cls(tokenizer, origin=str(path))

    @property
    def bos_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        """Appended after every packed document."""
        return 1

    @property
    def pad_id(self) -> int:
        return 2

    @property
    def bot_id(self) -> int:
        """Coconut's begin-of-thought marker."""
        return 3

    @property
    def eot_id(self) -> int:
        """Coconut's end-of-thought marker."""
        return 4

    @property
    def latent_id(self) -> int:
        """Coconut's placeholder that a continuous thought replaces."""
        return 5

def _check_specials(tokenizer: Tokenizer, origin: str) -> None:
    found = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, token_id in found.items() if token_id is None]
    misplaced = [f"{token} at id {found[token]} (expected {expected})" for expected, token in enumerate(SPECIAL_TOKENS)
                 if found[token] is not None and found[token] != expected]
    if missing or misplaced:
        problem = f"lacks the reserved special tokens {missing}" if missing else f"has {', '.join(misplaced)}"
        raise ConfigError(f"{origin} {problem}; recurrent_lm needs {list(SPECIAL_TOKENS)} at ids 0..5. Point "
                         "data.tokenizer_path at a tokenizer trained by recurrent_lm, or leave it unset to train one")


def _first_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """The texts, in order, cut off once `max_chars` characters have been yielded."""
    remaining = max_chars
    for text in texts:
        if remaining <= 0:
            return
        yield text[:remaining]
        remaining -= len(text)
