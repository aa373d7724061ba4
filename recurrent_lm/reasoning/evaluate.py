"""Accuracy by difficulty × test-time depth, and the depth an exit criterion chooses per difficulty.

Library use::

    report = evaluate(model, task)            # a ReasoningReport
    print(report.to_markdown())

CLI (a model directory from ``save_pretrained`` / ``recurrent-lm-export``; the task is read from
``task.json`` in that directory unless given)::

    recurrent-lm-reasoning-eval --model runs/reasoning_parity/export \
        --difficulties 16 32 64 --depths 8 16 32 64 --out evals/reasoning/results/parity.md

Exact match: an example counts as solved only if the argmax at *every* supervised position equals
its label (for parity with answer='all', every prefix parity must be right).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from recurrent_lm.errors import ConfigError, MissingFileError, report_user_errors
from recurrent_lm.loop import CRITERIA, ExitSpec, resolve_depth
from recurrent_lm.reasoning.config import TaskConfig, sequence_length
from recurrent_lm.model.lm import IGNORE_INDEX
from recurrent_lm.reasoning.tasks import TEST_SPLIT, collate, fixed_examples

TASK_FILE = "task.json"


@dataclass
class ExitResult:
    """What one exit criterion chose, per difficulty."""

    name: str
    threshold: float
    max_steps: int
    """The depth cap of the exit runs."""
    mean_steps: dict[int, float] = field(default_factory=dict)
    """difficulty -> mean core iterations the answer tokens got."""
    deepest_steps: dict[int, float] = field(default_factory=dict)
    """difficulty -> mean over examples of the most iterations any of its answer tokens got."""
    accuracy: dict[int, float] = field(default_factory=dict)
    """difficulty -> exact match when each token stops where the criterion says."""


@dataclass
class ReasoningReport:
    task: str
    difficulties: list[int]
    depths: list[int]
    accuracy: dict[tuple[int, int], float]
    """(difficulty, depth) -> exact-match accuracy in [0, 1]."""
    token_accuracy: dict[tuple[int, int], float]
    """(difficulty, depth) -> per-answer-token accuracy in [0, 1]."""
    exits: list[ExitResult] = field(default_factory=list)
    num_examples: int = 0

    # -------------------------------------------------------------------------------- output
    def rows(self) -> list[dict]:
        """One row per difficulty: acc@r for each depth, then each exit's steps and accuracy (for CSV)."""
        out = []
        for d in self.difficulties:
            row: dict = {"difficulty": d}
            for r in self.depths:
                row[f"acc@{r}"] = round(100 * self.accuracy[(d, r)], 2)
            for e in self.exits:
                row[f"{e.name}_mean_steps"] = round(e.mean_steps[d], 2)
                row[f"{e.name}_deepest_steps"] = round(e.deepest_steps[d], 2)
                row[f"{e.name}_acc"] = round(100 * e.accuracy[d], 2)
            out.append(row)
        return out

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Exact-match % by difficulty (rows) × test-time depth (columns), then per exit criterion the
        steps it chose (mean over answer tokens / mean of each example's deepest token) and its accuracy."""
        head = ["difficulty"] + [f"r={r}" for r in self.depths]
        for e in self.exits:
            head += [f"{e.name}: steps (mean / deepest)", "acc"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in self.difficulties:
            cells = [str(d)] + [f"{100 * self.accuracy[(d, r)]:.1f}" for r in self.depths]
            for e in self.exits:
                cells += [f"{e.mean_steps[d]:.1f} / {e.deepest_steps[d]:.1f}", f"{100 * e.accuracy[d]:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        note = (f"\nExact match (%) over {self.num_examples} test examples per difficulty ({self.task}); "
                "r = test-time core iterations.")
        if self.exits:
            settings = ", ".join(f"`{e.name}` {e.threshold:g} (cap {e.max_steps})" for e in self.exits)
            note += (f" Exits ({settings}; cap = most iterations a token may use): steps over answer tokens; "
                     "acc = exact match with each token stopped where its criterion says.")
        return "\n".join(lines) + "\n" + note + "\n"

    def to_dict(self) -> dict:
        return {
            "task": self.task, "difficulties": self.difficulties, "depths": self.depths,
            "accuracy": {f"{d}@{r}": v for (d, r), v in self.accuracy.items()},
            "token_accuracy": {f"{d}@{r}": v for (d, r), v in self.token_accuracy.items()},
            "exits": [asdict(e) for e in self.exits],
            "num_examples": self.num_examples,
        }


# ------------------------------------------------------------------------------------ evaluation
def _score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example exact match (B,) bool, per-token correct over answer positions (N,) bool)."""
    mask = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) | ~mask  # (B, T)
    return correct.all(-1), correct[mask]


@torch.no_grad()
def depth_sweep(model: torch.nn.Module, input_ids: torch.Tensor,
                depths: Sequence[int]) -> list[tuple[int, torch.Tensor]]:
    """(r, logits at depth r) for each r in sorted ``depths``, read out of ONE unroll of the core
    (the model's ``readout_depths``): one initial-state draw shared by all depths, at the cost of the
    deepest run alone."""
    wanted = sorted(set(depths))
    out = model(input_ids, num_steps=wanted[-1], readout_depths=wanted)
    return list(out.depth_logits.items())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: TaskConfig,
    *,
    difficulties: Optional[Sequence[int]] = None,
    depths: Optional[Sequence[int]] = None,
    num_examples: Optional[int] = None,
    batch_size: int = 256,
    seed: int = 0,
    device: Optional[torch.device | str] = None,
) -> ReasoningReport:
    """Exact match per (difficulty, depth) on the task's test split, plus the depth and accuracy of each exit criterion.

    Defaults come from ``task`` (eval_difficulties, eval_depths, num_eval); the exits it reports are the
    task's too (``task.exits``, each capped at its max_steps, else the largest depth). ``seed`` seeds the model's
    random initial state so that repeated evaluations agree.
    """
    # Overrides go through TaskConfig's own checks: --difficulties 0 fails like task.eval_difficulties=[0].
    task = replace(task, eval_difficulties=list(difficulties or task.eval_difficulties),
                               eval_depths=list(depths or task.eval_depths), num_eval=num_examples or task.num_eval)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    difficulties, depths, count = task.eval_difficulties, task.eval_depths, task.num_eval
    specs = task.exits
    caps = [resolve_depth(None, max(depths), spec) for spec in specs]
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block is not None:
        too_long = [d for d in difficulties if sequence_length(task, d) > block]
        if too_long:
            raise ConfigError(f"difficulties {too_long} need up to {sequence_length(task, max(too_long))} tokens but "
                             f"the model's block_size is {block}; train with a larger block_size")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    report = ReasoningReport(task=task.name, difficulties=difficulties, depths=depths, accuracy={},
                             token_accuracy={},
                             exits=[ExitResult(spec.criterion, spec.threshold, cap) for spec, cap in zip(specs, caps)],
                             num_examples=count)
    try:
        for d in difficulties:
            examples = fixed_examples(task, TEST_SPLIT, d, count)
            batches = [collate(examples[i:i + batch_size]) for i in range(0, count, batch_size)]
            exact: dict[int, list] = {r: [] for r in depths}
            tokens: dict[int, list] = {r: [] for r in depths}
            for batch in batches:
                for r, logits in depth_sweep(model, batch["input_ids"].to(device), depths):
                    e, t = _score(logits.cpu(), batch["labels"])
                    exact[r].append(e)
                    tokens[r].append(t)
            for r in depths:
                report.accuracy[(d, r)] = torch.cat(exact[r]).float().mean().item()
                report.token_accuracy[(d, r)] = torch.cat(tokens[r]).float().mean().item()
            for spec, result in zip(specs, report.exits):
                cap = result.max_steps
                exact, steps, deepest = [], [], []
                for batch in batches:
                    labels = batch["labels"]
                    mask = labels != IGNORE_INDEX  # (B, T): the answer tokens must be still
                    criterion = spec.build(watch=mask.to(device))
                    out = model(batch["input_ids"].to(device), num_steps=cap, exit_criterion=criterion)
                    exact.append(_score(out.logits.cpu(), labels)[0])
                    used = out.steps_used.cpu()  # (B, T)
                    steps.append(used[mask].float())
                    deepest.append(used.masked_fill(~mask, 0).amax(-1).float())
                result.mean_steps[d] = torch.cat(steps).mean().item()
                result.deepest_steps[d] = torch.cat(deepest).mean().item()
                result.accuracy[d] = torch.cat(exact).float().mean().item()
    finally:
        torch.random.set_rng_state(gen_state)
        model.train(was_training)
    return report


# ------------------------------------------------------------------------------------ model dirs
def save_task(task: TaskConfig, directory: str | Path) -> Path:
    from recurrent_lm.model.io import atomic_write

    path = Path(directory) / TASK_FILE
    text = json.dumps(task.to_dict(), indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def save_report(report: ReasoningReport, path: str | Path) -> None:
    """The Markdown table at ``path``, with .csv and .json beside it (each written atomically)."""
    from recurrent_lm.model.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((path.suffix, report.to_markdown()), (".csv", report.to_csv()),
                         (".json", json.dumps(report.to_dict(), indent=2))):
        atomic_write(path.with_suffix(suffix), lambda tmp, text=text: Path(tmp).write_text(text))


def load_task(directory: str | Path) -> TaskConfig:
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found: pass --task parity|reachability (and the difficulty options) "
                                "or save the training task next to the model with save_task()")
    data = json.loads(path.read_text())
    # Exports made before the exit settings had one name each: exit_threshold, exit_max_steps (0 = no cap);
    # TaskConfig.from_dict turns the shared settings into one spec per criterion.
    if "exit_threshold" in data:
        data["threshold"] = data.pop("exit_threshold")
    if "exit_max_steps" in data:
        data["max_steps"] = data.pop("exit_max_steps") or None
    return TaskConfig.from_dict(data)


def exit_overrides(args: argparse.Namespace, task: TaskConfig) -> dict[str, Any]:
    """``task.exits`` as the flags set them: ``--exit NAME[=THRESHOLD] ...`` replaces the list
    (:meth:`ExitSpec.from_text`), ``--min-steps`` / ``--max-steps`` set the bounds of every exit."""
    if args.threshold is not None:
        raise ConfigError("--threshold is gone: each exit has its own threshold; write it after the criterion, "
                          "e.g. --exit convergence=0.03 learned=0.9")
    bounds = {k: getattr(args, k) for k in ("min_steps", "max_steps") if getattr(args, k) is not None}
    if args.exits is not None:
        return {"exits": [ExitSpec.from_text(text, **bounds) for text in args.exits]}
    if bounds:
        return {"exits": [ExitSpec.parse(spec.criterion, spec.threshold, bounds.get("min_steps", spec.min_steps),
                                         bounds.get("max_steps", spec.max_steps)) for spec in task.exits]}
    return {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recurrent-lm-reasoning-eval",
        description="Exact match of a looped model on a reasoning task by difficulty x test-time depth, "
                    "and the depth the exit criterion chooses per difficulty.")
    parser.add_argument("--model", required=True, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--task", choices=["parity", "reachability"],
                        help="task name; default: task.json in the model directory")
    parser.add_argument("--difficulties", type=int, nargs="+", help="default: the task's eval_difficulties")
    parser.add_argument("--depths", type=int, nargs="+", help="default: the task's eval_depths")
    parser.add_argument("--num-examples", type=int, help="test examples per difficulty (default: task.num_eval)")
    parser.add_argument("--exit", dest="exits", nargs="*", metavar="NAME[=THRESHOLD]",
                        help="exits to report, each with its own threshold (e.g. convergence=0.03 kl=5e-4 learned=0.9; "
                             f"a bare name takes the criterion's default; criteria: {', '.join(CRITERIA)}); none "
                             "given = no exit columns; default: the task's exits")
    # Exit settings stay text for ExitSpec (the messages of every entry point); unset = the task's.
    parser.add_argument("--threshold", help=argparse.SUPPRESS)  # refused by name: thresholds go with --exit
    parser.add_argument("--min-steps", help="iterations before a criterion may stop a token, for every exit "
                                            "(default: each exit's own)")
    parser.add_argument("--max-steps", help="depth cap of every exit's runs ('none': the largest depth; default: "
                                            "each exit's own)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initial state")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--block-size", type=int,
                        help="extend the model's context (RoPE tables) to test longer inputs than it was built for")
    parser.add_argument("--out", help="write the Markdown table here (and .csv / .json beside it)")
    args = parser.parse_args(argv)

    from recurrent_lm.model import RecurrentDepthLM

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"block_size": args.block_size} if args.block_size else {}
    def run() -> None:  # bad input (task.json, exit flags, model dir, difficulties): one line, exit status 2
        task = TaskConfig(name=args.task) if args.task else load_task(args.model)
        task = replace(task, **exit_overrides(args, task))
        model = RecurrentDepthLM.from_pretrained(args.model, **overrides)
        report = evaluate(model, task, difficulties=args.difficulties, depths=args.depths,
                          num_examples=args.num_examples, batch_size=args.batch_size, seed=args.seed)
        print(report.to_markdown())
        if args.out:
            save_report(report, args.out)

    return report_user_errors("recurrent-lm-reasoning-eval", run)


if __name__ == "__main__":
    raise SystemExit(main())
