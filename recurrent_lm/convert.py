"""recurrent-lm-convert: move a model between checkpoint formats.

    recurrent-lm-convert --from huginn --to recurrent_lm SRC DST   # a Huginn-0125 checkpoint -> our model dir
    recurrent-lm-convert --from recurrent_lm --to huginn SRC DST   # our model dir -> a Huginn-0125 checkpoint

SRC and DST are directories. Weights stream shard by shard (one copy in memory); the tokenizer files come
along. A model the target format cannot express is refused before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Converter = Callable[[argparse.Namespace], Path]


def _huginn_to_ours(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import import_huginn

    return import_huginn(args.src, args.dst, DTYPES[args.dtype] if args.dtype else None, args.max_shard_size)


def _ours_to_huginn(args: argparse.Namespace) -> Path:
    from recurrent_lm.interop import export_huginn

    if args.dtype:
        raise ValueError("--dtype applies to imports only; an export keeps the model's dtype")
    return export_huginn(args.src, args.dst, args.max_shard_size)


CONVERSIONS: dict[tuple[str, str], Converter] = {
    ("huginn", "recurrent_lm"): _huginn_to_ours,
    ("recurrent_lm", "huginn"): _ours_to_huginn,
}
"""(from, to) -> converter; a new source format (e.g. Hugging Face Llama) is one more entry."""


def _size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def main(argv: Optional[list[str]] = None) -> int:
    formats = sorted({name for pair in CONVERSIONS for name in pair})
    parser = argparse.ArgumentParser(prog="recurrent-lm-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source_format", required=True, choices=formats, help="format of SRC")
    parser.add_argument("--to", dest="target_format", required=True, choices=formats, help="format to write to DST")
    parser.add_argument("src", type=Path, metavar="SRC", help="source checkpoint directory")
    parser.add_argument("dst", type=Path, metavar="DST", help="output directory (created if absent)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast the weights while importing (default: keep the stored dtype)")
    parser.add_argument("--max-shard-size", default="5GB", type=_size,
                        help="largest safetensors shard written: bytes, or with a unit as in 500MB (default 5GB)")
    args = parser.parse_args(argv)
    convert = CONVERSIONS.get((args.source_format, args.target_format))
    if convert is None:
        pairs = ", ".join(f"--from {a} --to {b}" for a, b in CONVERSIONS)
        parser.error(f"no conversion from {args.source_format} to {args.target_format}; supported: {pairs}")
    if not args.src.is_dir():
        parser.error(f"SRC {args.src} is not a directory")
    if args.dst.resolve() == args.src.resolve():
        parser.error("DST must differ from SRC (the conversion would overwrite its own input)")
    try:
        print(convert(args))
    except (ValueError, OSError) as err:  # a format mismatch, a missing file, a full disk: one line, exit 2
        print(f"recurrent-lm-convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
