"""Train a small looped model on a reasoning task in plain PyTorch (no Lightning, no hydra).

The research harness behind evals/reasoning/RESULTS.md; the hydra app (`recurrent-lm-train
experiment=reasoning_parity`) runs the same recipe through the Lightning module. Every optimizer
step draws its batch from (task.seed, step) and its depth from the DepthSampler at (sampler seed,
step), so a run is reproducible given its arguments and thread count.

    python evals/reasoning/train_quick.py --task parity --out runs/reasoning/parity --minutes 15

Writes <out>/model (config.json + model.safetensors + task.json), <out>/args.json, <out>/log.jsonl,
and <out>/eval.md (the full evaluation at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recurrent_lm.loop import DepthSampler, SamplerConfig
from recurrent_lm.model import ModelConfig, RecurrentDepthLM, count_params
from recurrent_lm.reasoning.config import TaskConfig
from recurrent_lm.reasoning.evaluate import evaluate, save_task
from recurrent_lm.reasoning.tasks import collate, train_examples, vocab_size


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--out", required=True)
    # task
    a("--task", default="parity", choices=["parity", "reachability"])
    a("--answer", default="all", choices=["all", "final"])
    a("--train-min", type=int, default=1)
    a("--train-max", type=int, default=16)
    a("--eval-difficulties", type=int, nargs="+", default=None)
    a("--eval-depths", type=int, nargs="+", default=None)
    a("--num-eval", type=int, default=512)
    a("--nodes-per-hop", type=float, default=2.0)
    a("--num-names", type=int, default=64)
    a("--pack-length", type=int, default=0, help="pack whole training problems into rows of this many tokens")
    a("--task-seed", type=int, default=0)
    # model
    a("--d-model", type=int, default=64)
    a("--n-heads", type=int, default=4)
    a("--mlp-hidden", type=int, default=None)
    a("--n-prelude", type=int, default=1)
    a("--n-core", type=int, default=2)
    a("--n-coda", type=int, default=1)
    a("--injection", default="linear", choices=["linear", "add"])
    a("--norm-style", default="sandwich", choices=["sandwich", "pre"])
    a("--init-scale", type=float, default=1.0)
    a("--block-size", type=int, default=256)
    a("--rope-theta", type=float, default=50_000.0)
    a("--no-qk-bias", action="store_true")
    # depth sampling
    a("--sampler", default="uniform", choices=["uniform", "fixed", "poisson_lognormal", "ramp"])
    a("--depth-low", type=int, default=1)
    a("--depth-high", type=int, default=10)
    a("--depth-mean", type=float, default=8.0)
    a("--backprop", type=int, default=10, help="k: last min(k, r) iterations carry gradient")
    a("--progressive", action="store_true",
      help="Bansal et al.'s incremental training: r from the sampler, then k ~ U[1, min(backprop, r)] "
           "grad steps after r - k no-grad steps (instead of a fixed k)")
    # optimisation
    a("--lr", type=float, default=1e-3)
    a("--min-lr-frac", type=float, default=0.1)
    a("--warmup", type=int, default=100)
    a("--weight-decay", type=float, default=0.1)
    a("--beta2", type=float, default=0.99)
    a("--clip", type=float, default=1.0)
    a("--batch-size", type=int, default=64)
    a("--steps", type=int, default=100_000, help="max optimizer steps (the time budget usually ends first)")
    a("--minutes", type=float, default=15.0, help="wall-clock training budget; the LR schedule follows it")
    a("--bf16", action="store_true", help="bf16 autocast")
    a("--threads", type=int, default=2)
    a("--seed", type=int, default=0)
    a("--eval-every", type=int, default=500)
    a("--log-every", type=int, default=50)
    a("--quick-eval", type=int, default=64, help="examples per difficulty of the periodic evaluation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))

    tm = args.train_max
    task_kw = {}
    if args.eval_difficulties:
        task_kw["eval_difficulties"] = args.eval_difficulties
    else:
        task_kw["eval_difficulties"] = [tm, 2 * tm, 4 * tm]
    if args.eval_depths:
        task_kw["eval_depths"] = args.eval_depths
    task = TaskConfig(name=args.task, answer=args.answer, train_min=args.train_min, train_max=tm,
                      num_eval=args.num_eval, seed=args.task_seed, pack_length=args.pack_length,
                      nodes_per_hop=args.nodes_per_hop, num_names=args.num_names, **task_kw)
    high = args.depth_high if args.sampler == "uniform" else int(args.depth_mean)
    cfg = ModelConfig(vocab_size=vocab_size(task), block_size=args.block_size, d_model=args.d_model,
                      n_heads=args.n_heads, mlp_hidden=args.mlp_hidden, n_prelude=args.n_prelude,
                      n_core=args.n_core, n_coda=args.n_coda, injection=args.injection,
                      norm_style=args.norm_style, init_scale=args.init_scale, rope_theta=args.rope_theta,
                      qk_bias=not args.no_qk_bias, mean_recurrence=max(1, high),
                      mean_backprop_depth=max(1, min(args.backprop, high)))
    sampler = DepthSampler(SamplerConfig(name=args.sampler, low=args.depth_low, high=args.depth_high,
                                         mean=args.depth_mean, backprop_depth=args.backprop, seed=args.seed))
    model = RecurrentDepthLM(cfg)
    print(f"params: {count_params(model)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, args.beta2))
    budget = args.minutes * 60
    quick = dict(difficulties=[tm, 2 * tm, 4 * tm], num_examples=args.quick_eval, exit_criterion="none",
                 depths=sorted({high, 2 * tm, 4 * tm}))
    log = open(out / "log.jsonl", "w")
    start = time.time()
    step, ema = 0, None
    model.train()
    while step < args.steps:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        frac = min(1.0, max(elapsed / budget, step / args.steps))
        warm = min(1.0, (step + 1) / max(1, args.warmup))
        lr = args.lr * warm * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = collate(train_examples(task, step, args.batch_size))
        n_no_grad, n_grad = sampler(step)
        if args.progressive:
            r = n_no_grad + n_grad
            k = int(np.random.default_rng((args.seed, 11, step)).integers(1, min(args.backprop, r) + 1))
            n_no_grad, n_grad = r - k, k
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            res = model(batch["input_ids"], num_steps=(n_no_grad, n_grad), labels=batch["labels"])
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        loss = res.loss.item()
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        step += 1
        if step % args.log_every == 0:
            rec = {"step": step, "time": round(time.time() - start, 1), "loss": round(ema, 4), "lr": lr,
                   "gnorm": round(float(gnorm), 3), "depth": n_no_grad + n_grad}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
        if args.eval_every and step % args.eval_every == 0:
            rep = evaluate(model, task, **quick)
            acc = {f"{d}@{r}": round(100 * rep.accuracy[(d, r)], 1) for d in rep.difficulties for r in rep.depths}
            tok = {f"{d}@{r}": round(100 * rep.token_accuracy[(d, r)], 1)
                   for d in rep.difficulties for r in rep.depths}
            log.write(json.dumps({"step": step, "time": round(time.time() - start, 1), "eval": acc,
                                  "token_eval": tok}) + "\n")
            log.flush()
            print("eval", step, acc, "tokens", tok, flush=True)
    train_time = time.time() - start
    model.eval()
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    save_task(task, model_dir)
    rep = evaluate(model, task)
    md = rep.to_markdown()
    (out / "eval.md").write_text(f"steps {step}, train time {train_time:.0f}s, params {count_params(model)}\n\n"
                                 + md)
    (out / "eval.json").write_text(json.dumps(rep.to_dict(), indent=2))
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
