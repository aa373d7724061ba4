"""The end-of-run report: validation loss by test-time depth, the export path, a generated sample."""

from __future__ import annotations

from typing import Any

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
    tokenizer = summary.get("tokenizer")
    if tokenizer is not None and cfg.sample_tokens > 0:
        from recurrent_lm.infer import GenerationConfig, generate

        model = summary["model"].float().eval()
        prompt = tokenizer.encode(cfg.sample_prompt)
        result = generate(model, [prompt], GenerationConfig(max_new_tokens=cfg.sample_tokens, seed=cfg.seed,
                                                            num_steps=cfg.model.mean_recurrence),
                          eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        console.rule("sample")
        console.print(cfg.sample_prompt + tokenizer.decode(result.tokens[0]), markup=False, highlight=False)
