"""Building config dataclasses from plain dicts (config.json, task.json, hydra groups)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from recurrent_lm.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """``cls(**data)``, refusing unknown keys by name (a typo must not silently fall back to a default).

    Lists and tuples become lists, so values read from JSON or OmegaConf compare equal to defaults.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(known)}")
    return cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})
