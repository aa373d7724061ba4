"""Coconut meets the reference (facebookresearch/coconut): markers, layouts, its checkpoints, its flat batches.

The reference code is no dependency: its checkpoint is written here the way its run.py writes one (a GPT-2
state dict, three markers added with ``add_tokens``, keys under ``base_causallm.``), and its thought loop is
written out below with plain transformers calls (n + 1 full forwards, no cache).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from recurrent_lm.coconut import (CoconutConfig, ContinuousThoughtLM, HFBackend, Markers, ThoughtTokenizer,
                                  add_thought_tokens, build_example, coconut_loss, collate, encode_record,
                                  from_reference_batch, load_records, records_batch)
from recurrent_lm.coconut.export import load_coconut_model
from recurrent_lm.coconut.generate import generate
from recurrent_lm.convert import main as convert
from recurrent_lm.interop.coconut_ref_io import read_reference_checkpoint
from recurrent_lm.model.lm import IGNORE_INDEX

REFERENCE = ("<|start-latent|>", "<|end-latent|>", "<|latent|>")
RECORDS = [
    {"question": "Every wumpus is a yumpus. Tom is a wumpus. Is Tom a yumpus or lorpus?",
     "steps": ["Tom is a wumpus.", "Every wumpus is a yumpus."], "answer": "Tom is a yumpus."},
    {"question": "Every brimpus is a lorpus. Ann is a brimpus. Is Ann a lorpus or yumpus?",
     "steps": ["Ann is a brimpus.", "Every brimpus is a lorpus."], "answer": "Ann is a lorpus."},
]


# ------------------------------------------------------------------------------------------- markers, layouts
def char_tokenizer(bos: bool) -> tuple[Tokenizer, dict[str, int]]:
    """One token per character (newlines and spaces included) so expected layouts can be written out by hand;
    ``bos``: a Llama-style post-processor that puts <s> before every sequence encoded with special tokens."""
    chars = sorted({c for r in RECORDS for text in (r["question"], *r["steps"], r["answer"]) for c in text} |
                   set(" \n#?.") | set(string.ascii_letters))
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tokenizer.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tokenizer, vocab


def chars(vocab: dict[str, int], text: str) -> tuple[int, ...]:
    return tuple(vocab[c] for c in text)


def test_marker_presets_and_explicit_names():
    assert Markers.parse("reference").names == REFERENCE
    assert Markers.parse("recurrent_lm").names == ("<bot>", "<eot>", "<latent>")
    assert Markers.parse(["[s]", "[e]", "[l]"]) == Markers("[s]", "[e]", "[l]")
    for bad in ("gpt2", ["a", "a", "b"], ["a", "b"]):
        with pytest.raises(ValueError, match="coconut.markers"):
            CoconutConfig(markers=bad)


def test_a_tokenizer_holding_the_reference_markers_keeps_their_ids_and_the_model_its_size():
    tokenizer, _ = char_tokenizer(bos=False)
    assert tokenizer.add_tokens(list(REFERENCE)) == 3  # as the reference's run.py does, in its order
    ids = [tokenizer.token_to_id(m) for m in REFERENCE]
    model = gpt2(tokenizer.get_vocab_size())
    before = model.get_input_embeddings().weight.detach().clone()
    wrapped = add_thought_tokens(tokenizer, model, markers="reference")
    assert [wrapped.ids.bot, wrapped.ids.eot, wrapped.ids.latent] == ids
    assert torch.equal(model.get_input_embeddings().weight, before)  # no resize, no row touched
    with pytest.raises(ValueError, match=r"lacks the Coconut tokens \['<bot>', '<eot>', '<latent>'\].*coconut.markers"):
        ThoughtTokenizer(tokenizer)  # the default preset is not what this tokenizer has


@pytest.mark.parametrize("bos", [False, True])
def test_reference_layout_encodes_the_question_with_special_tokens_and_strips_nothing(bos):
    tokenizer, vocab = char_tokenizer(bos)
    tokenizer.add_special_tokens([AddedToken(m, special=True) for m in REFERENCE])
    wrapped = ThoughtTokenizer(tokenizer, markers="reference")
    question, steps, answer = " Is Tom a yumpus? ", [" Tom is a wumpus. "], "Tom is a yumpus. "
    reference = encode_record(wrapped, question, steps, answer, "reference")
    assert reference.question == (0,) * bos + chars(vocab, " Is Tom a yumpus? \n")
    assert reference.steps == (chars(vocab, " Tom is a wumpus. \n"),)
    assert reference.answer == chars(vocab, "### Tom is a yumpus. ")
    legacy = encode_record(wrapped, question, steps, answer, "legacy")
    assert legacy.question == chars(vocab, "Is Tom a yumpus?\n")  # stripped, no BOS even where the tokenizer adds one
    assert legacy.steps == (chars(vocab, "Tom is a wumpus.\n"),) and legacy.answer == chars(vocab, "### Tom is a yumpus.")


def test_reference_baselines_have_no_markers_and_the_question_end_opens_the_suffix():
    tokenizer, vocab = char_tokenizer(bos=True)
    tokenizer.add_special_tokens([AddedToken(m, special=True) for m in REFERENCE])
    wrapped = ThoughtTokenizer(tokenizer, markers="reference")
    ids = wrapped.ids
    record = encode_record(wrapped, "Q?", ["ab", "c"], "d")
    q, a, b, c, nl, d = (vocab[x] for x in "Q?"), vocab["a"], vocab["b"], vocab["c"], vocab["\n"], vocab["d"]
    q0, q1 = q
    answer = (vocab["#"],) * 3 + (vocab[" "], d)
    expected = {  # method -> (prefix, thoughts, suffix): hand-written from the reference's dataset.py
        "cot": ((0, q0, q1), 0, (nl, a, b, nl, c, nl, *answer, ids.eos)),
        "no_cot": ((0, q0, q1), 0, (nl, *answer, ids.eos)),
        "coconut": ((0, q0, q1, nl, ids.bot), 1, (ids.eot, c, nl, *answer, ids.eos)),
        "pause": ((0, q0, q1, nl, ids.bot, ids.latent), 0, (ids.eot, c, nl, *answer, ids.eos)),
    }
    for method, (prefix, thoughts, suffix) in expected.items():
        stage = 1 if method in ("coconut", "pause") else 0  # CoT and no-CoT train at stage 0 only
        example = build_example(record, stage, CoconutConfig(method=method, markers="reference"), ids)
        assert (example.prefix, example.thoughts, example.suffix) == (prefix, thoughts, suffix), method
    cot = collate([build_example(record, 0, CoconutConfig(method="cot", markers="reference"), ids)], ids.pad)
    # the question's last token (its newline) predicts the first step token; the question itself carries no loss
    assert cot["labels"][0].tolist() == [a, b, nl, c, nl, *answer, ids.eos, IGNORE_INDEX]
    legacy = build_example(encode_record(wrapped, "Q?", ["ab", "c"], "d", "legacy"), 0,
                           CoconutConfig(method="cot", markers="reference", layout="legacy"), ids)
    assert legacy.prefix == (q0, q1, nl, ids.bot) and legacy.suffix[0] == ids.eot


# ------------------------------------------------------------------------------------------- flat batches, loss
def gpt2(vocab: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    return transformers.GPT2LMHeadModel(config).eval()


def flat(example, ids) -> tuple[list[int], list[int]]:
    """A row as the reference's dataset.py lays it out: one token list, a latent token in each thought slot, and
    labels that are the tokens themselves after the question, markers and latents."""
    tokens = [*example.prefix, *[ids.latent] * example.thoughts, *example.suffix]
    hidden = len(example.prefix) + example.thoughts + 1
    return tokens, [IGNORE_INDEX] * hidden + tokens[hidden:]


def test_the_reference_flat_batch_gives_the_same_loss_and_gradients_as_records():
    tokenizer, _ = char_tokenizer(bos=True)
    wrapped = add_thought_tokens(tokenizer, markers="reference")
    config = CoconutConfig(markers="reference", max_latent_stage=2)
    model = gpt2(wrapped.vocab_size)
    ours = coconut_loss(model, wrapped, load_like(RECORDS), config, stage=1)
    ours.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    batch = records_batch(wrapped, load_like(RECORDS), config, stage=1)
    rows = [flat(e, wrapped.ids) for e in examples_of(batch, wrapped.ids)]
    width = max(len(t) for t, _ in rows) + 2  # right padding, plus a left-padded row as MyCollator makes them
    input_ids = torch.full((2, width), wrapped.ids.pad)
    labels = torch.full((2, width), IGNORE_INDEX)
    mask = torch.zeros((2, width), dtype=torch.long)
    positions = torch.zeros((2, width), dtype=torch.long)
    for b, (tokens, row_labels) in enumerate(rows):
        at = 2 * b  # row 1 starts 2 columns in
        input_ids[b, at:at + len(tokens)], labels[b, at:at + len(tokens)] = torch.tensor(tokens), torch.tensor(row_labels)
        mask[b, at:at + len(tokens)], positions[b, at:at + len(tokens)] = 1, torch.arange(len(tokens))
    adapted = from_reference_batch({"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                                    "position_ids": positions}, wrapped.ids)
    out = ContinuousThoughtLM(HFBackend(model))(adapted)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ours.loss, rtol=1e-6, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-7)
    bad = labels.clone()
    bad[0, 1] = 5  # a supervised question token: Coconut puts no loss there
    with pytest.raises(ValueError, match="row 0: labels before position"):
        from_reference_batch({"input_ids": input_ids, "attention_mask": mask, "labels": bad}, wrapped.ids)


def load_like(rows: list[dict]) -> list:
    return [type("R", (), r)() for r in rows]


def examples_of(batch: dict, ids) -> list:
    """Back from a collated batch to per-row (prefix, thoughts, suffix) with padding removed."""
    from recurrent_lm.coconut.sequences import ThoughtExample

    return [ThoughtExample(tuple(batch["prefix_ids"][b][batch["prefix_mask"][b].bool()].tolist()),
                           int(batch["thoughts"][b]),
                           tuple(batch["suffix_ids"][b][batch["suffix_mask"][b].bool()].tolist()))
            for b in range(batch["thoughts"].shape[0])]


# ------------------------------------------------------------------------------------------- checkpoints
def byte_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([json.dumps(r) for r in RECORDS] * 10, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict[str, Path]:
    """A base model directory and a checkpoint_3 as the reference's run.py writes them for a Coconut run."""
    root = tmp_path_factory.mktemp("ref")
    tokenizer = byte_bpe()
    base = gpt2(tokenizer.get_vocab_size())
    base.save_pretrained(root / "base")
    tokenizer.save(str(root / "base" / "tokenizer.json"))
    tokenizer.add_tokens(list(REFERENCE))  # run.py: add_tokens, then resize, new rows from the token "<<"
    base.resize_token_embeddings(tokenizer.get_vocab_size())
    with torch.no_grad():
        base.get_input_embeddings().weight[-3:] = torch.randn(3, 32)
    torch.save({f"base_causallm.{k}": v for k, v in base.state_dict().items()}, root / "checkpoint_3")
    return {"root": root, "base": root / "base", "checkpoint": root / "checkpoint_3", "vocab": tokenizer.get_vocab_size()}


