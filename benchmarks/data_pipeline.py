"""Throughput of the data pipeline on the embedded corpus: BPE training, and tokenize + pack at several num_proc.

    python benchmarks/data_pipeline.py [--vocab-size 4096] [--repeats 3] [--num-proc 1 2]

Each stage runs `--repeats` times (num_proc settings interleaved, so drift in machine load hits them alike);
the table shows the median and the min..max spread. Throughput is counted in packed tokens (<|eos|> included)
of the whole corpus, so the rows are comparable; tokenizer training reads the train split only. The load
average is printed because other processes on a shared machine skew these numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial
from pathlib import Path

from timing import timed

from recurrent_lm.data import TextTokenizer, iter_texts, pack_split, shakespeare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    corpus = shakespeare()
    train_chars = sum(len(text) for text in iter_texts(corpus["train"]))
    training = timed(lambda: TextTokenizer.train(iter_texts(corpus["train"]), args.vocab_size), args.repeats)
    tokenizer = TextTokenizer.train(iter_texts(corpus["train"]), args.vocab_size)

    def pack(scratch: str, num_proc: int) -> None:
        for split in corpus:
            pack_split(corpus[split], tokenizer, Path(scratch, f"{split}.bin"), num_proc)

    packing: dict[int, list[float]] = {n: [] for n in args.num_proc}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for num_proc in args.num_proc:
                packing[num_proc] += timed(partial(pack, scratch, num_proc), 1)
        tokens = sum(os.path.getsize(Path(scratch, f"{split}.bin")) // 2 for split in corpus)

    def row(name: str, seconds: list[float], count: int) -> str:
        rates = sorted(count / s for s in seconds)
        return (f"| {name:<26} | {statistics.median(seconds):8.2f} | {statistics.median(rates):>12,.0f} "
                f"| {rates[0]:>10,.0f} .. {rates[-1]:<10,.0f} |")

    train_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(list(iter_texts(corpus["train"]))))
    print(f"corpus: shakespeare, {train_chars:,} train chars, {tokens:,} packed tokens at vocab "
          f"{tokenizer.vocab_size}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"median of {args.repeats}")
    print("| stage                      | median s | tokens/s     | spread (tokens/s)        |")
    print("|----------------------------|----------|--------------|--------------------------|")
    print(row("tokenizer training (train)", training, train_tokens))
    for num_proc, seconds in packing.items():
        print(row(f"tokenize+pack num_proc={num_proc}", seconds, tokens))
    if 1 in packing:
        for num_proc in sorted(packing.keys() - {1}):
            speedup = statistics.median(packing[1]) / statistics.median(packing[num_proc])
            print(f"num_proc={num_proc} vs 1: {speedup:.2f}x")


if __name__ == "__main__":
    main()
