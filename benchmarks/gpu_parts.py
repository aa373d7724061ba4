"""The measuring parts of benchmarks/gpu_check.py, each run in its own process (so one that hangs or dies costs
only its own rows):

    python benchmarks/gpu_parts.py peak --device cuda
    python benchmarks/gpu_parts.py train --device cuda --shape huginn-width --compile --attn flash --peak 7.1e14
    python benchmarks/gpu_parts.py generate --device cuda
    python benchmarks/gpu_parts.py coconut --device cuda

Each prints one line per table row, ``GPU-CHECK-ROW {"check": ..., "result": ..., "figure": ...}``; a
``value`` field carries a number the check passes on (the bf16 peak behind every MFU). Shapes are real on
CUDA and tiny on CPU (the CI mode), with the same code path.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROW = "GPU-CHECK-ROW "
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
NEEDS = {"peak": (), "train": ("omegaconf",), "generate": ("omegaconf",), "coconut": ("transformers",)}
"""Modules each part imports beyond torch and recurrent_lm: where one is missing, its rows say so."""

# name: (preset, model fields, batch, seq, r, k) on CUDA. Huginn's width with one block per stage; ~125M is
# GPT-2 small's width with 2 + 5 + 2 blocks (124.8M parameters with the 50,304-token vocabulary).
SHAPES_CUDA: dict[str, tuple[str, dict[str, Any], int, int, int, int]] = {
    "125m": ("small", dict(vocab_size=50304, d_model=768, n_heads=12, mlp_hidden=3072, n_prelude=2, n_core=5,
                           n_coda=2), 8, 1024, 4, 2),
    "huginn-width": ("huginn_3.5b", dict(n_prelude=1, n_core=1, n_coda=1), 2, 1024, 4, 2),
}
SHAPES_CPU = {
    "125m": ("tiny", {}, 2, 32, 2, 1),
    "huginn-width": ("tiny", dict(d_model=96, n_heads=4, mlp_hidden=256), 2, 32, 2, 1),
}


def emit(check: str, result: str, figure: str = "", **extra: Any) -> None:
    print(ROW + json.dumps({"check": check, "result": result, "figure": figure, **extra}), flush=True)


def model_config(shape: str, device: str):
    """(ModelConfig, batch, seq, r, k) of a named shape: a preset with the shape's fields on top."""
    from omegaconf import OmegaConf

    from recurrent_lm.model import ModelConfig

    preset, fields, batch, seq, r, k = (SHAPES_CUDA if device == "cuda" else SHAPES_CPU)[shape]
    base = OmegaConf.to_container(OmegaConf.load(CONF / f"{preset}.yaml"))
    cfg = ModelConfig(**{**base, **fields, "block_size": seq, "mean_recurrence": r})
    return cfg, batch, seq, r, k


def attention(kind: str, device: str) -> tuple[str, Any, str]:
    """(the model's attn_backend, context for the steps, label) of an attention row. ``flash`` is the flash-attn package
    where installed, else torch SDPA restricted to its own flash kernel (it raises if that kernel cannot run)."""
    if kind == "sdpa":
        return "sdpa", nullcontext(), "SDPA (torch's choice of kernel)"
    if importlib.util.find_spec("flash_attn") is not None and device == "cuda":
        return "flash", nullcontext(), "flash-attn"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return "sdpa", sdpa_kernel(SDPBackend.FLASH_ATTENTION), "SDPA flash kernel (flash-attn absent)"


def peak(args: argparse.Namespace) -> None:
    import torch

    from recurrent_lm.train.hardware import measure_matmul_peak

    n = 8192 if args.device == "cuda" else 512
    seconds = 1.5 if args.device == "cuda" else 0.3
    flops = measure_matmul_peak(torch.bfloat16, args.device, n, seconds=seconds)
    emit("bf16 matmul peak", "ok", f"{flops / 1e12:.3g} TFLOP/s ({n}³ matmul, best over {seconds} s)", value=flops)


