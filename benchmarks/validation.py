"""Pretraining validation: one unroll read at every eval depth (``readout_depths``) vs one forward per depth.

    python benchmarks/validation.py --preset small --batch 4 --seq 256 --depths 1 4 8 16 32 --repeats 5

Prints the median and spread of one validation batch both ways (the same weights, the same s_0, inference
mode as Lightning's validation), their ratio, and the largest loss difference between the two (the new path
must give the old numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import timed  # noqa: E402

from recurrent_lm.model import ModelConfig, RecurrentDepthLM  # noqa: E402
from recurrent_lm.model.lm import next_token_loss  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_dict({**OmegaConf.to_container(OmegaConf.load(CONF / f"{args.preset}.yaml")),
                                 "block_size": args.seq})
    torch.manual_seed(0)
    model = RecurrentDepthLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    s0 = model.initial_state(torch.empty(args.batch, args.seq, cfg.d_model), torch.Generator().manual_seed(1))

    def per_depth() -> dict[int, float]:  # the former validation_step: a full unroll per eval depth
        return {r: next_token_loss(model(x, num_steps=r, init_state=s0).logits, x).item() for r in args.depths}

    def one_unroll() -> dict[int, float]:  # validation_step now
        out = model(x, num_steps=max(args.depths), init_state=s0, readout_depths=args.depths)
        return {r: next_token_loss(logits, x).item() for r, logits in out.depth_logits.items()}

    with torch.inference_mode():
        old, new = per_depth(), one_unroll()
        gap = max(abs(old[r] - new[r]) for r in args.depths)
        times = {name: timed(fn, args.repeats, warmup=1) for name, fn in (("per depth", per_depth),
                                                                          ("one unroll", one_unroll))}
    base = statistics.median(times["per depth"])
    print(f"preset {args.preset}, batch {args.batch}×{args.seq}, eval depths {args.depths}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats; max |loss difference| {gap:.2e}")
    print(f"{'validation batch':<18}{'median s':>10}{'min s':>9}{'max s':>9}{'speed-up':>10}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<18}{median:>10.3f}{min(seconds):>9.3f}{max(seconds):>9.3f}{base / median:>9.2f}×")


if __name__ == "__main__":
    main()
