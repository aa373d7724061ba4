"""What the verification scripts share: running a side in another interpreter, comparing tensors, printing tables.

Each script has two sides. *Ours* runs in this process. *The reference* runs in a child process
(``--side reference``) whose interpreter and extra import path are given on the command line, because the
reference code pins older libraries (transformers 4.46–4.51) than this project runs (transformers 5): the child
gets ``--reference-pythonpath`` first on its path (e.g. a ``pip install --target`` directory with
transformers 4.51) and the reference checkout, and imports the reference's own files from there. The two sides
exchange tensors through ``.pt`` files in a work directory. Nothing of the reference is copied here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

SKIP = "reference part skipped: no --reference checkout given (pass the path of a local clone to run it)"


def add_reference_flags(parser: argparse.ArgumentParser, repository: str) -> None:
    parser.add_argument("--reference", type=Path, help=f"path of a local checkout of {repository}")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="interpreter for the reference side (default: this one)")
    parser.add_argument("--reference-pythonpath", default="",
                        help="directories put first on the reference side's path (e.g. a --target install of the "
                             "transformers version the reference pins)")
    parser.add_argument("--work", type=Path, default=Path("runs/verify"), help="directory for exchanged tensors")
    parser.add_argument("--side", choices=("ours", "reference"), default="ours", help=argparse.SUPPRESS)


def run_reference_side(script: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> None:
    """Run ``script --side reference`` in the reference's environment; its output is streamed, failure raises."""
    env = dict(os.environ)
    paths = [p for p in (args.reference_pythonpath, str(args.reference)) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)  # not ours: the reference side imports only the reference's stack
    command = [args.reference_python, script, "--side", "reference", "--reference", str(args.reference),
               "--work", str(args.work), *extra]
    subprocess.run(command, env=env, check=True)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both are 0)."""
    a, b = a.double(), b.double()
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale else (a - b).norm().item()


def worst(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> tuple[float, str]:
    """The largest relative difference over matching names, and its name; names must agree."""
    if set(ours) != set(theirs):
        raise ValueError(f"the two sides name different tensors: {sorted(set(ours) ^ set(theirs))[:6]}")
    return max((relative(ours[n], theirs[n]), n) for n in ours)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def versions(extra: Optional[dict] = None) -> str:
    import transformers

    fields = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), **(extra or {})}
    return ", ".join(f"{k} {v}" for k, v in fields.items())
