"""Coconut loss and gradient parity with the reference implementation (facebookresearch/coconut).

    python evals/verify/coconut_parity.py --reference /path/to/coconut \\
        --reference-pythonpath /path/to/transformers-4.51-target [--stages 0 1 2] [--batches 1 4]

A random GPT-2 (2 layers, d 64, no dropout) and a byte-level BPE with a BOS post-processor (so the question's
special tokens matter) are made here from ProsQA-style records of our generator. The reference side lays the
records out with its own ``dataset.py`` (``get_dataset``, ``get_cot_latent_dataset``, ``MyCollator``: left
padding that aligns the first latent) and runs its ``Coconut.forward``; it saves the loss, every gradient and its
flat batch. Our side computes the loss twice: from the records through the public API
(:func:`recurrent_lm.coconut.coconut_loss`, ``layout=reference``, ``markers=reference``) and from the reference's
own flat batch through :func:`recurrent_lm.coconut.from_reference_batch`. Every pair must agree within
``--tolerance`` (relative). Without ``--reference``, our side runs alone and checks that a batch's loss is the
token-weighted mean of its rows' losses (left padding changes nothing); the reference part is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import torch

from common import SKIP, add_reference_flags, relative, run_reference_side, table, versions, worst

REFERENCE_MARKERS = ("<|start-latent|>", "<|end-latent|>", "<|latent|>")
MODEL = {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 2048, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
         "attn_pdrop": 0.0}
MAX_LATENT_STAGE = 3


def make_inputs(work: Path, records: int = 4, seed: int = 0) -> None:
    """records.json, tokenizer.json (markers included, as the reference's add_tokens would leave them), model.pt and
    model.json in ``work``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from recurrent_lm.coconut import add_thought_tokens, generate_split
    from recurrent_lm.coconut.prosqa import ProsQAConfig

    work.mkdir(parents=True, exist_ok=True)
    small = ProsQAConfig(nodes=(10, 12), edges=(12, 14), hops=(2, 4))  # short questions: a fast reference side
    rows = [p.to_dict() for p in generate_split(records, seed, "test", small)]
    (work / "records.json").write_text(json.dumps(rows))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([json.dumps(r) for r in rows] * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    add_thought_tokens(tokenizer, markers="reference")
    tokenizer.save(str(work / "tokenizer.json"))
    torch.manual_seed(seed)
    config = {**MODEL, "vocab_size": tokenizer.get_vocab_size(), "bos_token_id": 1, "eos_token_id": 0}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config))
    torch.save(model.state_dict(), work / "model.pt")
    (work / "model.json").write_text(json.dumps(config))


def gpt2(work: Path):
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**json.loads((work / "model.json").read_text())))
    model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    return model.train()


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------ reference side
def reference_side(args: argparse.Namespace) -> None:
    """Runs in the reference's environment: its dataset.py lays out, its Coconut.forward computes."""
    from transformers import PreTrainedTokenizerFast

    import dataset  # the reference checkout's own files, first on the path
    from coconut import Coconut

    work = args.work
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(work / "tokenizer.json"), eos_token="<|endoftext|>")
    tokenizer.pad_token = tokenizer.eos_token  # as run.py
    tokenizer.add_tokens(list(REFERENCE_MARKERS))  # present already: a no-op that keeps the ids
    start, end, latent = (tokenizer.convert_tokens_to_ids(m) for m in REFERENCE_MARKERS)
    base = dataset.get_dataset(str(work / "records.json"), tokenizer)
    configs = SimpleNamespace(c_thought=1, max_latent_stage=MAX_LATENT_STAGE, pad_latent_to_max=False,
                              uniform_prob=0.0, no_cot=False)
    collator = dataset.MyCollator(tokenizer, latent_id=latent, label_pad_token_id=-100)
    for stage in args.stages:
        laid_out = dataset.get_cot_latent_dataset(stage, base, configs, start, latent, end, no_special_marker=False)
        for size in args.batches:
            features = [{k: v for k, v in laid_out[i].items() if k != "idx"} for i in range(size)]
            batch = collator(features)
            model = gpt2(work)
            out = Coconut(model, latent, start, end, tokenizer.eos_token_id)(**batch)
            out.loss.backward()
            torch.save({"loss": out.loss.detach(), "grads": grads_of(model), "batch": dict(batch)},
                       work / f"reference_s{stage}_b{size}.pt")
            print(f"reference stage {stage} batch {size}: loss {out.loss.item():.6f}", flush=True)


