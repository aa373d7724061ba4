"""Tokenizers in the Hugging Face directory layout: tokenizer.json plus the files that name its special tokens.

Training packs data with either kind (data.tokenizer_path, init_from), export and conversion carry the files along,
and evaluation and generation read them back: :func:`load_tokenizer` and :func:`save_tokenizer_dir` are the pair.

A recurrent_lm tokenizer holds its reserved specials at ids 0..5 (:class:`TextTokenizer`). A foreign one, such
as Huginn-0125's, names its own (``<|begin_text|>``, ``<|end_text|>``, ``<|pad|>``) in
``tokenizer_config.json`` / ``special_tokens_map.json`` / ``generation_config.json``, and may carry a chat
template (``chat_template`` in tokenizer_config.json, or ``chat_template.jinja``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from tokenizers import Tokenizer

from recurrent_lm.data.tokenizer import SPECIAL_TOKENS, TextTokenizer, WrappedTokenizer
from recurrent_lm.errors import ConfigError, MissingFileError
from recurrent_lm.model.io import TOKENIZER_FILE, atomic_write

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, GENERATION_CONFIG_FILE,
                   CHAT_TEMPLATE_FILE)
"""The files of a tokenizer directory that a conversion carries along when present."""


class HFTokenizer(WrappedTokenizer):
    """tokenizer.json with the bos/eos/pad tokens its directory names; the interface of :class:`TextTokenizer`.

    Unlike TextTokenizer, special tokens written *in text* are parsed as specials: a chat template renders
    its turn markers as text, and they must become the marker ids the model was trained on.
    """

    def __init__(self, tokenizer: Tokenizer, eos_id: int, pad_id: int, bos_id: Optional[int]) -> None:
        super().__init__(tokenizer)
        self.eos_id, self.pad_id, self.bos_id = eos_id, pad_id, bos_id

    @classmethod
    def from_dir(cls, directory: Path, tokenizer: Optional[Tokenizer] = None) -> "HFTokenizer":
        tokenizer = tokenizer or _read_tokenizer(directory / TOKENIZER_FILE)
        ids = special_token_ids(directory, tokenizer)
        if ids.get("eos") is None:
            raise ConfigError(f"{directory / TOKENIZER_FILE} is not a recurrent_lm tokenizer and no eos_token is "
                             f"named in {TOKENIZER_CONFIG_FILE}, {SPECIAL_TOKENS_MAP_FILE} or {GENERATION_CONFIG_FILE} "
                             "beside it; add one of them (e.g. {\"eos_token\": \"<|end_text|>\"})")
        return cls(tokenizer, ids["eos"], ids["pad"] if ids.get("pad") is not None else ids["eos"], ids.get("bos"))

    def special_tokens_config(self) -> dict[str, Any]:
        """tokenizer_config.json naming this tokenizer's specials, which :meth:`from_dir` reads back."""
        roles = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id}
        return {"tokenizer_class": "PreTrainedTokenizerFast",
                **{role: self.tokenizer.id_to_token(i) for role, i in roles.items() if i is not None}}


def save_tokenizer_dir(tokenizer: WrappedTokenizer, directory: Path) -> None:
    """Write ``tokenizer`` into ``directory`` so that :func:`load_tokenizer` reads back the same one: tokenizer.json,
    and for a foreign tokenizer a tokenizer_config.json naming its specials. Each file is written atomically, the
    config first: readers (other ranks, a resume) wait for tokenizer.json and then find everything beside it."""
    if isinstance(tokenizer, HFTokenizer):
        config = json.dumps(tokenizer.special_tokens_config(), indent=2) + "\n"
        atomic_write(directory / TOKENIZER_CONFIG_FILE, lambda tmp: tmp.write_text(config))
    atomic_write(directory / TOKENIZER_FILE, tokenizer.save)


def load_tokenizer(path: Path) -> Union[TextTokenizer, HFTokenizer]:
    """The tokenizer at ``path`` (a tokenizer.json): ours when it holds recurrent_lm's reserved specials at
    ids 0..5, otherwise an :class:`HFTokenizer` with the specials its directory names."""
    tokenizer = _read_tokenizer(path)
    if all(tokenizer.token_to_id(token) == i for i, token in enumerate(SPECIAL_TOKENS)):
        return TextTokenizer(tokenizer, origin=str(path))
    return HFTokenizer.from_dir(path.parent, tokenizer)


def special_token_ids(directory: Path, tokenizer: Tokenizer) -> dict[str, Optional[int]]:
    """{'bos', 'eos', 'pad'} -> id, from token strings (tokenizer_config.json, special_tokens_map.json), else
    from ids (generation_config.json; a list of eos ids gives its first)."""
    found: dict[str, Optional[int]] = {}
    for role in ("bos", "eos", "pad"):
        for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
            token = _read_json(directory / name).get(f"{role}_token")
            content = token.get("content") if isinstance(token, dict) else token
            if isinstance(content, str):
                if tokenizer.token_to_id(content) is None:
                    raise ConfigError(f"{directory / name}: {role}_token={content!r} is not in {TOKENIZER_FILE}; "
                                     "fix the token string or the tokenizer file")
                found[role] = tokenizer.token_to_id(content)
                break
        else:
            value = _read_json(directory / GENERATION_CONFIG_FILE).get(f"{role}_token_id")
            found[role] = value[0] if isinstance(value, list) and value else value
    return found


def read_chat_template(directory: Path) -> Optional[str]:
    """The chat template of a tokenizer directory: chat_template.jinja, else tokenizer_config.json's
    ``chat_template`` (a string, or a list of {name, template} whose 'default' is used); None if absent."""
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    template = _read_json(directory / TOKENIZER_CONFIG_FILE).get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def tokenizer_config_for(tokenizer: TextTokenizer, max_length: int) -> dict[str, Any]:
    """tokenizer_config.json for one of our tokenizers, so Hugging Face's AutoTokenizer finds its specials."""
    bos, eos, pad = SPECIAL_TOKENS[tokenizer.bos_id], SPECIAL_TOKENS[tokenizer.eos_id], SPECIAL_TOKENS[tokenizer.pad_id]
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
            "model_max_length": max_length, "add_bos_token": False, "add_eos_token": False}


def copy_tokenizer_files(source: Path, target: Path, max_length: int) -> list[str]:
    """Copy the tokenizer files ``source`` has; give one of our tokenizers the tokenizer_config.json and
    generation_config.json that name its specials for Hugging Face. Returns the file names written."""
    written = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            atomic_write(target / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp))
            written.append(name)
    if TOKENIZER_FILE in written and TOKENIZER_CONFIG_FILE not in written:
        tokenizer = load_tokenizer(source / TOKENIZER_FILE)
        if isinstance(tokenizer, TextTokenizer):
            extra = {TOKENIZER_CONFIG_FILE: tokenizer_config_for(tokenizer, max_length),
                     GENERATION_CONFIG_FILE: {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                              "pad_token_id": tokenizer.pad_id}}
            for name, data in extra.items():
                if name not in written:
                    atomic_write(target / name, lambda p, data=data: p.write_text(json.dumps(data, indent=2)))
                    written.append(name)
    return written


def _read_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise MissingFileError(f"no tokenizer at {path}; copy the model's {TOKENIZER_FILE} there or pass "
                                "tokenizer=<path to tokenizer.json>")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for any parse error
        raise ConfigError(f"{path} is not a valid tokenizer.json ({err})") from err


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); fix or remove it") from err
    return data if isinstance(data, dict) else {}
