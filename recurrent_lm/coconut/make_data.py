"""Write Coconut datasets as JSON record files.

    python -m recurrent_lm.coconut.make_data prosqa --out data/prosqa --seed 0
    python -m recurrent_lm.coconut.make_data prosqa --out DIR --train 5000 --valid 500 --test 500 --hops 3-6

writes ``DIR/prosqa_{train,valid,test}.json`` (lists of {question, steps, answer} plus graph
metadata). The default sizes are those of the published ProsQA split. Bad arguments are reported in
one line with exit status 2. A non-empty --out is refused unless --overwrite is given; the files are written into
a hidden sibling directory that replaces --out when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from recurrent_lm.coconut.prosqa import SPLITS, ProsQAConfig, generate_splits
from recurrent_lm.coconut.records import write_records
from recurrent_lm.errors import ConfigError, report_user_errors
from recurrent_lm.output_dir import check_destination, staged_dir

PROG = "python -m recurrent_lm.coconut.make_data"


class UsageError(ConfigError):
    """A bad command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print the whole usage first
        raise UsageError(message)


def _range(text: str) -> tuple[int, int]:
    """``"3-6"`` -> (3, 6); ``"23"`` -> (23, 23)."""
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 3-6 or a number") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True, parser_class=_Parser)
    prosqa = tasks.add_parser("prosqa", help="ProsQA-style graph reasoning problems")
    prosqa.add_argument("--out", type=Path, required=True, help="directory for prosqa_{train,valid,test}.json")
    prosqa.add_argument("--overwrite", action="store_true", help="replace an --out directory that is not empty")
    prosqa.add_argument("--seed", type=_count, default=0, help="generation seed (each split has its own stream)")
    for split, default in zip(SPLITS, (17886, 300, 500)):
        prosqa.add_argument(f"--{split}", type=_count, default=default, help=f"{split} problems (default {default})")
    defaults = ProsQAConfig()
    for name in ("nodes", "edges", "hops"):
        lo, hi = getattr(defaults, name)
        prosqa.add_argument(f"--{name}", type=_range, default=(lo, hi), help=f"MIN-MAX (default {lo}-{hi})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return report_user_errors(PROG, lambda: _run(argv))


def _run(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a directory")
    try:
        check_destination(args.out, args.overwrite)
    except FileExistsError as err:
        raise UsageError(f"--out {err}") from None
    try:
        config = ProsQAConfig(nodes=args.nodes, edges=args.edges, hops=args.hops)
    except ValueError as err:
        raise UsageError(str(err)) from None
    sizes = {split: getattr(args, split) for split in SPLITS}
    with staged_dir(args.out, args.overwrite) as tmp:
        for split, problems in generate_splits(sizes, args.seed, config).items():
            write_records((p.to_dict() for p in problems), tmp / f"prosqa_{split}.json")
            print(f"{args.out / f'prosqa_{split}.json'}: {len(problems)} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
