"""Fixtures for the reliability tests: a tiny bundle (vocab 64, tiny preset) built once per session."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness.words import sentence



def build_bundle(out: Path, name: str = "tiny", seed: int = 0, **overrides) -> Path:
    import torch

    from model.bundle import save_bundle
    from model.config import preset
    from model.cvae import CVAE
    from model.tokenizer import Tokenizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = [sentence(rng, 3, 9) for _ in range(60)]
    tokenizer = Tokenizer.train(texts, vocab_size=64)
    model = CVAE(preset("tiny", vocab_size=tokenizer.vocab_size, **{"max_decode_len": 12, **overrides})).eval()
    save_bundle(out, model, tokenizer, name=name, text_style="plain")
    return out


@pytest.fixture(scope="session")
def rel_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("rel") / "tiny")


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different model: other dimensions and another tokenizer."""
    return build_bundle(tmp_path_factory.mktemp("other") / "other", name="other", seed=1, latent_dim=4,
                        dec_hidden=24)
