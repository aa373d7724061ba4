"""``make demo`` / ``recurrent-lm-demo``: the main job, in two parts that show what recurrence buys.

1. **Text** (``experiment=demo``): a language model whose validation loss falls with test-time depth,
   trained in minutes on the embedded Shakespeare corpus; table and ``depth_loss.png`` in ``runs/demo``.
2. **Reasoning** (``experiment=demo_reasoning``): prefix parity trained on short inputs with a few iterations,
   solved on 4× longer ones by iterating longer, and the depth an exit chose; table and ``reasoning_depth.png``
   in ``runs/demo_reasoning``.

Each part is an ordinary ``recurrent-lm-train`` run (same config tree, run directory, resume and report); this
module only runs them one after the other and closes with both pictures and what to try next. Overrides go to
one part with a prefix, to both without::

    recurrent-lm-demo text.trainer.max_steps=50 reasoning.trainer.max_steps=200 trainer.enable_progress_bar=false
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, Sequence

from rich.console import Console

if TYPE_CHECKING:
    from recurrent_lm.train.report import RunSummary

PARTS = {"text": "demo", "reasoning": "demo_reasoning"}
"""Part name (the override prefix) -> its experiment config, run in this order."""


def split_overrides(args: Sequence[str]) -> dict[str, list[str]]:
    """``text.x=1`` -> the text part's ``x=1``; ``reasoning.x=1`` -> the reasoning part's; ``x=1`` -> both."""
    routed: dict[str, list[str]] = {part: [] for part in PARTS}
    for arg in args:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r} is not an override; give key=value, optionally prefixed with "
                             f"one of {[p + '.' for p in PARTS]} to apply it to that part only")
        part, _, rest = arg.partition(".")
        targets = [part] if part in PARTS and "=" in rest else list(PARTS)
        for target in targets:
            routed[target].append(rest if target == part else arg)
    return routed


def run_demo(args: Sequence[str] = ()) -> dict[str, RunSummary]:
    """Run both parts (rank 0 prints everything) and return each part's run summary."""
    from recurrent_lm.train.cli import compose_config, run

    console = Console()
    routed = split_overrides(args)
    summaries: dict[str, RunSummary] = {}
    for i, (part, experiment) in enumerate(PARTS.items(), start=1):
        console.rule(f"[bold]demo part {i}/{len(PARTS)}: {part}[/bold] (experiment={experiment})")
        summaries[part] = run(compose_config([f"experiment={experiment}", *routed[part]]))
    print_closing(summaries, console)
    return summaries


def print_closing(summaries: dict[str, RunSummary], console: Optional[Console] = None) -> None:
    """The last lines of the demo: both pictures, then what to do next."""
    from recurrent_lm.train.report import print_next_steps

    console = console or Console()
    console.rule("[bold]demo done[/bold]")
    for part, summary in summaries.items():
        for figure in summary.figures:
            console.print(f"{part} figure: [bold]{figure}[/bold]")
    print_next_steps(list(summaries.values()), console)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from recurrent_lm.errors import report_user_errors
    from recurrent_lm.quiet import quiet_libraries

    quiet_libraries()
    def demo() -> None:
        run_demo(sys.argv[1:] if argv is None else argv)

    status = report_user_errors("recurrent-lm-demo", demo)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