# ------------------------------------------------------------------------------------------------ our side
def our_loss(work: Path, stage: int, size: int, flat: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
    """(loss, gradients) of the first ``size`` records at ``stage``: from the records, or from the reference's
    ``flat`` batch when given."""
    from recurrent_lm.coconut import (CoconutConfig, ContinuousThoughtLM, HFBackend, ThoughtTokenizer, coconut_loss,
                                      from_reference_batch, load_records)

    tokenizer = ThoughtTokenizer.from_file(work / "tokenizer.json", markers="reference")
    config = CoconutConfig(markers="reference", max_latent_stage=MAX_LATENT_STAGE)
    model = gpt2(work)
    if flat is None:
        out = coconut_loss(model, tokenizer, load_records(work / "records.json")[:size], config, stage)
    else:
        out = ContinuousThoughtLM(HFBackend(model))(from_reference_batch(flat, tokenizer.ids))
    out.loss.backward()
    return out.loss.detach(), grads_of(model)


def supervised_tokens(work: Path, stage: int, index: int) -> int:
    from recurrent_lm.coconut import CoconutConfig, ThoughtTokenizer, load_records, records_batch
    from recurrent_lm.model.lm import IGNORE_INDEX

    tokenizer = ThoughtTokenizer.from_file(work / "tokenizer.json", markers="reference")
    config = CoconutConfig(markers="reference", max_latent_stage=MAX_LATENT_STAGE)
    batch = records_batch(tokenizer, load_records(work / "records.json")[index:index + 1], config, stage)
    return int((batch["labels"] != IGNORE_INDEX).sum())


def ours_alone(work: Path, stages: Sequence[int], batches: Sequence[int]) -> list[list[Any]]:
    """Our side's own check: a left-padded batch's loss is the token-weighted mean of its rows' losses."""
    rows = []
    for stage in stages:
        for size in batches:
            loss = our_loss(work, stage, size)[0]
            parts = [(our_row_loss(work, stage, i), supervised_tokens(work, stage, i)) for i in range(size)]
            mean = sum(part * n for part, n in parts) / sum(n for _, n in parts)
            rows.append([stage, size, f"{loss.item():.6f}", f"{relative(loss, mean):.1e}"])
    return rows


def our_row_loss(work: Path, stage: int, index: int) -> torch.Tensor:
    from recurrent_lm.coconut import CoconutConfig, ThoughtTokenizer, coconut_loss, load_records

    tokenizer = ThoughtTokenizer.from_file(work / "tokenizer.json", markers="reference")
    config = CoconutConfig(markers="reference", max_latent_stage=MAX_LATENT_STAGE)
    with torch.no_grad():
        return coconut_loss(gpt2(work), tokenizer, load_records(work / "records.json")[index:index + 1], config,
                            stage).loss


def compare(work: Path, stages: Sequence[int], batches: Sequence[int]) -> list[list[Any]]:
    rows = []
    for stage in stages:
        for size in batches:
            ref = torch.load(work / f"reference_s{stage}_b{size}.pt", weights_only=True)
            records_loss, records_grads = our_loss(work, stage, size)
            flat_loss, flat_grads = our_loss(work, stage, size, ref["batch"])
            grad_err, name = worst(records_grads, ref["grads"])
            flat_err, _ = worst(flat_grads, ref["grads"])
            padded = int((ref["batch"]["attention_mask"][:, 0] == 0).sum())
            rows.append([stage, size, padded, f"{ref['loss'].item():.6f}", f"{relative(records_loss, ref['loss']):.1e}",
                         f"{grad_err:.1e}", f"{relative(flat_loss, ref['loss']):.1e}", f"{flat_err:.1e}"])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_reference_flags(parser, "facebookresearch/coconut")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative difference accepted")
    args = parser.parse_args(argv)
    if args.side == "reference":
        reference_side(args)
        return 0
    torch.manual_seed(0)
    make_inputs(args.work, records=max(args.batches))
    print(versions())
    if args.reference is None:
        rows = ours_alone(args.work, args.stages, args.batches)
        print(table(["stage", "batch", "our loss", "rel. diff to per-row mean"], rows))
        print(SKIP)
        return 0 if all(float(r[3]) <= args.tolerance for r in rows) else 1
    run_reference_side(__file__, args, ["--stages", *map(str, args.stages), "--batches", *map(str, args.batches)])
    rows = compare(args.work, args.stages, args.batches)
    print(table(["stage", "batch", "left-padded rows", "reference loss", "loss (records)", "grads (records)",
                 "loss (flat batch)", "grads (flat batch)"], rows))
    worst_seen = max(float(c) for r in rows for c in r[4:])
    print(f"largest relative difference {worst_seen:.1e} (tolerance {args.tolerance:g})")
    return 0 if worst_seen <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
