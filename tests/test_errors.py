"""One family of user errors: the commands print those as one line with exit status 2, and anything else
(a bug) keeps its traceback; ``atomic_write`` says what failed instead of blaming the disk."""

from __future__ import annotations

import errno

import pytest
import torch
from train_support import launch, overrides

from recurrent_lm.errors import DEBUG_ENV, ConfigError, StorageError, UserError, report_user_errors
from recurrent_lm.model.io import atomic_write


def test_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def bad_setting() -> None:
        raise ConfigError("trainer.max_steps=0: must be an integer >= 1")

    assert report_user_errors("prog", bad_setting) == 2
    assert capsys.readouterr().err == "prog: error: trainer.max_steps=0: must be an integer >= 1\n"
    assert report_user_errors("prog", lambda: None) == 0


def test_a_bug_keeps_its_traceback_even_when_it_is_a_value_error():
    def bug() -> None:
        raise ValueError("shapes do not match")  # not a UserError: a bug

    with pytest.raises(ValueError, match="shapes do not match"):
        report_user_errors("prog", bug)


def test_debug_variable_shows_the_user_error_traceback(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError):
        report_user_errors("prog", lambda: (_ for _ in ()).throw(ConfigError("bad")))


def test_user_errors_are_still_the_builtin_types_callers_catch():
    from recurrent_lm.evaluation.errors import ModelNotFoundError
    from recurrent_lm.interop.errors import FormatError
    from recurrent_lm.train.run_dir import RunDirInUse

    assert issubclass(ConfigError, ValueError) and issubclass(FormatError, ValueError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    assert all(issubclass(cls, UserError) for cls in (FormatError, ModelNotFoundError, RunDirInUse))


def test_atomic_write_lets_a_bug_in_the_writer_through_untouched(tmp_path):
    target = tmp_path / "weights.pt"
    atomic_write(target, lambda tmp: torch.save({"w": torch.ones(2)}, tmp))
    good = target.read_bytes()

    def broken(tmp) -> None:
        raise RuntimeError("size mismatch for embed.weight")  # a bug, not the disk

    with pytest.raises(RuntimeError, match="size mismatch") as caught:
        atomic_write(target, broken)
    assert not isinstance(caught.value, StorageError)
    assert target.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_atomic_write_names_the_real_storage_failure(tmp_path):
    target = tmp_path / "weights.pt"

    def denied(tmp) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(StorageError, match=rf"writing {target} failed .*Permission denied.*Check the file system"):
        atomic_write(target, denied)
    assert not list(tmp_path.iterdir())


def test_misspelled_experiment_is_one_line_with_exit_2(corpus_dir, tmp_path):
    result = launch(overrides(corpus_dir, tmp_path / "run") + ["experiment=demoo"])
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert "recurrent-lm-train: error: experiment=demoo: no such experiment" in result.stdout
    assert "'demo'" in result.stdout  # the choices are listed
