"""Adaptive compute in wall-clock: per-token exits against fixed depth, in batched prefill and batched decoding.

    python benchmarks/adaptive.py --model runs/reasoning_parity/export --difficulty 32 --batch-size 8
    python benchmarks/adaptive.py --model runs/demo/export --task text --seq-len 64 --depths 1 2 3 4 6 8 16 --cap 16

Two kinds of model (``--task``; by default ``reasoning`` when the model directory has a ``task.json``, else
``text``):

* **reasoning**: ``--num-examples`` test problems of one ``--difficulty`` of the model's task; quality = exact
  match (every answer token right), higher is better;
* **text**: ``--num-examples`` held-out windows of ``--seq-len`` + 1 tokens from the validation split of the corpus
  the model was trained on (the ``data`` section of ``--run-config``, by default the run's ``config.yaml`` beside
  the export); quality = mean next-token loss over every position, lower is better.

In batches of ``--batch-size`` rows, it measures

* fixed depths (``--depths``): quality and time, measured in this run;
* each exit criterion (cap ``--cap``): mean core iterations per scored token, the loop's iterations per forward
  (its deepest token's: a masked forward costs that many iterations for every token), quality, its cost against
  the best fixed depth, and its time with and without compaction, against the time of the *smallest fixed depth of
  equal quality*: at least as good as the exit, or within the goal's 1 % (points of exact match, % of loss) of the
  best fixed depth (its "equal-quality" baseline; none if no fixed depth is);

in two modes: **prefill** (one batched forward over the whole sequence, as the reasoning evaluation and lm-eval
run it) and **decode** (teacher-forced cached decoding, one token per row per forward, B rows at once: batched
decoding's cost structure with the same quality score). In decode the causal and sequence scopes see one token
per forward, so they reduce to that token's own change (``convergence``). Times are medians of ``--repeats``
passes over all batches, the settings taking turns within each pass. Every setting sees the same sequences and the
same per-position initial states.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from recurrent_lm.loop import ExitSpec
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.cache import CACHE_STRATEGIES, DEFAULT_KV_WINDOW, RecurrentKVCache
from recurrent_lm.model.lm import COMPACT_FILL, IGNORE_INDEX, next_token_loss

DEFAULT_CRITERIA = ["convergence=0.03", "causal_convergence=0.03", "sequence_convergence=0.03", "kl=5e-4",
                    "entropy=1e-3", "learned=0.9"]
MODES = ("prefill", "decode")
TASKS = ("reasoning", "text")
QUALITY_GOAL = 1.0  # the "at most 1 % quality cost": points of exact match, or % of the loss


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported model directory (a reasoning one has a task.json)")
    p.add_argument("--task", choices=TASKS, help="what quality means (default: reasoning iff task.json exists)")
    p.add_argument("--difficulty", type=int, default=32, help="reasoning: the test problems' difficulty")
    p.add_argument("--seq-len", type=int, default=64, help="text: tokens per held-out window")
    p.add_argument("--run-config", help="text: the training run's config.yaml (default: <model>/../config.yaml)")
    p.add_argument("--num-examples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 32])
    p.add_argument("--cap", type=int, default=32, help="most iterations a token may use under exit")
    p.add_argument("--criteria", nargs="+", default=DEFAULT_CRITERIA,
                   help="name=threshold; 'learned' is skipped for a model without an exit gate")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-cache", choices=CACHE_STRATEGIES, default="full",
                   help="decode: the cache strategy (full: every iteration its own slot, as prefill attends)")
    p.add_argument("--compact", type=float, default=COMPACT_FILL,
                   help="the model's compact_exits for the compacted runs (largest sub-batch fraction compacted)")
    p.add_argument("--widths", type=int, nargs="*", default=[256, 512],
                   help="widths of the random models the compaction table adds (none: this model only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", dest="json_out")
    return p.parse_args(argv)


@dataclass
class Workload:
    """The batches every setting runs, which tokens count, and how their outputs become one quality figure."""

    task: str
    title: str  # e.g. "32-bit problems", "64-token windows"
    batches: list[dict[str, torch.Tensor]]  # input_ids, labels (B, T); labels IGNORE_INDEX where not scored

    @property
    def higher_is_better(self) -> bool:
        return self.task == "reasoning"

    @property
    def metric(self) -> str:
        return "exact match %" if self.task == "reasoning" else "loss (nats/token)"

    def quality(self, logits: list[torch.Tensor]) -> float:
        """Exact match in % (reasoning) or the mean next-token loss (text) of the batches' logits (B, T, V)."""
        if self.task == "reasoning":
            exact = [((lg.argmax(-1) == b["labels"]) | (b["labels"] == IGNORE_INDEX)).all(-1)
                     for b, lg in zip(self.batches, logits)]
            return 100 * torch.cat(exact).float().mean().item()
        losses = [next_token_loss(lg, b["labels"], reduction="none")[b["labels"] != IGNORE_INDEX]
                  for b, lg in zip(self.batches, logits)]
        return torch.cat(losses).mean().item()

    def at_least(self, a: float, b: float) -> bool:
        """Quality ``a`` is as good as ``b`` or better."""
        return a >= b - 1e-9 if self.higher_is_better else a <= b + 1e-9

    def cost(self, q: float, best: float) -> float:
        """The quality cost against the best fixed depth: points of exact match, or % of loss."""
        return best - q if self.higher_is_better else 100 * (q - best) / best


