"""Reference Coconut checkpoints in and out: ``recurrent-lm-convert --from coconut-ref`` / ``--to coconut-ref``.

Import: the ``.pt`` state dict (read with ``weights_only=True``), plus the Hugging Face model directory the run
was built on (its config.json and tokenizer.json), becomes our Coconut export: the Hugging Face model with those
weights, its tokenizer with the reference's three markers (ids as the reference assigns them), and coconut.json
(method from the key prefix, ``markers=reference``, ``layout=reference``, the run's curriculum from its args YAML,
and ``--stage``, the stage the checkpoint reached, if given: evaluation then lays questions out there, else at
the last stage, and says which). Export: a Coconut export of a Hugging Face model becomes the state dict the reference's
``run.py`` loads with ``--load_model_path`` (keys under ``base_causallm.`` for Coconut / pause, plain for CoT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from recurrent_lm.errors import MissingFileError
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.export import COCONUT_FILE, is_hf_dir, load_coconut_model, save_coconut_model
from recurrent_lm.coconut.markers import Markers
from recurrent_lm.coconut.tokens import add_thought_tokens
from recurrent_lm.interop.adapter import check_names
from recurrent_lm.interop.coconut_ref import CoconutRefAdapter, clean_state, method_of, settings_from_args
from recurrent_lm.interop.errors import FormatError
from recurrent_lm.model.io import CONFIG_FILE, TOKENIZER_FILE, atomic_write, make_writable_dir


def read_reference_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, whether it is a Coconut run's) of a ``checkpoint_<epoch>`` file, loaded without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} is not a file; pass the checkpoint_<epoch> file the reference's run.py saved")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a file that is no safe checkpoint
        raise FormatError(f"{path} cannot be loaded as a tensor state dict with weights_only=True ({err}); pass a "
                          "checkpoint_<epoch> file of the reference's run.py") from err
    return clean_state(raw, str(path))


def _base_model(base: Path, state: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    """The Hugging Face model of ``base``'s config.json, its vocabulary sized as the checkpoint's embedding."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (base / CONFIG_FILE).is_file() or not (base / TOKENIZER_FILE).is_file():
        raise MissingFileError(f"--base {base} must be the Hugging Face model directory the reference run was built "
                                f"on, with {CONFIG_FILE} and {TOKENIZER_FILE} (e.g. `AutoModelForCausalLM."
                                "from_pretrained('gpt2').save_pretrained(DIR)` and the tokenizer saved beside it)")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base, local_files_only=True))
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    if prefix + embedding not in state:
        raise FormatError(f"the checkpoint has no {prefix + embedding}: it was not trained from the model in {base}")
    rows = state[prefix + embedding].shape[0]
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    return model.to(state[prefix + embedding].dtype)  # a bf16 run stays bf16: the round trip is bit-identical


def import_coconut_ref(checkpoint: Path, base: Path, target: Path, method: Optional[str] = None,
                       reference_args: Optional[Path] = None, stage: Optional[int] = None) -> Path:
    """Reference checkpoint + its base model directory -> our Coconut export in ``target``."""
    state, wrapped = read_reference_checkpoint(checkpoint)
    settings: dict[str, Any] = settings_from_args(reference_args)
    from_args = settings.pop("method", None)
    method = method_of(wrapped, method or from_args, str(checkpoint))
    model = _base_model(Path(base), state, CoconutRefAdapter((), wrapped).prefix)
    adapter = CoconutRefAdapter(model.state_dict(), wrapped)
    tied = [n for n in adapter.key_map() if n not in state and _tied(model, n.removeprefix(adapter.prefix))]
    check_names(adapter, [*state, *tied], str(checkpoint))  # a tied head may be left out: it is the embedding
    model.load_state_dict(adapter.to_ours(state), strict=not tied)
    from tokenizers import Tokenizer

    tokenizer = add_thought_tokens(Tokenizer.from_file(str(Path(base) / TOKENIZER_FILE)), markers="reference")
    rows = model.get_input_embeddings().weight.shape[0]
    if method in ("coconut", "pause") and max(tokenizer.ids.bot, tokenizer.ids.eot, tokenizer.ids.latent) >= rows:
        raise FormatError(f"{checkpoint}: the embedding has {rows} rows but the markers get ids {tokenizer.ids}; the "
                          f"tokenizer in {base} is not the one the run started from")
    config = CoconutConfig(method=method, markers="reference", layout="reference", eval_stage=stage, **settings)
    make_writable_dir(Path(target))
    return save_coconut_model(model.eval(), tokenizer, config, Path(target))


def _tied(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is the output head tied to the input embedding (a checkpoint may omit it)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight and name.endswith("lm_head.weight")


def export_coconut_ref(source: Path, target: Path) -> Path:
    """Our Coconut export (a Hugging Face model) -> the reference's ``checkpoint`` state dict file ``target``."""
    source = Path(source)
    if not (source / COCONUT_FILE).is_file():
        raise MissingFileError(f"{source} is not a Coconut export ({COCONUT_FILE} is missing)")
    if not is_hf_dir(source):
        raise FormatError(f"{source} holds a recurrent_lm model; the reference runs Hugging Face models only, so only "
                          "a Coconut export of one (e.g. coconut.hf_model=gpt2, or an import of a reference "
                          "checkpoint) can be written in its format")
    if Path(target).is_dir():
        raise FormatError(f"DST {target} is a directory; --to coconut-ref writes one checkpoint file (e.g. "
                          "DIR/checkpoint_0)")
    model, _, config = load_coconut_model(source)
    if config.thinks and config.marker_names != Markers.parse("reference"):
        raise FormatError(f"{source} uses the markers {config.marker_names.names}; the reference's run.py adds and "
                          "finds <|start-latent|>, <|end-latent|>, <|latent|> by name, so their ids would not match. "
                          "Train (or import) with coconut.markers=reference")
    adapter = CoconutRefAdapter(model.state_dict(), wrapped=config.method in ("coconut", "pause"))
    state = {name: tensor.detach().clone().contiguous() for name, tensor in
             adapter.from_ours(model.state_dict()).items()}
    atomic_write(Path(target), lambda tmp: torch.save(state, tmp))
    return Path(target)
