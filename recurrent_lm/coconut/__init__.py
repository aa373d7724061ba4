"""Coconut: continuous thoughts (Hao et al. 2024) on the shared loop, for recurrent_lm and Hugging Face models."""

from recurrent_lm.coconut.backends import BackendOutput, CausalBackend, Depth, HFBackend, RecurrentBackend, backend_for
from recurrent_lm.coconut.config import METHODS, CoconutConfig
from recurrent_lm.coconut.sequences import SpecialIds, ThoughtExample, collate
from recurrent_lm.coconut.thoughts import CoconutOutput, ContinuousThoughtLM, Thoughts

__all__ = [
    "METHODS", "BackendOutput", "CausalBackend", "CoconutConfig", "CoconutOutput", "ContinuousThoughtLM", "Depth",
    "HFBackend", "RecurrentBackend", "SpecialIds", "ThoughtExample", "Thoughts", "backend_for", "collate",
]
