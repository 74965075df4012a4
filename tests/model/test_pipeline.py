"""The reply pipeline's pieces (model.pipeline): the checks every caller gets, the rounds that replace empty
and repeated replies, the order of the choice, and the offline generator over them."""
from __future__ import annotations

import math

import pytest
import torch

from model import decoding
from model.bundle import load_bundle
from model.generate import Generator
from model.pipeline import (DecodeKey, GenerationRequest, InputError, Limits, Reply, ReplyJob, ReplyPipeline,
                            ReplySettings)


@pytest.fixture(scope="module")
def pipeline(tiny_bundle) -> ReplyPipeline:
    return ReplyPipeline(load_bundle(tiny_bundle), ReplySettings(), Limits(max_turns=4, max_turn_chars=50))


def refused(pipeline: ReplyPipeline, **fields) -> InputError:
    with pytest.raises(InputError) as e:
        pipeline.prepare(GenerationRequest(**{"context": ["hello there"], **fields}))
    return e.value


@pytest.mark.parametrize("fields, loc", [
    (dict(temperature=0.5), ("temperature",)),  # greedy would ignore them
    (dict(top_k=5), ("top_k",)),
    (dict(top_p=0.9), ("top_p",)),
    (dict(strategy="sample", top_p=0.0), ("top_p",)),  # an empty nucleus
    (dict(strategy="sample", temperature=0.0), ("temperature",)),
    (dict(strategy="sample", top_k=-1), ("top_k",)),
    (dict(rerank=False, candidates=10), ("candidates",)),  # candidates only count when reranking
    (dict(candidates=3, n=5), ("candidates",)),
    (dict(latents=[[0.0] * 8], latent_temperature=0.5), ("latent_temperature",)),
    (dict(latents=[[0.0] * 8], rerank=True), ("rerank",)),
    (dict(latents=[[0.0] * 8], seed=3), ("seed",)),  # greedy decoding of a given code draws nothing
    (dict(latents=[[0.0] * 7]), ("latents", 0)),
    (dict(context=["a b"] * 5), ("context",)),  # more turns than the limit
    (dict(context=["hi", "x" * 51]), ("context", 1)),  # a turn over the length limit
    (dict(max_tokens=0), ("max_tokens",)),
    (dict(n=0), ("n",)),
])
def test_prepare_refuses_what_would_be_ignored_or_out_of_limits(pipeline, fields, loc):
    assert refused(pipeline, **fields).loc == loc


def test_a_wrong_size_latent_code_echoes_the_code(pipeline):
    e = refused(pipeline, latents=[[0.0] * 8, [1.0, 2.0]])
    assert e.loc == ("latents", 1) and e.value == [1.0, 2.0] and "8 values" in e.msg


def test_prepare_counts_the_pieces_the_model_reads(pipeline):
    job = pipeline.prepare(GenerationRequest(context=["hello there", "fine thanks"], n=2, seed=3))
    # the start marker (3 pieces) and each turn wrapped in <s> ... </s>
    assert job.prompt_tokens == 3 + sum(len(t) + 2 for t in job.turn_ids)
    assert job.key == DecodeKey("greedy", 1.0, 0, 1.0, pipeline.max_tokens)
    assert job.pending == list(range(10)) and job.rerank  # 5 candidates per reply


def reply(text: str, index: int, score: float = -1.0, finish: str = "eos") -> Reply:
    return Reply(text=text, score=score, tokens=len(text.split()), finish_reason=finish, sample_index=index,
                 seed=index, n_scored=len(text.split()) + 1, logprob_null=-2.0)


def job(pipeline: ReplyPipeline, texts: list[str], **fields) -> ReplyJob:
    j = pipeline.prepare(GenerationRequest(context=["hello there"], seed=0, **fields))
    j.pending = []
    j.replies = [reply(t, i) for i, t in enumerate(texts)]
    return j


