"""`recurrent-lm-generate`: stream text from an exported model directory, then show its thinking depth.

    recurrent-lm-generate runs/exp/export "To be, or not" --num-steps 32 --exit convergence --threshold 0.03
    recurrent-lm-generate DIR --prompt-file prompts.txt --kv-cache compressed --kv-window 4 --temperature 0.8

The directory holds config.json, model.safetensors and tokenizer.json (what `recurrent-lm-export`
writes). Prompts come from the positional arguments and/or a file (one prompt per line; `-` = stdin).
With --batch-size 1 (default) every prompt streams as it is generated; larger batches print when done.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from recurrent_lm.errors import ConfigError, report_user_errors
from recurrent_lm.infer.config import GenerationConfig
from recurrent_lm.infer.display import depth_pairs, depth_text, legend, sparkline, steps_summary, token_pieces
from recurrent_lm.infer.depth_bound import check_depth
from recurrent_lm.loop.exit_spec import EXIT_CHOICES, ExitSpec, resolve_depth
from recurrent_lm.model.cache import CACHE_STRATEGIES, DEFAULT_KV_WINDOW
from recurrent_lm.model.io import model_dir_problem
from recurrent_lm.model.precision import DTYPE_CHOICES, resolve_dtype


GENERATION_FLAGS = tuple(f.name for f in fields(GenerationConfig)) + tuple(ExitSpec().settings())
"""Flags that are GenerationConfig fields, or its exit spec's settings: --json records their applied values."""


