"""``recurrent-lm-coconut-eval``: exact-match accuracy of Coconut exports, in the layout of the paper's Table 1.

    recurrent-lm-coconut-eval --model coconut=runs/a/export --model cot=runs/b/export --data test.json \\
        [--num-examples N] [--batch-size 32] [--depths 4 8 16] \\
        [--thought-exit convergence --thought-threshold 0.05] [--depth-exit convergence --depth-threshold 0.03] \\
        [--stage last|N] [--log-samples predictions.jsonl] [--out report.md]

Each export is evaluated as it was trained: its coconut.json gives the method, the thoughts per step, the
layout and markers, and the curriculum stage its training reached, so a question is laid out exactly as that
stage laid it out (:func:`recurrent_lm.coconut.sequences.final_example`); ``--stage`` picks another, and the
table says which stage each row used. Progress goes to stderr; ``--log-samples`` writes one JSON line per
question and row (question, generated text, extracted answer, gold answer, correct, thoughts). One row per model; ``--depths`` adds rows at other
core depths (recurrent models: thoughts × depth), ``--depth-exit`` rows where every forward (each thought,
each token) leaves the core adaptively (the depth loop inside the thought loop), and ``--thought-exit`` rows
whose number of thoughts is adaptive (models trained with continuous thoughts). Tokens are counted as the paper counts them: each
continuous thought is one generated token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn

from recurrent_lm.coconut.backends import FIXED, Depth, backend_for
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.export import load_coconut_model
from recurrent_lm.coconut.generate import answer_of, exact_match, generate
from recurrent_lm.coconut.records import ReasoningRecord, load_records
from recurrent_lm.coconut.sequences import ThoughtExample, encode_records, final_example
from recurrent_lm.coconut.thoughts import ContinuousThoughtLM
from recurrent_lm.coconut.tokens import ThoughtTokenizer
from recurrent_lm.errors import ConfigError, report_user_errors
from recurrent_lm.loop import EXIT_CHOICES, ExitSpec
from recurrent_lm.model import RecurrentDepthLM
from recurrent_lm.model.device import pick_device

PROG = "recurrent-lm-coconut-eval"
SLACK = 16
"""Tokens allowed beyond the longest reference continuation before a generation is cut."""
COLUMNS = ("method", "stage", "accuracy %", "tokens", "thoughts", "thoughts used (count×rows)",
           "core iterations / token")


class InputError(ConfigError):
    """Bad input the user can fix: reported in one line naming the flag or file, exit status 2."""


def needs_steps(config: CoconutConfig) -> bool:
    """Whether laying a question out needs its steps: the thought count follows them unless padded to the max."""
    return config.thinks and not config.pad_latent_to_max


def answer_budget(examples: Sequence[ThoughtExample]) -> int:
    """Tokens to generate: the longest reference continuation (<eot> is fed, not generated) plus SLACK."""
    return max((len(e.suffix) - 1 for e in examples), default=1) + SLACK


def evaluate_model(model: nn.Module, tokenizer: ThoughtTokenizer, config: CoconutConfig,
                   records: Sequence[ReasoningRecord], *, batch_size: int = 32, depth: Depth = FIXED,
                   thought_exit: Optional[ExitSpec] = None, max_new_tokens: Optional[int] = None,
                   stage: Optional[int] = None, progress: Optional[str] = None,
                   samples: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """Generate an answer to every record (greedy) and score it by exact match.

    Questions are laid out at ``stage`` (None: the stage the export reached, ``config.eval_stage``, else the
    last). Returns accuracy (fraction correct), stage, mean_tokens (generated, thoughts counted),
    mean_thoughts, thought_counts ({"thoughts": rows}), mean_core_steps (core iterations per generated token;
    None for a model without a recurrent core) and examples. Recurrent models draw their initial state from
    the seeded table, so the figures do not depend on ``batch_size``. ``max_new_tokens`` None gives room for
    the longest reference continuation plus :data:`SLACK` tokens. ``progress`` labels a line per batch on
    stderr; ``samples``, when given, receives one dict per record (question, generated, answer, gold, correct,
    thoughts).
    """
    lm = ContinuousThoughtLM(backend_for(model, s0_seed=0))
    stage = config.evaluation_stage(stage)
    examples = [final_example(r, config, tokenizer.ids, stage) for r in encode_records(tokenizer, records, config)]
    max_new_tokens = answer_budget(examples) if max_new_tokens is None else max_new_tokens
    correct = tokens = core = 0
    counts: Counter[int] = Counter()
    started = time.perf_counter()
    for start in range(0, len(records), batch_size):
        chunk = examples[start:start + batch_size]
        out = generate(lm, [e.prefix for e in chunk], [e.thoughts for e in chunk], tokenizer.ids,
                       max_new_tokens=max_new_tokens, thought_exit=thought_exit, depth=depth,
                       openers=[e.suffix[0] for e in chunk])
        for b, record in enumerate(records[start:start + batch_size]):
            text = tokenizer.decode(out.tokens[b])
            hit = exact_match(text, record.answer)
            correct += hit
            steps = out.core_steps(b)
            core += 0 if steps is None else steps
            counts[out.thoughts[b]] += 1
            if samples is not None:
                samples.append({"question": record.question, "generated": text, "answer": answer_of(text),
                                "gold": record.answer, "correct": bool(hit), "thoughts": out.thoughts[b],
                                "finish": out.finish_reasons[b]})
        tokens += out.num_generated
        if progress:
            done = min(start + batch_size, len(records))
            print(f"{progress}: {done}/{len(records)} questions, {correct} correct, "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    n = max(len(records), 1)
    recurrent = isinstance(model, RecurrentDepthLM)
    return {"examples": len(records), "stage": stage, "accuracy": correct / n, "mean_tokens": tokens / n,
            "mean_thoughts": sum(k * v for k, v in counts.items()) / n,
            "thought_counts": {str(k): v for k, v in sorted(counts.items())},  # str keys: as JSON stores them
            "mean_core_steps": core / max(tokens, 1) if recurrent else None}


@dataclass(frozen=True)
class Setting:
    """One row of the table: a model at a depth, with or without adaptive thoughts."""

    label: str
    name: str
    depth: Depth
    thought_exit: Optional[ExitSpec]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a Coconut export (repeatable); NAME labels its row")
    p.add_argument("--data", required=True, help="JSON list of {question, steps, answer} records")
    p.add_argument("--num-examples", type=int, help="score only the first N records")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int,
                   help="tokens generated per answer at most (default: the longest reference continuation + 16)")
    p.add_argument("--depths", type=int, nargs="+", default=[], metavar="R",
                   help="extra rows at these core depths (recurrent models only)")
    p.add_argument("--thought-exit", choices=("convergence",),
                   help="extra rows whose thoughts stop once successive thoughts converge (bounded by the layout; "
                        "models trained with method=coconut only)")
    p.add_argument("--thought-threshold", type=float, help="relative change below which thinking stops")
    p.add_argument("--depth-exit", choices=[c for c in EXIT_CHOICES if c != "none"],
                   help="extra rows (recurrent models) whose every forward exits the core adaptively, capped by the "
                        "row's depth")
    p.add_argument("--depth-threshold", type=float, help="threshold of --depth-exit (default: the criterion's own)")
    p.add_argument("--stage", default=None, metavar="last|N",
                   help="curriculum stage questions are laid out at (default: the stage each export's training "
                        "reached, recorded in its coconut.json; 'last': every step replaced by thoughts)")
    p.add_argument("--log-samples", metavar="FILE.jsonl",
                   help="write every prediction (row, question, generated text, answer, gold, correct, thoughts)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", help="also write the table to OUT.md and all figures to OUT.json")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors(PROG, lambda: _run(args))


def parse_models(specs: Sequence[str]) -> list[tuple[str, Path]]:
    models: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise InputError(f"--model {spec!r}: expected NAME=DIR, e.g. --model coconut=runs/a/export")
        if name in {n for n, _ in models}:
            raise InputError(f"--model {spec!r}: the name {name!r} is given twice; give each model its own NAME")
        if not Path(directory).is_dir():
            raise InputError(f"--model {spec!r}: {directory} is not a directory; pass the export directory of a "
                             "Coconut run (<run_dir>/export)")
        models.append((name, Path(directory)))
    return models


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("--num-examples", args.num_examples), ("--batch-size", args.batch_size),
                        ("--max-new-tokens", args.max_new_tokens), *(("--depths", r) for r in args.depths)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be >= 1")
    if args.thought_threshold is not None and args.thought_exit is None:
        raise InputError("--thought-threshold needs --thought-exit convergence")
    if args.depth_threshold is not None and args.depth_exit is None:
        raise InputError("--depth-threshold needs --depth-exit CRITERION")


def parse_exit(flag: str, criterion: Optional[str], threshold: Optional[float]) -> Optional[ExitSpec]:
    """The exit of ``flag`` through the one owner of exit settings (its messages name the setting and the fix)."""
    try:
        spec = ExitSpec.parse(criterion, threshold)
    except ValueError as err:
        raise InputError(f"{flag}: {err}") from None
    return spec if spec.adaptive else None


def settings_for(name: str, model: nn.Module, config: CoconutConfig, args: argparse.Namespace) -> list[Setting]:
    """The rows of one model: its default depth, each of ``--depths``, each again with adaptive thoughts."""
    if args.depths and not isinstance(model, RecurrentDepthLM):
        raise InputError(f"--depths: {name} is a Hugging Face model, which has no recurrent core; drop --depths or "
                         "evaluate it in a separate run")
    if args.depth_exit and not isinstance(model, RecurrentDepthLM):
        raise InputError(f"--depth-exit: {name} is a Hugging Face model, which has no recurrent core; drop --depth-exit "
                         "or evaluate it in a separate run")
    thought_exits: list[Optional[ExitSpec]] = [None]
    if config.method == "coconut":  # only continuous thoughts can stop early
        thought_exits += [e for e in [parse_exit("--thought-exit", args.thought_exit, args.thought_threshold)] if e]
    depth_exits = [None, *(e for e in [parse_exit("--depth-exit", args.depth_exit, args.depth_threshold)] if e)]
    return [Setting(_label(name, r, d, t), name, Depth(num_steps=r, exit=d) if (r or d) else FIXED, t)
            for t in thought_exits for d in depth_exits for r in (None, *args.depths)]


def _label(name: str, depth: Optional[int], depth_exit: Optional[ExitSpec], thought_exit: Optional[ExitSpec]) -> str:
    """The row's name with every setting that shaped it, thresholds included."""
    tags = [] if depth is None else [f"r≤{depth}" if depth_exit else f"r={depth}"]
    tags += [f"depth exit {depth_exit.criterion} τ={depth_exit.threshold:g}"] if depth_exit else []
    tags += [f"adaptive thoughts τ={thought_exit.threshold:g}"] if thought_exit else []
    return f"{name} ({', '.join(tags)})" if tags else name