def load_workload(args: argparse.Namespace, model: RecurrentDepthLM) -> Workload:
    """The test batches of ``args.task`` (inferred from the model directory if not given)."""
    task = args.task or ("reasoning" if (Path(args.model) / "task.json").is_file() else "text")
    if task == "reasoning":
        from recurrent_lm.reasoning.evaluate import load_task
        from recurrent_lm.reasoning.tasks import TEST_SPLIT, collate, fixed_examples

        examples = fixed_examples(load_task(args.model), TEST_SPLIT, args.difficulty, args.num_examples)
        batches = [collate(examples[i:i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
        return Workload(task, f"difficulty {args.difficulty}", batches)
    import yaml

    from recurrent_lm.data.config import DataConfig
    from recurrent_lm.data.packing import prepare_data

    config = Path(args.run_config or Path(args.model).parent / "config.yaml")
    if not config.is_file():
        raise SystemExit(f"--task text reads the held-out text of the run's data section, and {config} does not "
                         "exist: pass --run-config <run_dir>/config.yaml")
    if args.seq_len > model.config.block_size:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the model's block_size {model.config.block_size}")
    tokens = prepare_data(DataConfig(**yaml.safe_load(config.read_text())["data"]), args.seq_len).validation
    span = args.seq_len + 1
    if len(tokens) < args.num_examples * span:
        raise SystemExit(f"--num-examples {args.num_examples} windows of {span} tokens need {args.num_examples * span} "
                         f"validation tokens; the corpus holds {len(tokens)}")
    windows = torch.from_numpy(tokens[: args.num_examples * span].astype("int64")).view(args.num_examples, span)
    batches = [{"input_ids": w[:, :-1], "labels": w[:, 1:]} for w in windows.split(args.batch_size)]
    return Workload(task, f"{args.seq_len}-token windows", batches)


def run_batch(model: RecurrentDepthLM, ids: torch.Tensor, watch: torch.Tensor, noise: Optional[torch.Tensor],
              depth: int, spec: Optional[ExitSpec], mode: str, kv_cache: str = "full"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), steps (B, T)) of one batch in ``mode``."""
    b, t = ids.shape
    if mode == "prefill":
        init = None if noise is None else noise[:t].expand(b, -1, -1)
        out = model(ids, num_steps=depth, exit_criterion=spec.build(watch=watch) if spec else None, init_state=init)
        return out.logits, out.steps_used
    cache, logits, steps = RecurrentKVCache(kv_cache, kv_window=DEFAULT_KV_WINDOW), [], []
    for i in range(t):
        init = None if noise is None else noise[i:i + 1].expand(b, 1, -1)
        out = model(ids[:, i:i + 1], num_steps=depth, past_key_values=cache,
                    exit_criterion=spec.build() if spec else None, init_state=init)
        logits.append(out.logits)
        steps.append(out.steps_used)
    return torch.cat(logits, 1), torch.cat(steps, 1)


Setting = tuple[int, Optional[ExitSpec], float]
"""(depth or cap, exit or None, compact_exits) of one measured row."""


def measure_all(model, work: Workload, noise, settings: list[Setting], mode: str, repeats: int,
                kv_cache: str = "full") -> list[dict]:
    """Per setting: quality, mean iterations per scored token, the loop's iterations per forward (its deepest
    token's: what a masked forward costs) and the median time over ``repeats`` passes of all batches.

    The settings take turns within each pass (pass 1 of every setting, then pass 2 ...), so a load that drifts on a
    shared machine lands on all of them alike instead of on whichever happened to run while it lasted."""
    times: list[list[float]] = [[] for _ in settings]
    first: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    with torch.no_grad():
        for rep in range(repeats):
            for k, (depth, spec, compact) in enumerate(settings):
                model.compact_exits = compact
                start = time.perf_counter()
                results = [run_batch(model, b["input_ids"], b["labels"] != IGNORE_INDEX, noise, depth, spec, mode,
                                     kv_cache) for b in work.batches]
                times[k].append(time.perf_counter() - start)
                if rep == 0:
                    first.append(results)
    model.compact_exits = COMPACT_FILL
    rows = []
    for results, t in zip(first, times):
        steps = [used[b["labels"] != IGNORE_INDEX].float() for b, (_, used) in zip(work.batches, results)]
        # prefill: one forward per batch; decode: one per position, over the batch's rows
        loop = [used.max().float()[None] if mode == "prefill" else used.max(0).values.float() for _, used in results]
        rows.append({"quality": work.quality([lg for lg, _ in results]), "iters": torch.cat(steps).mean().item(),
                     "loop_iters": torch.cat(loop).mean().item(), "seconds": statistics.median(t),
                     "spread": max(t) - min(t)})
    return rows


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


def equal_quality(work: Workload, fixed: dict[int, dict], q: float, best: float) -> Optional[int]:
    """The smallest fixed depth of equal quality to ``q``: at least as good, or within the goal's 1 % of the best
    fixed depth (so that an exit a hair better than every fixed depth on a continuous loss still has a baseline)."""
    reached = [r for r, m in sorted(fixed.items())
               if work.at_least(m["quality"], q) or work.cost(m["quality"], best) <= QUALITY_GOAL]
    return reached[0] if reached else None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = RecurrentDepthLM.from_pretrained(args.model).float().eval()
    work = load_workload(args, model)
    noise = model.initial_state_table(0)
    specs = []
    for item in args.criteria:
        spec = ExitSpec.from_text(item, max_steps=args.cap)
        if spec.criterion == "learned" and model.exit_gate is None:
            print(f"(skipping {item}: {args.model} has no exit gate)")
            continue
        specs.append(spec)
    report: dict = {"model": args.model, "task": work.task, "workload": work.title, "examples": args.num_examples,
                    "batch_size": args.batch_size, "machine": platform.platform(), "threads": args.threads,
                    "modes": {}}
    for mode in args.modes:
        settings: list[Setting] = [(r, None, 0.0) for r in args.depths]
        settings += [(args.cap, spec, compact) for spec in specs for compact in (0.0, args.compact)]
        measured = measure_all(model, work, noise, settings, mode, args.repeats, args.kv_cache)
        fixed = dict(zip(args.depths, measured))
        best = max(m["quality"] for m in fixed.values()) if work.higher_is_better else \
            min(m["quality"] for m in fixed.values())
        rows = []
        for k, spec in enumerate(specs):
            masked, compact = measured[len(args.depths) + 2 * k: len(args.depths) + 2 * k + 2]
            rows.append({"exit": f"{spec.criterion}={spec.threshold:g}", "masked": masked, "compact": compact,
                         "equal_depth": equal_quality(work, fixed, compact["quality"], best)})
        report["modes"][mode] = {"fixed": fixed, "exits": rows, "best_fixed": best}
        print_mode(mode, work, fixed, rows, best, args)
    report["compaction"] = compaction_table(model, work.batches[0]["input_ids"], args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


def print_mode(mode: str, work: Workload, fixed: dict[int, dict], rows: list[dict], best: float, args) -> None:
    text = work.task == "text"
    fmt = (lambda q: f"{q:.4f}") if text else (lambda q: f"{q:.1f}")
    gap = "cost: % of loss" if text else "cost: points"
    print(f"\n### {mode}: {work.title}, {args.num_examples} examples, B = {args.batch_size}, "
          f"median of {args.repeats}\n")
    print(f"| fixed r | {work.metric} | s (spread) |\n|---|---|---|")
    for r, m in sorted(fixed.items()):
        print(f"| {r} | {fmt(m['quality'])} | {m['seconds']:.3f} ({m['spread']:.3f}) |")
    print(f"\n| exit (cap {args.cap}) | iters/token | loop iters/forward | {work.metric} | {gap} (best {fmt(best)}) | "
          "masked s | compact s | compact / masked | equal-quality fixed r | its s | saving (fixed s / compact s) | "
          "goal (≤ 1% cost, ≥ 2×) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, c, r = row["masked"], row["compact"], row["equal_depth"]
        base = fixed[r]["seconds"] if r is not None else None
        saving = f"{base / c['seconds']:.2f}×" if base is not None else "— (no fixed depth reaches it)"
        cost_ok = work.cost(c["quality"], best) <= QUALITY_GOAL
        goal = "met" if cost_ok and base is not None and base / c["seconds"] >= 2 else \
            "missed: quality" if not cost_ok else "missed: < 2×"
        name = row["exit"]
        if mode == "decode" and name.split("=")[0] in ("causal_convergence", "sequence_convergence"):
            name += " (= convergence: one token per forward)"
        print(f"| {name} | {c['iters']:.2f} | {c['loop_iters']:.2f} | {fmt(c['quality'])} | "
              f"{work.cost(c['quality'], best):+.2f} | {m['seconds']:.3f} | {c['seconds']:.3f} | "
              f"{c['seconds'] / m['seconds']:.2f} | "
              f"{r if r is not None else '—'} | {f'{base:.3f}' if base is not None else '—'} | {saving} | {goal} |")


if __name__ == "__main__":
    raise SystemExit(main())
