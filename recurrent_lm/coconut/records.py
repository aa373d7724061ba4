"""The ``{question, steps, answer}`` record format every Coconut dataset is stored in.

One JSON file holds a list of objects, each with a question (str), its reasoning steps (list of
str, one language step each; the curriculum replaces the first ``k`` of them by continuous thoughts)
and an answer (str). This is the format of the reference repository, of the ProntoQA files in
``shared/data/prontoqa``, of GSM8k-Aug (steps such as ``"<<2*3=6>>"``) and of ProsQA, so one loader
serves all of them. Published files carry extra keys (ProsQA's graph metadata); they are ignored.

Decisions, so that every dataset reaches the model as the same exact strings:

* ``answer`` may be a JSON integer (some converted GSM8k files store ``18``): ``str(18)`` is exact.
  Floats and booleans are refused: ``str(18.0)`` is ``"18.0"``, which would silently never match a
  generated ``"18"``; the file must say which string it means.
* question, answer and every step must be non-empty: an empty one trains the model on nothing.
* Only JSON lists are read. JSON Lines files are refused with a hint to wrap them in a list.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from recurrent_lm.errors import ConfigError

REQUIRED_KEYS = ("question", "steps", "answer")


class RecordError(ConfigError):
    """A records file the user must fix; the message names the file, the record and the fix."""


@dataclass(frozen=True)
class ReasoningRecord:
    """One problem: the question, its language reasoning steps (maybe none) and the answer."""

    question: str
    steps: tuple[str, ...]
    answer: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON object this record is stored as."""
        return {"question": self.question, "steps": list(self.steps), "answer": self.answer}


def load_records(path: Union[str, os.PathLike], *, require_steps: bool = True) -> list[ReasoningRecord]:
    """Read and validate a JSON list of records; the first bad record raises :class:`RecordError`.

    ``require_steps=False`` is for baselines without chain of thought (No-CoT, Pause): their data
    may lack ``steps`` or have empty ones. Steps that are present are still checked.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"{path}: the file holds {_kind(data)}, not a list; "
                          "write a list of {\"question\", \"steps\", \"answer\"} objects")
    if not data:
        raise RecordError(f"{path}: the list holds no records; regenerate or choose another file")
    return [_parse_record(path, index, item, require_steps) for index, item in enumerate(data)]


def write_records(records: Iterable[Union[ReasoningRecord, Mapping[str, Any]]],
                  path: Union[str, os.PathLike]) -> Path:
    """Write records (objects or mappings, whose extra keys are kept) as one JSON list, atomically.

    The list goes to a temporary file in the same directory, then ``os.replace`` moves it over
    ``path``, so an interrupted run never leaves a truncated file that a later run would load.
    """
    path = Path(path)
    rows = [r.to_dict() if isinstance(r, ReasoningRecord) else dict(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                          "save the file as UTF-8 JSON") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        hint = ("JSON Lines is not supported: wrap the records in one JSON list"
                if path.suffix == ".jsonl" else "fix the JSON syntax there")
        raise RecordError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                          f"{hint}") from err


def _parse_record(path: Path, index: int, item: Any, require_steps: bool) -> ReasoningRecord:
    where = f"{path}: record {index}"
    if not isinstance(item, dict):
        raise RecordError(f"{where} is {_kind(item)}, not an object; every record must be "
                          "{\"question\": str, \"steps\": [str, ...], \"answer\": str}")
    needed = REQUIRED_KEYS if require_steps else ("question", "answer")
    missing = [key for key in needed if key not in item]
    if missing:
        raise RecordError(f"{where} lacks {', '.join(repr(k) for k in missing)} (it has "
                          f"{sorted(item)}); add the missing keys")
    question = _text(where, "question", item["question"])
    answer = item["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    answer = _text(where, "answer", answer)
    steps = _steps(where, item.get("steps", []))
    if require_steps and not steps:
        raise RecordError(f"{where} has no steps; give at least one reasoning step, or load with "
                          "require_steps=False for a baseline without chain of thought")
    return ReasoningRecord(question, steps, answer)


def _text(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: {key!r} is {_kind(value)}, not a string; "
                          f"write it as a string")
    if not value.strip():
        raise RecordError(f"{where}: {key!r} is empty; give it text")
    return value


def _steps(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RecordError(f"{where}: 'steps' is {_kind(value)}, not a list; "
                          "write it as a list of strings, one reasoning step each")
    for number, step in enumerate(value):
        if not isinstance(step, str) or not step.strip():
            kind = "empty" if isinstance(step, str) else _kind(step)
            raise RecordError(f"{where}: step {number} is {kind}, not a non-empty string; "
                              "every step must be text")
    return tuple(value)


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it ("an object", "a number")."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