class InputError(ConfigError):
    """Bad input the user can fix: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recurrent-lm-generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="exported model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("prompts", nargs="*", help="prompt texts")
    p.add_argument("--prompt-file", help="file with one prompt per line ('-' reads stdin)")
    g = p.add_argument_group("depth and exit")
    # Depth and exit flags stay text: ExitSpec.parse and resolve_depth read them, with the messages every
    # entry point gives.
    g.add_argument("--num-steps", help="core iterations per token (default: the model's mean_recurrence)")
    g.add_argument("--exit", help=f"per-token exit criterion: {' | '.join(EXIT_CHOICES)} (default none)")
    g.add_argument("--threshold", help="criterion threshold (default: the criterion's own)")
    g.add_argument("--min-steps", help="iterations before a criterion may stop a token (default 1)")
    g.add_argument("--max-steps", help="per-token step budget: most iterations a token may use (default num-steps)")
    g.add_argument("--step-budget", type=int, help="total core iterations a prompt may spend on generated tokens")
    g.add_argument("--warm-start", action="store_true", help="start each token from the previous token's state")
    c = p.add_argument_group("kv cache")
    c.add_argument("--kv-cache", default="full", help=f"cache strategy: {' | '.join(CACHE_STRATEGIES)}")
    c.add_argument("--kv-window", type=int, default=DEFAULT_KV_WINDOW, help="iterations kept by --kv-cache compressed")
    s = p.add_argument_group("sampling and stopping")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=int, default=1, help="prompts generated together (1 streams)")
    r.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto: cuda when available)")
    r.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                   help="weights and activations (default float32; auto: model/precision.py's choice for the device)")
    r.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest for small models)")
    r.add_argument("--no-doc-start", action="store_true",
                   help="do not put <|eos|> (the document separator the model was trained with) before prompts")
    r.add_argument("--no-stream", action="store_true", help="print each text when it is complete")
    r.add_argument("--no-depth", action="store_true", help="skip the per-token depth view")
    r.add_argument("--json", dest="json_out", help="also write results (tokens, steps, texts) to this JSON file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors("recurrent-lm-generate", lambda: _run(args))


def check_model_dir(directory: Path) -> None:
    problem = model_dir_problem(directory, need_tokenizer=True)
    if problem:
        raise InputError(f"model directory {directory} {problem}; pass a directory written by `recurrent-lm-export "
                         "<run_dir>` (config.json, model.safetensors, tokenizer.json)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompt_file:
        if args.prompt_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(args.prompt_file)
            if not path.is_file():
                raise InputError(f"--prompt-file {path} does not exist")
            lines = path.read_text(encoding="utf-8").splitlines()
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise InputError("no prompts: give them as arguments or with --prompt-file")
    return prompts


def _run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from recurrent_lm.data.tokenizer_dir import load_tokenizer
    from recurrent_lm.infer.generate import generate
    from recurrent_lm.model.device import pick_device
    from recurrent_lm.model.lm import RecurrentDepthLM

    spec = ExitSpec.parse(args.exit, args.threshold, args.min_steps, args.max_steps)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, num_steps=args.num_steps, exit=spec, kv_cache=args.kv_cache,
        kv_window=args.kv_window, warm_start=args.warm_start, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop=tuple(args.stop), step_budget=args.step_budget, seed=args.seed)
    if args.batch_size < 1:
        raise InputError(f"--batch-size={args.batch_size} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args)
    directory = Path(args.model_dir)
    check_model_dir(directory)
    tokenizer = load_tokenizer(directory / "tokenizer.json")  # ours, or a foreign one (a retrofitted HF model's)
    try:
        device = pick_device(args.device, "--device")
    except ValueError as err:
        raise InputError(str(err)) from None
    model = RecurrentDepthLM.from_pretrained(directory, map_location=str(device))
    dtype = resolve_dtype(args.dtype, device, "--dtype")
    model = model.to(dtype)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise InputError(f"tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}; the directory mixes files from different exports")
    prefix = [] if args.no_doc_start else [tokenizer.eos_id]
    ids = [prefix + tokenizer.encode(p) for p in prompts]
    for i, row in enumerate(ids):
        if len(row) > model.config.block_size:
            raise InputError(f"prompt {i + 1} is {len(row)} tokens long, longer than the model context "
                             f"({model.config.block_size} tokens); shorten it")
    cap = resolve_depth(args.num_steps, model.config.mean_recurrence, spec)
    check_depth("--max-steps" if spec.max_steps is not None else "--num-steps", cap, model.config,
                min(max(map(len, ids)) + args.max_new_tokens, model.config.block_size),
                min(args.batch_size, len(ids)), args.kv_cache, args.kv_window, dtype)

    console = Console(highlight=False, soft_wrap=True)
    stream = args.batch_size == 1 and not args.no_stream
    records = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = list(range(start, min(start + args.batch_size, len(prompts))))
        streamer = _Streamer(tokenizer, config) if stream else None
        if stream:
            console.rule(f"prompt {chunk[0] + 1}")
            sys.stdout.write(prompts[chunk[0]])
            sys.stdout.flush()
        result = generate(model, [ids[i] for i in chunk], config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                          decode=tokenizer.decode, on_token=streamer)
        cap = result.num_steps
        for row, i in enumerate(chunk):
            text = result.texts[row]
            if stream:
                streamer.finish(text)
            else:
                console.rule(f"prompt {i + 1}")
                sys.stdout.write(prompts[i] + text + "\n")
                sys.stdout.flush()
            steps = result.steps[row]
            if not args.no_depth:
                pieces = token_pieces(result.tokens[row], tokenizer.decode)
                if console.is_terminal:  # shaded by depth; piped, the shading is gone: the counts instead
                    console.print(depth_text(pieces, steps, cap))
                    console.print(legend(cap))
                else:
                    console.print(f"tokens·steps  {depth_pairs(pieces, steps)}", markup=False)
            readouts = sum(result.readouts[row])
            console.print(f"depth  {sparkline(steps, cap)}")
            console.print(f"{len(steps)} tokens ({result.finish_reasons[row]}) | {steps_summary(steps, cap)} | "
                          f"exit {config.exit.criterion or 'none'} | "
                          f"readouts (coda+head by the criterion) {readouts} | "
                          f"kv-cache {config.kv_cache} {_human(result.cache_bytes)} "
                          f"({result.cache_slots} core slots/layer) | "
                          f"decode {result.decode_tokens_per_second:.1f} tok/s")
            records.append({"prompt": prompts[i], "text": text, "tokens": result.tokens[row], "steps": steps,
                            "readouts": result.readouts[row], "finish_reason": result.finish_reasons[row],
                            "prompt_steps": result.prompt_steps[row], "cache_bytes": result.cache_bytes})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": applied_settings(args, config, cap), "results": records},
                                                  indent=2))
    return 0


def applied_settings(args: argparse.Namespace, config: GenerationConfig, cap: int) -> dict[str, Any]:
    """The command line as it was applied: typed values, defaults resolved (the depth cap the run used,
    the criterion's own threshold when none was given), ``requested`` = the flags as typed."""
    applied = {k: v for k, v in vars(args).items() if k not in GENERATION_FLAGS}
    settings = {**asdict(config), **config.exit.settings(), "num_steps": cap, "stop": list(config.stop)}
    return {**applied, **settings, "requested": {k: getattr(args, k) for k in GENERATION_FLAGS if hasattr(args, k)}}


class _Streamer:
    """on_token callback for one row: prints text as soon as it is final.

    Holds back a trailing incomplete UTF-8 character (decoded as �) and, with stop strings, the last
    len(longest stop) − 1 characters (a stop string may be on its way) and everything from a complete
    stop string on, so no part of a stop string is ever printed.
    """

    def __init__(self, tokenizer, config: GenerationConfig) -> None:
        self.tokenizer = tokenizer
        self.stop = config.stop
        self.holdback = max((len(s) for s in config.stop), default=1) - 1
        self.tokens: list[int] = []
        self.printed = 0

    def __call__(self, row: int, token: int, steps: int) -> None:
        self.tokens.append(token)
        if token == self.tokenizer.eos_id:
            return
        text = self.tokenizer.decode(self.tokens)
        safe = len(text.rstrip("\ufffd")) - self.holdback
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            safe = min(safe, min(hits))
        if safe > self.printed:
            sys.stdout.write(text[self.printed:safe])
            sys.stdout.flush()
            self.printed = safe

    def finish(self, final_text: str) -> None:
        sys.stdout.write(final_text[self.printed:] + "\n")
        sys.stdout.flush()


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