def parse_stage(text: Optional[str], name: str, config: CoconutConfig) -> Optional[int]:
    """``--stage`` for one export: None (the stage it reached), 'last', or a stage its curriculum has."""
    if text is None:
        return None
    if text == "last":
        return config.last_stage
    if not text.isdigit() or int(text) > config.last_stage:
        raise InputError(f"--stage {text}: give 'last' or a stage in 0..{config.last_stage} ({name} is "
                         f"method={config.method}, max_latent_stage={config.max_latent_stage})")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    check_numbers(args)
    try:
        device = pick_device(args.device, "--device")
    except ValueError as err:
        raise InputError(str(err)) from None
    loaded = {}
    for name, directory in parse_models(args.model):
        try:
            loaded[name] = load_coconut_model(directory, device)
        except (OSError, ValueError) as err:
            raise InputError(f"--model {name}={directory}: {err}") from None
    settings = [s for name, (model, _, config) in loaded.items() for s in settings_for(name, model, config, args)]
    if not Path(args.data).is_file():
        raise InputError(f"--data {args.data} does not exist; pass a JSON list of {{question, steps, answer}} "
                         "records (e.g. written by `recurrent-lm-coconut-data`)")
    try:
        records = load_records(args.data, require_steps=any(needs_steps(c) for _, _, c in loaded.values()))
    except (OSError, ValueError) as err:  # the loader's message names the file, the record and the fix
        raise InputError(f"--data: {err}") from None
    records = records[: args.num_examples]

    stages = {name: parse_stage(args.stage, name, config) for name, (_, _, config) in loaded.items()}
    rows, samples = [], []
    for s in settings:
        model, tokenizer, config = loaded[s.name]
        logged: Optional[list[dict[str, Any]]] = [] if args.log_samples else None
        figures = evaluate_model(model, tokenizer, config, records, batch_size=args.batch_size, depth=s.depth,
                                 thought_exit=s.thought_exit, max_new_tokens=args.max_new_tokens,
                                 stage=stages[s.name], progress=s.label, samples=logged)
        samples += [{"row": s.label, **sample} for sample in logged or []]
        source = "--stage" if stages[s.name] is not None else "last" if config.eval_stage is None else "reached"
        rows.append({"label": s.label, "model": s.name, "method": config.method, "num_steps": s.depth.num_steps,
                     "depth_exit": s.depth.exit.settings() if s.depth.exit else None,
                     "thought_exit": s.thought_exit.settings() if s.thought_exit else None,
                     "stage_source": source, **figures})
    if args.log_samples:
        path = Path(args.log_samples)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples))
        print(f"{len(samples)} predictions -> {path}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n")
        report = {"data": str(args.data), "examples": len(records), "rows": rows}
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The Table 1 layout (method | accuracy % | tokens | thoughts | core iterations per token) with the stage
    each row was laid out at (and where it came from) and how many rows used each number of thoughts."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    for r in rows:
        core = "–" if r["mean_core_steps"] is None else f"{r['mean_core_steps']:.1f}"
        spread = ", ".join(f"{k}×{v}" for k, v in r["thought_counts"].items())
        lines.append(f"| {r['label']} | {r['stage']} ({r.get('stage_source', 'given')}) | {100 * r['accuracy']:.1f} | "
                     f"{r['mean_tokens']:.1f} | {r['mean_thoughts']:.1f} | {spread} | {core} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
