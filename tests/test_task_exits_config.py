"""The reasoning task's exits as hydra composes them: a list of ExitSpecs from the YAML groups and overrides, each
with its own threshold; the old flat keys refused by name with the new spelling."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from train_support import launch

from recurrent_lm.loop import ExitSpec
from recurrent_lm.train.cli import check_group_file, check_overrides, compose_config, conf_dir


def task_of(overrides: list[str]):
    return OmegaConf.to_object(compose_config(overrides)).task


def test_the_task_groups_compose_to_one_spec_per_exit():
    scopes = ["convergence", "causal_convergence", "sequence_convergence"]
    assert task_of(["task=parity"]).exits == [ExitSpec(name, 0.03) for name in scopes]
    assert task_of(["experiment=demo_reasoning"]).exits == [ExitSpec("convergence", 0.03, max_steps=48),
                                                            ExitSpec("causal_convergence", 0.03, max_steps=48)]


def test_an_override_sets_each_exit_with_its_own_threshold():
    task = task_of(["task=parity", "task.exits=[{criterion:kl,threshold:1e-3,max_steps:9},{criterion:argmax}]"])
    assert task.exits == [ExitSpec("kl", 1e-3, max_steps=9), ExitSpec("argmax", 4)]  # argmax: its default
    assert task_of(["task=parity", "task.exits=[]"]).exits == []


def test_a_misspelled_exit_field_fails_at_compose_time():
    with pytest.raises(Exception, match=r"Could not override 'task.exits'") as err:
        compose_config(["task=parity", "task.exits=[{criterion:kl,treshold:1e-3}]"])
    assert "Key 'treshold' not in 'ExitSpec'" in str(err.value.__cause__)


@pytest.mark.parametrize("key", ["task.exit_criteria", "task.threshold", "task.min_steps", "task.max_steps",
                                 "+task.threshold"])
def test_the_old_flat_keys_are_refused_with_the_new_spelling(key):
    with pytest.raises(ValueError) as err:
        check_overrides(["task=parity", f"{key}=1"], conf_dir())
    assert str(err.value) == (f"{key} is now task.exits, a list with a threshold and bounds per exit, e.g. "
                              "task.exits=[{criterion:convergence,threshold:0.03,max_steps:48}]; set that instead")


def test_the_train_cli_refuses_an_old_key_in_one_line(tmp_path):
    result = launch(["experiment=demo_reasoning", f"run_dir={tmp_path / 'run'}", "task.threshold=0.1"])
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert result.stdout.strip() == ("recurrent-lm-train: error: task.threshold is now task.exits, a list with a "
                                     "threshold and bounds per exit, e.g. "
                                     "task.exits=[{criterion:convergence,threshold:0.03,max_steps:48}]; set that "
                                     "instead")
    assert not (tmp_path / "run").exists()


def test_an_old_key_in_a_chosen_group_file_is_refused_with_the_new_spelling(tmp_path):
    """A user's experiment (or task) file written before the change: named before hydra reads it."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "task").mkdir()
    old = tmp_path / "experiment" / "old.yaml"
    old.write_text("# @package _global_\ntask:\n  train_max: 8\n  exit_criteria: [kl]\n")
    (tmp_path / "task" / "mine.yaml").write_text("name: parity\nthreshold: 0.1\n")
    new = "task.exits, a list with a threshold and bounds per exit"
    with pytest.raises(ValueError, match=rf"^{old}: task.exit_criteria is now {new}"):
        check_overrides(["experiment=old"], tmp_path)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'task' / 'mine.yaml'}: task.threshold is now {new}"):
        check_overrides(["task=mine"], tmp_path)


def test_no_shipped_group_file_uses_a_moved_key():
    for path in sorted(conf_dir().glob("*/*.yaml")):
        check_group_file(path, path.parent.name)
