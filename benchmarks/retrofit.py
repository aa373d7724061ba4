"""Retrofitted recurrence vs plain continued training, on a CPU budget (McLeish et al. 2025's comparison, small).

    python benchmarks/retrofit.py [--source-steps 600] [--steps 300] [--keep DIR]

1. **Source.** The app pretrains a Llama-shaped model: ``n_layers`` pre-norm blocks run once (prelude 0, core =
   all layers at a fixed depth of 1, coda 0, identity injection), no √h embedding scale, no q/k bias, on the
   embedded Shakespeare corpus. ``recurrent-lm-convert --to hf`` writes it as a ``LlamaForCausalLM`` directory:
   the source a user would download.
2. **Retrofit.** ``recurrent-lm-convert --from hf --prelude/--core/--coda`` keeps a prelude and a coda and loops
   a slice of the middle layers (dropping the rest), and ``experiment=retrofit`` trains it on for ``--steps``
   with the depth ramp r̄ = 1 → ``--mean-depth``.
3. **Baselines.** The source trains on unchanged (depth 1, same data, optimizer and schedule) for the same number
   of steps (equal tokens), and for as many steps as the retrofit's training FLOPs buy (equal FLOPs).

Every model is scored by one evaluator: mean next-token loss on the first ``--val-batches`` batches of the
validation split every run validates on, at each test-time depth, with a seeded initial state. FLOPs are the
model's own accounting (recurrent_lm.model.accounting: forward at r + backward over the k gradient steps),
summed over the depths the sampler actually drew.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from recurrent_lm.data import DataConfig, prepare_data, validation_loader
from recurrent_lm.loop import DepthSampler, SamplerConfig
from recurrent_lm.model import ModelConfig, RecurrentDepthLM
from recurrent_lm.model.accounting import train_flops_per_token

REPO = Path(__file__).resolve().parents[1]
DEPTHS = (1, 2, 4, 8, 16)


def source_overrides(args: argparse.Namespace) -> dict[str, object]:
    """A plain Llama-shaped stack in ModelConfig terms: one pass through every layer, nothing recurrent."""
    return {"model": "small", "model.n_prelude": 0, "model.n_core": args.layers, "model.n_coda": 0,
            "model.d_model": args.width, "model.n_heads": args.width // 32, "model.mlp_hidden": 8 * args.width // 3,
            "model.block_size": args.block, "model.vocab_size": args.vocab, "model.norm_style": "pre",
            "model.qk_bias": False, "model.scale_embeddings": False, "model.norm_before_coda": False,
            "model.injection": "add", "model.init_scale": 0.0, "model.mean_recurrence": 1,
            "sampler.backprop_depth": 1, "sampler": "fixed", "data.vocab_size": args.vocab}


def common(args: argparse.Namespace, run_dir: Path, steps: int) -> dict[str, object]:
    return {"run_dir": run_dir, "data": "shakespeare", "data.cache_dir": args.work / "cache",
            "trainer.max_steps": steps, "trainer.micro_batch_size": args.batch, "trainer.val_check_interval": "null",
            "trainer.checkpoint_every_n_steps": "null", "trainer.enable_progress_bar": False,
            "trainer.log_every_n_steps": 1, "logger.tensorboard": False, "sample_tokens": 0, "resume": "none",
            "overwrite": True, "seed": args.seed}


def continued(args: argparse.Namespace, run_dir: Path, steps: int, init_from: Path, **extra) -> dict[str, object]:
    """Continued training: the same optimizer recipe for the retrofit and the baselines."""
    return {**common(args, run_dir, steps), "init_from": init_from, "optim.lr": args.lr,
            "optim.warmup_steps": max(1, steps // 10), **extra}


def run(*cmd: object) -> float:
    """Run a command (printing its tail on failure); returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{result.stdout[-4000:]}")
    return time.perf_counter() - start


def train(overrides: dict[str, object]) -> float:
    """Train a run; returns the seconds its training loop took (train/time at the last step: no startup, data
    preparation or export)."""
    run(sys.executable, "-m", "recurrent_lm.train", *(f"{k}={v}" for k, v in overrides.items()))
    with open(Path(str(overrides["run_dir"])) / "logs" / "metrics.csv", newline="") as f:
        return max(float(row["train/time"]) for row in csv.DictReader(f) if row.get("train/time"))


def training_flops(config: ModelConfig, sampler: SamplerConfig, steps: int, tokens_per_step: int) -> float:
    """Model FLOPs of ``steps`` optimizer steps at the depths ``sampler`` draws for them."""
    draw = DepthSampler(sampler)
    return sum(tokens_per_step * train_flops_per_token(config, sum(draw(s)), draw(s)[1], config.block_size)
               for s in range(steps))


