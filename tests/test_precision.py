"""One resolve_dtype: ``auto`` means the same dtype for train, eval, generate and convert."""

from __future__ import annotations

import pytest
import torch

from recurrent_lm.errors import ConfigError
from recurrent_lm.evaluation.model_args import parse_dtype
from recurrent_lm.model.precision import (DTYPE_CHOICES, LIGHTNING_PRECISION, cpu_has_native_bf16, resolve_dtype,
                                          resolve_precision)


def test_auto_on_cpu_follows_native_bf16_everywhere():
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == expected
    assert parse_dtype("auto", cpu) == expected  # evaluation used to say float32 on every CPU
    assert resolve_precision("auto", "cpu") == LIGHTNING_PRECISION[expected]


def test_names_and_refusal():
    assert [resolve_dtype(n) for n in DTYPE_CHOICES[1:]] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype("torch.bfloat16") == resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match=r"--dtype='fp13' is not a dtype; choose one of \['auto'"):
        resolve_dtype("fp13", setting="--dtype")
    assert resolve_precision("32-true", "cpu") == "32-true"  # Lightning's own strings pass through


def test_generate_cli_casts_through_resolve_dtype(tmp_path, tiny_model, capsys):
    from recurrent_lm.data.tokenizer import TextTokenizer
    from recurrent_lm.infer.cli import main

    model = tiny_model()
    model.save_pretrained(tmp_path)
    TextTokenizer.train(["to be or not to be"] * 20, model.config.vocab_size).save(tmp_path / "tokenizer.json")
    assert main([str(tmp_path), "to be", "--max-new-tokens", "2", "--dtype", "auto", "--no-depth"]) == 0
    assert "\nto be" in capsys.readouterr().out
