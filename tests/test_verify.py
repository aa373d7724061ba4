"""The verification scripts of evals/verify run their own side here; the reference side needs a local checkout of
the reference repository (and its pinned transformers), so it runs only when one is named in the environment:

    RECURRENT_LM_COCONUT_REF=/path/to/coconut RECURRENT_LM_HUGINN_REF=/path/to/recurrent-pretraining \\
    RECURRENT_LM_REF_PYTHONPATH=/path/to/transformers-4.51-target pytest tests/test_verify.py
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

VERIFY = Path(__file__).resolve().parents[1] / "evals" / "verify"


def script(name: str):
    sys.path.insert(0, str(VERIFY))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(VERIFY))


def reference(variable: str) -> list[str]:
    path = os.environ.get(variable)
    if not path:
        pytest.skip(f"{variable} is not set: the reference side needs a local checkout of the reference repository "
                    "(see docs/verification.md)")
    return ["--reference", path, "--reference-pythonpath", os.environ.get("RECURRENT_LM_REF_PYTHONPATH", "")]


def test_coconut_parity_checks_our_side_alone_and_says_the_reference_was_skipped(tmp_path, capsys):
    parity = script("coconut_parity")
    assert parity.main(["--work", str(tmp_path), "--stages", "0", "2", "--batches", "1", "3"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 3 |" in out and parity.SKIP in out  # stage 2, batch 3 (left-padded) ran; the reference did not
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 2 | 3 |")]
    assert float(rows[0][3].rstrip(" |")) <= 1e-5  # batch loss = token-weighted mean of the rows' losses


def test_huginn_parity_round_trips_our_model_and_says_the_reference_was_skipped(tmp_path, capsys):
    parity = script("huginn_parity")
    assert parity.main(["--work", str(tmp_path), "--steps", "1", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("ours -> Huginn format -> ours") == 2 and parity.SKIP in out
    assert (tmp_path / "ours" / "config.json").is_file()


def test_coconut_speed_times_our_side_and_says_the_reference_was_skipped(tmp_path, capsys):
    speed = script("coconut_speed")
    assert speed.main(["--work", str(tmp_path), "--batch", "2", "--question", "6", "--thoughts", "2", "--suffix",
                       "3", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| ours | " in out and speed.SKIP in out


def test_coconut_parity_against_the_reference(tmp_path):
    flags = reference("RECURRENT_LM_COCONUT_REF")
    assert script("coconut_parity").main(["--work", str(tmp_path), *flags]) == 0


def test_huginn_parity_against_the_reference(tmp_path):
    flags = reference("RECURRENT_LM_HUGINN_REF")
    assert script("huginn_parity").main(["--work", str(tmp_path), *flags]) == 0
