"""Generated Coconut data never replaces a file the user named (coconut.generate, make_data --out)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from recurrent_lm.coconut.app import generate_data
from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.make_data import main as make_data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def users_data(tmp_path) -> Path:
    """The user's own ProsQA files (made with make_data, as a checkout of the reference data would be)."""
    assert make_data(["prosqa", "--out", str(tmp_path / "mine"), "--train", "12", "--valid", "5", "--test", "6",
                      "--seed", "7"]) == 0
    return tmp_path / "mine"


def test_only_the_missing_run_dir_file_is_generated(users_data, tmp_path, capsys):
    """The issue's case: train_file and test_file point at the user's files, val_file stays at its default in the run
    directory, which does not exist. Only that one is generated; the user's files keep every byte (all three used
    to be regenerated, replacing the user's); no question is shared with the user's splits."""
    run_dir = tmp_path / "run"
    mine = {p: digest(p) for p in users_data.iterdir()}
    coconut = CoconutConfig(train_file=str(users_data / "prosqa_train.json"),
                            val_file=str(run_dir / "data" / "prosqa_valid.json"),
                            test_file=str(users_data / "prosqa_test.json"), generate="prosqa", generate_sizes=[9, 4, 5])
    generate_data(coconut, seed=0, run_dir=run_dir)
    assert {p: digest(p) for p in users_data.iterdir()} == mine
    generated = json.loads((run_dir / "data" / "prosqa_valid.json").read_text())
    assert len(generated) == 4 and [p.name for p in (run_dir / "data").iterdir()] == ["prosqa_valid.json"]
    users = {r["question"] for name in ("prosqa_train.json", "prosqa_test.json")
             for r in json.loads((users_data / name).read_text())}
    assert not users & {r["question"] for r in generated}
    out = capsys.readouterr().out
    assert "4 valid ->" in out and "kept the existing coconut.train_file=" in out


def test_a_missing_file_the_user_named_outside_the_run_dir_is_refused(users_data, tmp_path):
    run_dir = tmp_path / "run"
    coconut = CoconutConfig(train_file=str(users_data / "prosqa_train.json"), val_file=str(users_data / "typo.json"),
                            generate="prosqa")
    with pytest.raises(FileNotFoundError, match=r"coconut.val_file=.*typo.json: no such file, and coconut.generate="
                                                r"prosqa writes only into the run directory"):
        generate_data(coconut, seed=0, run_dir=run_dir)
    assert not run_dir.exists() and not (users_data / "typo.json").exists()


def test_all_defaults_generate_all_three_splits_disjoint(tmp_path):
    run_dir = tmp_path / "run"
    files = {s: run_dir / "data" / f"prosqa_{s}.json" for s in ("train", "valid", "test")}
    generate_data(CoconutConfig(train_file=str(files["train"]), val_file=str(files["valid"]),
                                test_file=str(files["test"]), generate="prosqa", generate_sizes=[8, 3, 4]),
                  seed=0, run_dir=run_dir)
    splits = {s: {r["question"] for r in json.loads(p.read_text())} for s, p in files.items()}
    assert [len(q) for q in splits.values()] == [8, 3, 4]
    assert not (splits["train"] & splits["valid"] or splits["train"] & splits["test"] or splits["valid"] & splits["test"])


def test_make_data_refuses_a_non_empty_out_without_overwrite(users_data, capsys):
    mine = {p: digest(p) for p in users_data.iterdir()}
    args = ["prosqa", "--out", str(users_data), "--train", "3", "--valid", "2", "--test", "2"]
    assert make_data(args) == 2
    assert "mine already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert {p: digest(p) for p in users_data.iterdir()} == mine
    assert make_data(args + ["--overwrite"]) == 0
    assert len(json.loads((users_data / "prosqa_train.json").read_text())) == 3
    assert [p.name for p in users_data.parent.iterdir() if p.name.startswith(".")] == []