def train(args: argparse.Namespace) -> None:
    """One training-step configuration (forward + backward + AdamW, bf16 autocast): tokens/s and MFU."""
    import torch
    from train_step import measure

    from recurrent_lm.model import RecurrentDepthLM, count_params, train_flops_per_token

    check = f"train {args.shape} {'compiled' if args.compile else 'eager'} {args.attn}"
    cfg, batch, seq, r, k = model_config(args.shape, args.device)
    backend, context, label = attention(args.attn, args.device)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with device:  # initialised where it trains: 1.6B parameters at Huginn's width take a while on a CPU
        model = RecurrentDepthLM(cfg, backend).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)  # (B, T)
    with context:
        t = measure(model, lambda: model(ids, num_steps=(r - k, k), labels=ids).loss, device, torch.bfloat16,
                    args.compile, warmup=2 if args.device == "cuda" else 1, steps=args.steps)
    tokens_per_s = batch * seq / t["med"]
    mfu = (f"MFU {train_flops_per_token(cfg, r, k, seq) * tokens_per_s / args.peak:.1%}" if args.peak
           else "MFU n/a (no peak)")
    emit(check, "ok", f"{tokens_per_s:,.0f} tok/s, {mfu}; step {t['med'] * 1e3:.1f} ms "
         f"({t['lo'] * 1e3:.1f}–{t['hi'] * 1e3:.1f}), first {t['first']:.1f} s; {count_params(model).total / 1e6:.3g}M "
         f"params, {batch}×{seq}, r={r} k={k}; {label}", tokens_per_s=tokens_per_s)


def generate(args: argparse.Namespace) -> None:
    """Batched KV-cached generation at the ~125M shape (bf16 weights on CUDA), fixed depth and with an exit."""
    import torch

    from recurrent_lm.infer import GenerationConfig
    from recurrent_lm.infer import generate as run
    from recurrent_lm.loop import ExitSpec
    from recurrent_lm.model import RecurrentDepthLM

    cuda = args.device == "cuda"
    cfg, _, _, _, _ = model_config("125m", args.device)
    batch, prompt, new, steps = (8, 128, 64, 16) if cuda else (2, 8, 4, 4)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = RecurrentDepthLM(cfg).to(torch.bfloat16 if cuda else torch.float32)
    prompts = torch.randint(6, cfg.vocab_size, (batch, prompt)).tolist()
    for exit in (None, "convergence"):
        config = GenerationConfig(max_new_tokens=new, num_steps=steps, exit=ExitSpec(exit))
        run(model, prompts, config)  # warm-up: kernels, allocator
        result = run(model, prompts, config)
        emit(f"generate {'exit=' + exit if exit else 'fixed r'}", "ok",
             f"{result.decode_tokens_per_second:,.0f} tok/s decode, {result.mean_steps:.1f} of {steps} core "
             f"steps/token, prefill {result.prefill_seconds * 1e3:.0f} ms; batch {batch}, prompt {prompt}, {new} new")


def coconut(args: argparse.Namespace) -> None:
    """A Coconut training step of a GPT-2 built from a config (GPT-2 small's shape on CUDA; no hub)."""
    import torch
    import transformers
    from coconut import IDS, examples
    from timing import timed

    from recurrent_lm.coconut.backends import HFBackend
    from recurrent_lm.coconut.sequences import collate
    from recurrent_lm.coconut.thoughts import ContinuousThoughtLM

    cuda = args.device == "cuda"
    width, layers, heads, batch = (768, 12, 12, 8) if cuda else (64, 2, 2, 2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50260, n_embd=width, n_layer=layers, n_head=heads, n_positions=512)).to(args.device).train()
    lm = ContinuousThoughtLM(HFBackend(model))
    data = {k: v.to(args.device) for k, v in collate(examples(batch), IDS.pad).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    losses: list[float] = []

    def step() -> None:
        with torch.autocast(args.device, torch.bfloat16, enabled=cuda):
            loss = lm(data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))  # syncs the device

    seconds = timed(step, args.steps, warmup=1)  # each step ends in float(loss), which waits for the device
    finite = all(math.isfinite(x) for x in losses)
    length = data["prefix_ids"].shape[1] + examples(1)[0].thoughts + data["suffix_ids"].shape[1]
    emit("coconut gpt2 train step", "ok" if finite else "FAIL: non-finite loss",
         f"{statistics.median(seconds) * 1e3:.0f} ms/step ({min(seconds) * 1e3:.0f}–{max(seconds) * 1e3:.0f}); "
         f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; GPT-2 {width}×{layers}, batch {batch}×{length} "
         f"(6 thoughts){', bf16 autocast' if cuda else ''}")


PARTS = {"peak": peak, "train": train, "generate": generate, "coconut": coconut}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=list(PARTS))
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--shape", choices=list(SHAPES_CUDA), default="125m")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn", choices=("sdpa", "flash"), default="sdpa")
    p.add_argument("--peak", type=float, default=0.0, help="bf16 FLOP/s behind MFU (from the peak part)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CUDA, 2 on CPU)")
    args = p.parse_args()
    if args.steps is None:
        args.steps = 5 if args.device == "cuda" else 2
    if args.device == "cpu":
        import torch

        torch.set_num_threads(1)  # the CI mode's tiny tensors gain nothing from more threads on a shared machine
    for module in NEEDS[args.part]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            print(f"GPU-CHECK-MISSING {module}: {error}", flush=True)
            raise SystemExit(3)
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