def test_import_export_import_is_bit_identical_and_keeps_ids_and_markers(reference_run):
    root = reference_run["root"]
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(reference_run["checkpoint"]), str(root / "a"),
                    "--base", str(reference_run["base"]), "--stage", "2"]) == 0
    assert convert(["--from", "coconut", "--to", "coconut-ref", str(root / "a"), str(root / "checkpoint_back")]) == 0
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(root / "checkpoint_back"), str(root / "b"),
                    "--base", str(reference_run["base"]), "--stage", "2"]) == 0
    original = torch.load(reference_run["checkpoint"], weights_only=True)
    back = torch.load(root / "checkpoint_back", weights_only=True)
    assert list(back) == list(original) and all(k.startswith("base_causallm.") for k in back)
    assert all(torch.equal(back[k], original[k]) and back[k].dtype == original[k].dtype for k in original)
    a, tok_a, cfg_a = load_coconut_model(root / "a")
    b, tok_b, cfg_b = load_coconut_model(root / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    vocab = reference_run["vocab"]
    assert (tok_a.ids.bot, tok_a.ids.eot, tok_a.ids.latent) == (vocab - 3, vocab - 2, vocab - 1) == \
        (tok_b.ids.bot, tok_b.ids.eot, tok_b.ids.latent)
    assert cfg_a == cfg_b and cfg_a.method == "coconut" and cfg_a.marker_names.names == REFERENCE
    assert cfg_a.layout == "reference" and cfg_a.eval_stage == 2
    state, wrapped = read_reference_checkpoint(root / "checkpoint_back")
    assert wrapped and len(state) == len(original)


def test_generation_from_the_import_equals_the_thought_loop_on_the_original_weights(reference_run, tmp_path):
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(reference_run["checkpoint"]), str(tmp_path / "a"),
                    "--base", str(reference_run["base"])]) == 0
    imported, tokenizer, config = load_coconut_model(tmp_path / "a")
    original = transformers.GPT2LMHeadModel.from_pretrained(reference_run["base"]).eval()
    original.resize_token_embeddings(reference_run["vocab"])
    saved = torch.load(reference_run["checkpoint"], weights_only=True)
    original.load_state_dict({k.removeprefix("base_causallm."): v for k, v in saved.items()})
    ids, thoughts, new = tokenizer.ids, 3, 12
    question = tokenizer.encode_with_specials(RECORDS[0]["question"] + "\n")
    expected = reference_loop(original, [*question, ids.bot], thoughts, ids.eot, new, ids.eos)
    ours = generate(ContinuousThoughtLM(HFBackend(imported)), [[*question, ids.bot]], thoughts, ids,
                    max_new_tokens=new)
    assert ours.tokens[0] == expected and ours.thoughts == [thoughts]