@torch.no_grad()
def val_losses(model_dir: Path, data: DataConfig, batches: int, batch: int, depths: tuple[int, ...]
               ) -> dict[int, float]:
    """Mean next-token loss at each of ``depths`` on the first ``batches`` validation batches."""
    model = RecurrentDepthLM.from_pretrained(model_dir)
    tokens = prepare_data(data, model.config.block_size).validation
    loader = validation_loader(tokens, model.config.block_size, batch, max_batches=batches)
    losses = {}
    for r in depths:
        total = [model(b["input_ids"], num_steps=r, labels=b["labels"],
                       generator=torch.Generator().manual_seed(i)).loss for i, b in enumerate(loader)]
        losses[r] = float(torch.stack(total).mean())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="source depth (decoder layers)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--source-steps", type=int, default=600)
    parser.add_argument("--source-lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=300, help="continued-training steps of the retrofit")
    parser.add_argument("--lr", type=float, default=5e-4, help="continued training (retrofit and baselines)")
    parser.add_argument("--prelude", default="0:2")
    parser.add_argument("--core", default="3:5")
    parser.add_argument("--coda", default="6:8")
    parser.add_argument("--mean-depth", type=int, default=4, help="r̄ the retrofit's depth ramp ends at")
    parser.add_argument("--backprop-depth", type=int, default=4)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = (args.keep or Path(tmp)).resolve()
        args.work.mkdir(parents=True, exist_ok=True)
        bench(args)


def bench(args: argparse.Namespace) -> None:
    work = args.work
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    seconds: dict[str, float] = {}
    source_run, hf_dir, retro_dir = work / "source", work / "source_hf", work / "retrofit_init"
    seconds["source"] = train({**common(args, source_run, args.source_steps), **source_overrides(args),
                             "optim.lr": args.source_lr, "optim.warmup_steps": args.source_steps // 10})
    convert = (sys.executable, "-m", "recurrent_lm.convert")
    run(*convert, "--from", "recurrent_lm", "--to", "hf", source_run / "export", hf_dir, "--max-shard-size", "1GB")
    run(*convert, "--from", "hf", "--to", "recurrent_lm", hf_dir, retro_dir, "--prelude", args.prelude,
        "--core", args.core, "--coda", args.coda)

    retro_sampler = SamplerConfig(name="ramp", mean=args.mean_depth, ramp_start=1, ramp_steps=max(1, args.steps // 2),
                                  backprop_depth=args.backprop_depth, seed=args.seed)
    seconds["retrofit"] = train(continued(args, work / "retrofit", args.steps, retro_dir, **{
        "experiment": "retrofit", "model.mean_recurrence": args.mean_depth, "sampler.mean": args.mean_depth,
        "sampler.backprop_depth": args.backprop_depth, "model.block_size": args.block,
        "sampler.ramp_steps": retro_sampler.ramp_steps}))

    source_cfg = RecurrentDepthLM.from_pretrained(source_run / "export").config
    retro_cfg = RecurrentDepthLM.from_pretrained(work / "retrofit" / "export").config
    tokens = args.batch * args.block
    retro_flops = training_flops(retro_cfg, retro_sampler, args.steps, tokens)
    plain = SamplerConfig(name="fixed", mean=1, backprop_depth=1)
    per_step = training_flops(source_cfg, plain, 1, tokens)
    equal_flops_steps = round(retro_flops / per_step)
    baseline = {"model": "pretrained", "model.mean_recurrence": 1, "sampler.backprop_depth": 1,
                "model.block_size": args.block, "sampler": "fixed"}
    seconds["baseline_steps"] = train(continued(args, work / "baseline_steps", args.steps, source_run / "export",
                                              **baseline))
    seconds["baseline_flops"] = train(continued(args, work / "baseline_flops", equal_flops_steps,
                                              source_run / "export", **baseline))

    data = DataConfig(source="shakespeare", tokenizer_path=str(source_run / "export" / "tokenizer.json"),
                      cache_dir=str(work / "cache"))
    # A plain stack has one depth: its loss "at r = 4" would re-run the whole stack, which means nothing.
    rows = [("source (before)", source_run / "export", 0, 0.0, 0.0, (1,)),
            ("retrofit (before)", retro_dir, 0, 0.0, 0.0, DEPTHS),
            (f"retrofit, r̄ ramp 1→{args.mean_depth}", work / "retrofit" / "export", args.steps, retro_flops,
             seconds["retrofit"], DEPTHS),
            ("source trained on, equal steps", work / "baseline_steps" / "export", args.steps, per_step * args.steps,
             seconds["baseline_steps"], (1,)),
            ("source trained on, equal FLOPs", work / "baseline_flops" / "export", equal_flops_steps,
             per_step * equal_flops_steps, seconds["baseline_flops"], (1,))]
    results = []
    for name, model_dir, steps, flops, loop_s, depths in rows:
        losses = val_losses(model_dir, data, args.val_batches, args.batch, depths)
        results.append({"model": name, "steps": steps, "train_tflops": flops / 1e12, "train_s": loop_s,
                        "val_loss": losses})
    print(f"\nsource pretraining: {args.source_steps} steps in {seconds['source']:.0f} s of training loop")
    print_table(args, results)
    (work / "retrofit_results.json").write_text(json.dumps(results, indent=2))


def print_table(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"\nsource: {args.layers} layers × d={args.width}, {args.source_steps} steps; retrofit: prelude "
          f"{args.prelude}, core {args.core}, coda {args.coda}; batch {args.batch} × {args.block} tokens; "
          f"val loss on {args.val_batches} batches\n")
    header = ["model", "steps", "train TFLOP", "train s", *(f"val r={r}" for r in DEPTHS)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in results:
        cells = [row["model"], str(row["steps"]), f"{row['train_tflops']:.1f}", f"{row['train_s']:.0f}",
                 *(f"{row['val_loss'][r]:.3f}" if r in row["val_loss"] else "–" for r in DEPTHS)]
        print("| " + " | ".join(cells) + " |")
    retro, steps, flops = (results[i]["val_loss"] for i in (2, 3, 4))
    best = min(retro.values())
    print(f"\nbest retrofit val loss {best:.3f} (r={min(retro, key=retro.get)}); ratio to the baseline at equal "
          f"steps {best / steps[1]:.3f}, at equal FLOPs {best / flops[1]:.3f} (< 1: the retrofit is better)")


if __name__ == "__main__":
    main()
