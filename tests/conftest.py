"""Shared fixtures: small, fast model configs built from the checked-in presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import OmegaConf

from recurrent_lm.model import ModelConfig, RecurrentDepthLM

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_preset(name: str) -> dict[str, Any]:
    """The fields of conf/model/<name>.yaml as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"), resolve=True)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Three Shakespeare plays as local .txt files (see train_support.write_corpus)."""
    from train_support import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Run the suite on one intra-op thread, restoring the setting afterwards.

    The tests use tiny tensors, which gain nothing from a second thread; on a shared 2-core machine
    the thread pool oversubscribes (measured: 3–15× slower wall time under load). Subprocesses the
    tests start (training runs) keep torch's default.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> Callable[..., ModelConfig]:
    """Factory: the `tiny` preset with field overrides, e.g. ``tiny_config(init_scale=0.0)``."""

    def make(**overrides: Any) -> ModelConfig:
        return ModelConfig(**{**load_preset("tiny"), **overrides})

    return make


@pytest.fixture
def tiny_model(tiny_config) -> Callable[..., RecurrentDepthLM]:
    """Factory: a seeded fp32 tiny model in eval mode, e.g. ``tiny_model(init_scale=0.0)``; ``attn_backend`` is the
    model's runtime backend, every other keyword a config field."""

    def make(seed: int = 0, attn_backend: str = "sdpa", **overrides: Any) -> RecurrentDepthLM:
        torch.manual_seed(seed)
        return RecurrentDepthLM(tiny_config(**overrides), attn_backend).eval()

    return make
