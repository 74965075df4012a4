"""The shipped default model: intact, loadable, and answering with five distinct replies."""
from __future__ import annotations

import hashlib
import json

from model.bundle import DEFAULT_BUNDLE, load_bundle, sha256_file, verify_bundle


def test_manifest_hashes_match_the_files():
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "tokenizer.model", "lexicon.txt"}
    for name, digest in manifest["files"].items():
        assert sha256_file(DEFAULT_BUNDLE / name) == digest, name
    _, sha = verify_bundle(DEFAULT_BUNDLE)
    assert sha == hashlib.sha256((DEFAULT_BUNDLE / "manifest.json").read_bytes()).hexdigest()


def test_size_and_card():
    total = sum(p.stat().st_size for p in DEFAULT_BUNDLE.iterdir())
    assert total < 64 * 2**20
    card = (DEFAULT_BUNDLE / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "non-commercial" in card and "MIT" in card


def test_five_replies_for_a_context():
    from app.engine import Engine

    bundle = load_bundle()
    assert bundle.name == "chat-cyclical" and bundle.text_style == "chat"
    assert bundle.config.latent_dim == 64 and not bundle.config.kgcvae
    assert bundle.lexicon is not None and len(bundle.lexicon) > 5000
    engine = Engine.from_bundle(DEFAULT_BUNDLE, device="cpu", torch_threads=1)
    try:
        result = engine.respond(["Hi, how are you today?", "I'm fine, thanks. Where are you going?"],
                                n=5, seed=1)
    finally:
        engine.close(5)
    texts = [r.text for r in result.replies]
    assert len(texts) == 5 and len(set(texts)) == 5
    assert all(t and t[0].isupper() for t in texts)  # detokenised, readable text
    assert result.reranked and all(r.ranking is not None and r.finish_reason == "eos" for r in result.replies)