def reference_loop(model, prompt: list[int], thoughts: int, eot: int, new: int, eos: int) -> list[int]:
    """The paper's algorithm with plain transformers calls: each thought is the last hidden state of a full forward
    over everything so far, fed back as the next input embedding; then <eot>; then greedy decoding, every token by
    a full forward without cache."""
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = embed(torch.tensor([prompt]))  # (1, T, H)
        for _ in range(thoughts):
            hidden = model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1:]
            inputs = torch.cat((inputs, hidden), dim=1)
        inputs = torch.cat((inputs, embed(torch.tensor([[eot]]))), dim=1)
        tokens: list[int] = []
        while len(tokens) < new:
            token = int(model(inputs_embeds=inputs).logits[0, -1].argmax())
            tokens.append(token)
            if token == eos:
                break
            inputs = torch.cat((inputs, embed(torch.tensor([[token]]))), dim=1)
    return tokens


def test_converter_refuses_what_does_not_fit(reference_run, tmp_path, capsys):
    cot = tmp_path / "checkpoint_cot"
    torch.save({k.removeprefix("base_causallm."): v for k, v in
                torch.load(reference_run["checkpoint"], weights_only=True).items()}, cot)
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(cot), str(tmp_path / "x"), "--base",
                    str(reference_run["base"]), "--method", "coconut"]) == 2
    assert "plain keys (a CoT / no-CoT run), so --method coconut does not fit" in capsys.readouterr().err
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(cot), str(tmp_path / "cot"), "--base",
                    str(reference_run["base"])]) == 0
    assert load_coconut_model(tmp_path / "cot")[2].method == "cot"
    with pytest.raises(SystemExit):
        convert(["--from", "coconut-ref", "--to", "coconut", str(tmp_path), str(tmp_path / "y"), "--base", "z"])
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "pickle").write_bytes(b"not a checkpoint")
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(tmp_path / "pickle"), str(tmp_path / "z"),
                    "--base", str(reference_run["base"])]) == 2
    assert "weights_only=True" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- real ProsQA keys
