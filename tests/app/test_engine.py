"""The engine's Python API without a server: Engine.from_bundle(path).respond(...)."""
from __future__ import annotations

import pytest

from app.engine import Engine, EngineClosed, GenerationRequest, InputError
from model.bundle import BundleError


@pytest.fixture
def engine(tiny_bundle):
    return Engine.from_bundle(tiny_bundle, device="cpu", torch_threads=1, max_batch_rows=1)


def test_respond_locally(engine):
    result = engine.respond(["hi there"], n=4, seed=3, rerank=False)
    assert result.n_requested == 4 and result.seed == 3 and not result.reranked
    assert [r.score for r in result.replies] == sorted((r.score for r in result.replies), reverse=True)
    assert engine.respond("hi there", n=4, seed=3, rerank=False).replies == result.replies  # a string: one turn
    ranked = engine.respond(["hi there"], n=4, seed=3)
    assert ranked.reranked and ranked.candidates >= 20
    assert all(r.ranking is not None and r.text for r in ranked.replies)


def test_local_and_batched_paths_agree(engine):
    local = engine.respond(["hi", "hello"], n=3, seed=8, strategy="sample")
    engine.start()
    try:
        served = engine.submit(GenerationRequest(context=["hi", "hello"], n=3, seed=8, strategy="sample"))
        assert served.result(10).replies == local.replies
    finally:
        assert engine.close(5)
    with pytest.raises(EngineClosed):
        engine.submit(GenerationRequest(context=["hi"]))


def test_input_errors(engine):
    with pytest.raises(InputError) as e:
        engine.respond(["\u200b"])
    assert e.value.loc == ("context", 0)
    with pytest.raises(InputError):
        engine.respond(["hi"], n=0)
    with pytest.raises(InputError):
        engine.respond(["hi"], max_tokens=engine.config.max_decode_len + 1)
    with pytest.raises(InputError):
        engine.respond(["hi"], latents=[[float("nan")] * engine.config.latent_dim])


def test_info(engine):
    info = engine.info()
    assert info["name"] == "tiny" and info["device"] == "cpu" and info["max_tokens"] == 12


def test_bad_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Engine.from_bundle(tmp_path / "none")


@pytest.mark.gpu
def test_engine_on_cuda_matches_replay(tiny_bundle):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    engine = Engine.from_bundle(tiny_bundle, device="auto", max_batch_rows=1)
    assert engine.info()["device"].startswith("cuda")
    full = engine.respond(["hi there"], n=4, seed=5, strategy="sample", dedupe=False)
    for r in full.replies:
        alone = engine.respond(["hi there"], n=1, seed=r.seed, strategy="sample", dedupe=False).replies[0]
        assert (alone.text, alone.score) == (r.text, r.score)
