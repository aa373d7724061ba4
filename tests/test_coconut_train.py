"""Coconut training: curriculum, sequence layout, and the hydra app end to end (resume mid-stage, HF GPT-2)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models
from train_support import compose_cfg, step_losses

from recurrent_lm.coconut.config import CoconutConfig
from recurrent_lm.coconut.curriculum import Layout, check_stages, layout, record_stage, scheduled_stage
from recurrent_lm.coconut.export import load_coconut_model
from recurrent_lm.coconut.sequences import EncodedRecord, SpecialIds, build_example, collate
from recurrent_lm.coconut.tokens import ThoughtTokenizer, add_thought_tokens
from recurrent_lm.model.lm import IGNORE_INDEX
from recurrent_lm.train.cli import run
from recurrent_lm.train.checkpoint_io import load_checkpoint

IDS = SpecialIds(bot=3, eot=4, latent=5, eos=1, pad=2)


def config(**kw) -> CoconutConfig:
    return CoconutConfig(train_file="t.json", val_file="v.json", **kw)


def test_stage_schedule_is_a_pure_function_of_the_epoch():
    c = config(epochs_per_stage=2, max_latent_stage=3)
    assert [scheduled_stage(c, e) for e in range(11)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    assert {scheduled_stage(config(method=m), e) for m in ("cot", "no_cot") for e in range(40)} == {0}
    assert scheduled_stage(config(curriculum=False, max_latent_stage=3), 0) == 4


@pytest.mark.parametrize("pad, stage, steps, expected", [
    (False, 2, 5, Layout(2 * 2, 2)),   # stage s: the first s steps become s·c thoughts
    (False, 4, 3, Layout(3 * 2, 3)),   # fewer steps than the stage: every step, as many thoughts as steps
    (True, 4, 3, Layout(4 * 2, 3)),    # padded: the stage's thoughts regardless
    (True, 9, 3, Layout(6 * 2, 3)),    # past the last stage: every step dropped, thoughts capped
    (False, 9, 3, Layout(3 * 2, 3)),
])
def test_layout_by_stage(pad, stage, steps, expected):
    assert layout(config(thoughts_per_step=2, max_latent_stage=6, pad_latent_to_max=pad), stage, steps) == expected


def test_no_cot_drops_every_step_and_thinks_not():
    assert layout(config(method="no_cot"), 0, 4) == Layout(0, 4)


def test_uniform_mixing_is_seeded_per_record_and_epoch():
    c = config(uniform_prob=1.0, max_latent_stage=6)
    draws = [record_stage(c, epoch=3, index=i, num_steps=5, seed=0) for i in range(200)]
    assert draws == [record_stage(c, epoch=3, index=i, num_steps=5, seed=0) for i in range(200)]
    assert set(draws) == set(range(6))  # 0..num_steps
    assert draws != [record_stage(c, epoch=4, index=i, num_steps=5, seed=0) for i in range(200)]
    assert {record_stage(config(uniform_prob=0.0), 3, i, 5, 0) for i in range(50)} == {0}


def test_a_stage_past_every_record_without_padding_is_refused():
    with pytest.raises(ValueError, match=r"max_latent_stage=6 but the longest record of data.json has 4 steps.*"
                                         r"pad_latent_to_max=true"):
        check_stages(config(max_latent_stage=6), 4, "data.json")
    check_stages(config(max_latent_stage=6, pad_latent_to_max=True), 4, "data.json")


RECORD = EncodedRecord(question=(10, 11, 12), steps=((20, 21), (22,), (23, 24)), answer=(30, 31))


@pytest.mark.parametrize("method, stage", [("coconut", 2), ("pause", 2), ("cot", 0), ("no_cot", 0)])
def test_labels_follow_the_papers_mask(method, stage):
    """Nothing before <eot> and not <eot> itself is a target; <eot> predicts the first remaining token. (The legacy
    layout: markers for every method; the reference's marker-less baselines are in test_coconut_reference.py.)"""
    c = config(method=method, max_latent_stage=3, layout="legacy")
    example = build_example(RECORD, stage, c, IDS)
    batch = collate([example], IDS.pad)
    kept = {"coconut": [23, 24], "pause": [23, 24], "cot": [20, 21, 22, 23, 24], "no_cot": []}[method]
    assert example.suffix == (IDS.eot, *kept, 30, 31, IDS.eos)
    assert batch["labels"][0].tolist() == [*kept, 30, 31, IDS.eos, IGNORE_INDEX]
    latents = list(example.prefix).count(IDS.latent)
    assert (example.thoughts, latents) == {"coconut": (2, 0), "pause": (0, 2), "cot": (0, 0), "no_cot": (0, 0)}[method]
    assert example.prefix[:4] == (10, 11, 12, IDS.bot)


def test_a_tokenizer_without_the_markers_is_refused_then_extended():
    bare = Tokenizer(models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    with pytest.raises(ValueError, match=r"lacks the Coconut tokens \['<bot>', '<eot>', '<latent>'\].*add_thought_tokens"):
        ThoughtTokenizer(bare)
    extended = add_thought_tokens(bare)
    assert (extended.ids.bot, extended.ids.eot, extended.ids.latent, extended.ids.eos) == (2, 3, 4, 1)


def coconut_overrides(run_dir, experiment="coconut_prosqa", **extra) -> list[str]:
    base = {"experiment": experiment, "run_dir": str(run_dir), "coconut.generate_sizes": "[16,8,8]",
            "coconut.epochs_per_stage": 1, "coconut.num_eval": 4, "trainer.micro_batch_size": 4,
            "trainer.max_steps": 6, "trainer.val_check_interval": 3, "trainer.checkpoint_every_n_steps": 3,
            "trainer.val_batches": 1, "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False,
            "trainer.accelerator": "cpu", "trainer.devices": 1, "logger.tensorboard": False,
            "logger.flush_every_n_steps": 1, "trainer.precision": "32-true", "model.d_model": 32, "model.n_heads": 2, "optim.warmup_steps": 1}
    if experiment == "coconut_gpt2":
        base.update({"coconut.hf_config.n_embd": 32, "coconut.hf_config.n_layer": 2, "coconut.hf_config.n_head": 2})
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_resume_mid_stage_replays_the_uninterrupted_run_and_resets_adam_at_the_switch(tmp_path):
    """16 records / 4 per batch = 4 steps an epoch: stage 0 is steps 0..3, stage 1 from step 4. A run stopped
    after step 2 (mid-stage) and resumed gives the same per-step losses as one that never stopped."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(compose_cfg(coconut_overrides(whole)))
    run(compose_cfg(coconut_overrides(parts, **{"trainer.max_steps": 3})))
    run(compose_cfg(coconut_overrides(parts)))
    assert step_losses(parts) == step_losses(whole) and sorted(step_losses(whole)) == list(range(6))
    state = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    assert state["coconut_stage"] == 1
    adam_steps = {float(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}  # moments restarted at step 4: steps 4 and 5 since the reset


def test_hf_gpt2_trains_then_exports_a_loadable_coconut_model(tmp_path):
    summary = run(compose_cfg(coconut_overrides(tmp_path, "coconut_gpt2", **{"trainer.max_steps": 4})))
    assert len(step_losses(tmp_path)) == 4
    scored = json.loads((tmp_path / "coconut_eval.json").read_text())
    assert scored == summary.app.evaluation and scored["examples"] == 4 and 0 <= scored["accuracy"] <= 1
    # 4 steps of 4 records = one epoch: training reached stage 1, and the export is scored there (1 thought)
    assert scored["stage"] == 1 and scored["mean_thoughts"] == 1.0
    model, tokenizer, cfg = load_coconut_model(summary.app.export)
    assert type(model).__name__ == "GPT2LMHeadModel" and cfg.hf_model == "config:gpt2"
    assert model.get_input_embeddings().weight.shape[0] == tokenizer.vocab_size
    assert json.loads((tmp_path / "export" / "coconut.json").read_text())["method"] == "coconut"
    assert cfg.eval_stage == 1  # recorded, so recurrent-lm-coconut-eval lays questions out at the stage reached
    with torch.no_grad():
        logits = model(torch.tensor([[tokenizer.ids.bot, tokenizer.ids.eot]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("mode", ["block", "iteration"])
def test_activation_checkpointing_with_coconut_is_refused(tmp_path, mode):
    with pytest.raises(ValueError, match=rf"parallel.activation_checkpointing={mode} cannot train Coconut.*"
                                         "set parallel.activation_checkpointing=none"):
        run(compose_cfg(coconut_overrides(tmp_path / "run", **{"parallel.activation_checkpointing": mode})))


def test_task_and_coconut_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="task= and coconut= are all set; a run trains one app"):
        run(compose_cfg(coconut_overrides(tmp_path, **{"task": "parity"})))


def test_added_markers_start_at_the_mean_embedding_of_a_hf_model():
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["Every wumpus is a yumpus."] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False))
    vocab = bpe.get_vocab_size()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2))
    before = model.get_input_embeddings().weight.detach().clone()
    tokenizer = add_thought_tokens(bpe, model)
    after = model.get_input_embeddings().weight.detach()
    assert after.shape[0] == vocab + 3 == tokenizer.vocab_size
    torch.testing.assert_close(after[:vocab], before)
    for token in (tokenizer.ids.bot, tokenizer.ids.eot, tokenizer.ids.latent):
        torch.testing.assert_close(after[token], before.mean(0))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied


def test_a_hf_model_without_inputs_embeds_is_refused():
    """A causal LM whose base model cannot take embeddings cannot be fed its own hidden state."""
    from recurrent_lm.coconut.backends import HFBackend

    class IdsOnly(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    class CausalLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model, self.head = IdsOnly(), torch.nn.Linear(4, 4)

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(ValueError, match=r"IdsOnly\) takes no inputs_embeds.*pick a decoder-only model"):
        HFBackend(CausalLM())