def test_every_records_loader_accepts_the_real_prosqa_key_set(reference_run, tmp_path, capsys):
    """A record shaped as prosqa_{valid,test}.json in the reference repository: extra graph keys beside the three."""
    from recurrent_lm.coconut.evaluate import main as coconut_eval

    sample = [{**r, "idx_to_symbol": ["Tom", "wumpus", "yumpus", "lorpus"], "edges": [[0, 1], [1, 2], [3, 2]],
               "root": 0, "target": 2, "neg_target": 3} for r in RECORDS]
    path = tmp_path / "prosqa_test.json"
    path.write_text(json.dumps(sample))
    assert [r.question for r in load_records(path)] == [r["question"] for r in RECORDS]
    assert load_records(path, require_steps=False)[1].answer == RECORDS[1]["answer"]
    from recurrent_lm.coconut.datamodule import CoconutDataModule

    tokenizer = add_thought_tokens(byte_bpe())
    data = CoconutDataModule(CoconutConfig(train_file=str(path), val_file=str(path), max_latent_stage=2),
                             tokenizer, micro_batch_size=2, val_batches=1, seed=0)
    assert data.train_batch(0)["thoughts"].shape == (2,)
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(reference_run["checkpoint"]), str(tmp_path / "a"),
                    "--base", str(reference_run["base"])]) == 0  # and the imported reference model evaluates on it
    assert coconut_eval(["--model", f"ref={tmp_path / 'a'}", "--data", str(path), "--max-new-tokens", "2",
                         "--out", str(tmp_path / "table")]) == 0
    row = json.loads((tmp_path / "table.json").read_text())["rows"][0]
    assert row["examples"] == 2 and row["thought_counts"] == {"2": 2}
    assert (row["stage"], row["stage_source"]) == (7, "last")  # no --stage at import: the last, and it says so


