"""Nothing lost, nothing silent: exact resume under real SIGKILLs, logs that survive every restart,
a locked run directory, and non-finite values that stop the run instead of being saved.

Every training here is a real ``recurrent-lm-train`` process on the tiny model with the *default*
sampler (Poisson-lognormal depth) and the default random initial state; faults are real signals
delivered at deterministic points by tests/fault_inject.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from train_support import compose_cfg, launch, metric_rows, overrides, step_losses

from recurrent_lm.train.cli import run
from recurrent_lm.train.run_dir import LOCK_FILE, RunDirInUse

N_STEPS = 24
RESUME_ARGS = {"trainer.max_steps": N_STEPS, "trainer.checkpoint_every_n_steps": 8,
               "trainer.val_check_interval": 12, "sample_tokens": 0, "export": False}


@pytest.fixture(scope="module")
def straight(corpus_dir, tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = launch(overrides(corpus_dir, run_dir, **RESUME_ARGS))
    assert result.returncode == 0, result.stdout[-3000:]
    return run_dir


def test_resume_is_bit_exact_after_sigkill_at_three_points(straight, corpus_dir, tmp_path):
    """Killed right after step-8.ckpt (no last.ckpt yet), at the start of step 13, and halfway through a
    checkpoint write; each restart resumes from the newest complete checkpoint and says which. The
    per-step losses of the stitched run equal the uninterrupted run's bit for bit, with no step twice."""
    args = overrides(corpus_dir, tmp_path, **RESUME_ARGS)
    outputs = []
    for fault in ("after_save:1", "step:13", "in_save:2"):
        result = launch(args, fault=fault)
        assert result.returncode == -9, f"{fault}: the run was not killed\n{result.stdout[-3000:]}"
        outputs.append(result.stdout)
    final = launch(args)
    assert final.returncode == 0, final.stdout[-3000:]
    # 2nd session: step-8.ckpt was alone, and auto found it; 3rd: resumed from the step-8 checkpoint
    # again (step 13 came before step 16's save); the final one removes the killed write's temp file.
    assert "resuming from" in outputs[1] and "step-8.ckpt (step 8)" in outputs[1]
    assert "removed 1 partial write" in final.stdout and "resuming from" in final.stdout
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    a, b = step_losses(straight), step_losses(tmp_path)
    assert sorted(a) == sorted(b) == list(range(N_STEPS))
    assert a == b  # bit-exact: same data order, depths, s_0 noise, optimizer and schedule state
    val = [r for r in metric_rows(tmp_path) if r.get("val/loss_r4")]
    assert [r["step"] for r in val] == [r["step"] for r in metric_rows(straight) if r.get("val/loss_r4")]


