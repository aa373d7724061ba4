"""Exit-criterion benchmark: compute saved vs quality lost, decode speed, and KV-cache memory.

    python benchmarks/exit.py --model runs/<name>/export --r-max 32
    python benchmarks/exit.py --model DIR --data path/to/validation.bin --eval-batches 8 --decode-tokens 64

For fixed depth r = r_max and for each exit criterion at a few thresholds (cap r_max) it reports:

* mean core iterations per token, on validation windows (a full-sequence forward with per-token exit);
* validation loss and next-token accuracy on the same windows (paired: every setting sees the same tokens);
* readouts per token: coda + head evaluations spent by output-based criteria, and the cost of a token in
  core-iteration equivalents (iterations + readouts × cost(coda + head) / cost(core iteration));
* batch-1 cached decode tokens/s (greedy, prompts cut from the validation stream, prefill excluded);
* KV-cache bytes after decoding: full (adaptive under exit: only slots some token reached), and for
  fixed r_max also compressed (--kv-window) and latest, with their greedy-token agreement with full.

It ends with the three goals of the inference issue (≥ 2× fewer iterations at ≤ 1 % relative loss
increase for the convergence exit; ≥ 1.5× faster batch-1 decode than fixed r_max; compressed ≤ 1/4 of
full at r_max), each marked met or missed with its figures. Results go to stdout (a markdown table)
and, with --json, to a file. Defaults run in a few minutes on a 2-core CPU for a ~10M model.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from recurrent_lm.data.tokenizer import TextTokenizer
from recurrent_lm.infer import GenerationConfig, generate
from recurrent_lm.model import kv_cache_bytes
from recurrent_lm.loop import ExitSpec, resolve_depth
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.accounting import forward_flops_per_token
from recurrent_lm.model.cache import DEFAULT_KV_WINDOW
from recurrent_lm.model.io import model_dir_problem

DEFAULT_THRESHOLDS = {
    "convergence": [0.01, 0.03, 0.1],
    "causal_convergence": [0.03],
    "sequence_convergence": [0.03],
    "kl": [1e-4, 5e-4, 2e-3],
    "entropy": [1e-3, 1e-2],
    "argmax": [4, 8],
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported model directory (config.json, model.safetensors, "
                                                   "tokenizer.json)")
    p.add_argument("--r-max", type=int, default=32, help="fixed depth and the cap of every exit criterion")
    p.add_argument("--criteria", default="convergence,kl,entropy,argmax")
    p.add_argument("--thresholds", nargs="*", default=[],
                   help="override per criterion, e.g. convergence=0.01,0.03 kl=5e-4")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare' (held-out plays), a .txt file, or a packed .bin token file")
    p.add_argument("--eval-batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=None, help="validation window (default: min(block_size, 256))")
    p.add_argument("--decode-prompts", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2,
                   help="decode each prompt this many times and keep the fastest (timings on a shared CPU are noisy)")
    p.add_argument("--kv-window", type=int, default=DEFAULT_KV_WINDOW, help="iterations kept by the compressed cache")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", dest="json_out", help="write all figures to this JSON file")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data
def load_tokens(spec: str, tokenizer: TextTokenizer, vocab_size: int) -> np.ndarray:
    path = Path(spec)
    if spec == "shakespeare":
        from recurrent_lm.data.corpus import shakespeare

        texts = shakespeare()["validation"]["text"]
        return np.array([t for text in texts for t in tokenizer.encode(text) + [tokenizer.eos_id]], dtype=np.int64)
    if not path.is_file():
        raise FileNotFoundError(f"--data {spec}: no such file (use 'shakespeare', a .txt or a .bin file)")
    if path.suffix == ".bin":
        meta = path.parent / "meta.json"
        dtype = json.loads(meta.read_text())["dtype"] if meta.is_file() else \
            ("uint16" if vocab_size <= 65536 else "uint32")
        return np.fromfile(path, dtype=np.dtype(dtype)).astype(np.int64)
    return np.array(tokenizer.encode(path.read_text(encoding="utf-8")), dtype=np.int64)


def windows(tokens: np.ndarray, count: int, length: int) -> torch.Tensor:
    """`count` non-overlapping windows of length+1 tokens, evenly spread over the stream."""
    span = length + 1
    available = len(tokens) // span
    if available < count:
        raise ValueError(f"validation data has {len(tokens)} tokens: fewer than {count} windows of {span}")
    picks = np.linspace(0, available - 1, count).round().astype(int)
    return torch.tensor(np.stack([tokens[i * span:(i + 1) * span] for i in picks]))


# ---------------------------------------------------------------------------------------------- measures
def evaluate(model, batches: list[torch.Tensor], r: int, criterion) -> dict:
    loss_sum = correct = tokens = steps = 0.0
    readouts = 0
    start = time.perf_counter()
    torch.manual_seed(0)  # a model with a random s_0 draws the same initial states for every setting
    for batch in batches:
        x, y = batch[:, :-1], batch[:, 1:]
        out = model(x, num_steps=r, exit_criterion=criterion)
        logits = out.logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        tokens += y.numel()
        steps += out.steps_used.sum().item()
        readouts += out.readouts
    return {"val_loss": loss_sum / tokens, "accuracy": correct / tokens, "iters_per_token": steps / tokens,
            "eval_readouts_per_token": readouts / len(batches), "eval_seconds": time.perf_counter() - start}


def decode(model, prompts: list[list[int]], config: GenerationConfig, repeats: int = 1) -> dict:
    gen_tokens, gen_seconds, steps, readouts, cache = 0, 0.0, [], [], []
    outputs = []
    for prompt in prompts:
        runs = [generate(model, [prompt], config) for _ in range(max(1, repeats))]
        result = min(runs, key=lambda r: r.decode_seconds)  # greedy: every run decodes the same tokens
        gen_tokens += len(result.tokens[0]) - 1  # the first token comes from the prefill
        gen_seconds += result.decode_seconds
        steps += result.steps[0]
        readouts += result.readouts[0]
        cache.append(result.cache_bytes)
        outputs.append(result.tokens[0])
    return {"decode_tok_s": gen_tokens / gen_seconds if gen_seconds else float("nan"),
            "decode_iters_per_token": statistics.mean(steps), "decode_readouts_per_token": statistics.mean(readouts),
            "cache_bytes": max(cache), "tokens": outputs}


def readout_cost_ratio(cfg, context: int) -> float:
    """FLOPs of one coda + head readout over FLOPs of one core iteration, per token."""
    iteration = forward_flops_per_token(cfg, 2, context) - forward_flops_per_token(cfg, 1, context)
    adapter = 4 * cfg.d_model * cfg.d_model if cfg.injection == "linear" else 0
    block = (iteration - adapter) / cfg.n_core
    return (cfg.n_coda * block + 2 * cfg.d_model * cfg.vocab_size) / iteration


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return same / max(1, sum(len(r) for r in a))


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    directory = Path(args.model)
    problem = model_dir_problem(directory, need_tokenizer=True)
    if problem:
        sys.exit(f"--model {directory} {problem} (expected an exported model directory)")
    tokenizer = TextTokenizer.from_file(directory / "tokenizer.json")
    model = RecurrentDepthLM.from_pretrained(directory, map_location=args.device)
    cfg = model.config
    seq_len = args.seq_len or min(cfg.block_size, 256)
    r_max = resolve_depth(args.r_max, cfg.mean_recurrence)
    thresholds = {name: DEFAULT_THRESHOLDS.get(name, [None]) for name in args.criteria.split(",") if name}
    for item in args.thresholds:
        name, _, values = item.partition("=")
        thresholds[name] = values.split(",")
    # Every setting checked (an unknown name or a bad threshold fails here, with ExitSpec's message) before the
    # first measurement; r_max caps them all.
    specs = [ExitSpec()] + [ExitSpec.parse(name, t) for name, ts in thresholds.items() for t in ts]

    tokens = load_tokens(args.data, tokenizer, cfg.vocab_size)
    batches = list(windows(tokens, args.eval_batches * args.batch_size, seq_len).split(args.batch_size))
    prompt_rows = windows(tokens, args.decode_prompts, args.prompt_len)[:, :-1]
    prompts = [row.tolist() for row in prompt_rows]
    n_new = min(args.decode_tokens, cfg.block_size - args.prompt_len)
    ratio = readout_cost_ratio(cfg, seq_len)
    print(f"model {directory} | d_model {cfg.d_model}, layers {cfg.n_prelude}+{cfg.n_core}x r+{cfg.n_coda}, "
          f"vocab {cfg.vocab_size}, trained r̄={cfg.mean_recurrence} | eval {len(batches) * args.batch_size}×{seq_len} "
          f"tokens | decode {len(prompts)}×{n_new} tokens | threads {torch.get_num_threads()} | "
          f"readout/core-iteration cost {ratio:.2f}", flush=True)

    rows = []
    with torch.inference_mode():
        generate(model, [prompts[0]], GenerationConfig(max_new_tokens=4, num_steps=r_max))  # warm-up
        for spec in specs:
            name = spec.criterion or "fixed"
            row = {"setting": f"{name}={spec.threshold:g}" if spec.adaptive else name, "criterion": name,
                   "threshold": spec.threshold}
            row.update(evaluate(model, batches, r_max, spec.build()))
            config = GenerationConfig(max_new_tokens=n_new, num_steps=r_max, exit=spec)
            row.update(decode(model, prompts, config, args.repeats))
            row["cost_per_token"] = row["decode_iters_per_token"] + row["decode_readouts_per_token"] * ratio
            rows.append(row)
            print(f"  {row['setting']:<18} iters/token {row['iters_per_token']:6.2f}  loss {row['val_loss']:.4f}  "
                  f"acc {row['accuracy']:.4f}  decode {row['decode_tok_s']:6.1f} tok/s  "
                  f"cache {row['cache_bytes'] / 2**20:.2f} MiB", flush=True)
        fixed = rows[0]
        caches = {"full": {"bytes": fixed["cache_bytes"], "decode_tok_s": fixed["decode_tok_s"], "agreement": 1.0}}
        for strategy in ("compressed", "latest"):
            config = GenerationConfig(max_new_tokens=n_new, num_steps=r_max, kv_cache=strategy,
                                      kv_window=args.kv_window)
            measured = decode(model, prompts, config, args.repeats)
            caches[strategy] = {"bytes": measured["cache_bytes"], "decode_tok_s": measured["decode_tok_s"],
                                "agreement": agreement(measured["tokens"], fixed["tokens"])}
    cache_tokens = args.prompt_len + n_new - 1
    for strategy in caches:
        caches[strategy]["predicted_bytes"] = kv_cache_bytes(cfg, cache_tokens, r_max, strategy, args.kv_window,
                                                             dtype=next(model.parameters()).dtype)

    goals = check_goals(rows, caches, args)
    report = {"command": " ".join(["python", "benchmarks/exit.py", *(argv if argv is not None else sys.argv[1:])]),
              "model": str(directory), "model_config": cfg.to_dict(), "r_max": r_max, "seq_len": seq_len,
              "eval_tokens": len(batches) * args.batch_size * seq_len, "decode_prompts": len(prompts),
              "decode_tokens": n_new, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "torch": torch.__version__, "readout_cost_ratio": ratio, "kv_window": args.kv_window,
              "rows": [{k: v for k, v in r.items() if k != "tokens"} for r in rows], "caches": caches,
              "goals": goals}
    print()
    print(markdown(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return report


def check_goals(rows: list[dict], caches: dict, args) -> dict:
    fixed = rows[0]
    conv = [r for r in rows if r["criterion"] == "convergence"]
    ok_quality = [r for r in conv if r["val_loss"] <= fixed["val_loss"] * 1.01]
    best = min(ok_quality, key=lambda r: r["iters_per_token"]) if ok_quality else None
    goals = {}
    if best is None:
        goals["iterations"] = {"met": False, "why": "no convergence threshold kept the loss within 1 % of fixed r"}
        goals["decode_speed"] = {"met": False, "why": "no convergence threshold within the loss budget"}
    else:
        saving = fixed["iters_per_token"] / best["iters_per_token"]
        goals["iterations"] = {"met": saving >= 2, "setting": best["setting"], "saving": saving,
                               "loss_increase": best["val_loss"] / fixed["val_loss"] - 1}
        speedup = best["decode_tok_s"] / fixed["decode_tok_s"]
        goals["decode_speed"] = {"met": speedup >= 1.5, "setting": best["setting"], "speedup": speedup}
    share = caches["compressed"]["bytes"] / caches["full"]["bytes"]
    goals["cache"] = {"met": share <= 0.25, "compressed_over_full": share, "kv_window": args.kv_window}
    return goals


def markdown(report: dict) -> str:
    r_max = report["r_max"]
    lines = [f"r_max = {r_max}; eval {report['eval_tokens']} tokens; decode {report['decode_prompts']}×"
             f"{report['decode_tokens']} tokens at batch 1; readout cost = {report['readout_cost_ratio']:.2f} core "
             "iterations", "",
             "| setting | iters/token (eval) | val loss | Δloss | acc | readouts/token (decode) | cost/token "
             "(iter-equiv) | decode tok/s | speedup | KV full (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fixed = report["rows"][0]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['iters_per_token']:.2f} | {r['val_loss']:.4f} | "
            f"{100 * (r['val_loss'] / fixed['val_loss'] - 1):+.2f}% | {r['accuracy']:.4f} | "
            f"{r['decode_readouts_per_token']:.1f} | {r['cost_per_token']:.1f} | {r['decode_tok_s']:.1f} | "
            f"{r['decode_tok_s'] / fixed['decode_tok_s']:.2f}× | {r['cache_bytes'] / 2**20:.2f} |")
    lines += ["", f"KV cache at fixed r = {r_max} after {report['decode_tokens']} new tokens (per prompt):", "",
              "| strategy | bytes | predicted | share of full | greedy agreement with full | decode tok/s |",
              "|---|---:|---:|---:|---:|---:|"]
    full = report["caches"]["full"]["bytes"]
    for name, c in report["caches"].items():
        label = f"{name} (kv_window {report['kv_window']})" if name == "compressed" else name
        lines.append(f"| {label} | {c['bytes']:,} | {c['predicted_bytes']:,} | {c['bytes'] / full:.3f} | "
                     f"{100 * c['agreement']:.1f}% | {c['decode_tok_s']:.1f} |")
    g = report["goals"]
    lines += ["", "Goals:"]
    it = g["iterations"]
    lines.append(f"- convergence exit ≥ 2× fewer iterations at ≤ 1% loss: {'MET' if it['met'] else 'MISSED'} "
                 + (f"({it['setting']}: {it['saving']:.2f}× fewer, loss {100 * it['loss_increase']:+.2f}%)"
                    if "saving" in it else f"({it['why']})"))
    sp = g["decode_speed"]
    lines.append(f"- batch-1 decode ≥ 1.5× faster than fixed r = {r_max}: {'MET' if sp['met'] else 'MISSED'} "
                 + (f"({sp['setting']}: {sp['speedup']:.2f}×)" if "speedup" in sp else f"({sp['why']})"))
    ca = g["cache"]
    lines.append(f"- compressed cache ≤ 1/4 of full at r = {r_max}: {'MET' if ca['met'] else 'MISSED'} "
                 f"(kv_window {ca['kv_window']}: {ca['compressed_over_full']:.3f} of full)")
    if not math.isfinite(fixed["decode_tok_s"]):
        lines.append("- (decode speed not measured: no decode forwards ran)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
