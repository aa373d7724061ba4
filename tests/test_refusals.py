"""Every refusal of ``recurrent-lm-train`` on an existing run leaves the run directory byte-identical.

One finished 4-step run is copied for each refusal; the directory is hashed before and after. The refusals
are those the suite exercises elsewhere (shape change, resume=none, a live lock, a NaN checkpoint, a missing
resume path, a garbage tokenizer) plus the late ones that used to write first: a loader-state refusal
(trainer.micro_batch_size) rewrote config.yaml, and a rewritten corpus replaced the run's tokenizer.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_support import compose_cfg, launch, overrides, step_losses

from recurrent_lm.train.cli import run
from recurrent_lm.train.run_dir import LOCK_FILE, RunDirInUse

ARGS = {"trainer.max_steps": 4, "trainer.checkpoint_every_n_steps": 2, "trainer.val_check_interval": 4,
        "sample_tokens": 0, "export": False}


def tree_hash(run_dir: Path) -> dict[str, str]:
    """sha256 of every file (and the set of names) under ``run_dir``."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus_copy(corpus_dir, tmp_path_factory) -> Path:
    """A corpus of our own (one test rewrites it), with its own cache."""
    target = tmp_path_factory.mktemp("refusal_corpus") / "corpus"
    shutil.copytree(corpus_dir, target)
    return target


@pytest.fixture(scope="module")
def finished(corpus_copy, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run(compose_cfg(overrides(corpus_copy, run_dir, **ARGS)))
    return run_dir


def _poison(run_dir: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    next(iter(checkpoint["state_dict"].values())).view(-1)[0] = float("nan")
    torch.save(checkpoint, last)


def _live_lock(run_dir: Path) -> None:
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                                 "slurm_job_id": None, "started": "now"}))


def _garbage_tokenizer(run_dir: Path) -> list[str]:
    bad = run_dir.parent / "garbage_tokenizer.json"
    bad.write_text("{not json")
    return [f"data.tokenizer_path={bad}"]


REFUSALS = [  # (id, extra overrides, prepare(run_dir) -> more overrides, error type, message)
    ("shape", ["model.d_model=96"], None, ValueError, r"another model shape \(model\.d_model: 64 -> 96\)"),
    ("depth", ["model.mean_recurrence=8"], None, ValueError,
     r"another recipe \(model\.mean_recurrence: 4 -> 8, sampler\.mean: 4\.0 -> 8\.0\).*"
     r"allow_changes=\[model\.mean_recurrence,sampler\.mean\]"),
    ("optimizer", ["optim.lr=0.01"], None, ValueError, r"optim\.lr: .* -> 0\.01.*allow_changes=\[optim\.lr\]"),
    ("sampler", ["sampler=fixed"], None, ValueError, r"another recipe \(sampler\."),
    ("loader state", ["trainer.micro_batch_size=2"], None, ValueError, "loader state was saved with"),
    ("resume=none", ["resume=none"], None, FileExistsError, "already holds a run"),
    ("missing resume path", ["resume=/no/such.ckpt"], None, FileNotFoundError, "no such checkpoint"),
    ("nan checkpoint", [], _poison, ValueError, "holds non-finite values"),
    ("live lock", [], _live_lock, RunDirInUse, f"in use by pid {os.getpid()}"),
    ("garbage tokenizer", [], _garbage_tokenizer, ValueError, "is not a valid tokenizer.json"),
]


@pytest.mark.parametrize("extra, prepare, error, message", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refusal_leaves_the_run_dir_byte_identical(finished, corpus_copy, tmp_path, extra, prepare, error, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    more = (prepare(run_dir) or []) if prepare else []
    before = tree_hash(run_dir)
    with pytest.raises(error, match=message):
        run(compose_cfg(overrides(corpus_copy, run_dir, **ARGS) + extra + more))
    assert tree_hash(run_dir) == before


def test_rewritten_corpus_is_refused_naming_the_file_and_keeps_the_tokenizer(corpus_dir, tmp_path):
    """The corpus rewritten after training: the resume names the rewritten file, and tokenizer.json stays the one
    the checkpoint was trained with (it used to be replaced by the new corpus's, before the refusal)."""
    run_dir, corpus = tmp_path / "run", tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus, ignore=shutil.ignore_patterns("cache"))
    args = overrides(corpus, run_dir, **ARGS)
    run(compose_cfg(args))
    play = corpus / "play0.txt"
    play.write_text(play.read_text()[::-1])  # other text of the same size: another tokenizer
    before = tree_hash(run_dir)
    with pytest.raises(ValueError, match=rf"trained with tokenizer .*data\.corpus\.file {play}: (\d+) bytes -> \1 "
                                         rf"bytes, modified.*Restore the original data"):
        run(compose_cfg(args))
    assert tree_hash(run_dir) == before
    play.write_text(play.read_text()[::-1])  # the named fix: the original data resumes
    run(compose_cfg(args + ["trainer.max_steps=5", "allow_changes=[data]"]))  # same tokens, a newer mtime
    assert sorted(step_losses(run_dir)) == list(range(5))


def test_a_recipe_change_named_in_allow_changes_continues(finished, corpus_copy, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    run(compose_cfg(overrides(corpus_copy, run_dir, **{**ARGS, "trainer.max_steps": 6})
                    + ["model.mean_recurrence=8", "allow_changes=[model.mean_recurrence,sampler]"]))
    assert ("with the changes allow_changes names: model.mean_recurrence: 4 -> 8, sampler.mean: 4.0 -> 8.0"
            in capsys.readouterr().out)
    assert sorted(step_losses(run_dir)) == list(range(6))
    assert "mean_recurrence: 8" in (run_dir / "config.yaml").read_text()


def test_cli_refusal_exits_2_and_writes_nothing(finished, corpus_copy, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = tree_hash(run_dir)
    result = launch(overrides(corpus_copy, run_dir, **ARGS) + ["trainer.micro_batch_size=2"])
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "recurrent-lm-train: error: loader state was saved with" in result.stdout
    assert tree_hash(run_dir) == before


def test_export_refuses_a_live_run_and_records_its_step(finished, tmp_path, capsys):
    """recurrent-lm-export RUN while a training holds RUN's lock exported an intermediate checkpoint silently; now it
    is refused naming the holder. A finished run's export says (and records in export.json) which step it is, and a
    second export onto it needs --overwrite."""
    from recurrent_lm.train.export import EXPORT_RECORD, main as export_main

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    _live_lock(run_dir)
    before = tree_hash(run_dir)
    assert export_main([str(run_dir)]) == 2
    assert f"is being trained by pid {os.getpid()} on host" in capsys.readouterr().err
    assert tree_hash(run_dir) == before
    (run_dir / LOCK_FILE).unlink()
    assert export_main([str(run_dir)]) == 0
    assert f"exported step 4 ({run_dir / 'checkpoints' / 'last.ckpt'}) -> {run_dir / 'export'}" in capsys.readouterr().out
    assert json.loads((run_dir / "export" / EXPORT_RECORD).read_text())["step"] == 4
    assert export_main([str(run_dir)]) == 2
    assert "export already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert export_main([str(run_dir / "checkpoints" / "step-4.ckpt"), "--overwrite"]) == 0
    assert json.loads((run_dir / "export" / EXPORT_RECORD).read_text())["checkpoint"].endswith("step-4.ckpt")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
