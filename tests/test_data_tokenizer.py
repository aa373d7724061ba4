"""The byte-level BPE wrapper: exact round-trips, fixed special ids, fingerprints, and refusing foreign tokenizers."""

import pickle

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from recurrent_lm.data import SPECIAL_TOKENS, TextTokenizer

TEXTS = [f"Line {i}: the quick brown fox jumps over the lazy dog; Das Wetter ist schön. 今日は良い天気です。"
         for i in range(200)]
AWKWARD = "tabs\tand\r\nCRLF, zero\u200bwidth, e\u0301 combining, 🦊🐕‍🦺 emoji, \x00 nul, <latent> and <|eos|> as text"


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(TEXTS, vocab_size=320)


def test_any_text_round_trips_even_unseen_characters(tokenizer: TextTokenizer) -> None:
    for text in [AWKWARD, TEXTS[3], "", " leading space", "Ω≈ç√∫˜µ≤≥÷ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text


def test_batch_encoding_matches_single_encoding(tokenizer: TextTokenizer) -> None:
    texts = [AWKWARD, *TEXTS[:5]]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]


def test_special_tokens_have_fixed_ids_and_text_never_produces_them(tokenizer: TextTokenizer) -> None:
    ids = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.bot_id, tokenizer.eot_id,
           tokenizer.latent_id]
    assert ids == [0, 1, 2, 3, 4, 5]
    assert [tokenizer.decode([i]) for i in ids] == list(SPECIAL_TOKENS)
    assert not set(tokenizer.encode("".join(SPECIAL_TOKENS))) & set(ids)


def test_vocab_is_trained_to_the_requested_size(tokenizer: TextTokenizer) -> None:
    assert tokenizer.vocab_size == 320
    assert len(tokenizer.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2  # merges were learned


def test_save_and_load_keep_the_fingerprint_and_the_encoding(tokenizer: TextTokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.fingerprint == tokenizer.fingerprint
    assert loaded.encode(AWKWARD) == tokenizer.encode(AWKWARD)
    assert TextTokenizer.train(TEXTS, vocab_size=300).fingerprint != tokenizer.fingerprint


def test_training_is_deterministic_and_reads_only_the_first_max_chars() -> None:
    docs = [f"document {i:03d} says hello to the world and its wonderful {i % 7} cats. " * 3 for i in range(100)]
    size = len(docs[0])
    capped = TextTokenizer.train(docs, vocab_size=320, max_chars=2 * size + size // 2)
    assert capped.fingerprint == TextTokenizer.train(docs, vocab_size=320, max_chars=2 * size + size // 2).fingerprint
    assert capped.fingerprint == TextTokenizer.train([docs[0], docs[1], docs[2][:size // 2]], 320).fingerprint
    assert capped.fingerprint != TextTokenizer.train(docs, vocab_size=320).fingerprint


def test_a_pickled_tokenizer_still_encodes_special_strings_as_text(tokenizer: TextTokenizer) -> None:
    # Dataset.map(num_proc>1) ships the tokenizer to workers by pickling.
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("<latent>") == tokenizer.encode("<latent>") != [tokenizer.latent_id]


def test_a_tokenizer_without_the_reserved_specials_is_refused_by_name(tmp_path) -> None:
    foreign = Tokenizer(models.BPE())
    foreign.pre_tokenizer = pre_tokenizers.ByteLevel()
    foreign.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|bos|>", "<|eos|>"],
                                                           show_progress=False))
    foreign.save(str(tmp_path / "foreign.json"))
    with pytest.raises(ValueError, match="lacks the reserved special tokens") as error:
        TextTokenizer.from_file(tmp_path / "foreign.json")
    for token in ("<|pad|>", "<bot>", "<eot>", "<latent>"):
        assert token in str(error.value)
    assert "data.tokenizer_path" in str(error.value)


def test_reserved_specials_at_other_ids_are_refused(tmp_path) -> None:
    shuffled = Tokenizer(models.BPE())
    shuffled.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<x>", *SPECIAL_TOKENS],
                                                            show_progress=False))
    shuffled.save(str(tmp_path / "shuffled.json"))
    with pytest.raises(ValueError, match=r"<\|bos\|> at id 1 \(expected 0\)"):
        TextTokenizer.from_file(tmp_path / "shuffled.json")


def test_a_missing_tokenizer_file_names_the_setting(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="data.tokenizer_path"):
        TextTokenizer.from_file(tmp_path / "absent.json")
