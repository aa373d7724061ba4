"""Coconut speed: the cached thought loop and batched generation vs the reference algorithm, in one run.

    python benchmarks/coconut.py --threads 1 --quick        # ~2 min on one CPU core
    python benchmarks/coconut.py --threads 4 --repeats 5    # ProsQA-sized: train batch 32, generation batch 32

Inputs are ProsQA-sized: a 250-token question + <bot>, 6 continuous thoughts, a 40-token suffix (<eot> and
39 target tokens; generation decodes 40 tokens, an unreachable <eos> keeps every row going). Two small
random models: ours (d_model 256, prelude 1 + core 2 + coda 1, the core run r=2 times per position) and a
GPT-2 (n_embd 256, 4 layers). Both sides of each comparison run the same model on the same inputs:

* training step (forward + backward) of :class:`ContinuousThoughtLM` (every position computed once, the
  thought chain on a shared KV cache) vs the reference algorithm: n + 1 full forwards of the whole sequence
  without cache, the k-th latent slot filled with the hidden state pass k left before it;
* generation throughput of batched, KV-cached :func:`recurrent_lm.coconut.generate.generate` vs the
  reference's batch-1 generation without cache (thoughts by n passes, then the whole sequence recomputed
  for every new token). Tokens are counted as the paper counts them: thoughts + decoded tokens. The
  first example's tokens are compared between the two: they must be equal.

Each figure is the median over ``--repeats`` timed runs after one warm-up; the spread is min..max.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers

from timing import timed

from recurrent_lm.coconut.backends import FIXED, CausalBackend, Depth, HFBackend, RecurrentBackend
from recurrent_lm.coconut.generate import generate
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample, collate
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.lm import IGNORE_INDEX

VOCAB, QUESTION, THOUGHTS, SUFFIX = 4096, 250, 6, 40
IDS = SpecialIds(bot=3, eot=4, latent=5, eos=-1, pad=2)  # eos -1: never chosen, so every row decodes SUFFIX tokens


@dataclass
class Shapes:
    train_batch: int
    gen_batch: int
    naive_gen_examples: int


def ours() -> tuple[ContinuousThoughtLM, Depth]:
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=VOCAB, block_size=512, d_model=256, n_heads=4, n_prelude=1,
                                         n_core=2, n_coda=1, mean_recurrence=2))
    return ContinuousThoughtLM(RecurrentBackend(model, s0_seed=0)), Depth(num_steps=2)


def gpt2() -> tuple[ContinuousThoughtLM, Depth]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=256, n_layer=4, n_head=4, n_positions=512, bos_token_id=0,
                                     eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return ContinuousThoughtLM(HFBackend(transformers.GPT2LMHeadModel(config))), FIXED


MODELS = {"ours (d256, 1+2x2+1)": ours, "gpt2 (d256, 4 layers)": gpt2}


def examples(count: int, seed: int = 0) -> list[ThoughtExample]:
    g = torch.Generator().manual_seed(seed)
    return [ThoughtExample((*torch.randint(6, VOCAB, (QUESTION,), generator=g).tolist(), IDS.bot), THOUGHTS,
                           (IDS.eot, *torch.randint(6, VOCAB, (SUFFIX - 1,), generator=g).tolist()))
            for _ in range(count)]


def naive_loss(backend: CausalBackend, batch: dict[str, torch.Tensor], depth: Depth) -> torch.Tensor:
    """The reference training forward: n + 1 full passes, no cache; after pass k the k-th latent slot's input
    becomes the hidden state of the position before it (all rows think THOUGHTS times, no padding)."""
    ids = torch.cat((batch["prefix_ids"], torch.full_like(batch["prefix_ids"][:, :THOUGHTS], IDS.latent),
                     batch["suffix_ids"]), dim=1)  # (B, L)
    embeds, mask, start = backend.embed(ids), torch.ones_like(ids), batch["prefix_ids"].shape[1]  # (B, L, H)
    for k in range(THOUGHTS):
        hidden = backend.forward(embeds, mask, backend.new_cache(), depth).hidden  # (B, L, H)
        embeds = torch.cat((embeds[:, :start + k], hidden[:, start + k - 1:start + k], embeds[:, start + k + 1:]), 1)
    hidden = backend.forward(embeds, mask, backend.new_cache(), depth).hidden
    logits = backend.logits(hidden[:, start + THOUGHTS:])  # (B, S, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


@torch.inference_mode()
def naive_generate(lm: ContinuousThoughtLM, example: ThoughtExample, depth: Depth) -> list[int]:
    """The reference's generation: one question, thoughts by n full passes, then the whole sequence
    recomputed for every new token (no cache anywhere)."""
    backend = lm.backend
    embeds = backend.embed(torch.tensor([example.prefix]))  # (1, P, H)

    def last_hidden() -> torch.Tensor:  # (1, 1, H)
        return backend.forward(embeds, torch.ones(embeds.shape[:2], dtype=torch.long), backend.new_cache(),
                               depth).hidden[:, -1:]

    for _ in range(example.thoughts):
        embeds = torch.cat((embeds, last_hidden()), dim=1)
    embeds = torch.cat((embeds, backend.embed(torch.tensor([[IDS.eot]]))), dim=1)
    tokens: list[int] = []
    for _ in range(SUFFIX):
        tokens.append(int(backend.logits(last_hidden())[0, -1].argmax()))
        embeds = torch.cat((embeds, backend.embed(torch.tensor([[tokens[-1]]]))), dim=1)
    return tokens


def spread(seconds: list[float], scale: float = 1.0) -> str:
    values = [scale * s for s in seconds]
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def train_row(name: str, make, shapes: Shapes, repeats: int) -> list[str]:
    lm, depth = make()
    lm.backend.model.train()
    batch = collate(examples(shapes.train_batch), IDS.pad)

    def cached() -> None:
        lm(batch, depth=depth).loss.backward()

    def naive() -> None:
        naive_loss(lm.backend, batch, depth).backward()

    with torch.no_grad():  # same loss from both algorithms: the baseline computes what Coconut computes
        lm.backend.model.eval()
        same = torch.allclose(lm(batch, depth=depth).loss, naive_loss(lm.backend, batch, depth), atol=1e-4)
        lm.backend.model.train()
    fast, slow = timed(cached, repeats, warmup=1), timed(naive, repeats, warmup=1)
    shape = f"{shapes.train_batch} x ({QUESTION + 1} + {THOUGHTS} + {SUFFIX})"
    ratio = statistics.median(slow) / statistics.median(fast)
    return [name, shape, spread(slow, 1e3), spread(fast, 1e3), f"{ratio:.1f}x", "yes" if same else "NO"]


def generation_row(name: str, make, shapes: Shapes, repeats: int) -> list[str]:
    lm, depth = make()
    lm.backend.model.eval()
    batch = examples(shapes.gen_batch, seed=1)
    prefixes, bounds = [e.prefix for e in batch], [e.thoughts for e in batch]
    tokens_each = THOUGHTS + SUFFIX

    def cached() -> list[list[int]]:
        return generate(lm, prefixes, bounds, IDS, max_new_tokens=SUFFIX, depth=depth).tokens

    def naive() -> list[list[int]]:
        return [naive_generate(lm, e, depth) for e in batch[:shapes.naive_gen_examples]]

    same = cached()[0] == naive()[0]
    fast, slow = timed(cached, repeats, warmup=1), timed(naive, repeats, warmup=1)
    fast_rate = [shapes.gen_batch * tokens_each / s for s in fast]
    slow_rate = [shapes.naive_gen_examples * tokens_each / s for s in slow]
    shape = f"{shapes.gen_batch} (naive {shapes.naive_gen_examples}) x ({QUESTION + 1} -> {THOUGHTS} + {SUFFIX})"
    ratio = statistics.median(fast_rate) / statistics.median(slow_rate)
    return [name, shape, spread(slow_rate, 1.0), spread(fast_rate, 1.0), f"{ratio:.1f}x", "yes" if same else "NO"]


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="train batch 4, generation batch 8 vs 1 naive example (a smoke run, ~2 min on 1 core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = Shapes(4, 8, 1) if args.quick else Shapes(32, 32, 2)
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, {repeats} repeats after a warm-up; median (min..max)\n")
    train = [train_row(name, make, shapes, repeats) for name, make in MODELS.items()]
    print(table("Training step (forward + backward)", ["model", "batch x (question + thoughts + suffix)",
                                                       "naive n+1 passes ms", "ContinuousThoughtLM ms", "speed-up",
                                                       "same loss"], train) + "\n")
    gen = [generation_row(name, make, shapes, repeats) for name, make in MODELS.items()]
    print(table("Generation throughput (tokens/s, thoughts counted)",
                ["model", "batch x (prompt -> thoughts + tokens)", "naive batch-1 uncached tok/s",
                 "batched cached tok/s", "speed-up", "same tokens"], gen))
    print("\nGoals: training step >= 3x, generation >= 10x.")


if __name__ == "__main__":
    main()
