"""recurrent-lm-sweep: the collector on a real 2×2 multirun (one job killed and resumed, one failed run, two
model sizes), the iso-FLOP interpolation and fits against synthetic curves with a known optimum and exponent,
and the report's PNGs read back."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from train_support import launch, overrides

from recurrent_lm.sweep.cli import main as sweep_main
from recurrent_lm.sweep.collect import Run, ValPoint, collect, find_run_dirs
from recurrent_lm.sweep.flops import model_config, sampler_config, step_flops, steps_for_budget
from recurrent_lm.sweep.isoflop import fit_power_law, fit_slice, interpolate_log_flops, iso_slices
from recurrent_lm.sweep.table import differing_keys, swept_overrides

# ---------------------------------------------------------------------------------------------- synthetic
ALPHA, A = 0.4, 2.0 / 1e10**0.4  # r*(C) = A·C^0.4: 2 at 1e10, ≈ 31.7 at 1e13
BUDGETS = [1e10, 1e11, 1e12, 1e13]
DEPTHS = [1, 2, 4, 8, 16, 32, 64]


def true_loss(r: float, budget: float) -> float:
    """A parabola in ln r around the known optimum, lower at larger budgets."""
    return 3.0 - 0.1 * math.log10(budget) + 0.05 * (math.log(r) - math.log(A * budget**ALPHA)) ** 2


def synthetic_run(r: float, budget: float) -> Run:
    """A run trained for ``budget`` whose curve is linear in ln FLOPs and passes through true_loss at the
    budget, logged at FLOPs that bracket the budget without hitting it (so the slice must interpolate)."""
    flops = [budget * f for f in (0.3, 0.55, 0.9, 1.04)]
    curve = [ValPoint(i, f, {int(r): true_loss(r, budget) - 0.2 * math.log(f / budget)}) for i, f in enumerate(flops)]
    return Run(Path(f"r{r}-c{budget:g}"), {"flop_budget": budget}, "finished", mean_recurrence=float(r),
               curve=curve)


def test_interpolation_recovers_the_curve_and_never_extrapolates():
    flops, loss = [1e10, 1e11, 1e12], [5.0, 4.0, 3.5]
    assert interpolate_log_flops(flops, loss, 10**10.5) == pytest.approx(4.5)
    assert interpolate_log_flops(flops, loss, 1e12) == pytest.approx(3.5)
    assert interpolate_log_flops(flops, loss, 2e12) is None
    assert interpolate_log_flops(flops, loss, 1.01e12, tolerance=0.02) == pytest.approx(3.5)


def test_iso_slices_and_fits_recover_the_known_optimum_and_exponent():
    runs = [synthetic_run(r, c) for c in BUDGETS for r in DEPTHS]
    slices = iso_slices(runs, BUDGETS, depth="train")
    for fit in slices:
        assert fit.losses == pytest.approx([true_loss(r, fit.budget) for r in DEPTHS], abs=1e-12)
        assert fit.optimum == pytest.approx(A * fit.budget**ALPHA, rel=1e-9)
        assert fit.log_sigma == pytest.approx(0.0, abs=1e-6)
    law = fit_power_law(slices)
    assert law.alpha == pytest.approx(ALPHA, abs=1e-9)
    assert law.alpha_sigma == pytest.approx(0.0, abs=1e-9)
    assert law.predict(1e11) == pytest.approx(A * 1e11**ALPHA, rel=1e-9)


def test_noisy_slices_give_an_exponent_within_its_uncertainty():
    rng = np.random.default_rng(0)
    budgets = np.geomspace(1e10, 1e13, 6)
    slices = [fit_slice(c, DEPTHS, [true_loss(r, c) + rng.normal(0, 0.004) for r in DEPTHS]) for c in budgets]
    assert all(s.optimum is not None and s.log_sigma > 0 for s in slices)
    law = fit_power_law(slices)
    assert 0 < law.alpha_sigma < 0.1
    assert abs(law.alpha - ALPHA) < 3 * law.alpha_sigma


def test_fits_say_when_the_data_cannot_support_them():
    edge = fit_slice(1e12, [1, 2, 4, 8], [3.0, 3.1, 3.3, 3.6])  # monotone: the optimum is below r̄ = 1
    assert edge.optimum is None and "edge" in edge.reason and "below the smallest" in edge.reason
    assert "needs 3" in fit_slice(1e12, [2, 4], [3.0, 2.9]).reason
    concave = fit_slice(1e12, [1, 2, 4], [3.0, 3.5, 3.0])
    assert concave.optimum is None and "no minimum" in concave.reason
    three = fit_slice(1e12, [1, 2, 4], [3.1, 3.0, 3.2])
    assert three.optimum is not None and three.log_sigma is None and "no uncertainty" in three.reason
    two = fit_power_law([fit_slice(c, DEPTHS, [true_loss(r, c) for r in DEPTHS]) for c in BUDGETS[:2]])
    assert two.alpha == pytest.approx(ALPHA) and two.alpha_sigma is None and "no uncertainty" in two.reason
    none = fit_power_law([edge, concave])
    assert none.alpha is None and "2 refused" in none.reason
    kept = fit_slice(1e12, [1, 2, 4, 8], [3.0, 3.1, 3.3, 3.6], extrapolate=True)  # the trend, marked as such
    assert kept.extrapolated and kept.optimum < 1 and "edge" in kept.reason


def test_steps_for_budget_reach_the_budget_with_the_fewest_steps(tiny_config):
    model = tiny_config()
    sampler = sampler_config({"name": "poisson_lognormal", "mean": 4, "backprop_depth": 2, "seed": 3})
    steps = steps_for_budget(model, sampler, 5e10, tokens=512)
    total = np.cumsum(step_flops(model, sampler, steps, 512))
    assert total[-1] >= 5e10 > total[-2]
    assert model_config({**model.to_dict(), "unknown_future_key": 1}) == model
    with pytest.raises(ValueError, match="flop_budget"):
        steps_for_budget(model, sampler, 0.0, tokens=512)


def test_isoflop_experiment_derives_steps_from_the_budget():
    from train_support import compose_cfg

    def composed(r_bar: int):
        cfg = compose_cfg(["experiment=isoflop", "flop_budget=5e10", f"model.mean_recurrence={r_bar}"])
        return cfg, model_config(cfg.model), sampler_config(cfg.sampler)

    cfg, model, sampler = composed(2)
    tokens = cfg.trainer.micro_batch_size * model.block_size
    assert cfg.trainer.max_steps == steps_for_budget(model, sampler, 5e10, tokens) > 0
    assert cfg.trainer.val_check_interval == -(-cfg.trainer.max_steps // 3)
    deeper, model8, sampler8 = composed(8)
    assert deeper.trainer.max_steps < cfg.trainer.max_steps  # same FLOPs, deeper steps: fewer of them
    flops8 = step_flops(model8, sampler8, deeper.trainer.max_steps, tokens).sum()
    assert 5e10 <= flops8 < 5e10 + step_flops(model8, sampler8, deeper.trainer.max_steps, tokens).max()


# ---------------------------------------------------------------------------------------------- real runs
SWEEP = {"trainer.max_steps": 8, "trainer.checkpoint_every_n_steps": 4, "trainer.val_check_interval": 3,
         "trainer.eval_depths": "[1,2]", "sample_tokens": 0, "export": False}


@pytest.fixture(scope="module")
def sweep_dir(corpus_dir, tmp_path_factory) -> Path:
    """A 2×2 multirun (r̄ ∈ {2, 3} × d_model ∈ {32, 64}) whose first job is SIGKILLed at step 6 and resumed by
    re-running the sweep, plus a run that fails with a non-finite loss, in the same directory."""
    root = tmp_path_factory.mktemp("sweep") / "isoflop"
    base = [a for a in overrides(corpus_dir, root / "unused", **SWEEP) if not a.startswith("run_dir=")]
    # experiment=isoflop for its end-of-sweep report (the overrides below replace its budget-derived steps).
    grid = ["experiment=isoflop", "model.mean_recurrence=2,3", "model.d_model=32,64", f"hydra.sweep.dir={root}"]
    killed = launch(["-m"] + base + grid, fault="step:6")
    assert killed.returncode == -9, killed.stdout[-3000:]
    resumed = launch(["-m"] + base + grid)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from" in resumed.stdout
    assert len(list(csv.DictReader(open(root / "report" / "sweep.csv")))) == 4  # the multirun ended with its report
    failed = launch(base + ["experiment=isoflop", f"run_dir={root / 'failed'}", "model.mean_recurrence=4"],
                    fault="nan_loss:2")
    assert failed.returncode == 2, failed.stdout[-3000:]
    return root


def test_collector_reads_a_resumed_a_failed_and_differently_sized_runs(sweep_dir):
    runs = {(r.config["model"]["mean_recurrence"], r.config["model"]["d_model"]): r for r in collect([sweep_dir])}
    assert len(find_run_dirs([sweep_dir])) == 5
    failed = runs.pop((4, 64))
    assert failed.status == "failed" and failed.steps < 8 and failed.note
    assert {r.status for r in runs.values()} == {"finished"}
    for (r_bar, d_model), run in runs.items():
        model, sampler = model_config(run.config["model"]), sampler_config(run.config["sampler"])
        assert run.steps == 8 and run.tokens == 8 * 4 * 64
        assert run.flops == pytest.approx(step_flops(model, sampler, 8, 4 * 64, 64).sum())
        assert [p.steps for p in run.curve] == [3, 6, 8]  # no validation twice, the post-fit one included
        assert sorted(run.final) == [1, 2] and all(math.isfinite(v) for v in run.final.values())
        assert run.best[1] == min(p.loss[1] for p in run.curve)
    assert runs[(2, 64)].params > runs[(2, 32)].params
    assert runs[(3, 32)].flops > runs[(2, 32)].flops  # deeper: more FLOPs for the same steps
    # The killed job (r̄ = 2, d_model = 32, job 0) trained in two sessions: its time adds both.
    resumed = runs[(2, 32)]
    times = [float(row["train/time"]) for row in csv.DictReader(open(resumed.path / "logs" / "metrics.csv"))
             if row.get("train/time")]
    assert any(b < a for a, b in zip(times, times[1:]))  # the monitor's clock restarted at the resume
    assert resumed.train_time_s > max(times)
    swept = swept_overrides([sweep_dir])
    assert swept == ["model.mean_recurrence", "model.d_model"]
    keys, aliases = differing_keys(list(runs.values()) + [failed], swept)
    assert keys == swept and "sampler.mean" in aliases[keys[0]]


def test_partial_sweep_lists_a_killed_job(corpus_dir, tmp_path):
    """Before its resume, a job killed mid-run is listed as killed with the step it resumes from."""
    run_dir = tmp_path / "run"
    result = launch(overrides(corpus_dir, run_dir, **SWEEP), fault="step:6")
    assert result.returncode == -9
    (run,) = collect([tmp_path])
    assert run.status == "killed" and "resumes from step 4" in run.note


def test_report_writes_tables_and_readable_plots(sweep_dir, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "report"
    assert sweep_main([str(sweep_dir), "--out", str(out), "--budgets", "2e9,4e9,8e9"]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 5 and [r["status"] for r in rows].count("failed") == 1
    assert [(r["model.mean_recurrence"], r["model.d_model"]) for r in rows][:4] == \
        [("2", "32"), ("2", "64"), ("3", "32"), ("3", "64")]  # sorted by the swept keys, numerically
    report = (out / "sweep.md").read_text()
    assert "## Unfinished runs" in report and "**failed**" in report and "power law" in report
    for name in ("loss_vs_flops.png", "isoflop.png", "loss_vs_depth.png"):
        image = imread(out / name)
        assert image.shape[0] >= 400 and image.shape[1] >= 600
        assert image[..., :3].std() > 0.05  # drawn, not blank
    before = (out / "sweep.csv").read_bytes()
    assert sweep_main([str(sweep_dir), "--out", str(out)]) == 2  # non-empty: refused without --overwrite
    assert (out / "sweep.csv").read_bytes() == before


def test_metrics_columns_sort_depths_numerically(tmp_path):
    from recurrent_lm.train.metrics_log import RunCSVLogger, read_rows

    logger = RunCSVLogger(tmp_path, start_step=0, flush_every_n_steps=1)
    logger.log_metrics({"val/loss_r16": 1.0, "val/loss_r2": 2.0, "val/loss_r1": 3.0, "epoch": 0}, step=0)
    logger.log_metrics({"val/loss_r4": 2.5, "val/loss_r8": 2.4, "train/loss": 4.0}, step=1)  # new columns: a rewrite
    header, rows = read_rows(tmp_path / "metrics.csv")
    assert header == ["step", "epoch", "train/loss", "val/loss_r1", "val/loss_r2", "val/loss_r4", "val/loss_r8",
                      "val/loss_r16"]
    assert rows[0]["val/loss_r16"] == "1.0" and rows[1]["val/loss_r8"] == "2.4"


def test_reasoning_accuracy_reaches_the_table(sweep_dir, tmp_path):
    """A run directory holding the reasoning evaluation (written as a task run writes it) gets its accuracy
    columns, difficulty by depth, in numeric order."""
    import shutil

    import torch

    from recurrent_lm.model import ModelConfig, RecurrentDepthLM
    from recurrent_lm.reasoning.config import TaskConfig
    from recurrent_lm.reasoning.evaluate import evaluate, save_report
    from recurrent_lm.reasoning.tasks import vocab_size
    from recurrent_lm.sweep.table import rows

    run_dir = tmp_path / "task_run"
    shutil.copytree(next(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file()), run_dir)
    task = TaskConfig(name="parity", train_max=4, eval_difficulties=[2, 10], eval_depths=[1, 2], num_eval=8,
                      exits=[])
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(vocab_size=vocab_size(task), block_size=32, d_model=32, n_heads=2,
                                         mlp_hidden=64, mean_recurrence=2)).eval()
    report = evaluate(model, task, batch_size=8)
    save_report(report, run_dir / "reasoning_eval.md")
    (run,) = collect([run_dir])
    assert run.accuracy == {f"d{d}@r{r}": v for (d, r), v in report.accuracy.items()}
    [row] = rows([run], [])
    assert [k for k in row if k.startswith("acc_")] == ["acc_d2@r1", "acc_d2@r2", "acc_d10@r1", "acc_d10@r2"]
