"""``recurrent-lm-eval``: lm-eval's own CLI with the ``recurrent_lm`` model and the offline tasks.

    recurrent-lm-eval [run] --model_args pretrained=DIR,num_steps=32 --tasks rlm_offline [any lm-eval flag]
    recurrent-lm-eval sweep --model_args pretrained=DIR --num_steps 1,2,4,8 --tasks rlm_prosqa --output_dir OUT
    recurrent-lm-eval aggregate OUT [OUT2 ...] [--output_dir DIR]
    recurrent-lm-eval prepare [--tasks rlm_offline] [--cache_dir DIR]     # prints an include dir for plain lm_eval
    recurrent-lm-eval ls|validate ...                                      # lm-eval's own subcommands

For ``run`` (also the default when no subcommand is named) the model is registered, ``--model`` defaults
to ``recurrent_lm``, requested offline tasks (``rlm_*``) are rendered and added to ``--include_path``, and
everything else is lm-eval's: every lm-eval flag works and hub tasks load as usual when online. Three
extra flags choose the offline tasks' data: ``--prontoqa_dir``, ``--ppl_source``, ``--eval_cache``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from recurrent_lm.errors import report_user_errors
from recurrent_lm.evaluation.errors import EvalError

PROG = "recurrent-lm-eval"
OWN_COMMANDS = ("sweep", "aggregate", "prepare")
LM_EVAL_COMMANDS = ("run", "ls", "validate")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from recurrent_lm.quiet import quiet_libraries, quiet_lm_eval_git

    quiet_libraries()
    quiet_lm_eval_git()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), end="\n\nlm-eval's own help follows (`run` options: `recurrent-lm-eval run -h`).\n\n")
    commands = {"sweep": _sweep, "aggregate": _aggregate, "prepare": _prepare}
    if argv and argv[0] in commands:
        return report_user_errors(PROG, lambda: commands[argv[0]](argv[1:]))
    return report_user_errors(PROG, lambda: _lm_eval(argv))


# ---------------------------------------------------------------------- shared options
def _source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("offline task data (recurrent_lm)")
    group.add_argument("--prontoqa_dir", default=None, metavar="<dir>",
                       help="ProntoQA JSON directory (default: $RECURRENT_LM_PRONTOQA_DIR or "
                            "<repo>/../shared/data/prontoqa)")
    group.add_argument("--ppl_source", default=None, metavar="<source>",
                       help="perplexity text: 'shakespeare' (validation plays, default), a .txt, or .json/.jsonl "
                            "records with a 'text' field")
    group.add_argument("--eval_cache", "--cache_dir", dest="eval_cache", default=None, metavar="<dir>",
                       help="where rendered task YAMLs and generated data go (default: $RECURRENT_LM_EVAL_CACHE "
                            "or ~/.cache/recurrent_lm/eval)")


def _sources(args: argparse.Namespace):
    from recurrent_lm.evaluation.tasks import Sources

    return Sources(prontoqa_dir=args.prontoqa_dir, ppl_source=args.ppl_source)


def _split(values: Optional[Sequence[str]]) -> list[str]:
    return [t.strip() for v in (values or []) for t in str(v).split(",") if t.strip()]


# ---------------------------------------------------------------------- run (lm-eval's CLI)
def _lm_eval(argv: list[str]) -> int:
    own = argparse.ArgumentParser(add_help=False)
    _source_options(own)
    ours, rest = own.parse_known_args(argv)

    import recurrent_lm.evaluation.harness  # noqa: F401  (registers the model)
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    cli = HarnessCLI()
    saved_argv = sys.argv
    try:  # HarnessCLI.parse_args reads sys.argv (and inserts `run` when no subcommand is named)
        sys.argv = [PROG, *rest]
        args = cli.parse_args()
    finally:
        sys.argv = saved_argv
    if getattr(args, "command", None) != "run":
        cli.execute(args)
        return 0
    offline_only = _prepare_run(args, ours)
    from recurrent_lm.evaluation.harness import keep_models
    from recurrent_lm.evaluation.sweep import record_settings

    started = time.time()
    with _offline_task_manager(offline_only), keep_models() as models:
        try:
            cli.execute(args)
        except ValueError as err:
            if str(err).startswith("Tasks not found"):
                raise EvalError(f"{err}; `{PROG} ls tasks` lists lm-eval's tasks, `{PROG} prepare` the offline "
                                "ones (rlm_*)") from None
            raise
        if models and getattr(args, "output_path", None):  # steps and exit settings, so `aggregate` takes it
            record_settings(args.output_path, started, models[-1])
    return 0


def _prepare_run(args: argparse.Namespace, ours: argparse.Namespace) -> bool:
    """Adjust a parsed `run` namespace in place; returns True when every task is an offline one."""
    from recurrent_lm.evaluation.harness import MODEL_NAME
    from recurrent_lm.evaluation.tasks import prepare_tasks, requested_offline

    if not getattr(args, "model", None):
        args.model = MODEL_NAME
    if args.model == MODEL_NAME:
        model_args = args.model_args if isinstance(args.model_args, dict) else {}
        # lm-eval passes --batch_size/--device to the model as separate keywords, so the same key in
        # --model_args would collide: hoist them into the flags unless the flags were given.
        for key in ("batch_size", "max_batch_size", "device"):
            if key in model_args:
                value = model_args.pop(key)
                if getattr(args, key, None) in (None, argparse.SUPPRESS):
                    setattr(args, key, str(value) if key == "batch_size" else value)
        if getattr(args, "device", None) is None:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        args.model_args = model_args
    tasks = _split(args.tasks)
    if not tasks:
        return False
    offline, other = requested_offline(tasks)
    if offline:
        from recurrent_lm.evaluation.tasks import Sources

        include = str(prepare_tasks(offline, cache_dir=ours.eval_cache,
                                    sources=Sources(ours.prontoqa_dir, ours.ppl_source)))
        args.include_path = [args.include_path, include] if args.include_path else include
    return bool(offline) and not other


@contextlib.contextmanager
def _offline_task_manager(offline_only: bool) -> Iterator[None]:
    """When only offline tasks run, index just the include paths (skip lm-eval's ~25 s built-in scan)."""
    if not offline_only:
        yield
        return
    import lm_eval.tasks as lm_tasks

    original = lm_tasks.TaskManager

    class OfflineTaskManager(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["include_defaults"] = False
            super().__init__(*args, **kwargs)

    lm_tasks.TaskManager = OfflineTaskManager
    try:
        yield
    finally:
        lm_tasks.TaskManager = original


# ---------------------------------------------------------------------- sweep / aggregate / prepare
def _sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} sweep",
        description="Evaluate one model at several test-time depths (one lm-eval run per depth, model loaded "
                    "once), then write sweep.csv, sweep.md and plots.")
    parser.add_argument("--model_args", "-a", required=True, nargs="+", metavar="<arg>",
                        help="recurrent_lm model args, 'pretrained=DIR,exit=kl,threshold=5e-4' or key=val key=val")
    parser.add_argument("--num_steps", "-r", required=True, metavar="<r,r,...>",
                        help="comma-separated depths, e.g. 1,2,4,8,16,32,64")
    parser.add_argument("--tasks", "-t", required=True, nargs="+", metavar="<task>",
                        help="task names (comma or space separated); rlm_offline = every offline task")
    parser.add_argument("--output_dir", "-o", required=True, metavar="<dir>")
    parser.add_argument("--limit", "-L", type=float, default=None, help="examples per task (testing only)")
    parser.add_argument("--num_fewshot", "-f", type=int, default=None)
    parser.add_argument("--batch_size", "-b", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--gen_kwargs", default=None, help="e.g. temperature=0,max_gen_toks=64")
    parser.add_argument("--include_path", default=None, help="additional directory of task YAMLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_samples", action="store_true", help="also write samples_r<depth>.jsonl")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG plots")
    _source_options(parser)
    args = parser.parse_args(argv)
    from lm_eval.utils import setup_logging, simple_parse_args_string

    from recurrent_lm.evaluation.sweep import run_sweep

    setup_logging()
    model_args: dict[str, Any] = {}
    for chunk in args.model_args:
        model_args.update(simple_parse_args_string(chunk))
    for key in ("batch_size", "device"):
        if getattr(args, key) is not None:
            model_args[key] = getattr(args, key)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    written = run_sweep(model_args, args.num_steps, _split(args.tasks), args.output_dir,
                        include_path=args.include_path, cache_dir=args.eval_cache, sources=_sources(args),
                        limit=limit, num_fewshot=args.num_fewshot, gen_kwargs=args.gen_kwargs, seed=args.seed,
                        log_samples=args.log_samples, plot=not args.no_plot)
    print("\n".join(str(p) for p in written))
    print(f"aggregate: {args.output_dir}/sweep.csv, sweep.md" + ("" if args.no_plot else ", sweep_depth.png"))
    return 0


def _aggregate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} aggregate",
                                     description="Collect sweep result JSONs into sweep.csv, sweep.md and plots.")
    parser.add_argument("paths", nargs="+", help="sweep output directories or results_r<depth>.json files")
    parser.add_argument("--output_dir", "-o", default=None, help="default: the first directory given")
    parser.add_argument("--no_plot", action="store_true")
    args = parser.parse_args(argv)
    from pathlib import Path

    from recurrent_lm.evaluation.sweep import aggregate

    first = Path(args.paths[0])
    out = args.output_dir or (first if first.is_dir() else first.parent)
    for kind, path in aggregate(args.paths, out, plot=not args.no_plot).items():
        print(f"{kind}: {path}")
    return 0


def _prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} prepare",
        description="Write the offline tasks' data and render their YAMLs with absolute paths; prints the "
                    "directory to pass to `lm_eval --include_path` (with `--model recurrent_lm` after importing "
                    "recurrent_lm.evaluation.harness).")
    parser.add_argument("--tasks", "-t", nargs="+", default=["rlm_offline"], metavar="<task>")
    _source_options(parser)
    args = parser.parse_args(argv)
    from recurrent_lm.evaluation.tasks import prepare_tasks

    print(prepare_tasks(_split(args.tasks), cache_dir=args.eval_cache, sources=_sources(args)))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
