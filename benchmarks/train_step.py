"""Training-step throughput of the recurrent-depth LM vs a dense transformer of the same unrolled depth.

One step = forward + backward + AdamW step, under bf16 autocast (CPU or CUDA), at a fixed depth
(n_no_grad, n_grad) = (r - k, k). The dense baseline stacks n_prelude + r·n_core + n_coda *distinct*
`recurrent_lm.model.block.Block`s of the same width and backpropagates through all of them. The two
do different work per token (the recurrent one truncates backprop), so what is compared is achieved
model FLOP/s, each counted with the accounting convention of recurrent_lm.model.accounting.

MFU is measured against the bf16 and fp32 matmul peaks timed in the same run (a large square
matmul), not against a datasheet figure.

    python benchmarks/train_step.py                       # small preset, 8×256, r=8, k=4, compile off+on
    python benchmarks/train_step.py --compile off --steps 3 --batch 4
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from recurrent_lm.model import ModelConfig, RecurrentDepthLM, forward_flops_per_token, train_flops_per_token
from recurrent_lm.model.context import attention_context
from recurrent_lm.model.rope import rope_tables
from recurrent_lm.model.block import Block
from recurrent_lm.model.norm import RMSNorm
from recurrent_lm.train.hardware import measure_matmul_peak

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


class DenseLM(nn.Module):
    """A plain transformer: embed -> `layers` distinct Blocks -> norm -> tied head (no loop)."""

    def __init__(self, config: ModelConfig, layers: int) -> None:
        super().__init__()
        self.config = config
        h = config.d_model
        self.embed = nn.Embedding(config.vocab_size, h)
        self.blocks = nn.ModuleList(Block(config) for _ in range(layers))
        self.norm = RMSNorm(h, config.norm_eps)
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight
        std = config.base_std
        for p in self.parameters():
            if p.ndim > 1:
                nn.init.trunc_normal_(p, std=std, a=-3 * std, b=3 * std)
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2), as in RecurrentDepthLM
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        ctx = attention_context(self.config, self.rope_cos, self.rope_sin, b, t, input_ids.device)
        x = self.embed(input_ids) * math.sqrt(self.config.d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, ("dense", i))
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    def compile_blocks(self) -> None:
        for block in self.blocks:
            block.compile()


def dense_train_flops_per_token(cfg: ModelConfig, layers: int, context: int) -> int:
    """3× forward of `layers` blocks + head (same convention as accounting.train_flops_per_token)."""
    per_core_iteration = forward_flops_per_token(cfg, 1, context) - forward_flops_per_token(cfg, 0, context)
    block = (per_core_iteration - (4 * cfg.d_model**2 if cfg.injection == "linear" else 0)) // cfg.n_core
    head = 2 * cfg.d_model * cfg.vocab_size
    return 3 * (layers * block + head)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def make_step(model: nn.Module, loss_fn, device: torch.device, dtype: torch.dtype | None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step() -> None:
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(model: nn.Module, loss_fn, device: torch.device, dtype: torch.dtype | None, compiled: bool,
            warmup: int, steps: int) -> dict[str, float]:
    """Seconds per training step of ``model``: median, min, max over ``steps`` timed steps, and the first step
    (which compiles each block when ``compiled``) timed on its own; ``warmup`` counts the first step."""
    if compiled:
        model.compile_blocks()
    step = make_step(model, loss_fn, device, dtype)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    times = time_steps(step, max(warmup - 1, 0), steps, device)
    return dict(med=statistics.median(times), lo=min(times), hi=max(times), first=first)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_scaled_dot_product_efficient_attention",
              "aten::_scaled_dot_product_efficient_attention_backward", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_flash_attention_backward")


def profile_step(cfg: ModelConfig, ids, labels, r: int, k: int, device: torch.device, dtype) -> None:
    """Self time by op for one recurrent training step (eager): how much is matmul / attention."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = RecurrentDepthLM(cfg).to(device).train()
    step = make_step(model, lambda: model(ids, num_steps=(r - k, k), labels=labels).loss, device, dtype)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"# profile (recurrent, eager): {matmul / total:.0%} of CPU self time in matmul/attention kernels")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="conf/model/<preset>.yaml (default: small)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--r", type=int, default=8, help="core iterations per step")
    p.add_argument("--k", type=int, default=4, help="iterations with gradient (the last k of r)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (the first one compiles)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--compile", choices=("off", "on", "both"), default="both")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16 = bf16 autocast; fp32 = no autocast; auto = bf16 unless this machine's measured "
                        "bf16 matmul peak is below its fp32 one (CPUs without AVX512-BF16/AMX emulate bf16)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one recurrent step and print where the time goes")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of grad steps")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n×n peak matmul")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig(**{**OmegaConf.to_container(OmegaConf.load(CONF / f"{args.preset}.yaml")),
                         "block_size": max(args.seq, 1),
                         "mean_recurrence": max(args.r, args.k)})
    r, k = args.r, min(args.k, args.r)
    tokens = args.batch * args.seq
    layers = cfg.n_prelude + r * cfg.n_core + cfg.n_coda

    peak_bf16 = measure_matmul_peak(torch.bfloat16, device, args.matmul_size, seconds=1.5)
    peak_fp32 = measure_matmul_peak(torch.float32, device, args.matmul_size, seconds=1.5)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if peak_bf16 >= peak_fp32 else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, load avg {load:.1f}")
    print(f"# matmul peak ({args.matmul_size}³): bf16 {peak_bf16 / 1e9:.0f} GFLOP/s, "
          f"fp32 {peak_fp32 / 1e9:.0f} GFLOP/s")
    print(f"# preset {args.preset}: d_model {cfg.d_model}, {cfg.n_prelude}/{cfg.n_core}/{cfg.n_coda} layers; "
          f"batch {args.batch}×{args.seq}; recurrent r={r} (n_no_grad={r - k}, n_grad={k}); "
          f"dense {layers} layers; {'bf16 autocast' if dtype else 'fp32 (no autocast)'}; AdamW"
          + (" [auto: bf16 matmul is slower than fp32 here]" if args.precision == "auto" and not dtype else ""))

    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    labels = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    rec_flops = train_flops_per_token(cfg, r, k, args.seq)
    dense_flops = dense_train_flops_per_token(cfg, layers, args.seq)

    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = []
    for compiled in compiles:
        kinds = ["recurrent"] + ([] if args.no_dense else ["dense"])
        for kind in kinds:
            torch.manual_seed(0)
            if kind == "recurrent":
                model = RecurrentDepthLM(cfg).to(device).train()
                model.checkpoint_iterations = args.checkpointing
                loss_fn = lambda m=model: m(ids, num_steps=(r - k, k), labels=labels).loss  # noqa: E731
                flops = rec_flops
            else:
                model = DenseLM(cfg, layers).to(device).train()
                loss_fn = lambda m=model: m(ids, labels)  # noqa: E731
                flops = dense_flops
            rows.append(dict(kind=kind, compiled=compiled, flops=flops,
                             **measure(model, loss_fn, device, dtype, compiled, args.warmup, args.steps)))
            del model

    if args.profile:
        profile_step(cfg, ids, labels, r, k, device, dtype)

    print()
    print("| model | compile | step s (median, min–max) | tokens/s | model GFLOP/token | model TFLOP/s "
          "| MFU bf16 | MFU fp32 | first step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        achieved = row["flops"] * tokens / row["med"]
        print(f"| {row['kind']} | {'on' if row['compiled'] else 'off'} | {row['med']:.3f} ({row['lo']:.3f}–"
              f"{row['hi']:.3f}) | {tokens / row['med']:,.0f} | {row['flops'] / 1e9:.3f} | {achieved / 1e12:.3f} "
              f"| {achieved / peak_bf16:.1%} | {achieved / peak_fp32:.1%} | {row['first']:.1f} |")
    if not args.no_dense:
        print()
        for compiled in compiles:
            rec = next(x for x in rows if x["kind"] == "recurrent" and x["compiled"] == compiled)
            dense = next(x for x in rows if x["kind"] == "dense" and x["compiled"] == compiled)
            ratio = (rec["flops"] / rec["med"]) / (dense["flops"] / dense["med"])
            print(f"achieved model FLOP/s recurrent/dense (compile {'on' if compiled else 'off'}): {ratio:.2f} "
                  f"(goal >= 0.9)")


if __name__ == "__main__":
    main()
