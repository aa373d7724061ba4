"""Huginn-0125 logit parity with the published modeling file, both directions (seal-rg/recurrent-pretraining).

    python evals/verify/huginn_parity.py --reference /path/to/recurrent-pretraining \\
        --reference-pythonpath /path/to/transformers-4.51-target [--steps 1 4 8]

The reference side imports ``recpre/raven_config_minimal.py`` and ``recpre/raven_modeling_minimal.py`` from the
checkout (the files the Hub model runs as remote code; transformers 4.51, DESIGN §6) and

* theirs -> ours: builds a small random ``RavenForCausalLM`` (every weight perturbed, so norms and q/k biases
  are not trivial), saves it with ``save_pretrained`` and its logits at each r; our side imports the directory
  with :func:`recurrent_lm.interop.load_huginn` and compares its logits;
* ours -> theirs: loads our random model exported with :func:`recurrent_lm.interop.save_huginn` into its own
  class and saves its logits for our side to compare.

Both run with a zero initial state (``init_scale=0``: the reference's noise cannot be matched draw for draw).
Without ``--reference``, our side exports and re-imports its model and checks the logits are unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path
from typing import Optional, Sequence

import torch

from common import SKIP, add_reference_flags, relative, run_reference_side, table, versions

SHAPE = {"n_embd": 64, "n_heads": 4, "n_layers": 4, "n_layers_in_prelude": 1, "n_layers_in_recurrent_block": 2,
         "n_layers_in_coda": 1, "block_size": 64, "vocab_size": 128, "padding_multiple": 128, "intermediate_size": 160,
         "mean_recurrence": 4, "mean_backprop_depth": 2, "qk_bias": True, "tie_embeddings": True}
TOKENS = 24


def inputs() -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (2, TOKENS), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ reference side
def raven(checkout: Path) -> types.ModuleType:
    """The published modeling module, imported as a package of its own (recpre/__init__.py is not run)."""
    package = types.ModuleType("raven_reference")
    package.__path__ = [str(checkout / "recpre")]
    sys.modules["raven_reference"] = package
    return importlib.import_module("raven_reference.raven_modeling_minimal")


def reference_logits(model, steps: Sequence[int]) -> dict[int, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return {r: model(inputs(), num_steps=r, init_scale=0.0).logits.float() for r in steps}


def reference_side(args: argparse.Namespace) -> None:
    modeling = raven(args.reference)
    config_cls = sys.modules["raven_reference.raven_config_minimal"].RavenConfig
    torch.manual_seed(0)
    model = modeling.RavenForCausalLM(config_cls(**SHAPE, torch_dtype="float32"))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(args.work / "theirs")
    torch.save(reference_logits(model, args.steps), args.work / "theirs_logits.pt")
    ours = modeling.RavenForCausalLM.from_pretrained(args.work / "ours", torch_dtype=torch.float32)
    torch.save(reference_logits(ours, args.steps), args.work / "ours_in_reference_logits.pt")
    print("reference side done", flush=True)


# ------------------------------------------------------------------------------------------------ our side
def our_logits(model, steps: Sequence[int]) -> dict[int, torch.Tensor]:
    x = inputs()
    zeros = torch.zeros(*x.shape, model.config.d_model)
    model.eval()
    with torch.no_grad():
        return {r: model(x, num_steps=r, init_state=zeros).logits.float() for r in steps}


def our_model():
    from recurrent_lm.interop import config_from_huginn
    from recurrent_lm.model import RecurrentDepthLM

    torch.manual_seed(0)
    model = RecurrentDepthLM(config_from_huginn(SHAPE))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_reference_flags(parser, "seal-rg/recurrent-pretraining")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.side == "reference":
        reference_side(args)
        return 0
    from recurrent_lm.interop import load_huginn, save_huginn

    args.work.mkdir(parents=True, exist_ok=True)
    print(versions())
    ours = our_model()
    save_huginn(ours, args.work / "ours")
    expected = our_logits(ours, args.steps)
    again = our_logits(load_huginn(args.work / "ours"), args.steps)
    rows = [["ours -> Huginn format -> ours", r, f"{relative(again[r], expected[r]):.1e}"] for r in args.steps]
    if args.reference is None:
        print(table(["direction", "r", "rel. logit diff"], rows))
        print(SKIP)
        return 0 if all(float(row[2]) <= args.tolerance for row in rows) else 1
    run_reference_side(__file__, args, ["--steps", *map(str, args.steps)])
    theirs = torch.load(args.work / "theirs_logits.pt", weights_only=True)
    imported = our_logits(load_huginn(args.work / "theirs"), args.steps)
    ours_there = torch.load(args.work / "ours_in_reference_logits.pt", weights_only=True)
    rows += [["reference -> ours (load_huginn)", r, f"{relative(imported[r], theirs[r]):.1e}"] for r in args.steps]
    rows += [["ours -> reference (save_huginn)", r, f"{relative(ours_there[r], expected[r]):.1e}"] for r in args.steps]
    print(table(["direction", "r", "rel. logit diff"], rows))
    worst_seen = max(float(row[2]) for row in rows)
    print(f"largest relative difference {worst_seen:.1e} (tolerance {args.tolerance:g})")
    return 0 if worst_seen <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
