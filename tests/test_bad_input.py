"""Bad settings and bad files: each gets an early error naming the setting or file (and line) and the
fix, before any data work where the setting allows, and nothing on disk is lost."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from hydra.errors import ConfigCompositionException
from train_support import compose_cfg, launch, overrides

from recurrent_lm import RecurrentDepthLM
from recurrent_lm.model.io import atomic_write
from recurrent_lm.train.cli import run


@pytest.mark.parametrize("setting, message", [
    ("trainer.max_steps=-1", "trainer.max_steps=-1: must be an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1"),
    ("trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_every_n_steps=0: must be an integer >= 1, or null"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0: must be an integer >= 1, or null"),
    ("trainer.val_batches=0", "trainer.val_batches=0: must be an integer >= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
    ("trainer.eval_depths=[4,0]", r"trainer.eval_depths=\[4, 0\]: must be a non-empty list of depths >= 1"),
    ("trainer.precision=fp13", "trainer.precision='fp13' is unknown; choose one of"),
    ("parallel.strategy=dpp", "parallel.strategy='dpp' is unknown; choose one of"),
    ("trainer.devices=two", "trainer.devices='two': give auto, a count >= 1"),
    ("trainer.max_nonfinite_steps=-1", "trainer.max_nonfinite_steps=-1: must be >= 0"),
    ("trainer.exit_loss_beta=-1", "trainer.exit_loss_beta=-1.0: the entropy weight of stage I must be >= 0"),
])
def test_settings_are_refused_before_any_work(corpus_dir, tmp_path, setting, message):
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run") + [setting])
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_experiment_is_refused_at_compose(corpus_dir, tmp_path):
    with pytest.raises(ConfigCompositionException, match="experiment/demoo"):
        compose_cfg(overrides(corpus_dir, tmp_path) + ["experiment=demoo"])


def test_cli_error_is_one_line_with_exit_status_2(corpus_dir, tmp_path):
    result = launch(overrides(corpus_dir, tmp_path / "run") + ["trainer.max_steps=0"])
    assert result.returncode == 2 and "Traceback" not in result.stdout
    assert "recurrent-lm-train: error: trainer.max_steps=0: must be an integer >= 1" in result.stdout


def test_null_intervals_and_no_loggers_train_and_save_the_final_step(corpus_dir, tmp_path):
    """val_check_interval=null and checkpoint_every_n_steps=null mean off; with both loggers off
    too the run still trains to max_steps and leaves last.ckpt at the final step."""
    cfg = compose_cfg(overrides(corpus_dir, tmp_path, **{
        "trainer.max_steps": 5, "trainer.val_check_interval": "null", "trainer.checkpoint_every_n_steps": "null",
        "logger.csv": False, "logger.tensorboard": False, "sample_tokens": 0}))
    summary = run(cfg)
    assert summary.step == 5 and summary.val == {}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"good line\n\xff\xfe broken\n", r"bad.txt line 2 is not UTF-8"),
    ("empty.jsonl", b"", r"empty.jsonl is empty"),
    ("empty.txt", b"", r"empty.txt is empty"),
    ("records.jsonl", b'{"text": "fine"}\n{"text": broken\n', r"records.jsonl line 2 is not a JSON record"),
])
def test_unreadable_data_names_the_file_and_line(corpus_dir, tmp_path, name, content, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_bytes(content)
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", **{"data.source": str(data / name),
                                                                 "data.cache_dir": str(tmp_path / "cache")}))
    with pytest.raises(ValueError, match=f"data.source=.*{message}.*fix or remove that file"):
        run(cfg)


def test_garbage_tokenizer_names_its_path(corpus_dir, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    cfg = compose_cfg(overrides(corpus_dir, tmp_path / "run", **{"data.tokenizer_path": str(bad)}))
    with pytest.raises(ValueError, match=f"{bad} is not a valid tokenizer.json"):
        run(cfg)


@pytest.fixture
def full_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), so writes fail with ENOSPC; needs root, else skipped."""
    mount = tmp_path / "small_fs"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                                        str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_names_the_file_and_keeps_the_old_one(full_disk):
    target = full_disk / "last.ckpt"
    atomic_write(target, lambda tmp: torch.save({"w": torch.ones(8)}, tmp))
    good = target.read_bytes()
    with pytest.raises(OSError, match=rf"writing {target} failed .* MiB free on its file system.*intact"):
        atomic_write(target, lambda tmp: torch.save({"w": torch.zeros(1_000_000)}, tmp))
    assert target.read_bytes() == good
    assert [p.name for p in full_disk.iterdir()] == ["last.ckpt"]  # no partial temp file left


def test_incomplete_model_directory_is_refused(tmp_path, tiny_model):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("block_size", "mean_recurrence"):
        broken = {k: v for k, v in config.items() if k != key}
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=rf"config.json lacks \['{key}'\].*Re-export"):
            RecurrentDepthLM.from_pretrained(tmp_path)


def test_cuda_device_without_a_gpu_is_an_error(tmp_path):
    from recurrent_lm.model.device import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device='cuda' but this machine has no usable CUDA device"):
        pick_device("cuda", "--device")
    with pytest.raises(ValueError, match="device='gpu0' is not a device"):
        pick_device("gpu0")
    assert pick_device(None).type == "cpu"


def test_reasoning_eval_refuses_difficulty_zero(tmp_path, tiny_model, capsys):
    from recurrent_lm.reasoning.evaluate import main

    tiny_model().save_pretrained(tmp_path)
    assert main(["--model", str(tmp_path), "--task", "parity", "--difficulties", "0"]) == 2
    assert "task.eval_difficulties=[0] must be a non-empty list of ints >= 1" in capsys.readouterr().err
