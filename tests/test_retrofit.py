"""experiment=retrofit end to end: a tiny random Hugging Face Llama, converted with recurrence, trained on through
the app (depth ramp from r̄ = 1, the Llama's own tokenizer), killed and resumed, exported, and evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from train_support import launch, metric_rows, overrides, step_losses

from recurrent_lm.convert import main as convert
from recurrent_lm.data import shakespeare
from recurrent_lm.evaluation.cli import main as evaluate
from recurrent_lm.data.tokenizer_dir import HFTokenizer, load_tokenizer
from recurrent_lm.model import RecurrentDepthLM

transformers = pytest.importorskip("transformers")
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]


def llama_tokenizer(texts: list[str]) -> Tokenizer:
    """A byte-level BPE with Llama's special-token names, trained on ``texts`` (the model's own tokenizer)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=384, special_tokens=LLAMA_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tokenizer


@pytest.fixture(scope="module")
def retrofitted(tmp_path_factory) -> Path:
    """A 6-layer random LlamaForCausalLM with GQA and its tokenizer, converted to prelude 0:2, core 2:4, coda 4:6."""
    work = tmp_path_factory.mktemp("retrofit")
    tokenizer = llama_tokenizer([text[:50_000] for text in shakespeare()["train"]["text"][:3]])
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    source = work / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(source)
    tokenizer.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "unk_token": "<unk>"}))
    target = work / "converted"
    assert convert(["--from", "hf", "--to", "recurrent_lm", str(source), str(target),
                    "--prelude", "0:2", "--core", "2:4", "--coda", "4:6"]) == 0
    return target


def retrofit_args(corpus: Path, run_dir: Path, init_from: Path) -> list[str]:
    return overrides(corpus, run_dir, experiment="retrofit", model="pretrained", init_from=str(init_from), **{
        "model.mean_recurrence": 3, "sampler.backprop_depth": 2, "model.block_size": 64,
        "sampler.ramp_steps": 4, "trainer.max_steps": 8, "trainer.val_check_interval": 4,
        "trainer.checkpoint_every_n_steps": 4, "trainer.eval_depths": "[1,2,3]"})


def test_retrofit_trains_on_with_the_source_tokenizer_resumes_exactly_exports_and_evaluates(
        corpus_dir, retrofitted, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    result = launch(retrofit_args(corpus_dir, full, retrofitted))
    assert result.returncode == 0, result.stdout[-3000:]

    # the depth ramp starts at the source's depth, r = 1, and grows
    depths = [float(r["train/depth"]) for r in metric_rows(full) if r.get("train/depth")]
    assert depths[0] == 1 and max(depths) > 1
    # validation at every eval depth, as in pretraining
    assert {"val/loss_r1", "val/loss_r2", "val/loss_r3"} <= {k for r in metric_rows(full) for k, v in r.items() if v}

    # the Llama tokenizer is used unchanged and travels with the run and the export
    source = Tokenizer.from_file(str(retrofitted / "tokenizer.json")).to_str()
    for directory in (full, full / "export"):
        tokenizer = load_tokenizer(directory / "tokenizer.json")
        assert isinstance(tokenizer, HFTokenizer) and tokenizer.tokenizer.to_str() == source
        assert tokenizer.eos_id == 2

    # killed as step 6 starts, then resumed: the per-step losses equal the uninterrupted run's
    assert launch(retrofit_args(corpus_dir, resumed, retrofitted), fault="step:6").returncode != 0
    assert max(step_losses(resumed)) == 5
    result = launch(retrofit_args(corpus_dir, resumed, retrofitted))
    assert result.returncode == 0 and "resuming from" in result.stdout, result.stdout[-3000:]
    assert step_losses(resumed) == step_losses(full)

    # the export is an ordinary model directory at the trained recipe, and evaluates at any depth
    model = RecurrentDepthLM.from_pretrained(full / "export")
    assert model.config.mean_recurrence == 3 and model.config.extra["retrofit"]["core"] == [2, 4]
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n\n".join(text[:2_000] for text in shakespeare()["validation"]["text"][:2]))
    out = tmp_path / "eval"
    assert evaluate(["sweep", "--model_args", f"pretrained={full / 'export'},batch_size=2", "--num_steps", "1,3",
                     "--tasks", "rlm_shakespeare_ppl", "--limit", "2", "--ppl_source", str(held_out),
                     "--eval_cache", str(tmp_path / "cache"), "--output_dir", str(out), "--no_plot"]) == 0
    for r in (1, 3):
        result = json.loads((out / f"results_r{r}.json").read_text())
        assert result["recurrent_lm"]["num_steps"] == r
        assert result["results"]["rlm_shakespeare_ppl"]["bits_per_byte,none"] > 0
