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


def test_submit_async_prepares_in_the_engines_thread(engine):
    import asyncio
    import threading

    async def submit(req):
        return await engine.submit_async(req)

    with pytest.raises(EngineClosed):  # not started: nothing is prepared or queued
        asyncio.run(submit(GenerationRequest(context=["hi"])))
    seen = []
    prepare = engine.prepare
    engine.prepare = lambda req: (seen.append(threading.current_thread().name), prepare(req))[1]
    engine.start()
    try:
        future = asyncio.run(submit(GenerationRequest(context=["hi"], n=2, seed=4, rerank=False)))
        assert future.result(10).replies == engine.submit(
            GenerationRequest(context=["hi"], n=2, seed=4, rerank=False)).result(10).replies
        with pytest.raises(InputError) as e:
            asyncio.run(submit(GenerationRequest(context=["hi", "\u200b"])))
        assert e.value.loc == ("context", 1)
    finally:
        assert engine.close(5)
    assert seen[0].startswith("dialog-prepare") and seen[1] == threading.main_thread().name
    with pytest.raises(EngineClosed):
        asyncio.run(submit(GenerationRequest(context=["hi"])))


def test_a_lone_request_does_not_wait_for_company(tiny_bundle):
    """The batcher waits up to max_wait_ms for other requests' rows only when another request is admitted:
    with a wait of a minute, a lone request (and each of its redraw rounds) still answers at once."""
    engine = Engine.from_bundle(tiny_bundle, device="cpu", torch_threads=1, max_batch_rows=64, max_wait_ms=60_000)
    engine.start()
    try:
        result = engine.submit(GenerationRequest(context=["hi"], n=3, seed=1, rerank=False)).result(timeout=20)
        assert result.n_returned >= 1 and result.timing_ms["total"] < 20_000
    finally:
        engine.close(5)


def test_close_drops_requests_still_waiting_to_be_prepared(engine, monkeypatch):
    """Requests queued for the preparing thread when the engine closes get EngineClosed at once, and the thread
    is not kept busy with them (a process exits only once it is idle)."""
    import asyncio
    import threading

    entered, gate = threading.Event(), threading.Event()
    prepare = engine.prepare
    ran = []

    def slow(req):
        ran.append(req)
        entered.set()
        gate.wait(10)
        return prepare(req)

    monkeypatch.setattr(engine, "prepare", slow)
    engine.start()

    async def main():
        first = asyncio.ensure_future(engine.submit_async(GenerationRequest(context=["hi"])))
        queued = [asyncio.ensure_future(engine.submit_async(GenerationRequest(context=["hi"]))) for _ in range(3)]
        await asyncio.to_thread(entered.wait, 10)
        await asyncio.to_thread(engine.close, 5)
        gate.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    out = asyncio.run(main())
    assert all(isinstance(e, EngineClosed) for e in out), out
    assert len(ran) == 1  # only the request being prepared when the engine closed
