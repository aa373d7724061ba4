"""Shared helpers for the tests/test_eval_*.py files: a real tiny model directory, scored by hand.

The model is the `tiny` preset with random weights and ``init_scale=0`` (a deterministic zero initial
state), saved with ``save_pretrained`` next to a real byte-level BPE tokenizer; the "manual" scorers
below use nothing but the model's forward and a log-softmax, never the harness under test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from recurrent_lm.model import ModelConfig, RecurrentDepthLM

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<bot>", "<eot>", "<latent>"]
EOS, PAD = 1, 2
TRAIN_TEXT = [
    "Every wumpus is a yumpus. Every brimpus is a lorpus. Tom is a wumpus. Is Tom a yumpus or lorpus?",
    "Answer: True or false: Stella is not floral. Q: What is 12 + 7?\nA: 19\n",
    "If music be the food of love, play on; give me excess of it, that, surfeiting, the appetite may sicken.",
]
CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"

# Keep lm-eval and datasets off the network whatever the environment says.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_model_dir(directory: Path, *, block_size: int = 64, seed: int = 0, **overrides: Any) -> Path:
    """Write config.json + model.safetensors + tokenizer.json of a seeded tiny model into ``directory``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAIN_TEXT * 20, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    fields = {**OmegaConf.to_container(OmegaConf.load(CONF)), "init_scale": 0.0, "block_size": block_size,
              **overrides}
    torch.manual_seed(seed)
    RecurrentDepthLM(ModelConfig(**fields)).save_pretrained(directory)
    return directory


class ManualScorer:
    """Scores text with the model's forward pass and a log-softmax: the reference the harness must match."""

    def __init__(self, model_dir: Path, num_steps: int) -> None:
        self.model = RecurrentDepthLM.from_pretrained(model_dir).eval()
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.num_steps = num_steps

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @torch.no_grad()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """(T, V) log p(next token | prefix) for one unpadded sequence."""
        logits = self.model(torch.tensor([ids]), num_steps=self.num_steps).logits[0]
        return F.log_softmax(logits.float(), dim=-1)

    def continuation(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        """Sum of log p over the continuation tokens, and whether each is the argmax."""
        ids = context_ids + continuation_ids
        lp = self.logprobs(ids[:-1])[len(context_ids) - 1:]  # rows predicting the continuation
        target = torch.tensor(continuation_ids)
        return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())

    def pair(self, context: str, continuation: str) -> float:
        """lm-eval's causal split: encode context+continuation, the context alone, cut the whole there."""
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return self.continuation(ctx, whole[len(ctx):])[0]

    @torch.no_grad()
    def greedy(self, context: str, max_new: int, stop: str) -> str:
        """Greedy decoding by repeated full forwards (no cache), cut before ``stop``."""
        ids = self.encode(context)
        out: list[int] = []
        for _ in range(max_new):
            token = int(self.logprobs(ids + out)[-1].argmax())
            if token == EOS:
                break
            out.append(token)
            if stop in self.decode(out):
                break
        return self.decode(out).split(stop)[0]