def test_an_imported_reference_checkpoint_continues_training_through_init_from(reference_run, tmp_path):
    from test_coconut_train import coconut_overrides
    from train_support import compose_cfg, step_losses

    from recurrent_lm.train.cli import run

    assert convert(["--from", "coconut-ref", "--to", "coconut", str(reference_run["checkpoint"]), str(tmp_path / "a"),
                    "--base", str(reference_run["base"])]) == 0
    imported = load_coconut_model(tmp_path / "a")[0]
    data = tmp_path / "records.json"
    data.write_text(json.dumps(RECORDS * 4))  # short questions: the tiny base model has 256 positions
    files = {f"coconut.{key}": str(data) for key in ("train_file", "val_file", "test_file")}
    summary = run(compose_cfg(coconut_overrides(tmp_path / "run", "coconut_gpt2", **{
        "init_from": str(tmp_path / "a"), "coconut.markers": "reference", "trainer.max_steps": 2,
        "coconut.max_latent_stage": 2, "coconut.num_eval": 2, "coconut.generate": "null", **files})))
    assert len(step_losses(tmp_path / "run")) == 2
    continued, tokenizer, config = load_coconut_model(summary.app.export)
    assert tokenizer.ids == load_coconut_model(tmp_path / "a")[1].ids and config.marker_names.names == REFERENCE
    moved = [n for n, p in continued.state_dict().items() if not torch.equal(p, imported.state_dict()[n])]
    assert moved  # trained on from the imported weights (same shapes, new values)
    with pytest.raises(ValueError, match=r"trained with the markers .*set coconut.markers='reference'"):
        run(compose_cfg(coconut_overrides(tmp_path / "run2", "coconut_gpt2", init_from=str(tmp_path / "a"))))


def test_an_export_from_before_layouts_and_markers_were_settings_is_read_as_it_was_trained(reference_run, tmp_path):
    """coconut.json without layout / markers / eval_stage: the legacy layout, recurrent_lm's markers, the last stage."""
    from recurrent_lm.coconut.export import COCONUT_FILE, save_coconut_model

    model = gpt2(10)
    tokenizer = add_thought_tokens(byte_bpe(), model)
    save_coconut_model(model, tokenizer, CoconutConfig(method="coconut", max_latent_stage=2), tmp_path)
    raw = json.loads((tmp_path / COCONUT_FILE).read_text())
    for key in ("layout", "markers", "eval_stage"):
        raw.pop(key)
    (tmp_path / COCONUT_FILE).write_text(json.dumps(raw))
    _, loaded, config = load_coconut_model(tmp_path)
    assert config.layout == "legacy" and config.marker_names.names == ("<bot>", "<eot>", "<latent>")
    assert config.evaluation_stage() == 3 and loaded.ids == tokenizer.ids


def test_a_bf16_reference_checkpoint_round_trips_in_bf16(reference_run, tmp_path):
    """The reference can train in bf16 (its args' bf16: True): the import keeps the dtype, so the way back is exact."""
    original = {k: v.to(torch.bfloat16) for k, v in torch.load(reference_run["checkpoint"], weights_only=True).items()}
    torch.save(original, tmp_path / "checkpoint_bf16")
    assert convert(["--from", "coconut-ref", "--to", "coconut", str(tmp_path / "checkpoint_bf16"), str(tmp_path / "a"),
                    "--base", str(reference_run["base"])]) == 0
    assert convert(["--from", "coconut", "--to", "coconut-ref", str(tmp_path / "a"), str(tmp_path / "back")]) == 0
    back = torch.load(tmp_path / "back", weights_only=True)
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], original[k]) for k in original)
