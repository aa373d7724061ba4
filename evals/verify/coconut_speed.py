"""Coconut training-step speed against the reference implementation at the same shape, same weights, same batch.

    python evals/verify/coconut_speed.py --reference /path/to/coconut \\
        --reference-pythonpath /path/to/transformers-4.51-target [--batch 8 --question 120 --thoughts 6 \\
        --suffix 20 --repeats 3 --threads 2]

One flat batch in the reference's format (question, <|start-latent|>, thoughts × <|latent|>, <|end-latent|>,
suffix; labels on the suffix) and one random GPT-2 (d 256, 4 layers, no dropout) are made here. The reference
side times its ``Coconut.forward`` + backward on it; our side times :class:`ContinuousThoughtLM` + backward on
the same batch through :func:`recurrent_lm.coconut.from_reference_batch` (adapted once, outside the timing).
Each figure is the median of ``--repeats`` timed steps after one warm-up (spread min..max). The two sides run
in separate interpreters (the reference pins transformers 4.x; the table says which versions ran).
Without ``--reference``, our side is timed alone and the reference column is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from common import SKIP, add_reference_flags, run_reference_side, table, versions

VOCAB = 4096
START, END, LATENT, EOS = 4093, 4094, 4095, 0
MODEL = {"vocab_size": VOCAB, "n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 1024, "resid_pdrop": 0.0,
         "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": EOS, "eos_token_id": EOS}


def make_inputs(work: Path, batch: int, question: int, thoughts: int, suffix: int) -> None:
    import transformers

    work.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows = [[*torch.randint(1, START, (question,), generator=g).tolist(), START, *[LATENT] * thoughts, END,
             *torch.randint(1, START, (suffix,), generator=g).tolist()] for _ in range(batch)]
    input_ids = torch.tensor(rows)
    labels = input_ids.clone()
    labels[:, :question + thoughts + 2] = -100
    flat = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "position_ids": torch.arange(input_ids.shape[1]).expand_as(input_ids).contiguous()}
    torch.save(flat, work / "batch.pt")
    torch.manual_seed(0)
    torch.save(transformers.GPT2LMHeadModel(transformers.GPT2Config(**MODEL)).state_dict(), work / "model.pt")


def model(work: Path):
    import transformers

    net = transformers.GPT2LMHeadModel(transformers.GPT2Config(**MODEL))
    net.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    return net.train()


def timed(step: Callable[[], None], repeats: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def reference_side(args: argparse.Namespace) -> None:
    from coconut import Coconut

    torch.set_num_threads(args.threads)
    net = model(args.work)
    wrapper = Coconut(net, LATENT, START, END, EOS)
    batch = torch.load(args.work / "batch.pt", weights_only=True)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        wrapper(**batch).loss.backward()

    import transformers

    result = {"times": timed(step, args.repeats), "versions": f"transformers {transformers.__version__}"}
    (args.work / "reference_times.json").write_text(json.dumps(result))


def our_times(args: argparse.Namespace) -> list[float]:
    from recurrent_lm.coconut import ContinuousThoughtLM, HFBackend, SpecialIds, from_reference_batch

    torch.set_num_threads(args.threads)
    net = model(args.work)
    lm = ContinuousThoughtLM(HFBackend(net))
    batch = from_reference_batch(torch.load(args.work / "batch.pt", weights_only=True),
                                 SpecialIds(bot=START, eot=END, latent=LATENT, eos=EOS, pad=EOS))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        lm(batch).loss.backward()

    return timed(step, args.repeats)


def summary(times: Sequence[float]) -> str:
    return f"{statistics.median(times):.3f} s ({min(times):.3f}..{max(times):.3f})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_reference_flags(parser, "facebookresearch/coconut")
    for flag, default in (("batch", 8), ("question", 120), ("thoughts", 6), ("suffix", 20), ("repeats", 3),
                          ("threads", 2)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    args = parser.parse_args(argv)
    if args.side == "reference":
        reference_side(args)
        return 0
    make_inputs(args.work, args.batch, args.question, args.thoughts, args.suffix)
    shape = f"B={args.batch}, {args.question}+2+{args.thoughts}+{args.suffix} tokens, GPT-2 d256 × 4 layers"
    print(f"{shape}; ours: {versions()}")
    ours = our_times(args)
    if args.reference is None:
        print(table(["training step (fwd+bwd)", "median (min..max)"], [["ours", summary(ours)]]))
        print(SKIP)
        return 0
    run_reference_side(__file__, args, [f"--{k}={getattr(args, k)}" for k in ("batch", "question", "thoughts",
                                                                           "suffix", "repeats", "threads")])
    reference = json.loads((args.work / "reference_times.json").read_text())
    ratio = statistics.median(reference["times"]) / statistics.median(ours)
    print(table(["training step (fwd+bwd)", "median (min..max)"],
                [[f"reference ({reference['versions']})", summary(reference["times"])], ["ours", summary(ours)],
                 ["speed-up (reference / ours)", f"{ratio:.1f}×"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
