"""recurrent-lm-convert: move a model between checkpoint formats.

    recurrent-lm-convert --from huginn --to recurrent_lm SRC DST   # a Huginn-0125 checkpoint -> our model dir
    recurrent-lm-convert --from recurrent_lm --to huginn SRC DST   # our model dir -> a Huginn-0125 checkpoint
    recurrent-lm-convert --from hf --to recurrent_lm SRC DST --prelude 0:4 --core 8:12 --coda 18:22
                                                    # retrofit a Hugging Face Llama: its layers 0-3, 8-11, 18-21
    recurrent-lm-convert --from recurrent_lm --to hf SRC DST       # a plain layer stack at r = 1 -> LlamaForCausalLM
    recurrent-lm-convert --from coconut-ref --to coconut checkpoint_50 DST --base gpt2_dir [--reference-args
                         args/prosqa_coconut.yaml] [--method coconut|pause|cot|no_cot] [--stage N]
                                                    # a reference Coconut run.py checkpoint -> our Coconut export
    recurrent-lm-convert --from coconut --to coconut-ref SRC checkpoint_0  # our Coconut export (HF) -> the reference

SRC and DST are directories; for --from hf, SRC may also be a Hub name (owner/name), downloaded with
huggingface_hub; for --from coconut-ref SRC, and for --to coconut-ref DST, is the reference's checkpoint file
(read with weights_only=True). --prelude/--core/--coda are half-open slices of the source's decoder layers (as in Python;
prelude and coda may be left out, layers in no slice are dropped). Weights stream shard by shard (one copy in
memory); the tokenizer files come along. A model the target format cannot express is refused before
anything is written. A non-empty DST is refused unless --overwrite is given; the output is written into a
hidden sibling of DST and moved into place when complete, so a failure (a full disk) leaves DST as it was.
See docs/interop.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from recurrent_lm.errors import AlreadyExistsError, ConfigError, report_user_errors
from recurrent_lm.model.precision import DTYPE_CHOICES, resolve_dtype
from recurrent_lm.output_dir import staged_dir

Converter = Callable[[argparse.Namespace], Path]


def _huginn_to_ours(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import import_huginn

    return import_huginn(args.src, args.dst, _dtype(args), args.max_shard_size)


def _ours_to_huginn(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import export_huginn

    if args.dtype:
        raise ConfigError("--dtype applies to imports only; an export keeps the model's dtype")
    return export_huginn(args.src, args.dst, args.max_shard_size)


def _hf_to_ours(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import import_hf_llama

    return import_hf_llama(str(args.src), args.dst, args.prelude, args.core, args.coda,
                           _dtype(args), args.block_size, args.max_shard_size)


def _ours_to_hf(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import export_hf_llama

    if args.dtype:
        raise ConfigError("--dtype applies to imports only; an export keeps the model's dtype")
    return export_hf_llama(args.src, args.dst, args.max_shard_size)


def _coconut_ref_to_ours(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop.coconut_ref_io import import_coconut_ref

    if args.base is None:
        raise ConfigError("--from coconut-ref needs --base DIR: the Hugging Face model directory (config.json, "
                         "tokenizer.json) the reference run was built on")
    return import_coconut_ref(args.src, args.base, args.dst, args.method, args.reference_args, args.stage)


def _ours_to_coconut_ref(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop.coconut_ref_io import export_coconut_ref

    return export_coconut_ref(args.src, args.dst)


CONVERSIONS: dict[tuple[str, str], Converter] = {
    ("huginn", "recurrent_lm"): _huginn_to_ours,
    ("recurrent_lm", "huginn"): _ours_to_huginn,
    ("hf", "recurrent_lm"): _hf_to_ours,
    ("recurrent_lm", "hf"): _ours_to_hf,
    ("coconut-ref", "coconut"): _coconut_ref_to_ours,
    ("coconut", "coconut-ref"): _ours_to_coconut_ref,
}
"""(from, to) -> converter; a new format is one more entry."""
OPTIONS_OF = {"hf": ("prelude", "core", "coda", "block_size"), "coconut-ref": ("base", "method", "reference_args", "stage")}
"""Options that belong to one source format."""
HUB_SOURCES = ("hf",)
"""Source formats whose SRC may be a Hub name rather than a directory."""
FILE_SOURCES = ("coconut-ref",)
"""Source formats whose SRC is a file (the reference's checkpoint_<epoch>)."""
FILE_TARGETS = ("coconut-ref",)
"""Target formats whose DST is one file, written atomically (the other targets are directories, staged whole)."""


def _dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    return resolve_dtype(args.dtype, "cpu", "--dtype") if args.dtype else None


def _size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def main(argv: Optional[list[str]] = None) -> int:
    formats = sorted({name for pair in CONVERSIONS for name in pair})
    parser = argparse.ArgumentParser(prog="recurrent-lm-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_format", required=True, choices=formats, help="format of SRC")
    parser.add_argument("--to", dest="target_format", required=True, choices=formats, help="format to write to DST")
    parser.add_argument("src", type=Path, metavar="SRC",
                        help="source checkpoint directory (for --from hf also a Hub name, owner/name)")
    parser.add_argument("dst", type=Path, metavar="DST", help="output directory (created if absent)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a DST that is not empty (once the new output is complete)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="cast the weights while importing (default: keep the stored dtype; auto: "
                             "model/precision.py's choice for this machine's CPU)")
    parser.add_argument("--max-shard-size", default="5GB", type=_size,
                        help="largest safetensors shard written: bytes, or with a unit as in 500MB (default 5GB)")
    for flag in ("prelude", "core", "coda"):
        parser.add_argument(f"--{flag}", default=None, metavar="START:STOP",
                            help=f"--from hf: the source's decoder layers that become the {flag} (half-open)")
    parser.add_argument("--block-size", type=int, default=None, metavar="N",
                        help="--from hf: cap the context (default: the source's max_position_embeddings)")
    parser.add_argument("--base", type=Path, default=None, metavar="DIR",
                        help="--from coconut-ref: the Hugging Face model directory the run was built on")
    parser.add_argument("--method", default=None, choices=("coconut", "pause", "cot", "no_cot"),
                        help="--from coconut-ref: the run's method (default: coconut for base_causallm. keys, else cot)")
    parser.add_argument("--reference-args", type=Path, default=None, metavar="YAML",
                        help="--from coconut-ref: the run's args/*.yaml (c_thought, max_latent_stage, ...)")
    parser.add_argument("--stage", type=int, default=None, metavar="N",
                        help="--from coconut-ref: the curriculum stage the checkpoint reached (default: the last)")
    args = parser.parse_args(argv)
    convert = CONVERSIONS.get((args.source_format, args.target_format))
    if convert is None:
        pairs = ", ".join(f"--from {a} --to {b}" for a, b in CONVERSIONS)
        parser.error(f"no conversion from {args.source_format} to {args.target_format}; supported: {pairs}")
    for source, names in OPTIONS_OF.items():
        given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]
        if given and args.source_format != source:
            parser.error(f"{', '.join(given)}: options of --from {source} only")
    if args.source_format in FILE_SOURCES:
        if not args.src.is_file():
            parser.error(f"SRC {args.src} is not a file (--from {args.source_format} reads one checkpoint file)")
    elif args.source_format not in HUB_SOURCES and not args.src.is_dir():
        parser.error(f"SRC {args.src} is not a directory")
    if args.dst.resolve() == args.src.resolve():
        parser.error("DST must differ from SRC (the conversion would overwrite its own input)")
    return report_user_errors("recurrent-lm-convert", lambda: _convert_staged(convert, args))


def _convert_staged(convert: Converter, args: argparse.Namespace) -> None:
    """Convert into a hidden sibling of DST that replaces it only when complete (a failure leaves DST as it was); a
    file target is written atomically by its converter, and an existing one is replaced only with --overwrite."""
    dst = args.dst
    if args.target_format in FILE_TARGETS:
        if dst.is_file() and not args.overwrite:
            raise AlreadyExistsError(f"DST {dst} exists; pass --overwrite to replace it, or choose another path")
        convert(args)
    else:
        with staged_dir(dst, args.overwrite) as args.dst:
            convert(args)
    print(dst)


if __name__ == "__main__":
    sys.exit(main())
