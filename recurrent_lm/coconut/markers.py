"""The three Coconut marker tokens, by name: a setting, so a tokenizer and checkpoint from elsewhere keep their ids.

``coconut.markers`` is a preset name or an explicit ``[start, end, latent]`` list:

    recurrent_lm   <bot> <eot> <latent>                                  ids 3..5 of recurrent_lm's own BPE
    reference      <|start-latent|> <|end-latent|> <|latent|>            facebookresearch/coconut's run.py (GPT-2
                                                                          ids 50257..50259, added in that order)

A tokenizer that already holds the three names is used as it is (no token added, no embedding resized), so a
reference checkpoint's ids stay where its training put them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from recurrent_lm.errors import ConfigError

PRESETS: dict[str, tuple[str, str, str]] = {
    "recurrent_lm": ("<bot>", "<eot>", "<latent>"),
    "reference": ("<|start-latent|>", "<|end-latent|>", "<|latent|>"),
}
MarkerSetting = Union[str, list, tuple]


@dataclass(frozen=True)
class Markers:
    """Token strings of the start-of-thought, end-of-thought and latent (thought slot) markers."""

    start: str
    end: str
    latent: str

    @property
    def names(self) -> tuple[str, str, str]:
        """In the order the reference adds them (start, end, latent): the order new ids are assigned in."""
        return (self.start, self.end, self.latent)

    @classmethod
    def parse(cls, setting: Any, key: str = "coconut.markers") -> "Markers":
        """A preset name or three distinct non-empty strings; anything else names the setting and the presets."""
        if isinstance(setting, Markers):
            return setting
        if isinstance(setting, str):
            if setting not in PRESETS:
                raise ConfigError(f"{key}={setting!r} is not a preset; choose one of {sorted(PRESETS)} or give three "
                                 "token strings [start, end, latent]")
            return cls(*PRESETS[setting])
        names = list(setting) if hasattr(setting, "__iter__") else None  # a list, tuple or OmegaConf ListConfig
        if names is None or len(names) != 3 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != 3:
            raise ConfigError(f"{key}={setting!r} must be a preset ({sorted(PRESETS)}) or three distinct non-empty "
                             "token strings [start, end, latent]")
        return cls(*names)