def test_empty_replies_are_not_counted_as_duplicates(pipeline):
    j = job(pipeline, ["", "yes", ""], n=3, rerank=False, dedupe=False)
    assert j.end_round("plain") is False  # two empty ones: two more rows are drawn
    assert (j.empty, j.duplicates, j.pending) == (2, 0, [3, 4])  # n rows decoded first: 0, 1, 2
    j2 = job(pipeline, ["", "yes", "yes"], n=3, rerank=False, dedupe=True)
    j2.end_round("plain")
    assert (j2.empty, j2.duplicates) == (1, 1)


def test_rounds_end_when_none_are_left(pipeline):
    j = job(pipeline, ["", ""], n=2, rerank=False)
    j.rounds_left = 0
    assert j.end_round("plain") is True and j.result(0.5, 1.0).replies == []


def test_reranked_replies_come_in_the_order_they_were_picked(pipeline):
    j = job(pipeline, ["yes I do", "yes I do too", "no way", "maybe later"], n=3, candidates=4)
    for r, s in zip(j.replies, (-0.5, -0.5, -0.9, -1.6)):
        r.score = s
    j.end_round("plain")
    res = j.result(mmi_weight=0.5, diversity=1.0)
    mmr = [r.ranking["mmr"] for r in res.replies]
    assert mmr == sorted(mmr, reverse=True)  # what was picked first scored best when it was picked
    ranks = [r.ranking["rank"] for r in res.replies]
    assert [r.text for r in res.replies] == ["yes I do", "no way", "yes I do too"]
    assert ranks[2] > ranks[1]  # the near-repeat "yes I do too" ranks higher than "no way" yet comes after it
    assert all(r.ranking["mmr"] <= r.ranking["rank"] + 1e-12 for r in res.replies)


def test_top_p_never_empties_a_row():
    logits = torch.tensor([[0.0, 1.0, 3.0, float("-inf")]])
    for p in (1e-12, 0.01, 0.5):
        kept = decoding.filter_logits(logits, top_p=p)
        assert torch.isfinite(kept[0, 2]) and int(torch.isfinite(kept).sum()) >= 1
    with pytest.raises(ValueError):
        decoding.filter_logits(logits, top_p=0.0)
    # the kept token is the most likely allowed one, so sampling stays inside a mask applied before
    masked = logits.masked_fill(torch.tensor([[False, False, True, False]]), float("-inf"))
    tok = decoding.sample_from(decoding.filter_logits(masked, top_p=1e-9), torch.tensor([0.99]))
    assert int(tok) == 1


def test_generator_yields_the_refusal_of_a_context_and_goes_on(tiny_bundle):
    gen = Generator(load_bundle(tiny_bundle), ReplySettings(rerank=False), Limits(max_turn_chars=20))
    outs = list(gen.respond_all([["hello"], ["x" * 21], ["good morning"]], 2, [1, 2, 3]))
    assert isinstance(outs[1], InputError) and outs[1].loc == ("context", 0)
    assert [len(o.replies) for o in (outs[0], outs[2])] == [2, 2]
    assert outs[0].replies[0].seed in (1, 2) and not math.isnan(outs[0].replies[0].score)


def test_the_coherence_term_needs_a_head_and_enters_the_rank(tiny_bundle, tmp_path):
    from model.rerank import RerankError
    from tests.conftest import build_tiny_bundle

    with pytest.raises(RerankError, match="response-selection head"):
        ReplyPipeline(load_bundle(tiny_bundle), ReplySettings(coherence_weight=0.5))
    with_head = load_bundle(build_tiny_bundle(tmp_path / "rs", rs_dim=8))
    req = GenerationRequest(context=["hello there"], n=3, seed=4)
    off = ReplyPipeline(with_head, ReplySettings()).respond(req)
    on = ReplyPipeline(with_head, ReplySettings(coherence_weight=0.5)).respond(req)
    assert all("coherence" not in r.ranking for r in off.replies)
    for r in on.replies:
        c = r.ranking["coherence"]
        assert c <= 0 and r.ranking["rank"] == pytest.approx(r.ranking["likelihood"] - 0.5 * r.ranking["anti_lm"]
                                                               + 0.5 * c)
