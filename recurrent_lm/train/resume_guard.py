"""What a resume may change: the checkpoint's recipe (model, sampler, optimizer, data, tokenizer) against this launch's.

``resume=auto`` continues a run only when it is the same run. A shape change cannot load at all; a change that keeps
every shape (depth, sampler, optimizer, a rewritten corpus) would train something else under the old run's name, step
count and logs -- a re-run sweep once "resumed" another sweep's finished run that way and reprinted its losses. So such
a change is refused unless the user names it in ``allow_changes`` (a key such as ``model.mean_recurrence``, or a whole
group such as ``optim`` or ``data``). A tokenizer change is refused always: token ids would mean other things.

Everything here runs before anything in the run directory is written, so a refusal leaves it byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.train.run_dir import Resume

Changes = dict[str, tuple[Any, Any]]
"""Dotted key -> (checkpoint's value, this launch's value)."""


def is_allowed(key: str, allow: Sequence[str]) -> bool:
    """``key`` is named in ``allow`` itself or through a group above it (``optim`` allows ``optim.lr``)."""
    return any(key == name or key.startswith(name + ".") for name in allow)


def diff(stored: dict[str, Any], new: dict[str, Any], prefix: str) -> Changes:
    """Keys of ``new`` whose value differs from ``stored``; a key the checkpoint lacks (added since) counts as equal."""
    return {f"{prefix}.{k}": (stored[k], v) for k, v in new.items() if k in stored and stored[k] != v}


def _plain(value: Any) -> Any:
    """What a value reads back as from a checkpoint's hyper_parameters (tuples are stored as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _listing(changes: Changes) -> str:
    return ", ".join(f"{k}: {a if isinstance(a, str) and ' ' in k else repr(a)} -> "
                     f"{b if isinstance(b, str) and ' ' in k else repr(b)}" for k, (a, b) in sorted(changes.items()))


def check_recipe(resume: Resume, model: ModelConfig, sampler: Any, optim: Any, allow: Sequence[str]) -> None:
    """Refuse a resume whose model builds other parameter shapes, or whose model, sampler or optimizer settings differ
    from the checkpoint's without being named in ``allow``.

    Shapes are compared on meta-device models, so "shape-relevant" is decided by the model code itself rather
    than a hand-kept key list.
    """
    if resume.checkpoint is None:
        return
    try:
        hparams = resume.checkpoint["hyper_parameters"]
        stored_model = ModelConfig.from_stored(hparams["model"])  # a field added since reads as its default
    except KeyError:
        raise ConfigError(f"checkpoint {resume.path} has no model config (hyper_parameters.model); it was not "
                         "written by recurrent-lm-train") from None
    model_changes = diff(stored_model.to_dict(), model.to_dict(), "model")
    if model_changes and _param_shapes(stored_model) != _param_shapes(model):
        raise ConfigError(f"resume refused: {resume.path} was trained with another model shape "
                         f"({_listing(model_changes)}); resume with the stored values, or start a new run under "
                         "another name= or run_dir=")
    changes = {**model_changes,
               **diff(hparams.get("sampler", {}), {k: _plain(v) for k, v in vars(sampler).items()}, "sampler"),
               **diff(hparams.get("optim", {}), {k: _plain(v) for k, v in vars(optim).items()}, "optim")}
    refuse_unless_allowed(resume, changes, allow, "recipe")


def refuse_unless_allowed(resume: Resume, changes: Changes, allow: Sequence[str], what: str) -> None:
    """Raise naming every change that ``allow`` does not name and the two ways on; print the allowed ones."""
    refused = {k: v for k, v in changes.items() if not is_allowed(k, allow)}
    if refused:
        keys = ",".join(sorted(refused))
        raise ConfigError(f"resume refused: {resume.path} was trained with another {what} ({_listing(refused)}); "
                         "continuing it would train other settings under that run's steps and logs. To continue it "
                         f"with these changes on purpose, add allow_changes=[{keys}]; to train them as a new run, "
                         "choose another name= or run_dir= (or resume=none overwrite=true to replace this run)")
    if changes:
        print(f"resuming {resume.path} with the changes allow_changes names: {_listing(changes)}")


def data_record(tokenizer_fingerprint: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores about its data (in the datamodule's state): checked by :func:`check_data`."""
    return {"tokenizer": tokenizer_fingerprint, "recipe": recipe}


def check_data(resume: Resume, stored: Optional[dict[str, Any]], current: dict[str, Any], run_tokenizer: Path,
               run_tokenizer_fingerprint: Optional[str], allow: Sequence[str]) -> None:
    """Refuse a resume whose tokenizer differs from the one the checkpoint was trained with, naming what changed in
    the data, and one whose data changed unless ``allow`` names ``data``.

    ``stored`` is the checkpoint's :func:`data_record` (None for checkpoints from before it was recorded: the run
    directory's tokenizer.json, ``run_tokenizer_fingerprint``, stands in for it).
    """
    if resume.checkpoint is None:
        return
    stored_tokenizer = stored["tokenizer"] if stored else run_tokenizer_fingerprint
    changes = corpus_changes(stored["recipe"], current["recipe"]) if stored else {}
    if stored_tokenizer is not None and stored_tokenizer != current["tokenizer"]:
        why = _listing(changes) if changes else "the tokenizer file or its settings changed"
        raise ConfigError(f"resume refused: {resume.path} was trained with tokenizer {stored_tokenizer[:12]}, but this "
                         f"launch's data gives tokenizer {current['tokenizer'][:12]} ({why}); token ids would mean "
                         "other things. Restore the original data, or train on the new data as a new run under "
                         f"another name= or run_dir= (data.tokenizer_path={run_tokenizer} keeps this run's tokenizer)")
    refuse_unless_allowed(resume, changes, allow, "data")


def corpus_changes(stored: dict[str, Any], new: dict[str, Any], prefix: str = "data") -> Changes:
    """The differences of two packing recipes (:func:`recurrent_lm.data.packing.recipe`), readable: a local file
    added, removed or rewritten is named by path; anything else by its dotted key."""
    changes: Changes = {}
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(corpus_changes(a, b, f"{prefix}.{key}"))
        elif key == "content" and isinstance(a, list) and isinstance(b, list):
            old, now = {f[0]: f[1:] for f in a}, {f[0]: f[1:] for f in b}
            for path in sorted(set(old) | set(now)):
                if old.get(path) != now.get(path):
                    before, after = old.get(path), now.get(path)
                    touched = before is not None and after is not None and before[0] == after[0]
                    changes[f"{prefix}.file {path}"] = (_size(before), _size(after) + (", modified" if touched else ""))
        else:
            changes[f"{prefix}.{key}"] = (a, b)
    return changes


def _size(entry: Optional[list[Any]]) -> str:
    return "absent" if entry is None else f"{entry[0]} bytes"


def _param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in RecurrentDepthLM(config).state_dict().items()}
