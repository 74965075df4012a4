"""One pipeline: the offline generator behind `python -m training quality` (model.generate) and POST /respond
(through the app, its lifespan running) give the same replies, seeds, finish reasons and scores for the same
contexts, seeds and settings, so a figure measured offline describes the service."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.generate import Generator
from model.pipeline import InputError, Limits, ReplySettings
from harness.words import sentence


def contexts(k: int, seed: int = 5) -> list[list[str]]:
    rng = random.Random(seed)
    return [[sentence(rng, 2, 8) for _ in range(rng.randint(1, 4))] for _ in range(k)]


def request_seed(i: int) -> int:
    return 1_000_003 + 1009 * i  # the quality CLI's request seeds (training.quality)


def served(body: dict) -> list[tuple]:
    return [(r["text"], r["seed"], r["finish_reason"], r["score"], r["ranking"]) for r in body["replies"]]


def offline(result) -> list[tuple]:
    return [(r.text, r.seed, r.finish_reason, r.score, r.ranking) for r in result.replies]


def check_parity(client, bundle_dir: Path, ctxs: list[list[str]], n: int, **options) -> int:
    """Every context through both; returns how many replies were compared."""
    gen = Generator(load_bundle(bundle_dir), ReplySettings(), Limits())  # the service's defaults
    compared = 0
    for i, ctx in enumerate(ctxs):
        r = client.post("/respond", json={"context": ctx, "n": n, "seed": request_seed(i), **options})
        assert r.status_code == 200, r.text
        body = r.json()
        out = gen.respond(ctx, n, request_seed(i), **options)
        assert served(body) == offline(out), (ctx, options)
        assert (body["duplicates_dropped"], body["empty_dropped"], body["candidates"], body["reranked"]) == (
            out.duplicates_dropped, out.empty_dropped, out.candidates, out.reranked)
        compared += len(out.replies)
    return compared


@pytest.mark.parametrize("rerank", [True, False])
@pytest.mark.parametrize("dedupe", [True, False])
def test_generator_and_respond_agree_on_the_tiny_bundle(tiny_bundle, make_client, rerank, dedupe):
    with make_client() as client:
        compared = check_parity(client, tiny_bundle, contexts(6), 4, rerank=rerank, dedupe=dedupe)
    assert compared >= 12  # replies were compared, not empty lists


def test_generator_and_respond_agree_when_sampling(tiny_bundle, make_client):
    with make_client() as client:
        assert check_parity(client, tiny_bundle, contexts(4, seed=9), 3, strategy="sample", temperature=0.8,
                            top_p=0.9) >= 6


def test_the_evaluation_refuses_what_the_service_refuses(tiny_bundle, make_client):
    long_turn = "word " * 201  # 1,005 characters: over the service's 1,000
    gen = Generator(load_bundle(tiny_bundle))
    with make_client() as client:
        r = client.post("/respond", json={"context": ["hello there", long_turn], "n": 2, "seed": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "context", 1]
    outs = list(gen.respond_all([["hello there"], ["hello there", long_turn]], 2, [1, 2]))
    assert not isinstance(outs[0], InputError) and len(outs[0].replies) == 2
    assert isinstance(outs[1], InputError) and outs[1].loc == ("context", 1)


@pytest.mark.slow
def test_generator_and_respond_agree_on_the_shipped_model(make_client):
    ctxs = [["Hi, how are you today?"], ["I just got back from the beach.", "Nice! How was it?", "Sunny and hot."],
            ["What do you do for a living?"], ["Do you like dogs or cats?"], ["I failed my exam today."],
            ["Any plans for the weekend?"], ["Have you seen any good movies lately?"], ["I love pizza."]]
    with make_client(bundle=DEFAULT_BUNDLE) as client:
        for rerank in (True, False):
            for dedupe in (True, False):
                assert check_parity(client, DEFAULT_BUNDLE, ctxs, 5, rerank=rerank, dedupe=dedupe) >= 30
