"""Adaptive compute in wall-clock: per-token exits against fixed depth, in batched prefill and batched decoding.

    python benchmarks/adaptive.py --model runs/reasoning_parity/export --difficulty 32 --batch-size 8

For a reasoning model (its task is read from ``task.json`` in the model directory) whose accuracy depends on
depth, on ``--num-examples`` test problems of one difficulty, in batches of ``--batch-size`` rows:

* fixed depths (``--depths``): exact match and time, measured in this run;
* each exit criterion (cap ``--cap``): mean core iterations per answer token, exact match, its gap to the best
  fixed depth, and its time with and without compaction, against the time of the *smallest fixed depth that
  reaches the same exact match* (its "equal-quality" baseline; none if no fixed depth does);

in two modes: **prefill** (one batched forward over the whole problem, as the reasoning evaluation runs it) and
**decode** (teacher-forced cached decoding, one token per row per forward, B rows at once: batched decoding's
cost structure with the task's exact-match score). Times are medians of ``--repeats`` runs over all batches.
Every setting sees the same problems and the same per-position initial states.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.cache import RecurrentKVCache
from recurrent_lm.model.lm import COMPACT_FILL, IGNORE_INDEX
from recurrent_lm.reasoning.evaluate import load_task
from recurrent_lm.reasoning.tasks import TEST_SPLIT, collate, fixed_examples

DEFAULT_CRITERIA = ["convergence=0.03", "causal_convergence=0.03", "sequence_convergence=0.03", "kl=5e-4",
                    "entropy=1e-3", "learned=0.9"]
MODES = ("prefill", "decode")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported reasoning model directory (with task.json)")
    p.add_argument("--difficulty", type=int, default=32)
    p.add_argument("--num-examples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 32])
    p.add_argument("--cap", type=int, default=32, help="most iterations a token may use under exit")
    p.add_argument("--criteria", nargs="+", default=DEFAULT_CRITERIA,
                   help="name=threshold; 'learned' is skipped for a model without an exit gate")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compact", type=float, default=COMPACT_FILL,
                   help="the model's compact_exits for the compacted runs (largest sub-batch fraction compacted)")
    p.add_argument("--widths", type=int, nargs="*", default=[256, 512],
                   help="widths of the random models the compaction table adds (none: this model only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", dest="json_out")
    return p.parse_args(argv)


def run_batch(model: RecurrentDepthLM, ids: torch.Tensor, watch: torch.Tensor, noise: Optional[torch.Tensor],
              depth: int, spec: Optional[ExitSpec], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), steps (B, T)) of one batch in ``mode``."""
    b, t = ids.shape
    if mode == "prefill":
        init = None if noise is None else noise[:t].expand(b, -1, -1)
        out = model(ids, num_steps=depth, exit_criterion=spec.build(watch=watch) if spec else None, init_state=init)
        return out.logits, out.steps_used
    cache, logits, steps = RecurrentKVCache("full"), [], []
    for i in range(t):
        init = None if noise is None else noise[i:i + 1].expand(b, 1, -1)
        out = model(ids[:, i:i + 1], num_steps=depth, past_key_values=cache,
                    exit_criterion=spec.build() if spec else None, init_state=init)
        logits.append(out.logits)
        steps.append(out.steps_used)
    return torch.cat(logits, 1), torch.cat(steps, 1)


def measure(model, batches, noise, depth, spec, mode, compact: float, repeats: int) -> dict:
    """Exact match, mean iterations per answer token and the median time over ``repeats`` passes of all batches."""
    model.compact_exits = compact
    times, exact, steps = [], [], []
    with torch.no_grad():
        for rep in range(repeats):
            start = time.perf_counter()
            results = [run_batch(model, b["input_ids"], b["labels"] != IGNORE_INDEX, noise, depth, spec, mode)
                       for b in batches]
            times.append(time.perf_counter() - start)
            if rep == 0:
                for b, (logits, used) in zip(batches, results):
                    answer = b["labels"] != IGNORE_INDEX
                    exact.append(((logits.argmax(-1) == b["labels"]) | ~answer).all(-1))
                    steps.append(used[answer].float())
    model.compact_exits = COMPACT_FILL
    return {"acc": 100 * torch.cat(exact).float().mean().item(), "iters": torch.cat(steps).mean().item(),
            "seconds": statistics.median(times), "spread": max(times) - min(times)}


def core_loop_time(model: RecurrentDepthLM, ids: torch.Tensor, depth: int, active: float, repeats: int) -> dict:
    """The core loop (prelude, coda and head excluded: the same either way) masked and compacted, with a
    fraction ``active`` of the tokens running all ``depth`` iterations and the rest stopping after the first
    (a budget of 1): compaction's gain at that fraction, or its overhead when nearly all are active."""
    from recurrent_lm.loop import unroll

    b, t = ids.shape
    budget = torch.full((b, t), depth)
    stopped = torch.randperm(b * t, generator=torch.Generator().manual_seed(0))[: max(1, round((1 - active) * b * t))]
    budget.view(-1)[stopped] = 1
    times: dict[float, list[float]] = {0.0: [], 1.0: []}
    with torch.no_grad():
        for _ in range(repeats):
            for compact in times:
                cache = RecurrentKVCache("latest")
                ctx = model.attention_context(b, t, ids.device, cache=cache)
                e = model.run_layers(model.prelude, model.embed_tokens(ids), ctx, "prelude")
                start = time.perf_counter()
                unroll(lambda s, i, on: model.core_step(s, e, ctx, i, on), torch.zeros_like(e), 0, depth,
                       budget=budget, compact=compact, sequence_axis=1)
                times[compact].append(time.perf_counter() - start)
    masked, compact = statistics.median(times[0.0]), statistics.median(times[1.0])
    return {"width": model.config.d_model, "tokens": b * t, "active": 1 - len(stopped) / (b * t), "depth": depth,
            "masked": masked, "compact": compact, "ratio": compact / masked}