def test_rerun_resume_and_refused_resume_keep_every_row(straight, corpus_dir, tmp_path):
    """A finished run re-run, a refused shape change and a refused resume=none leave metrics.csv and
    config.yaml as they were; overwrite=true is the one way to start over."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    args = overrides(corpus_dir, run_dir, **RESUME_ARGS)
    before = metric_rows(run_dir)
    run(compose_cfg(args))  # a plain re-run of a finished run: resumes at step 24, re-validates, no training
    after = metric_rows(run_dir)
    assert step_losses(run_dir) == step_losses(straight)
    assert [r for r in after if r["step"] != str(N_STEPS)] == [r for r in before if r["step"] != str(N_STEPS)]

    files = {p: p.read_bytes() for p in (run_dir / "logs" / "metrics.csv", run_dir / "config.yaml")}
    with pytest.raises(ValueError, match=r"resume refused: .*model\.d_model: 64 -> 96"):
        run(compose_cfg(args + ["model.d_model=96"]))
    with pytest.raises(FileExistsError, match="resume=none .* already holds a run.*overwrite=true"):
        run(compose_cfg(args + ["resume=none"]))
    assert {p: p.read_bytes() for p in files} == files
    assert not (run_dir / LOCK_FILE).exists()

    run(compose_cfg(overrides(corpus_dir, run_dir, **{**RESUME_ARGS, "trainer.max_steps": 4}) +
                    ["resume=none", "overwrite=true"]))
    assert sorted(step_losses(run_dir)) == list(range(4))


def test_second_live_run_is_refused_and_a_stale_lock_taken_over(corpus_dir, tmp_path):
    args = overrides(corpus_dir, tmp_path, **{**RESUME_ARGS, "trainer.max_steps": 100_000})
    first = launch(args, wait=False)
    try:
        deadline = time.time() + 120
        while not (tmp_path / LOCK_FILE).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid
        second = launch(args)
        assert second.returncode != 0
        assert f"is in use by pid {first.pid}" in second.stdout and "Traceback" not in second.stdout
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / LOCK_FILE).exists()  # SIGKILL ran no cleanup: the lock is stale now
    third = launch(overrides(corpus_dir, tmp_path, **{**RESUME_ARGS, "trainer.max_steps": 2}))
    assert third.returncode == 0, third.stdout[-3000:]
    assert f"taking over the stale lock of {tmp_path}: pid {first.pid}" in third.stdout
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_lock_in_process_names_its_holder(corpus_dir, tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                                  "slurm_job_id": None, "started": "now"}))
    with pytest.raises(RunDirInUse, match=f"in use by pid {os.getpid()}"):
        run(compose_cfg(overrides(corpus_dir, tmp_path)))


def test_nan_in_checkpoint_stops_the_resume_and_keeps_the_checkpoint(straight, corpus_dir, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.endswith("mlp.down.weight"))
    checkpoint["state_dict"][name].view(-1)[3] = float("nan")
    torch.save(checkpoint, last)
    poisoned = last.read_bytes()
    result = launch(overrides(corpus_dir, run_dir, **{**RESUME_ARGS, "trainer.max_steps": 30}))
    assert result.returncode != 0
    assert f"checkpoint {last} is damaged: state_dict.{name} holds non-finite values" in result.stdout
    assert last.read_bytes() == poisoned and "Traceback" not in result.stdout


@pytest.mark.parametrize("allowed", [0, 1])
def test_nan_loss_stops_the_run_before_a_checkpoint_stores_it(corpus_dir, tmp_path, allowed):
    """A NaN loss at step 10 gives NaN gradients: the step is skipped, and past the allowance the run
    stops with the message; the checkpoints on disk stay finite (step 8 is the newest)."""
    args = overrides(corpus_dir, tmp_path, **{**RESUME_ARGS, "trainer.max_steps": 12,
                                             "trainer.max_nonfinite_steps": allowed})
    result = launch(args, fault="nan_loss:10")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    if allowed == 0:
        assert result.returncode != 0
        assert "non-finite gradient norm (nan) at step 10" in result.stdout and "Traceback" not in result.stdout
        assert checkpoint["global_step"] == 8
    else:
        assert result.returncode == 0, result.stdout[-3000:]
        assert "step 10: non-finite gradient norm, optimizer step skipped (1/1 allowed)" in result.stdout
        assert checkpoint["global_step"] == 12 and checkpoint["nonfinite_steps"] == 1


def test_sweep_jobs_get_their_own_run_dirs_and_sweeps_do_not_share(corpus_dir, tmp_path):
    """A hydra multirun without run_dir=: each job trains in <sweep dir>/<num>_<overrides>, instead of every job
    sharing runs/<name>; a second sweep gets its own sweep dir (a timestamp) instead of resuming the first one's
    job 0 -- which, being shape-compatible, it used to "resume" without training anything."""
    args = [a for a in overrides(corpus_dir, tmp_path, **{**RESUME_ARGS, "export": False})
            if not a.startswith(("run_dir=", "trainer.max_steps="))]
    result = launch(["-m", f"hydra.sweep.dir={tmp_path / 'first'}", "trainer.max_steps=2,3"] + args)
    assert result.returncode == 0, result.stdout[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "first").iterdir() if p.is_dir())
    assert jobs[0].startswith("0_trainer.max_steps=2,") and jobs[1].startswith("1_trainer.max_steps=3,")
    assert "data.source" not in jobs[0]  # paths are left out of the name
    assert [sorted(step_losses(tmp_path / "first" / j)) for j in jobs] == [[0, 1], [0, 1, 2]]
    second = launch(["-m", "hydra.sweep.dir=" + str(tmp_path / "multirun" / "${now:%H-%M-%S-%f}"),
                     "trainer.max_steps=2", "model.mean_recurrence=8"] + args)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" not in second.stdout
    [job] = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    assert "mean_recurrence: 8" in (job / "config.yaml").read_text() and sorted(step_losses(job)) == [0, 1]


def test_a_refused_sweep_job_lets_the_sweep_go_on_and_sets_the_exit_status(corpus_dir, tmp_path):
    """Job 0 of a local multirun is refused (n_heads does not divide d_model): job 1 still trains (so the sweep's
    report can list both), and the multirun exits 2 at the end instead of 0."""
    args = [a for a in overrides(corpus_dir, tmp_path, **{**RESUME_ARGS, "export": False})
            if not a.startswith(("run_dir=", "trainer.max_steps="))]
    result = launch(["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.max_steps=2", "model.n_heads=3,4"] + args)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "n_heads" in result.stdout
    [trained] = [p for p in (tmp_path / "sweep").iterdir() if p.name.startswith("1_")]
    assert sorted(step_losses(trained)) == [0, 1]


def test_default_sweep_dir_is_per_sweep():
    from recurrent_lm.train.sweep_dirs import job_dir_name

    hydra = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "config.yaml"),
                                   resolve=False)["hydra"]
    assert "${now:" in hydra["sweep"]["dir"] and "override_dirname" in hydra["sweep"]["subdir"]
    assert job_dir_name(1, "data.source=/a/b,model.mean_recurrence=8") == "1_data.source=_a_b,model.mean_recurrence=8"
    assert job_dir_name(0, "") == "0" and len(job_dir_name(7, "x=" + "y" * 500)) == 120
    assert job_dir_name(2, "a=1,b=[1,4],z=3", {"z"}) == "2_z=3,a=1,b=[1,4]"  # swept keys first


def test_sigterm_exits_75_without_a_validation_row_and_resumes_exactly(straight, corpus_dir, tmp_path):
    """SIGTERM at step 7: last.ckpt is saved at the step boundary, the exit status is 75 (not 0, so `train && eval`
    stops), no validation row is logged that the uninterrupted run lacks, and the resume finishes it exactly."""
    args = overrides(corpus_dir, tmp_path, **RESUME_ARGS)
    stopped = launch(args, fault="sigterm:7")
    assert stopped.returncode == 75, stopped.stdout[-3000:]
    assert "preemption: SIGTERM -> last.ckpt saved at step 8" in stopped.stdout
    assert [r["step"] for r in metric_rows(tmp_path) if r.get("val/loss_r4")] == []
    assert not (tmp_path / "export").exists()
    final = launch(args)
    assert final.returncode == 0, final.stdout[-3000:]
    assert step_losses(tmp_path) == step_losses(straight)
    val = [r["step"] for r in metric_rows(tmp_path) if r.get("val/loss_r4")]
    assert val == [r["step"] for r in metric_rows(straight) if r.get("val/loss_r4")]


def test_retention_is_enforced_at_start(straight, corpus_dir, tmp_path):
    """step-N files that killed sessions left behind are removed once the restore succeeded: save_top_k=1 keeps the
    newest step-N at or below the resumed step; a newer (unreadable) one is left alone."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    folder = run_dir / "checkpoints"
    kept = sorted(p.name for p in folder.iterdir())
    for step in (4, 8, 12):  # what earlier sessions left
        shutil.copyfile(folder / "last.ckpt", folder / f"step-{step}.ckpt")
    good = (folder / "last.ckpt").read_bytes()
    (folder / "step-99.ckpt").write_bytes(good[: len(good) // 2])  # truncated: passed over by the resume
    result = launch(overrides(corpus_dir, run_dir, **{**RESUME_ARGS, "trainer.max_steps": 26}))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "removed step-12.ckpt, step-8.ckpt, step-4.ckpt" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.ckpt", "step-24.ckpt", "step-99.ckpt"])
    assert kept == ["last.ckpt", "step-24.ckpt"]


def test_misspelled_experiment_exits_2(corpus_dir, tmp_path):
    result = launch(overrides(corpus_dir, tmp_path) + ["experiment=demoo"])
    assert result.returncode == 2, result.stdout[-3000:]
    assert "experiment=demoo: no such experiment" in result.stdout and not tmp_path.joinpath("config.yaml").exists()


def test_lock_of_a_requeued_slurm_job_is_taken_over(corpus_dir, tmp_path, monkeypatch, capsys):
    """SLURM requeues a preempted job under the same job id, possibly on another node: the old holder
    is gone by definition. Another job's lock on another host is refused (it cannot be probed)."""
    lock = {"host": "node-17", "pid": 4242, "slurm_job_id": "991", "started": "earlier"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(lock))
    monkeypatch.setenv("SLURM_JOB_ID", "992")
    with pytest.raises(RunDirInUse, match="in use by pid 4242 on host node-17 \\(SLURM job 991\\)"):
        run(compose_cfg(overrides(corpus_dir, tmp_path, **{"trainer.max_steps": 2, "sample_tokens": 0})))
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    run(compose_cfg(overrides(corpus_dir, tmp_path, **{"trainer.max_steps": 2, "sample_tokens": 0})))
    assert "SLURM job 991 was requeued" in capsys.readouterr().out
    assert not (tmp_path / LOCK_FILE).exists()
