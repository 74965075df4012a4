"""Shared fixtures: paths to the real corpora (tests that need them skip when absent) and a tiny
synthetic dialog corpus in the project's plain JSONL format."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from model.bundle import save_bundle
from model.config import preset
from model.cvae import CVAE
from model.tokenizer import Tokenizer
from harness.words import sentence

# Tiny models run faster on one thread, and two OpenMP threads on two busy cores thrash.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"



def shared_data(name: str) -> Path:
    """The real corpus folder, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: the real corpora live in ../shared/data beside the checkout")
    return path


def write_synthetic_corpus(folder: Path, dialogs: int = 24, seed: int = 0) -> Path:
    """train/valid/test.jsonl of random short dialogs; returns the folder."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", dialogs), ("valid", max(2, dialogs // 6)), ("test", max(2, dialogs // 6))):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(k):
                turns = [sentence(rng, 2, 7).capitalize() + "."
                         for _ in range(rng.randint(2, 6))]
                f.write(json.dumps({"turns": turns}) + "\n")
    return folder


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"))


TINY_OVERRIDES = [
    "data.corpus=jsonl", "model.preset=tiny", "model.kgcvae=false", "data.use_topic=false",
    "data.use_meta=false", "tokenizer.vocab_size=64", "train.steps=24",
    "train.batch_size=8", "train.log_every=4", "train.eval_every=12", "train.ckpt_every=6",
    "train.num_threads=1", "schedule.cycles=2",
]


def synthetic_sentences(k: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, 3, 9) for _ in range(k)]


def build_tiny_bundle(out: Path, **model: object) -> Path:
    """A bundle of random tiny weights; ``model``: CVAEConfig fields over the tiny preset."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(synthetic_sentences(), vocab_size=64)
    net = CVAE(preset("tiny", vocab_size=tokenizer.vocab_size, max_decode_len=12, **model))
    net.eval()
    save_bundle(out, net, tokenizer, name="tiny", text_style="plain")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
