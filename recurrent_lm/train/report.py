"""The end-of-run report: validation loss by test-time depth, the export path, a generated sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from recurrent_lm.train.schema import TrainConfig


def depth_table(val: dict[str, float], mean_recurrence: int) -> Table:
    depths = sorted(int(k.removeprefix("val/loss_r")) for k in val if k.startswith("val/loss_r"))
    table = Table(title="validation loss by test-time depth r")
    table.add_column("r", justify="right")
    table.add_column("val loss", justify="right")
    table.add_column("", justify="left")
    for r in depths:
        note = "← training mean" if r == mean_recurrence else ("beyond training mean" if r > mean_recurrence else "")
        table.add_row(str(r), f"{val[f'val/loss_r{r}']:.4f}", note)
    return table


def depth_losses(val: dict[str, float]) -> dict[int, float]:
    """{r: validation loss} from the ``val/loss_r{r}`` metrics."""
    return {int(k.removeprefix("val/loss_r")): float(v) for k, v in val.items() if k.startswith("val/loss_r")}


PREFERRED_EXIT = "causal_convergence"
"""The exit the reasoning figure marks when the task ran it: the rule that gives longer inputs more depth."""


def write_figures(cfg: TrainConfig, summary: dict[str, Any]) -> list[Path]:
    """The run's pictures (train/figures.py) in its run directory; their paths also go to summary['figures']."""
    from recurrent_lm.train.figures import LOSS_FIGURE, REASONING_FIGURE, plot_depth_loss, plot_reasoning_depth

    run_dir, figures = Path(summary["run_dir"]), []
    losses = depth_losses(summary["val"])
    if len(losses) > 1:
        figures.append(plot_depth_loss(losses, cfg.model.mean_recurrence, run_dir / LOSS_FIGURE,
                                       title=f"{cfg.name}: validation loss by test-time depth"))
    report = summary.get("reasoning")
    if report is not None and report.depths:
        names = [e.name for e in report.exits]
        figures.append(plot_reasoning_depth(report, run_dir / REASONING_FIGURE,
                                            exit_name=PREFERRED_EXIT if PREFERRED_EXIT in names else None,
                                            train_max=cfg.task.train_max if cfg.task is not None else None))
    summary["figures"] = figures
    return figures


def next_steps(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """What to try after a run, with the paths it just wrote: generate, evaluate, sweep, read on."""
    lines = []
    for s in summaries:
        export = s.get("export")
        if export is None:
            continue
        if "coconut_eval" in s:
            lines.append(f"recurrent-lm-coconut-eval --model coconut={export} --data <records.json>   # evaluate again")
            continue
        if s.get("reasoning") is not None:
            r = s["reasoning"]
            longer = [2 * max(r.difficulties), 4 * max(r.difficulties)]
            lines.append(f"recurrent-lm-reasoning-eval --model {export} --difficulties {longer[0]} {longer[1]} "
                         f"--depths {' '.join(str(2 * d) for d in r.depths[-3:])} "
                         f"--block-size {2 * longer[1] + 16}   # longer inputs, deeper")
        else:
            lines.append(f'recurrent-lm-generate {export} "**ROMEO**" --temperature 0.8 --top-k 40 '
                         "--exit convergence   # sample, adaptive depth per token")
            lines.append(f"recurrent-lm-eval sweep --model_args pretrained={export} --num_steps 1,2,4,8,16 "
                         "--tasks rlm_offline --output_dir out/sweep   # lm-eval by depth")
            lines.append("recurrent-lm-train -m experiment=demo model.mean_recurrence=2,4,8   # a depth sweep")
    lines.append("docs: README.md, docs/training.md, docs/inference.md, docs/evaluation.md")
    return lines


def print_next_steps(summaries: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    console.rule("next steps")
    for line in next_steps(summaries):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_report(cfg: TrainConfig, summary: dict[str, Any]) -> None:
    console = Console()
    if any(k.startswith("val/loss_r") for k in summary["val"]):
        console.print(depth_table(summary["val"], cfg.model.mean_recurrence))
    console.print(f"steps trained: {summary['step']}   run dir: {summary['run_dir']}")
    if "export" in summary:
        console.print(f"exported model: [bold]{summary['export']}[/bold]")
    if "coconut_eval" in summary:
        e = summary["coconut_eval"]
        console.print(f"coconut ({e['method']}): exact match {100 * e['accuracy']:.1f}% on {e['examples']} records of "
                      f"{e['file']}; {e['mean_tokens']:.1f} generated tokens ({e['mean_thoughts']:.1f} thoughts) per "
                      f"answer; written to {summary['run_dir'] / 'coconut_eval.json'}", markup=False)
    if "reasoning" in summary:
        console.rule(f"{summary['reasoning'].task}: exact match by difficulty × test-time depth")
        console.print(summary["reasoning"].to_markdown(), markup=False, soft_wrap=True)
        console.print(f"written to {summary['run_dir'] / 'reasoning_eval.md'} (.csv, .json)")
    for figure in write_figures(cfg, summary):
        console.print(f"figure: [bold]{figure}[/bold]")
    tokenizer = summary.get("tokenizer")
    if tokenizer is not None and cfg.sample_tokens > 0:
        from recurrent_lm.infer import GenerationConfig, generate

        model = summary["model"].float().eval()
        prompt = tokenizer.encode(cfg.sample_prompt)
        settings = GenerationConfig(max_new_tokens=cfg.sample_tokens, seed=cfg.seed, num_steps=cfg.model.mean_recurrence,
                                    temperature=cfg.sample_temperature, top_k=cfg.sample_top_k)
        result = generate(model, [prompt], settings, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        console.rule(f"sample (r = {settings.num_steps}, temperature {settings.temperature}, top-k {settings.top_k}, "
                     f"seed {settings.seed})")
        console.print(cfg.sample_prompt + tokenizer.decode(result.tokens[0]), markup=False, highlight=False)