def compaction_table(model: RecurrentDepthLM, ids: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    """Compaction against masking at several active fractions, on this model and on wider random models of the
    same shape otherwise (where the per-token work, not the per-iteration overhead, dominates)."""
    from dataclasses import replace

    rows = []
    models = [model]
    for width in args.widths:
        torch.manual_seed(0)
        models.append(RecurrentDepthLM(replace(model.config, d_model=width, mlp_hidden=2 * width)).eval())
    for m in models:
        for active in (1 - 1 / ids.numel(), 0.5, 0.25, 0.1):
            rows.append(core_loop_time(m, ids, args.cap, active, args.repeats))
    print(f"\n### compaction vs masking, core loop only ({ids.shape[0]}×{ids.shape[1]} tokens, {args.cap} iterations, "
          f"median of {args.repeats})\n")
    print("| width | active tokens | masked s | compacted s | compacted / masked |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {100 * r['active']:.1f}% | {r['masked']:.4f} | {r['compact']:.4f} | {r['ratio']:.3f} |")
    return rows


def equal_quality(fixed: dict[int, dict], acc: float) -> Optional[int]:
    """The smallest fixed depth whose exact match reaches ``acc``."""
    reached = [r for r, m in sorted(fixed.items()) if m["acc"] >= acc - 1e-9]
    return reached[0] if reached else None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = RecurrentDepthLM.from_pretrained(args.model).float().eval()
    task = load_task(args.model)
    examples = fixed_examples(task, TEST_SPLIT, args.difficulty, args.num_examples)
    batches = [collate(examples[i:i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
    noise = model.initial_state_table(0)
    specs = []
    for item in args.criteria:
        spec = ExitSpec.from_text(item, max_steps=args.cap)
        if spec.criterion == "learned" and model.exit_gate is None:
            print(f"(skipping {item}: {args.model} has no exit gate)")
            continue
        specs.append(spec)
    report: dict = {"model": args.model, "task": task.name, "difficulty": args.difficulty,
                    "examples": len(examples), "batch_size": args.batch_size, "machine": platform.platform(),
                    "threads": args.threads, "modes": {}}
    for mode in args.modes:
        fixed = {r: measure(model, batches, noise, r, None, mode, 0.0, args.repeats) for r in args.depths}
        best = max(m["acc"] for m in fixed.values())
        rows = []
        for spec in specs:
            masked = measure(model, batches, noise, args.cap, spec, mode, 0.0, args.repeats)
            compact = measure(model, batches, noise, args.cap, spec, mode, args.compact, args.repeats)
            base = equal_quality(fixed, compact["acc"])
            rows.append({"exit": f"{spec.criterion}={spec.threshold:g}", "masked": masked, "compact": compact,
                         "equal_depth": base})
        report["modes"][mode] = {"fixed": fixed, "exits": rows, "best_fixed_acc": best}
        print_mode(mode, fixed, rows, best, args)
    report["compaction"] = compaction_table(model, batches[0]["input_ids"], args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


def print_mode(mode: str, fixed: dict[int, dict], rows: list[dict], best: float, args) -> None:
    print(f"\n### {mode}: {args.difficulty}-bit problems, {args.num_examples} examples, B = {args.batch_size}, "
          f"median of {args.repeats}\n")
    print("| fixed r | exact match % | s (spread) |\n|---|---|---|")
    for r, m in sorted(fixed.items()):
        print(f"| {r} | {m['acc']:.1f} | {m['seconds']:.3f} ({m['spread']:.3f}) |")
    print(f"\n| exit (cap {args.cap}) | iters/token | exact match % | vs best fixed ({best:.1f}) | masked s | "
          "compact s | compact / masked | equal-quality fixed r | its s | saving (fixed s / compact s) | "
          "goal (≤ 1% cost, ≥ 2×) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, c, r = row["masked"], row["compact"], row["equal_depth"]
        base = fixed[r]["seconds"] if r is not None else None
        saving = f"{base / c['seconds']:.2f}×" if base is not None else "— (no fixed depth reaches it)"
        cost_ok = c["acc"] >= best - 1.0
        goal = "met" if cost_ok and base is not None and base / c["seconds"] >= 2 else \
            "missed: quality" if not cost_ok else "missed: < 2×"
        print(f"| {row['exit']} | {c['iters']:.2f} | {c['acc']:.1f} | {c['acc'] - best:+.1f} | {m['seconds']:.3f} | "
              f"{c['seconds']:.3f} | {c['seconds'] / m['seconds']:.2f} | {r if r is not None else '—'} | "
              f"{f'{base:.3f}' if base is not None else '—'} | {saving} | {goal} |")


if __name__ == "__main__":
    raise SystemExit(main())
